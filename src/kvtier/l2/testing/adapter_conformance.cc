#include "kvtier/l2/testing/adapter_conformance.h"

#include <atomic>
#include <cstring>
#include <latch>
#include <thread>

#include <absl/container/flat_hash_set.h>
#include <nlohmann/json.hpp>
#include <poll.h>
#include <unistd.h>

#include "kvtier/sync/event_fd.h"

namespace kvtier::l2::testing {

// ---- Helpers ----

std::vector<ObjectKey> TestKeys(size_t n, uint64_t first, std::string_view model,
                                std::string_view cache_salt) {
  std::vector<ObjectKey> keys;
  keys.reserve(n);
  for (size_t i = 0; i < n; ++i) {
    keys::ChunkHash h;
    const uint64_t v = first + i;
    for (int b = 0; b < 8; ++b) h.bytes[b] = static_cast<uint8_t>(v >> (8 * b));
    h.bytes[31] = 0xa5;
    auto key = ObjectKey::Create(h, model, keys::KvRank{1, 0}, 0, cache_salt);
    EXPECT_TRUE(key.has_value()) << key.error().ToString();
    if (key) keys.push_back(*key);
  }
  return keys;
}

std::vector<uint8_t> TestBytes(const ObjectKey& key, size_t size) {
  std::vector<uint8_t> bytes(size);
  uint64_t x = key.Hash() * 0x9e3779b97f4a7c15ULL + size + 1;
  for (size_t i = 0; i < size; ++i) {
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    bytes[i] = static_cast<uint8_t>(x);
  }
  return bytes;
}

std::vector<std::span<const uint8_t>> ConstSpans(const std::vector<std::vector<uint8_t>>& v) {
  return {v.begin(), v.end()};
}

std::vector<std::span<uint8_t>> Spans(std::vector<std::vector<uint8_t>>& v) {
  return {v.begin(), v.end()};
}

namespace {

void DrainFd(int fd) {
  uint64_t value;
  while (::read(fd, &value, sizeof(value)) > 0) {
  }
}

// Polls `fds` until one is readable or `deadline`; false on timeout.
bool PollUntil(std::span<const int> fds, TimePoint deadline) {
  std::vector<pollfd> p;
  for (int fd : fds) p.push_back(pollfd{fd, POLLIN, 0});
  for (;;) {
    auto left = std::chrono::duration_cast<std::chrono::milliseconds>(
        deadline - std::chrono::steady_clock::now());
    if (left.count() < 0) return false;
    int rc = ::poll(p.data(), p.size(), static_cast<int>(left.count()) + 1);
    if (rc > 0) return true;
    if (rc == 0 && std::chrono::steady_clock::now() >= deadline) return false;
  }
}

bool IsReadable(int fd) {
  pollfd p{fd, POLLIN, 0};
  return ::poll(&p, 1, 0) == 1;
}

}  // namespace

void CompletionWaiter::PopStores() {
  for (StoreResult& r : adapter_->PopCompletedStores()) {
    auto [it, inserted] = stores_.emplace(r.task, r);
    EXPECT_TRUE(inserted) << "store task " << r.task << " reported twice";
  }
}

std::optional<StoreResult> CompletionWaiter::WaitStore(TaskId task, Duration timeout) {
  const TimePoint deadline = std::chrono::steady_clock::now() + timeout;
  const int fd = adapter_->store_event_fd();
  for (;;) {
    PopStores();  // drains the fd first: a later completion signals it again
    if (auto it = stores_.find(task); it != stores_.end()) {
      StoreResult r = std::move(it->second);
      stores_.erase(it);
      return r;
    }
    if (!PollUntil(std::span<const int>(&fd, 1), deadline)) return std::nullopt;
  }
}

std::optional<Bitmap> CompletionWaiter::WaitLookup(TaskId task, Duration timeout) {
  const TimePoint deadline = std::chrono::steady_clock::now() + timeout;
  const int fd = adapter_->lookup_event_fd();
  for (;;) {
    DrainFd(fd);
    if (auto r = adapter_->QueryLookupAndLockResult(task)) return r;
    if (!PollUntil(std::span<const int>(&fd, 1), deadline)) return std::nullopt;
  }
}

std::optional<Bitmap> CompletionWaiter::WaitLoad(TaskId task, Duration timeout) {
  const TimePoint deadline = std::chrono::steady_clock::now() + timeout;
  const int fd = adapter_->load_event_fd();
  for (;;) {
    DrainFd(fd);
    if (auto r = adapter_->QueryLoadResult(task)) return r;
    if (!PollUntil(std::span<const int>(&fd, 1), deadline)) return std::nullopt;
  }
}

std::vector<StoreResult> CompletionWaiter::TakeStores() {
  PopStores();
  std::vector<StoreResult> out;
  for (auto& [task, r] : stores_) out.push_back(std::move(r));
  stores_.clear();
  return out;
}

bool WaitForCondition(L2Adapter& adapter, const std::function<bool()>& done, Duration timeout) {
  const TimePoint deadline = std::chrono::steady_clock::now() + timeout;
  const int fds[3] = {adapter.store_event_fd(), adapter.lookup_event_fd(), adapter.load_event_fd()};
  for (;;) {
    for (int fd : fds) DrainFd(fd);
    if (done()) return true;
    if (!PollUntil(fds, deadline)) return done();
  }
}

bool WaitUntilIdle(L2Adapter& adapter, Duration timeout) {
  return WaitForCondition(
      adapter, [&adapter] { return adapter.Counters().in_flight_tasks == 0; }, timeout);
}

StoreResult StoreAndWait(L2Adapter& adapter, std::span<const ObjectKey> keys,
                         const std::vector<std::vector<uint8_t>>& objects) {
  auto sources = ConstSpans(objects);
  TaskId task = adapter.SubmitStore(keys, sources);
  auto r = CompletionWaiter(&adapter).WaitStore(task);
  if (!r) {
    ADD_FAILURE() << "store task " << task << " did not complete";
    return StoreResult{task, Status::Timeout("store did not complete"), 0};
  }
  return *r;
}

Bitmap LookupAndWait(L2Adapter& adapter, std::span<const ObjectKey> keys) {
  TaskId task = adapter.SubmitLookupAndLock(keys);
  auto r = CompletionWaiter(&adapter).WaitLookup(task);
  if (!r) {
    ADD_FAILURE() << "lookup task " << task << " did not complete";
    return Bitmap();
  }
  return *r;
}

Bitmap LoadAndWait(L2Adapter& adapter, std::span<const ObjectKey> keys,
                   std::vector<std::vector<uint8_t>>& buffers) {
  auto targets = Spans(buffers);
  TaskId task = adapter.SubmitLoad(keys, targets);
  auto r = CompletionWaiter(&adapter).WaitLoad(task);
  if (!r) {
    ADD_FAILURE() << "load task " << task << " did not complete";
    return Bitmap();
  }
  return *r;
}

void RecordingL2Listener::OnL2KeysStored(std::span<const ObjectKey> keys,
                                         std::span<const uint64_t> sizes) {
  MutexLock lock(&mu_);
  for (size_t i = 0; i < keys.size(); ++i) stored_.emplace_back(keys[i], sizes[i]);
  cv_.NotifyAll();
}

void RecordingL2Listener::OnL2KeysAccessed(std::span<const ObjectKey> keys) {
  MutexLock lock(&mu_);
  accessed_.insert(accessed_.end(), keys.begin(), keys.end());
  cv_.NotifyAll();
}

void RecordingL2Listener::OnL2KeysDeleted(std::span<const ObjectKey> keys) {
  MutexLock lock(&mu_);
  deleted_.insert(deleted_.end(), keys.begin(), keys.end());
  cv_.NotifyAll();
}

std::vector<std::pair<ObjectKey, uint64_t>> RecordingL2Listener::stored() const {
  MutexLock lock(&mu_);
  return stored_;
}

std::vector<ObjectKey> RecordingL2Listener::accessed() const {
  MutexLock lock(&mu_);
  return accessed_;
}

std::vector<ObjectKey> RecordingL2Listener::deleted() const {
  MutexLock lock(&mu_);
  return deleted_;
}

bool RecordingL2Listener::WaitStoredCount(size_t n, Duration timeout) const {
  const TimePoint deadline = std::chrono::steady_clock::now() + timeout;
  MutexLock lock(&mu_);
  while (stored_.size() < n) {
    if (!cv_.WaitUntil(&mu_, deadline) && std::chrono::steady_clock::now() >= deadline) break;
  }
  return stored_.size() >= n;
}

bool RecordingL2Listener::WaitAccessedCount(size_t n, Duration timeout) const {
  const TimePoint deadline = std::chrono::steady_clock::now() + timeout;
  MutexLock lock(&mu_);
  while (accessed_.size() < n) {
    if (!cv_.WaitUntil(&mu_, deadline) && std::chrono::steady_clock::now() >= deadline) break;
  }
  return accessed_.size() >= n;
}

bool RecordingL2Listener::WaitDeletedCount(size_t n, Duration timeout) const {
  const TimePoint deadline = std::chrono::steady_clock::now() + timeout;
  MutexLock lock(&mu_);
  while (deleted_.size() < n) {
    if (!cv_.WaitUntil(&mu_, deadline) && std::chrono::steady_clock::now() >= deadline) break;
  }
  return deleted_.size() >= n;
}

void AdapterConformanceTest::SetUp() {
  adapter_ = GetParam().make();
  ASSERT_NE(adapter_, nullptr) << "could not make adapter " << GetParam().name;
}

void AdapterConformanceTest::TearDown() {
  if (adapter_ != nullptr) adapter_->Close();
}

// ---- The suite ----

namespace {

constexpr size_t kObj = 4096;

std::vector<std::vector<uint8_t>> Objects(std::span<const ObjectKey> keys, size_t size = kObj) {
  std::vector<std::vector<uint8_t>> objects;
  for (const ObjectKey& k : keys) objects.push_back(TestBytes(k, size));
  return objects;
}

// Buffers filled with a byte no test object is made of entirely.
std::vector<std::vector<uint8_t>> Buffers(size_t n, size_t size = kObj) {
  return std::vector<std::vector<uint8_t>>(n, std::vector<uint8_t>(size, 0xee));
}

std::vector<ObjectKey> Pick(const std::vector<ObjectKey>& keys, std::initializer_list<size_t> i) {
  std::vector<ObjectKey> out;
  for (size_t j : i) out.push_back(keys[j]);
  return out;
}

}  // namespace

TEST_P(AdapterConformanceTest, StoreThenLookupFindsAndLocksEverything) {
  auto keys = TestKeys(4);
  StoreResult stored = StoreAndWait(adapter(), keys, Objects(keys));
  ASSERT_TRUE(stored.status.ok()) << stored.status.ToString();
  EXPECT_EQ(stored.bytes_written, 4 * kObj);

  Bitmap found = LookupAndWait(adapter(), keys);
  EXPECT_EQ(found.ToString(), "1111");
  // Locked: an unforced delete skips every key until they are unlocked.
  auto deleted = adapter().Delete(keys);
  ASSERT_TRUE(deleted.has_value()) << deleted.error().ToString();
  EXPECT_EQ(deleted->ToString(), "0000");
  adapter().SubmitUnlock(keys);
  deleted = adapter().Delete(keys);
  ASSERT_TRUE(deleted.has_value());
  EXPECT_EQ(deleted->ToString(), "1111");
}

TEST_P(AdapterConformanceTest, MissingKeysAreZeroBits) {
  auto keys = TestKeys(5);
  auto present = Pick(keys, {0, 2, 3});
  ASSERT_TRUE(StoreAndWait(adapter(), present, Objects(present)).status.ok());
  EXPECT_EQ(LookupAndWait(adapter(), keys).ToString(), "10110");
  EXPECT_EQ(LookupAndWait(adapter(), TestKeys(3, 100)).ToString(), "000");
  adapter().SubmitUnlock(present);
}

TEST_P(AdapterConformanceTest, EmptyRequestsComplete) {
  std::vector<ObjectKey> none;
  std::vector<std::vector<uint8_t>> no_buffers;
  StoreResult stored = StoreAndWait(adapter(), none, no_buffers);
  EXPECT_TRUE(stored.status.ok()) << stored.status.ToString();
  EXPECT_EQ(stored.bytes_written, 0u);
  EXPECT_TRUE(LookupAndWait(adapter(), none).empty());
  EXPECT_TRUE(LoadAndWait(adapter(), none, no_buffers).empty());
  EXPECT_EQ(adapter().Counters().in_flight_tasks, 0u);
}

TEST_P(AdapterConformanceTest, LoadReturnsBitwiseIdenticalBytes) {
  auto keys = TestKeys(5);
  const size_t sizes[] = {1, 100, kObj, 65536 + 7, 3 * kObj};
  std::vector<std::vector<uint8_t>> objects;
  for (size_t i = 0; i < keys.size(); ++i) objects.push_back(TestBytes(keys[i], sizes[i]));
  ASSERT_TRUE(StoreAndWait(adapter(), keys, objects).status.ok());

  for (int round = 0; round < 2; ++round) {  // loading does not consume
    std::vector<std::vector<uint8_t>> buffers;
    for (size_t s : sizes) buffers.emplace_back(s, 0xee);
    EXPECT_EQ(LoadAndWait(adapter(), keys, buffers).ToString(), "11111");
    for (size_t i = 0; i < keys.size(); ++i) {
      EXPECT_TRUE(buffers[i] == objects[i]) << "key " << i << " round " << round;
    }
  }
}

TEST_P(AdapterConformanceTest, LoadOfMissingKeyFailsOnlyThatKey) {
  auto keys = TestKeys(3);
  auto present = Pick(keys, {0, 2});
  auto objects = Objects(present);
  ASSERT_TRUE(StoreAndWait(adapter(), present, objects).status.ok());
  auto buffers = Buffers(3);
  EXPECT_EQ(LoadAndWait(adapter(), keys, buffers).ToString(), "101");
  EXPECT_TRUE(buffers[0] == objects[0]);
  EXPECT_TRUE(buffers[2] == objects[1]);
  EXPECT_EQ(adapter().Counters().load_keys_failed, 1u);
}

TEST_P(AdapterConformanceTest, LoadIntoSmallerBufferFailsThatKey) {
  auto keys = TestKeys(2);
  auto objects = Objects(keys);
  ASSERT_TRUE(StoreAndWait(adapter(), keys, objects).status.ok());
  std::vector<std::vector<uint8_t>> buffers = {std::vector<uint8_t>(kObj, 0xee),
                                               std::vector<uint8_t>(kObj - 1, 0xee)};
  EXPECT_EQ(LoadAndWait(adapter(), keys, buffers).ToString(), "10");
  EXPECT_TRUE(buffers[0] == objects[0]);
}

TEST_P(AdapterConformanceTest, LoadIntoLargerBufferFailsThatKey) {
  auto keys = TestKeys(2);
  auto objects = Objects(keys);
  ASSERT_TRUE(StoreAndWait(adapter(), keys, objects).status.ok());
  std::vector<std::vector<uint8_t>> buffers = {std::vector<uint8_t>(kObj + 1, 0xee),
                                               std::vector<uint8_t>(kObj, 0xee)};
  EXPECT_EQ(LoadAndWait(adapter(), keys, buffers).ToString(), "01");
  EXPECT_TRUE(buffers[1] == objects[1]);
}

TEST_P(AdapterConformanceTest, StoringPresentKeyIsSuccessAndNotDoubleCounted) {
  auto keys = TestKeys(3);
  auto first = Pick(keys, {0, 1});
  auto originals = Objects(first);
  ASSERT_TRUE(StoreAndWait(adapter(), first, originals).status.ok());
  EXPECT_EQ(adapter().Usage().used_bytes, 2 * kObj);

  auto second = Pick(keys, {1, 2});
  StoreResult r = StoreAndWait(adapter(), second, Objects(second));
  ASSERT_TRUE(r.status.ok()) << r.status.ToString();
  EXPECT_EQ(r.bytes_written, kObj);  // only key 2 is new
  EXPECT_EQ(adapter().Usage().used_bytes, 3 * kObj);

  // Other content under a present key: skipped, the stored bytes stay.
  std::vector<std::vector<uint8_t>> other = {std::vector<uint8_t>(kObj, 0x11)};
  r = StoreAndWait(adapter(), Pick(keys, {0}), other);
  ASSERT_TRUE(r.status.ok()) << r.status.ToString();
  EXPECT_EQ(r.bytes_written, 0u);
  EXPECT_EQ(adapter().Usage().used_bytes, 3 * kObj);
  auto buffers = Buffers(1);
  EXPECT_EQ(LoadAndWait(adapter(), Pick(keys, {0}), buffers).ToString(), "1");
  EXPECT_TRUE(buffers[0] == originals[0]);
}

TEST_P(AdapterConformanceTest, UsageAndBytesByCacheSaltAreExact) {
  auto plain = TestKeys(3, 0, "conformance/model", "");
  auto salted = TestKeys(2, 0, "conformance/model", "tenant-b");
  ASSERT_TRUE(StoreAndWait(adapter(), plain, Objects(plain, 1000)).status.ok());
  ASSERT_TRUE(StoreAndWait(adapter(), salted, Objects(salted, 3000)).status.ok());

  AdapterUsage u = adapter().Usage();
  EXPECT_EQ(u.used_bytes, 9000u);
  EXPECT_EQ(u.bytes_by_cache_salt.size(), 2u);
  EXPECT_EQ(u.bytes_by_cache_salt[""], 3000u);
  EXPECT_EQ(u.bytes_by_cache_salt["tenant-b"], 6000u);

  auto gone = adapter().Delete(std::vector<ObjectKey>{plain[0], salted[0]});
  ASSERT_TRUE(gone.has_value());
  EXPECT_EQ(gone->ToString(), "11");
  u = adapter().Usage();
  EXPECT_EQ(u.used_bytes, 5000u);
  EXPECT_EQ(u.bytes_by_cache_salt[""], 2000u);
  EXPECT_EQ(u.bytes_by_cache_salt["tenant-b"], 3000u);

  ASSERT_TRUE(adapter().Delete(std::vector<ObjectKey>{salted[1]}).has_value());
  u = adapter().Usage();
  EXPECT_EQ(u.used_bytes, 2000u);
  EXPECT_FALSE(u.bytes_by_cache_salt.contains("tenant-b"));
  EXPECT_EQ(adapter().Counters().deleted_keys, 3u);
}

TEST_P(AdapterConformanceTest, DeleteSkipsLockedKeysUnlessForced) {
  auto keys = TestKeys(3);
  ASSERT_TRUE(StoreAndWait(adapter(), keys, Objects(keys)).status.ok());
  auto locked = Pick(keys, {0, 1});
  EXPECT_EQ(LookupAndWait(adapter(), locked).ToString(), "11");

  auto r = adapter().Delete(keys);
  ASSERT_TRUE(r.has_value());
  EXPECT_EQ(r->ToString(), "001");
  r = adapter().Delete(Pick(keys, {0}), /*force=*/true);
  ASSERT_TRUE(r.has_value());
  EXPECT_EQ(r->ToString(), "1");
  r = adapter().Delete(Pick(keys, {1}));
  ASSERT_TRUE(r.has_value());
  EXPECT_EQ(r->ToString(), "0");

  adapter().SubmitUnlock(Pick(keys, {1}));
  r = adapter().Delete(Pick(keys, {1}));
  ASSERT_TRUE(r.has_value());
  EXPECT_EQ(r->ToString(), "1");
  EXPECT_EQ(LookupAndWait(adapter(), keys).ToString(), "000");
  adapter().SubmitUnlock(Pick(keys, {0}));  // the forced key's lock: ignored or released
}

TEST_P(AdapterConformanceTest, LocksAreCounted) {
  auto keys = TestKeys(1);
  ASSERT_TRUE(StoreAndWait(adapter(), keys, Objects(keys)).status.ok());
  EXPECT_EQ(LookupAndWait(adapter(), keys).ToString(), "1");
  EXPECT_EQ(LookupAndWait(adapter(), keys).ToString(), "1");
  adapter().SubmitUnlock(keys);
  EXPECT_EQ(adapter().Delete(keys).value().ToString(), "0");  // one lock left
  adapter().SubmitUnlock(keys);
  EXPECT_EQ(adapter().Delete(keys).value().ToString(), "1");
  adapter().SubmitUnlock(keys);  // unknown keys are ignored
}

TEST_P(AdapterConformanceTest, DeleteReportsAbsentKeysAsGone) {
  auto keys = TestKeys(2);
  ASSERT_TRUE(StoreAndWait(adapter(), Pick(keys, {1}), Objects(Pick(keys, {1}))).status.ok());
  auto r = adapter().Delete(keys);
  ASSERT_TRUE(r.has_value()) << r.error().ToString();
  EXPECT_EQ(r->ToString(), "11");  // bit = "not stored after the call"
  EXPECT_EQ(adapter().Delete(keys).value().ToString(), "11");
  EXPECT_EQ(adapter().Usage().used_bytes, 0u);
}

TEST_P(AdapterConformanceTest, CancellingAFinishedLookupReleasesItsLocks) {
  auto keys = TestKeys(2);
  ASSERT_TRUE(StoreAndWait(adapter(), keys, Objects(keys)).status.ok());
  CompletionWaiter waiter(&adapter());
  TaskId lookup = adapter().SubmitLookupAndLock(keys);
  ASSERT_TRUE(
      WaitForCondition(adapter(), [&] { return adapter().Counters().in_flight_tasks == 0; }));
  EXPECT_TRUE(adapter().Cancel(lookup));  // finished, never collected
  EXPECT_FALSE(adapter().QueryLookupAndLockResult(lookup).has_value());
  EXPECT_EQ(adapter().Delete(keys).value().ToString(), "11");  // nothing left locked
}

TEST_P(AdapterConformanceTest, QueryResultsAreOneShot) {
  auto keys = TestKeys(2);
  CompletionWaiter waiter(&adapter());
  auto objects = Objects(keys);
  auto sources = ConstSpans(objects);
  TaskId store = adapter().SubmitStore(keys, sources);
  ASSERT_TRUE(waiter.WaitStore(store).has_value());
  EXPECT_TRUE(waiter.TakeStores().empty());
  EXPECT_TRUE(adapter().PopCompletedStores().empty());

  TaskId lookup = adapter().SubmitLookupAndLock(keys);
  ASSERT_TRUE(waiter.WaitLookup(lookup).has_value());
  EXPECT_FALSE(adapter().QueryLookupAndLockResult(lookup).has_value());

  auto buffers = Buffers(2);
  auto targets = Spans(buffers);
  TaskId load = adapter().SubmitLoad(keys, targets);
  ASSERT_TRUE(waiter.WaitLoad(load).has_value());
  EXPECT_FALSE(adapter().QueryLoadResult(load).has_value());
  adapter().SubmitUnlock(keys);
}

TEST_P(AdapterConformanceTest, UnknownTaskIdsGiveNullopt) {
  EXPECT_FALSE(adapter().QueryLookupAndLockResult(987654).has_value());
  EXPECT_FALSE(adapter().QueryLoadResult(987654).has_value());

  auto keys = TestKeys(1);
  ASSERT_TRUE(StoreAndWait(adapter(), keys, Objects(keys)).status.ok());
  TaskId lookup = adapter().SubmitLookupAndLock(keys);
  ASSERT_TRUE(WaitUntilIdle(adapter()));
  // A task of another kind is unknown to the query, and does not consume the result.
  EXPECT_FALSE(adapter().QueryLoadResult(lookup).has_value());
  auto found = adapter().QueryLookupAndLockResult(lookup);
  ASSERT_TRUE(found.has_value());
  EXPECT_EQ(found->ToString(), "1");
  adapter().SubmitUnlock(keys);
}

TEST_P(AdapterConformanceTest, CancelOfUnknownOrFinishedTaskIsTrueAndHidesResult) {
  EXPECT_TRUE(adapter().Cancel(987654));

  auto keys = TestKeys(2);
  auto objects = Objects(keys);
  auto sources = ConstSpans(objects);
  TaskId store = adapter().SubmitStore(keys, sources);
  ASSERT_TRUE(WaitUntilIdle(adapter()));
  EXPECT_TRUE(adapter().Cancel(store));
  EXPECT_TRUE(adapter().PopCompletedStores().empty());

  TaskId lookup = adapter().SubmitLookupAndLock(keys);
  ASSERT_TRUE(WaitUntilIdle(adapter()));
  EXPECT_TRUE(adapter().Cancel(lookup));
  EXPECT_FALSE(adapter().QueryLookupAndLockResult(lookup).has_value());

  auto buffers = Buffers(2);
  auto targets = Spans(buffers);
  TaskId load = adapter().SubmitLoad(keys, targets);
  ASSERT_TRUE(WaitUntilIdle(adapter()));
  EXPECT_TRUE(adapter().Cancel(load));
  EXPECT_FALSE(adapter().QueryLoadResult(load).has_value());
  EXPECT_EQ(adapter().Counters().in_flight_tasks, 0u);
}

TEST_P(AdapterConformanceTest, ConcurrentSubmittersGetEveryCompletionExactlyOnce) {
  constexpr int kThreads = 4;
  constexpr int kRounds = 25;
  constexpr size_t kPerTask = 2;
  struct PerThread {
    std::vector<ObjectKey> keys;
    std::vector<std::vector<uint8_t>> objects;
    std::vector<std::vector<std::vector<uint8_t>>> load_buffers;  // per round
  };
  std::vector<PerThread> per(kThreads);
  for (int t = 0; t < kThreads; ++t) {
    per[t].keys = TestKeys(kRounds * kPerTask, 1000 * (t + 1));
    per[t].objects = Objects(per[t].keys, 512);
    per[t].load_buffers.assign(kRounds, Buffers(kPerTask, 512));
  }

  Mutex mu;
  std::vector<TaskId> stores, lookups, loads;  // guarded by mu
  auto submitted = sync::EventFd::Create().value();
  std::atomic<int> finished{0};
  std::latch start(kThreads);
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      PerThread& p = per[t];
      start.arrive_and_wait();
      for (int round = 0; round < kRounds; ++round) {
        std::span<const ObjectKey> now(p.keys.data() + round * kPerTask, kPerTask);
        auto sources = ConstSpans(p.objects);
        TaskId s = adapter().SubmitStore(now, std::span<const std::span<const uint8_t>>(
                                                  sources.data() + round * kPerTask, kPerTask));
        // Lookups and loads of this round's keys race the store: any result is fine here.
        TaskId l = adapter().SubmitLookupAndLock(now);
        auto targets = Spans(p.load_buffers[round]);
        TaskId d = adapter().SubmitLoad(now, targets);
        MutexLock lock(&mu);
        stores.push_back(s);
        lookups.push_back(l);
        loads.push_back(d);
      }
      finished.fetch_add(1);
      submitted.Signal();
    });
  }

  absl::flat_hash_map<TaskId, int> store_seen;
  absl::flat_hash_set<TaskId> lookups_seen, loads_seen;
  const TimePoint deadline = std::chrono::steady_clock::now() + kCompletionWait;
  const int fds[4] = {adapter().store_event_fd(), adapter().lookup_event_fd(),
                      adapter().load_event_fd(), submitted.fd()};
  constexpr size_t kTotal = kThreads * kRounds;
  for (;;) {
    for (int fd : fds) DrainFd(fd);
    for (const StoreResult& r : adapter().PopCompletedStores()) {
      ++store_seen[r.task];
      EXPECT_TRUE(r.status.ok()) << r.status.ToString();
    }
    std::vector<TaskId> l, d;
    {
      MutexLock lock(&mu);
      l = lookups;
      d = loads;
    }
    for (TaskId task : l) {
      if (lookups_seen.contains(task)) continue;
      if (adapter().QueryLookupAndLockResult(task)) lookups_seen.insert(task);
    }
    for (TaskId task : d) {
      if (loads_seen.contains(task)) continue;
      if (adapter().QueryLoadResult(task)) loads_seen.insert(task);
    }
    if (finished.load() == kThreads && store_seen.size() == kTotal &&
        lookups_seen.size() == kTotal && loads_seen.size() == kTotal) {
      break;
    }
    if (!PollUntil(fds, deadline)) {
      ADD_FAILURE() << "timed out: " << store_seen.size() << " stores, " << lookups_seen.size()
                    << " lookups, " << loads_seen.size() << " loads of " << kTotal;
      break;
    }
  }
  for (auto& th : threads) th.join();

  MutexLock lock(&mu);
  for (TaskId task : stores) EXPECT_EQ(store_seen[task], 1) << "store " << task;
  for (TaskId task : lookups) {
    EXPECT_TRUE(lookups_seen.contains(task)) << "lookup " << task;
    EXPECT_FALSE(adapter().QueryLookupAndLockResult(task).has_value());
  }
  for (TaskId task : loads) {
    EXPECT_TRUE(loads_seen.contains(task)) << "load " << task;
    EXPECT_FALSE(adapter().QueryLoadResult(task).has_value());
  }
  EXPECT_TRUE(adapter().PopCompletedStores().empty());
  AdapterCounters c = adapter().Counters();
  EXPECT_EQ(c.store_tasks, kTotal);
  EXPECT_EQ(c.lookup_tasks, kTotal);
  EXPECT_EQ(c.load_tasks, kTotal);
  EXPECT_EQ(c.in_flight_tasks, 0u);

  // Every stored object reads back intact.
  for (PerThread& p : per) {
    auto buffers = Buffers(p.keys.size(), 512);
    EXPECT_TRUE(LoadAndWait(adapter(), p.keys, buffers).All());
    EXPECT_TRUE(buffers == p.objects);
  }
}

