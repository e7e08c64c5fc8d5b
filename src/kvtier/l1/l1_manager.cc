#include "kvtier/l1/l1_manager.h"

#include <algorithm>
#include <bit>
#include <limits>

#include <absl/container/flat_hash_map.h>
#include <fmt/format.h>

#include "kvtier/common/check.h"
#include "kvtier/common/logging.h"
#include "kvtier/common/units.h"

namespace kvtier::l1 {
namespace {

// A readable object. 24 bytes: the table holds millions of these, and the per-object metadata
// budget is 256 bytes all in. The memory is owned through Allocation::Detach / Adopt.
struct Resident {
  uint64_t offset = 0;      // in the pool
  int64_t read_expiry = 0;  // clock nanos
  uint32_t size = 0;        // object bytes (< 4 GiB)
  uint16_t read_locks = 0;  // saturates at 65535 (the TTL bounds a lost count)
  bool temporary = false;

  bool ReadLocked(int64_t now) const { return read_locks > 0 && now < read_expiry; }
  void Lock(uint32_t n, int64_t now, int64_t expiry) {
    uint32_t base = ReadLocked(now) ? read_locks : 0;
    read_locks = static_cast<uint16_t>(std::min<uint32_t>(base + n, 0xffff));
    read_expiry = expiry;
  }
};
static_assert(sizeof(Resident) == 24);

// A buffer being written by one writer tag.
struct Staging {
  WriterTag tag = kDefaultWriter;
  memory::Allocation mem;
  int64_t write_expiry = 0;  // clock nanos
  bool temporary = false;

  bool Live(int64_t now) const { return now < write_expiry; }
};
using StagingList = std::vector<Staging>;

uint32_t ClampLocks(uint32_t n) { return std::clamp<uint32_t>(n, 1, kMaxReadLocksPerCall); }

// Keys reported to listeners at the end of one call.
class EventKeys {
 public:
  explicit EventKeys(bool wanted) : wanted_(wanted) {}
  void Add(const ObjectKey& key) {
    if (wanted_) keys_.push_back(key);
  }
  std::span<const ObjectKey> keys() const { return keys_; }

 private:
  bool wanted_;
  std::vector<ObjectKey> keys_;
};

}  // namespace

std::string_view L1ResultName(L1Result result) {
  switch (result) {
    case L1Result::kSuccess:
      return "SUCCESS";
    case L1Result::kKeyNotExist:
      return "KEY_NOT_EXIST";
    case L1Result::kKeyNotReadable:
      return "KEY_NOT_READABLE";
    case L1Result::kKeyNotWritable:
      return "KEY_NOT_WRITABLE";
    case L1Result::kKeyInWrongState:
      return "KEY_IN_WRONG_STATE";
    case L1Result::kKeyIsLocked:
      return "KEY_IS_LOCKED";
    case L1Result::kOutOfMemory:
      return "OUT_OF_MEMORY";
  }
  return "UNKNOWN";
}

// One shard of the object table: resident objects and staging buffers in two maps (staging is
// rare and short-lived, so readers only ever probe the compact resident map). Every state
// change goes through these methods so the counters stay exact.
struct alignas(64) L1Manager::Shard {
  mutable Mutex mu;
  memory::Allocator* allocator = nullptr;  // set once at creation
  absl::flat_hash_map<ObjectKey, Resident, keys::ObjectKeyHash> resident KVT_GUARDED_BY(mu);
  absl::flat_hash_map<ObjectKey, StagingList, keys::ObjectKeyHash> staging KVT_GUARDED_BY(mu);
  uint64_t temporary_objects KVT_GUARDED_BY(mu) = 0;
  uint64_t resident_bytes KVT_GUARDED_BY(mu) = 0;
  uint64_t staging_objects KVT_GUARDED_BY(mu) = 0;
  uint64_t staging_bytes KVT_GUARDED_BY(mu) = 0;

  Resident* FindResident(const ObjectKey& key, size_t hash) KVT_REQUIRES(mu) {
    auto it = resident.find(key, hash);
    return it == resident.end() ? nullptr : &it->second;
  }
  StagingList* FindStagingList(const ObjectKey& key, size_t hash) KVT_REQUIRES(mu) {
    auto it = staging.find(key, hash);
    return it == staging.end() ? nullptr : &it->second;
  }
  Staging* FindStaging(const ObjectKey& key, size_t hash, WriterTag tag) KVT_REQUIRES(mu) {
    StagingList* list = FindStagingList(key, hash);
    if (list == nullptr) return nullptr;
    for (Staging& s : *list) {
      if (s.tag == tag) return &s;
    }
    return nullptr;
  }
  bool Exists(const ObjectKey& key, size_t hash) KVT_REQUIRES(mu) {
    return resident.find(key, hash) != resident.end() || staging.find(key, hash) != staging.end();
  }

  ObjectView View(const Resident& r) const {
    return ObjectView{allocator->base() + r.offset, r.size};
  }

  // Removes the resident object of `key`, moving its memory into `freed`.
  void EraseResident(const ObjectKey& key, size_t hash, std::vector<memory::Allocation>* freed)
      KVT_REQUIRES(mu) {
    auto it = resident.find(key, hash);
    KVT_DCHECK(it != resident.end());
    const Resident& r = it->second;
    if (r.temporary) --temporary_objects;
    resident_bytes -= r.size;
    freed->push_back(allocator->Adopt({r.offset, r.size}));
    resident.erase(it);
  }

  // Makes `staging` the resident object of `key` (which has none).
  Resident& Admit(const ObjectKey& key, Staging&& staging_buffer) KVT_REQUIRES(mu) {
    memory::Allocation::Raw raw = staging_buffer.mem.Detach();
    Resident r;
    r.offset = raw.offset;
    r.size = static_cast<uint32_t>(raw.size);
    r.temporary = staging_buffer.temporary;
    if (r.temporary) ++temporary_objects;
    resident_bytes += r.size;
    auto [it, inserted] = resident.emplace(key, r);
    KVT_DCHECK(inserted);
    return it->second;
  }

  void AddStaging(const ObjectKey& key, Staging s) KVT_REQUIRES(mu) {
    ++staging_objects;
    staging_bytes += s.mem.size();
    staging[key].push_back(std::move(s));
  }

  // Removes `s` (an element of the staging list of `key`) and returns it.
  Staging TakeStaging(const ObjectKey& key, size_t hash, Staging* s) KVT_REQUIRES(mu) {
    auto it = staging.find(key, hash);
    KVT_DCHECK(it != staging.end());
    StagingList& list = it->second;
    --staging_objects;
    staging_bytes -= s->mem.size();
    Staging out = std::move(*s);
    *s = std::move(list.back());
    list.pop_back();
    if (list.empty()) staging.erase(it);
    return out;
  }

  // Frees the staging buffers of `key` whose write lock expired (all of them when `all`).
  void ReclaimStaging(const ObjectKey& key, size_t hash, int64_t now, bool all,
                      std::vector<memory::Allocation>* freed) KVT_REQUIRES(mu) {
    auto it = staging.find(key, hash);
    if (it == staging.end()) return;
    StagingList& list = it->second;
    for (size_t i = 0; i < list.size();) {
      if (all || !list[i].Live(now)) {
        --staging_objects;
        staging_bytes -= list[i].mem.size();
        freed->push_back(std::move(list[i].mem));
        list[i] = std::move(list.back());
        list.pop_back();
      } else {
        ++i;
      }
    }
    if (list.empty()) staging.erase(it);
  }