TEST_P(AdapterConformanceTest, CloseFailsPendingWorkAndLaterSubmitsFailCleanly) {
  auto keys = TestKeys(16);
  auto objects = Objects(keys);
  auto sources = ConstSpans(objects);
  auto buffers = Buffers(16);
  auto targets = Spans(buffers);
  std::vector<TaskId> stores, lookups, loads;
  for (size_t i = 0; i < 8; ++i) {
    stores.push_back(adapter().SubmitStore(std::span(keys).subspan(2 * i, 2),
                                           std::span(sources).subspan(2 * i, 2)));
  }
  for (size_t i = 0; i < 4; ++i) {
    lookups.push_back(adapter().SubmitLookupAndLock(std::span(keys).subspan(4 * i, 4)));
    loads.push_back(adapter().SubmitLoad(std::span(keys).subspan(4 * i, 4),
                                         std::span(targets).subspan(4 * i, 4)));
  }
  adapter().Close();

  // Every task reported exactly once, finished or failed; nothing left in flight.
  EXPECT_EQ(adapter().Counters().in_flight_tasks, 0u);
  absl::flat_hash_map<TaskId, int> seen;
  for (const StoreResult& r : adapter().PopCompletedStores()) ++seen[r.task];
  for (TaskId t : stores) EXPECT_EQ(seen[t], 1) << "store " << t;
  for (TaskId t : lookups) EXPECT_TRUE(adapter().QueryLookupAndLockResult(t).has_value());
  for (TaskId t : loads) EXPECT_TRUE(adapter().QueryLoadResult(t).has_value());
  EXPECT_FALSE(adapter().healthy());

  // Later work fails at once, cleanly.
  TaskId store = adapter().SubmitStore(std::span(keys).first(1), std::span(sources).first(1));
  auto popped = adapter().PopCompletedStores();
  ASSERT_EQ(popped.size(), 1u);
  EXPECT_EQ(popped[0].task, store);
  EXPECT_FALSE(popped[0].status.ok());
  TaskId lookup = adapter().SubmitLookupAndLock(keys);
  auto found = adapter().QueryLookupAndLockResult(lookup);
  ASSERT_TRUE(found.has_value());
  EXPECT_TRUE(found->None());
  TaskId load = adapter().SubmitLoad(keys, targets);
  auto loaded = adapter().QueryLoadResult(load);
  ASSERT_TRUE(loaded.has_value());
  EXPECT_TRUE(loaded->None());
  EXPECT_FALSE(adapter().Delete(keys).has_value());
  adapter().SubmitUnlock(keys);
  EXPECT_TRUE(adapter().Cancel(store));
  EXPECT_EQ(adapter().Counters().in_flight_tasks, 0u);
  adapter().Close();  // idempotent
}