  bool HasExpiredStaging(const ObjectKey& key, size_t hash, int64_t now) KVT_REQUIRES(mu) {
    StagingList* list = FindStagingList(key, hash);
    return list != nullptr && std::any_of(list->begin(), list->end(),
                                          [now](const Staging& s) { return !s.Live(now); });
  }
};

L1Manager::L1Manager(const L1Options& options) : options_(options) {}

L1Manager::~L1Manager() {
  if (!shards_) return;  // Create failed before the table existed
  // Free every object before the allocator goes away.
  std::vector<memory::Allocation> freed;
  for (uint32_t i = 0; i < options_.num_shards; ++i) {
    Shard& s = shards_[i];
    MutexLock lock(&s.mu);
    for (auto& [key, r] : s.resident) freed.push_back(allocator_->Adopt({r.offset, r.size}));
    s.resident.clear();
    s.staging.clear();
  }
}

Result<std::unique_ptr<L1Manager>> L1Manager::Create(const L1Options& options) {
  if (options.capacity_bytes == 0)
    return MakeError(Status::InvalidArgument("L1 capacity must be > 0"));
  if (options.num_shards == 0 || !std::has_single_bit(options.num_shards) ||
      options.num_shards > 4096) {
    return MakeError(Status::InvalidArgument(fmt::format(
        "L1 num_shards must be a power of two in [1, 4096], got {}", options.num_shards)));
  }
  if (options.read_ttl <= Duration::zero() || options.write_ttl <= Duration::zero()) {
    return MakeError(Status::InvalidArgument("L1 read and write lock TTLs must be > 0"));
  }
  if (options.allocation_wait < Duration::zero()) {
    return MakeError(Status::InvalidArgument("L1 allocation_wait must be >= 0"));
  }
  if (options.clock == nullptr) return MakeError(Status::InvalidArgument("L1 clock is null"));

  std::unique_ptr<L1Manager> m(new L1Manager(options));
  memory::HostPoolOptions pool_options;
  pool_options.size_bytes = options.capacity_bytes;
  pool_options.use_hugepages = options.use_hugepages;
  pool_options.shm_name = options.shm_name;
  pool_options.populate = options.populate;
  pool_options.register_with_cuda = options.register_with_cuda;
  KVT_ASSIGN_OR_RETURN(m->pool_, memory::HostPool::Create(pool_options));
  KVT_ASSIGN_OR_RETURN(
      m->allocator_,
      memory::Allocator::Create(m->pool_->data(), options.capacity_bytes, options.alignment));
  m->shards_ = std::make_unique<Shard[]>(options.num_shards);
  for (uint32_t i = 0; i < options.num_shards; ++i) m->shards_[i].allocator = m->allocator_.get();
  m->shard_shift_ = 64 - std::countr_zero(options.num_shards);
  KVT_LOG_INFO("L1 ready: {} in {} shards, alignment {}, read TTL {}, write TTL {}",
               FormatSize(options.capacity_bytes), options.num_shards, options.alignment,
               FormatDuration(options.read_ttl), FormatDuration(options.write_ttl));
  return m;
}

L1Manager::Shard& L1Manager::ShardFor(size_t hash) const {
  // High bits pick the shard; the hash map inside uses the low bits.
  size_t index =
      shard_shift_ == 64 ? 0 : static_cast<size_t>(static_cast<uint64_t>(hash) >> shard_shift_);
  return shards_[index];
}

void L1Manager::AddListener(L1Listener* listener) {
  MutexLock lock(&listeners_mu_);
  for (auto& slot : listeners_) {
    if (slot.load(std::memory_order_relaxed) == nullptr) {
      slot.store(listener, std::memory_order_release);
      listener_events_.fetch_or(listener->events(), std::memory_order_acq_rel);
      return;
    }
  }
  KVT_CHECK_MSG(false, "more than {} L1 listeners", kMaxListeners);
}

void L1Manager::RemoveListener(L1Listener* listener) {
  MutexLock lock(&listeners_mu_);
  uint32_t events = 0;
  for (auto& slot : listeners_) {
    L1Listener* l = slot.load(std::memory_order_relaxed);
    if (l == listener) {
      slot.store(nullptr, std::memory_order_release);
    } else if (l != nullptr) {
      events |= l->events();
    }
  }
  listener_events_.store(events, std::memory_order_release);
}

namespace {
bool Wants(uint32_t mask, L1Listener::Event e) { return (mask & e) != 0; }
}  // namespace

#define KVT_L1_NOTIFY(event, method, keys)                                    \
  do {                                                                        \
    if (!(keys).empty()) {                                                    \
      for (auto& slot_ : listeners_) {                                        \
        L1Listener* l_ = slot_.load(std::memory_order_acquire);               \
        if (l_ != nullptr && (l_->events() & (event)) != 0) l_->method(keys); \
      }                                                                       \
    }                                                                         \
  } while (0)

void L1Manager::ReleaseMemory(std::vector<memory::Allocation>* allocations) {
  if (allocations->empty()) return;
  allocator_->FreeBatch(*allocations);  // one allocator lock for the lot
  allocations->clear();
  if (memory_waiters_.load(std::memory_order_acquire) > 0) {
    MutexLock lock(&memory_wait_mu_);
    ++memory_free_generation_;
    memory_freed_.NotifyAll();
  }
}

void L1Manager::NotifyAllocationFailed(uint64_t bytes) {
  for (auto& slot : listeners_) {
    L1Listener* l = slot.load(std::memory_order_acquire);
    if (l != nullptr && (l->events() & L1Listener::kAllocationFailed) != 0)
      l->OnL1AllocationFailed(bytes);
  }
}

Status L1Manager::AllocateWithWait(uint64_t size, size_t count,
                                   std::vector<memory::Allocation>* out) {
  Status s = allocator_->AllocateBatch(size, count, out);
  if (s.ok() || s.code() != StatusCode::kOutOfMemory) return s;
  NotifyAllocationFailed(allocator_->RoundUp(size) * count);
  if (options_.allocation_wait <= Duration::zero()) return s;

  TimePoint deadline = DeadlineFrom(options_.allocation_wait);
  memory_waiters_.fetch_add(1, std::memory_order_acq_rel);
  for (;;) {
    uint64_t generation;
    {
      MutexLock lock(&memory_wait_mu_);
      generation = memory_free_generation_;
    }
    s = allocator_->AllocateBatch(size, count, out);
    if (s.ok() || s.code() != StatusCode::kOutOfMemory) break;
    MutexLock lock(&memory_wait_mu_);
    bool timed_out = false;
    while (memory_free_generation_ == generation && !timed_out) {
      timed_out = !memory_freed_.WaitUntil(&memory_wait_mu_, deadline) &&
                  std::chrono::steady_clock::now() >= deadline;
    }
    if (timed_out) break;
  }
  memory_waiters_.fetch_sub(1, std::memory_order_acq_rel);
  return s;
}

std::vector<L1Result> L1Manager::ReserveRead(std::span<const ObjectKey> keys, uint32_t read_locks,
                                             std::vector<ObjectView>* views) {
  const uint32_t n = ClampLocks(read_locks);
  const int64_t now = options_.clock->NowNanos();
  const int64_t expiry = now + options_.read_ttl.count();
  const uint32_t wanted = listener_events_.load(std::memory_order_acquire);
  EventKeys reserved(Wants(wanted, L1Listener::kReservedRead));
  std::vector<L1Result> results(keys.size(), L1Result::kKeyNotExist);
  if (views) views->assign(keys.size(), ObjectView{});
  for (size_t i = 0; i < keys.size(); ++i) {
    size_t hash = keys[i].Hash();
    Shard& shard = ShardFor(hash);
    MutexLock lock(&shard.mu);
    Resident* r = shard.FindResident(keys[i], hash);
    if (r == nullptr) continue;
    r->Lock(n, now, expiry);
    results[i] = L1Result::kSuccess;
    if (views) (*views)[i] = shard.View(*r);
    reserved.Add(keys[i]);
  }
  KVT_L1_NOTIFY(L1Listener::kReservedRead, OnL1KeysReservedRead, reserved.keys());
  return results;
}

std::vector<L1Result> L1Manager::UnsafeRead(std::span<const ObjectKey> keys,
                                            std::vector<ObjectView>* views) {
  const int64_t now = options_.clock->NowNanos();
  std::vector<L1Result> results(keys.size(), L1Result::kKeyNotExist);
  if (views) views->assign(keys.size(), ObjectView{});
  for (size_t i = 0; i < keys.size(); ++i) {
    size_t hash = keys[i].Hash();
    Shard& shard = ShardFor(hash);
    MutexLock lock(&shard.mu);
    Resident* r = shard.FindResident(keys[i], hash);
    if (r == nullptr) continue;
    if (!r->ReadLocked(now)) {
      results[i] = L1Result::kKeyNotReadable;
      continue;
    }
    results[i] = L1Result::kSuccess;
    if (views) (*views)[i] = shard.View(*r);
  }
  return results;
}

std::vector<L1Result> L1Manager::FinishRead(std::span<const ObjectKey> keys, uint32_t read_locks) {
  const uint32_t n = ClampLocks(read_locks);
  const int64_t now = options_.clock->NowNanos();
  const uint32_t wanted = listener_events_.load(std::memory_order_acquire);
  EventKeys finished(Wants(wanted, L1Listener::kReadFinished));
  EventKeys deleted(Wants(wanted, L1Listener::kDeleted));
  std::vector<memory::Allocation> freed;
  std::vector<L1Result> results(keys.size(), L1Result::kKeyNotExist);
  for (size_t i = 0; i < keys.size(); ++i) {
    size_t hash = keys[i].Hash();
    Shard& shard = ShardFor(hash);
    MutexLock lock(&shard.mu);
    Resident* r = shard.FindResident(keys[i], hash);
    if (r == nullptr) continue;
    if (!r->ReadLocked(now)) {
      results[i] = L1Result::kKeyInWrongState;
      continue;
    }
    r->read_locks = static_cast<uint16_t>(r->read_locks > n ? r->read_locks - n : 0);
    results[i] = L1Result::kSuccess;
    finished.Add(keys[i]);
    if (r->read_locks == 0 && r->temporary) {
      shard.EraseResident(keys[i], hash, &freed);
      if (!shard.Exists(keys[i], hash)) deleted.Add(keys[i]);
    }
  }
  ReleaseMemory(&freed);
  KVT_L1_NOTIFY(L1Listener::kReadFinished, OnL1KeysReadFinished, finished.keys());
  KVT_L1_NOTIFY(L1Listener::kDeleted, OnL1KeysDeleted, deleted.keys());
  return results;
}

std::vector<L1Result> L1Manager::ReserveWrite(std::span<const ObjectKey> keys, uint64_t object_size,
                                              bool temporary, WriterTag tag,
                                              std::vector<ObjectView>* views) {
  const int64_t now = options_.clock->NowNanos();
  const int64_t expiry = now + options_.write_ttl.count();
  const uint32_t wanted = listener_events_.load(std::memory_order_acquire);
  EventKeys reserved(Wants(wanted, L1Listener::kReservedWrite));
  EventKeys deleted(Wants(wanted, L1Listener::kDeleted));  // replaced buffers whose key left L1
  std::vector<memory::Allocation> freed;
  std::vector<L1Result> results(keys.size(), L1Result::kKeyNotWritable);
  if (views) views->assign(keys.size(), ObjectView{});
  if (object_size == 0 || object_size > allocator_->capacity() || object_size > kMaxObjectSize) {
    // Nothing of this size can ever fit; report it as memory pressure per key.
    std::fill(results.begin(), results.end(), L1Result::kOutOfMemory);
    return results;
  }

  // Pass 1: classify. Keys that need a new buffer are collected; expired staging of this tag
  // is handed over in place.
  std::vector<size_t> fresh;
  for (size_t i = 0; i < keys.size(); ++i) {
    size_t hash = keys[i].Hash();
    Shard& shard = ShardFor(hash);
    MutexLock lock(&shard.mu);
    if (shard.FindResident(keys[i], hash) != nullptr) continue;  // kKeyNotWritable
    if (Staging* s = shard.FindStaging(keys[i], hash, tag)) {
      if (s->Live(now)) continue;  // kKeyNotWritable
      if (s->mem.size() == object_size) {
        s->write_expiry = expiry;
        s->temporary = temporary;
        results[i] = L1Result::kSuccess;
        if (views) (*views)[i] = ObjectView{s->mem.data(), s->mem.size()};
        reserved.Add(keys[i]);
        continue;
      }
      freed.push_back(shard.TakeStaging(keys[i], hash, s).mem);  // wrong size: replace it
      if (!shard.Exists(keys[i], hash)) deleted.Add(keys[i]);
    }
    fresh.push_back(i);
  }
  ReleaseMemory(&freed);

  // Pass 2: one all-or-nothing allocation for the new buffers.
  std::vector<memory::Allocation> buffers;
  if (!fresh.empty()) {
    Status s = AllocateWithWait(object_size, fresh.size(), &buffers);
    if (!s.ok()) {
      for (size_t i : fresh) results[i] = L1Result::kOutOfMemory;
      fresh.clear();
    }
  }

  // Pass 3: publish the new staging buffers, re-checking for writers that raced us.
  for (size_t j = 0; j < fresh.size(); ++j) {
    size_t i = fresh[j];
    size_t hash = keys[i].Hash();
    Shard& shard = ShardFor(hash);
    MutexLock lock(&shard.mu);
    if (shard.FindResident(keys[i], hash) != nullptr) {
      freed.push_back(std::move(buffers[j]));
      continue;  // kKeyNotWritable
    }
    if (Staging* s = shard.FindStaging(keys[i], hash, tag)) {
      if (s->Live(now)) {
        freed.push_back(std::move(buffers[j]));
        continue;  // kKeyNotWritable: a racing writer with our tag (or a duplicate key)
      }
      freed.push_back(shard.TakeStaging(keys[i], hash, s).mem);
    }
    ObjectView view{buffers[j].data(), buffers[j].size()};
    shard.AddStaging(keys[i], Staging{tag, std::move(buffers[j]), expiry, temporary});
    results[i] = L1Result::kSuccess;
    if (views) (*views)[i] = view;
    reserved.Add(keys[i]);
  }
  ReleaseMemory(&freed);
  KVT_L1_NOTIFY(L1Listener::kDeleted, OnL1KeysDeleted, deleted.keys());
  KVT_L1_NOTIFY(L1Listener::kReservedWrite, OnL1KeysReservedWrite, reserved.keys());
  return results;
}

std::vector<L1Result> L1Manager::FinishWrite(std::span<const ObjectKey> keys, WriterTag tag) {
  return FinishWriteImpl(keys, tag, /*lock_for_read=*/false, 0, nullptr);
}

std::vector<L1Result> L1Manager::FinishWriteAndReserveRead(std::span<const ObjectKey> keys,
                                                           uint32_t read_locks, WriterTag tag,
                                                           std::vector<ObjectView>* views) {
  return FinishWriteImpl(keys, tag, /*lock_for_read=*/true, ClampLocks(read_locks), views);
}

std::vector<L1Result> L1Manager::FinishWriteImpl(std::span<const ObjectKey> keys, WriterTag tag,
                                                 bool lock_for_read, uint32_t read_locks,
                                                 std::vector<ObjectView>* views) {
  const uint32_t n = read_locks;
  const int64_t now = options_.clock->NowNanos();
  const int64_t read_expiry = now + options_.read_ttl.count();
  const uint32_t wanted = listener_events_.load(std::memory_order_acquire);
  EventKeys written(Wants(wanted, lock_for_read ? L1Listener::kWriteFinishedAndReadReserved
                                                : L1Listener::kWriteFinished));
  std::vector<memory::Allocation> freed;
  std::vector<L1Result> results(keys.size(), L1Result::kKeyNotExist);
  if (views) views->assign(keys.size(), ObjectView{});
  for (size_t i = 0; i < keys.size(); ++i) {
    size_t hash = keys[i].Hash();
    Shard& shard = ShardFor(hash);
    MutexLock lock(&shard.mu);
    Staging* s = shard.FindStaging(keys[i], hash, tag);
    if (s == nullptr) continue;  // kKeyNotExist
    if (!s->Live(now)) {
      results[i] = L1Result::kKeyInWrongState;  // left for reclaim by eviction
      continue;
    }
    Staging staging = shard.TakeStaging(keys[i], hash, s);
    Resident* r = shard.FindResident(keys[i], hash);
    bool admitted = false;
    if (r != nullptr) {
      freed.push_back(std::move(staging.mem));  // another writer won; same content by key
    } else {
      r = &shard.Admit(keys[i], std::move(staging));
      admitted = true;
    }
    if (lock_for_read) {
      r->Lock(n, now, read_expiry);
      if (views) (*views)[i] = shard.View(*r);
      written.Add(keys[i]);
    } else if (admitted && !r->temporary) {
      written.Add(keys[i]);
    }
    results[i] = L1Result::kSuccess;
  }
  ReleaseMemory(&freed);
  if (lock_for_read) {
    KVT_L1_NOTIFY(L1Listener::kWriteFinishedAndReadReserved, OnL1KeysWriteFinishedAndReadReserved,
                  written.keys());
  } else {
    KVT_L1_NOTIFY(L1Listener::kWriteFinished, OnL1KeysWriteFinished, written.keys());
  }
  return results;
}

std::vector<L1Result> L1Manager::FinishWriteAndDelete(std::span<const ObjectKey> keys,
                                                      WriterTag tag) {
  const uint32_t wanted = listener_events_.load(std::memory_order_acquire);
  EventKeys deleted(Wants(wanted, L1Listener::kDeleted));
  std::vector<memory::Allocation> freed;
  std::vector<L1Result> results(keys.size(), L1Result::kKeyNotExist);
  for (size_t i = 0; i < keys.size(); ++i) {
    size_t hash = keys[i].Hash();
    Shard& shard = ShardFor(hash);
    MutexLock lock(&shard.mu);
    Staging* s = shard.FindStaging(keys[i], hash, tag);
    if (s == nullptr) continue;
    freed.push_back(shard.TakeStaging(keys[i], hash, s).mem);
    results[i] = L1Result::kSuccess;
    if (!shard.Exists(keys[i], hash)) deleted.Add(keys[i]);
  }
  ReleaseMemory(&freed);
  KVT_L1_NOTIFY(L1Listener::kDeleted, OnL1KeysDeleted, deleted.keys());
  return results;
}

std::vector<L1Result> L1Manager::Delete(std::span<const ObjectKey> keys, bool force) {
  const int64_t now = options_.clock->NowNanos();
  const uint32_t wanted = listener_events_.load(std::memory_order_acquire);
  EventKeys deleted(Wants(wanted, L1Listener::kDeleted));
  std::vector<memory::Allocation> freed;
  std::vector<L1Result> results(keys.size(), L1Result::kKeyNotExist);
  for (size_t i = 0; i < keys.size(); ++i) {
    size_t hash = keys[i].Hash();
    Shard& shard = ShardFor(hash);
    MutexLock lock(&shard.mu);
    if (!shard.Exists(keys[i], hash)) continue;
    shard.ReclaimStaging(keys[i], hash, now, /*all=*/force, &freed);
    bool freed_resident = false;
    if (Resident* r = shard.FindResident(keys[i], hash)) {
      if (!force && r->ReadLocked(now)) {
        results[i] = L1Result::kKeyIsLocked;
        continue;
      }
      shard.EraseResident(keys[i], hash, &freed);
      freed_resident = true;
    }
    // Only a live staging buffer is left when nothing was freed: a writer holds the key.
    bool still_staged = shard.FindStagingList(keys[i], hash) != nullptr;
    results[i] = freed_resident || !still_staged ? L1Result::kSuccess : L1Result::kKeyIsLocked;
    if (!still_staged) deleted.Add(keys[i]);
  }
  ReleaseMemory(&freed);
  KVT_L1_NOTIFY(L1Listener::kDeleted, OnL1KeysDeleted, deleted.keys());
  return results;
}

uint64_t L1Manager::Clear(bool force) {
  const int64_t now = options_.clock->NowNanos();
  const uint32_t wanted = listener_events_.load(std::memory_order_acquire);
  EventKeys deleted(Wants(wanted, L1Listener::kDeleted));
  uint64_t count = 0;
  for (uint32_t si = 0; si < options_.num_shards; ++si) {
    Shard& shard = shards_[si];
    std::vector<memory::Allocation> freed;
    {
      MutexLock lock(&shard.mu);
      std::vector<ObjectKey> candidates;
      candidates.reserve(shard.resident.size() + shard.staging.size());
      for (const auto& [key, r] : shard.resident) candidates.push_back(key);
      for (const auto& [key, list] : shard.staging) {
        if (!shard.resident.contains(key)) candidates.push_back(key);
      }
      for (const ObjectKey& key : candidates) {
        size_t hash = key.Hash();
        shard.ReclaimStaging(key, hash, now, force, &freed);
        Resident* r = shard.FindResident(key, hash);
        if (r != nullptr && (force || !r->ReadLocked(now))) shard.EraseResident(key, hash, &freed);
        if (!shard.Exists(key, hash)) {
          ++count;
          deleted.Add(key);
        }
      }
    }
    ReleaseMemory(&freed);
  }
  KVT_L1_NOTIFY(L1Listener::kDeleted, OnL1KeysDeleted, deleted.keys());
  return count;
}

void L1Manager::TouchKeys(std::span<const ObjectKey> keys) {
  KVT_L1_NOTIFY(L1Listener::kAccessed, OnL1KeysAccessed, keys);
}

bool L1Manager::IsKeyEvictable(const ObjectKey& key) const {
  const int64_t now = options_.clock->NowNanos();
  size_t hash = key.Hash();
  Shard& shard = ShardFor(hash);
  MutexLock lock(&shard.mu);
  Resident* r = shard.FindResident(key, hash);
  return (r != nullptr && !r->ReadLocked(now)) || shard.HasExpiredStaging(key, hash, now);
}

bool L1Manager::Contains(const ObjectKey& key) const {
  size_t hash = key.Hash();
  Shard& shard = ShardFor(hash);
  MutexLock lock(&shard.mu);
  return shard.FindResident(key, hash) != nullptr;
}

bool L1Manager::Exists(const ObjectKey& key) const {
  size_t hash = key.Hash();
  Shard& shard = ShardFor(hash);
  MutexLock lock(&shard.mu);
  return shard.Exists(key, hash);
}

L1Status L1Manager::GetStatus() const {
  const int64_t now = options_.clock->NowNanos();
  L1Status st;
  for (uint32_t si = 0; si < options_.num_shards; ++si) {
    Shard& shard = shards_[si];
    MutexLock lock(&shard.mu);
    st.resident_objects += shard.resident.size();
    st.temporary_objects += shard.temporary_objects;
    st.resident_bytes += shard.resident_bytes;
    st.staging_objects += shard.staging_objects;
    st.staging_bytes += shard.staging_bytes;
    for (const auto& [key, r] : shard.resident) st.read_locked_objects += r.ReadLocked(now) ? 1 : 0;
    for (const auto& [key, list] : shard.staging) {
      for (const Staging& s : list) st.live_staging_objects += s.Live(now) ? 1 : 0;
    }
  }
  memory::AllocatorStats a = allocator_->Stats();
  st.used_bytes = a.used_bytes;
  st.capacity_bytes = a.capacity_bytes;
  st.usage_ratio = a.capacity_bytes
                       ? static_cast<double>(a.used_bytes) / static_cast<double>(a.capacity_bytes)
                       : 0;
  st.allocation_failures = a.failed_allocations;
  st.healthy = allocator_->CheckConsistency().ok();
  st.read_ttl = options_.read_ttl;
  st.write_ttl = options_.write_ttl;
  st.cuda_registered = pool_->cuda_registered();
  return st;
}

#undef KVT_L1_NOTIFY

}  // namespace kvtier::l1