TEST_P(AdapterConformanceTest, EventFdsAreDistinctAndSignalTheirKind) {
  const int store_fd = adapter().store_event_fd();
  const int lookup_fd = adapter().lookup_event_fd();
  const int load_fd = adapter().load_event_fd();
  EXPECT_GE(store_fd, 0);
  EXPECT_GE(lookup_fd, 0);
  EXPECT_GE(load_fd, 0);
  EXPECT_NE(store_fd, lookup_fd);
  EXPECT_NE(store_fd, load_fd);
  EXPECT_NE(lookup_fd, load_fd);
  {
    std::unique_ptr<L2Adapter> other = GetParam().make();
    ASSERT_NE(other, nullptr);
    absl::flat_hash_set<int> all = {store_fd,
                                    lookup_fd,
                                    load_fd,
                                    other->store_event_fd(),
                                    other->lookup_event_fd(),
                                    other->load_event_fd()};
    EXPECT_EQ(all.size(), 6u);
    other->Close();
  }

  const TimePoint deadline = std::chrono::steady_clock::now() + kCompletionWait;
  for (int fd : {store_fd, lookup_fd, load_fd}) DrainFd(fd);
  auto keys = TestKeys(1);
  auto objects = Objects(keys);
  auto sources = ConstSpans(objects);
  adapter().SubmitStore(keys, sources);
  ASSERT_TRUE(PollUntil(std::span<const int>(&store_fd, 1), deadline));
  EXPECT_FALSE(IsReadable(lookup_fd));
  EXPECT_FALSE(IsReadable(load_fd));
  EXPECT_EQ(adapter().PopCompletedStores().size(), 1u);

  TaskId lookup = adapter().SubmitLookupAndLock(keys);
  ASSERT_TRUE(PollUntil(std::span<const int>(&lookup_fd, 1), deadline));
  EXPECT_FALSE(IsReadable(store_fd));
  EXPECT_FALSE(IsReadable(load_fd));
  EXPECT_TRUE(CompletionWaiter(&adapter()).WaitLookup(lookup).has_value());

  auto buffers = Buffers(1);
  auto targets = Spans(buffers);
  TaskId load = adapter().SubmitLoad(keys, targets);
  ASSERT_TRUE(PollUntil(std::span<const int>(&load_fd, 1), deadline));
  EXPECT_FALSE(IsReadable(store_fd));
  EXPECT_FALSE(IsReadable(lookup_fd));
  EXPECT_TRUE(CompletionWaiter(&adapter()).WaitLoad(load).has_value());
  adapter().SubmitUnlock(keys);
}

TEST_P(AdapterConformanceTest, ListKeysPagesThroughEverythingOnce) {
  auto probe = adapter().ListKeys("list/model-a", 7, "");
  if (!probe && probe.error().code() == StatusCode::kNotSupported) {
    GTEST_SKIP() << GetParam().name << " cannot list keys";
  }
  ASSERT_TRUE(probe.has_value()) << probe.error().ToString();
  EXPECT_TRUE(probe->keys.empty());
  EXPECT_TRUE(probe->next_cursor.empty());

  auto a = TestKeys(25, 0, "list/model-a");
  auto a_salted = TestKeys(3, 50, "list/model-a", "s1");
  auto b = TestKeys(5, 0, "list/model-b");
  absl::flat_hash_map<ObjectKey, uint64_t, keys::ObjectKeyHash> expected;
  std::vector<std::vector<uint8_t>> objects;
  for (size_t i = 0; i < a.size(); ++i) {
    objects.push_back(TestBytes(a[i], 100 + i));
    expected[a[i]] = 100 + i;
  }
  ASSERT_TRUE(StoreAndWait(adapter(), a, objects).status.ok());
  ASSERT_TRUE(StoreAndWait(adapter(), a_salted, Objects(a_salted, 64)).status.ok());
  for (const ObjectKey& k : a_salted) expected[k] = 64;
  ASSERT_TRUE(StoreAndWait(adapter(), b, Objects(b, 64)).status.ok());

  absl::flat_hash_map<ObjectKey, uint64_t, keys::ObjectKeyHash> listed;
  std::string cursor;
  int pages = 0;
  do {
    auto page = adapter().ListKeys("list/model-a", 7, cursor);
    ASSERT_TRUE(page.has_value()) << page.error().ToString();
    EXPECT_LE(page->keys.size(), 7u);
    for (const auto& [key, size] : page->keys) {
      EXPECT_TRUE(listed.emplace(key, size).second) << "listed twice: " << key.ToString();
    }
    cursor = page->next_cursor;
    ASSERT_LT(++pages, 100) << "ListKeys does not terminate";
  } while (!cursor.empty());
  EXPECT_EQ(listed, expected);
}

TEST_P(AdapterConformanceTest, ListenerSeesStoredAndDeletedKeys) {
  RecordingL2Listener listener;
  adapter().AddListener(&listener);  // not shared with any thread yet
  auto keys = TestKeys(3);
  ASSERT_TRUE(StoreAndWait(adapter(), Pick(keys, {0, 1}), Objects(Pick(keys, {0, 1}))).status.ok());
  ASSERT_TRUE(
      StoreAndWait(adapter(), Pick(keys, {1, 2}), Objects(Pick(keys, {1, 2}), 100)).status.ok());
  ASSERT_TRUE(listener.WaitStoredCount(3));
  std::vector<std::pair<ObjectKey, uint64_t>> want = {
      {keys[0], kObj}, {keys[1], kObj}, {keys[2], 100}};
  EXPECT_EQ(listener.stored(), want);  // key 1 once: the second store skipped it

  auto r = adapter().Delete(Pick(keys, {0, 2}));
  ASSERT_TRUE(r.has_value());
  ASSERT_TRUE(listener.WaitDeletedCount(2));
  EXPECT_EQ(listener.deleted(), Pick(keys, {0, 2}));
  adapter_->Close();  // before the listener goes away
  adapter_.reset();
}

// The L2 eviction policies order keys by use: every adapter reports the keys a load read.
TEST_P(AdapterConformanceTest, ListenerSeesLoadedKeysAsAccessed) {
  RecordingL2Listener listener;
  adapter().AddListener(&listener);  // not shared with any thread yet
  auto keys = TestKeys(4);
  auto present = Pick(keys, {0, 1, 2});
  ASSERT_TRUE(StoreAndWait(adapter(), present, Objects(present)).status.ok());
  // A lookup is not an access (the load that follows it is).
  EXPECT_EQ(LookupAndWait(adapter(), keys).ToString(), "1110");
  adapter().SubmitUnlock(present);
  EXPECT_TRUE(listener.accessed().empty());

  // Loaded keys, in the task's order; a missing key and a wrong-size buffer are not accesses.
  auto loading = Pick(keys, {2, 3, 0, 1});
  auto buffers = Buffers(4);
  buffers[3].resize(kObj / 2);
  EXPECT_EQ(LoadAndWait(adapter(), loading, buffers).ToString(), "1010");
  // Listeners hear of a completion just after it is published: wait for them.
  ASSERT_TRUE(listener.WaitAccessedCount(2));
  EXPECT_EQ(listener.accessed(), Pick(keys, {2, 0}));
  adapter_->Close();  // before the listener goes away
  adapter_.reset();
}

TEST_P(AdapterConformanceTest, CountersTrackTasks) {
  auto keys = TestKeys(6);
  auto present = Pick(keys, {0, 1, 2, 3});
  ASSERT_TRUE(StoreAndWait(adapter(), present, Objects(present)).status.ok());
  EXPECT_EQ(LookupAndWait(adapter(), keys).ToString(), "111100");
  auto loading = Pick(keys, {0, 1, 4});
  auto buffers = Buffers(3);
  EXPECT_EQ(LoadAndWait(adapter(), loading, buffers).ToString(), "110");
  adapter().SubmitUnlock(present);

  AdapterCounters c = adapter().Counters();
  EXPECT_EQ(c.store_tasks, 1u);
  EXPECT_EQ(c.store_tasks_failed, 0u);
  EXPECT_EQ(c.store_keys, 4u);
  EXPECT_EQ(c.store_bytes, 4 * kObj);
  EXPECT_EQ(c.lookup_tasks, 1u);
  EXPECT_EQ(c.lookup_keys, 6u);
  EXPECT_EQ(c.lookup_hits, 4u);
  EXPECT_EQ(c.load_tasks, 1u);
  EXPECT_EQ(c.load_keys, 3u);
  EXPECT_EQ(c.load_keys_failed, 1u);
  EXPECT_EQ(c.load_bytes, 2 * kObj);
  EXPECT_EQ(c.in_flight_tasks, 0u);
}

TEST_P(AdapterConformanceTest, StatusJsonNamesTheAdapter) {
  nlohmann::json j = adapter().StatusJson();
  EXPECT_EQ(j["name"], adapter().name());
  EXPECT_EQ(j["type"], std::string(adapter().type()));
  EXPECT_EQ(j["healthy"], true);
  EXPECT_TRUE(j.contains("usage"));
  EXPECT_TRUE(j.contains("counters"));
  EXPECT_TRUE(adapter().healthy());
}

}  // namespace kvtier::l2::testing
