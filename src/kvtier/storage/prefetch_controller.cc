#include "kvtier/storage/prefetch_controller.h"

#include <algorithm>
#include <cstring>
#include <exception>

#include <fmt/format.h>
#include <nlohmann/json.hpp>
#include <poll.h>
#include <unistd.h>

#include "kvtier/common/logging.h"

namespace kvtier::storage {

using keys::Bitmap;
using keys::ObjectKey;
using l1::L1Result;

namespace {

// "PREFETCH": the writer tag of prefetch staging buffers, distinct from the store path's.
constexpr l1::WriterTag kPrefetchTag = 0x4843544546455250ULL;

void DrainFd(int fd) {
  uint64_t v;
  while (::read(fd, &v, sizeof(v)) < 0 && errno == EINTR) {
  }
}

// A result bitmap of the request's size: a missing or malformed one (an adapter closed under
// the request answers with an empty bitmap) counts as all-zero.
Bitmap Sized(std::optional<Bitmap> b, size_t n) {
  if (!b || b->size() != n) return Bitmap(n);
  return std::move(*b);
}

}  // namespace

Result<std::unique_ptr<PrefetchController>> PrefetchController::Create(
    l1::L1Manager* l1, std::vector<l2::L2Adapter*> adapters,
    const PrefetchControllerOptions& options) {
  if (l1 == nullptr) return MakeError(Status::InvalidArgument("prefetch controller needs an L1"));
  if (options.max_in_flight == 0 || options.poll_interval <= Duration::zero()) {
    return MakeError(Status::InvalidArgument(
        "prefetch controller: max_in_flight and poll_interval must be > 0"));
  }
  KVT_ASSIGN_OR_RETURN(sync::EventFd wake, sync::EventFd::Create());
  KVT_ASSIGN_OR_RETURN(sync::EventFd stop, sync::EventFd::Create());
  return std::unique_ptr<PrefetchController>(new PrefetchController(
      l1, std::move(adapters), options, std::move(wake), std::move(stop), kPrefetchTag));
}

PrefetchController::PrefetchController(l1::L1Manager* l1, std::vector<l2::L2Adapter*> adapters,
                                       const PrefetchControllerOptions& options, sync::EventFd wake,
                                       sync::EventFd stop, l1::WriterTag tag)
    : l1_(l1),
      adapters_(std::move(adapters)),
      options_(options),
      tag_(tag),
      wake_(std::move(wake)),
      stop_fd_(std::move(stop)) {}

PrefetchController::~PrefetchController() {
  Stop();
  ReleaseAfterAdaptersClosed();
}

Status PrefetchController::Start() {
  MutexLock lock(&thread_mu_);
  if (thread_.joinable()) return Status::FailedPrecondition("prefetch controller already started");
  stop_.store(false);
  stop_fd_.Drain();
  thread_ = std::thread([this] { Loop(); });
  KVT_LOG_INFO("L2 prefetch controller: {} adapters, at most {} requests in flight",
               adapters_.size(), options_.max_in_flight);
  return Status::OK();
}

void PrefetchController::Stop() {
  {
    MutexLock lock(&thread_mu_);
    if (thread_.joinable()) {
      stop_.store(true);
      stop_fd_.Signal();
      thread_.join();
    }
  }
  // Everything still pending ends now, with whatever it has.
  {
    MutexLock lock(&mu_);
    while (!submitted_.empty()) {
      waiting_.push_back(std::move(submitted_.front()));
      submitted_.pop_front();
    }
  }
  for (Request& r : waiting_) Publish(r, Bitmap(r.spec.keys.size()));
  waiting_.clear();
  for (auto& r : active_) Abandon(*r);
  active_.clear();
  counters_.in_flight.store(0);
  counters_.queued.store(0);
}

void PrefetchController::ReleaseAfterAdaptersClosed() {
  PollStuck();
  // An adapter that never answered: abort what it held (its buffers are no longer used once
  // the adapter is closed).
  for (StuckTask& s : stuck_) {
    if (s.kind == StuckTask::Kind::kLoad) l1_->FinishWriteAndDelete(s.keys, tag_);
  }
  stuck_.clear();
  counters_.stuck.store(0);
}

PrefetchId PrefetchController::Submit(PrefetchRequest request) {
  PrefetchId id;
  {
    MutexLock lock(&mu_);
    id = next_id_++;
    ++requests_;
    keys_requested_ += request.keys.size();
    Request r;
    r.id = id;
    r.deadline =
        request.timeout > Duration::zero() ? DeadlineFrom(request.timeout) : TimePoint::max();
    const bool trivial = request.keys.empty() || request.object_size == 0;
    r.spec = std::move(request);
    if (trivial) {
      results_.emplace(id, Bitmap(r.spec.keys.size()));
      lookup_hits_.emplace(id, 0);
      done_cv_.NotifyAll();
      return id;
    }
    pending_.insert(id);
    submitted_.push_back(std::move(r));
  }
  wake_.Signal();
  return id;
}

std::optional<Bitmap> PrefetchController::QueryResult(PrefetchId id) {
  MutexLock lock(&mu_);
  auto it = results_.find(id);
  if (it == results_.end()) return std::nullopt;
  Bitmap b = std::move(it->second);
  results_.erase(it);
  lookup_hits_.erase(id);
  return b;
}

bool PrefetchController::Wait(PrefetchId id, Timeout timeout) {
  TimePoint deadline = DeadlineFrom(timeout);
  MutexLock lock(&mu_);
  while (!results_.contains(id)) {
    if (!pending_.contains(id)) return false;  // unknown or consumed: it will never finish
    if (!done_cv_.WaitUntil(&mu_, deadline) && std::chrono::steady_clock::now() >= deadline) {
      return results_.contains(id);
    }
  }
  return true;
}

std::optional<size_t> PrefetchController::QueryLookupHits(PrefetchId id) {
  MutexLock lock(&mu_);
  auto it = lookup_hits_.find(id);
  if (it == lookup_hits_.end()) return std::nullopt;
  return it->second;
}

void PrefetchController::Loop() {
  std::vector<pollfd> fds;
  fds.push_back({stop_fd_.fd(), POLLIN, 0});
  fds.push_back({wake_.fd(), POLLIN, 0});
  for (l2::L2Adapter* a : adapters_) {
    fds.push_back({a->lookup_event_fd(), POLLIN, 0});
    fds.push_back({a->load_event_fd(), POLLIN, 0});
  }
  while (!stop_.load(std::memory_order_acquire)) {
    // Wake for the nearest request deadline, or the poll interval.
    TimePoint next = std::chrono::steady_clock::now() + options_.poll_interval;
    for (const auto& r : active_) next = std::min(next, r->deadline);
    auto wait = std::chrono::duration_cast<std::chrono::milliseconds>(
        next - std::chrono::steady_clock::now());
    int timeout_ms = static_cast<int>(std::clamp<int64_t>(wait.count() + 1, 0, INT32_MAX));
    if (::poll(fds.data(), fds.size(), timeout_ms) < 0 && errno != EINTR) {
      KVT_LOG_ERROR("prefetch controller: poll failed: {}", std::strerror(errno));
      counters_.loop_errors.fetch_add(1);
    }
    if (stop_.load(std::memory_order_acquire)) break;
    for (size_t i = 1; i < fds.size(); ++i) {
      if (fds[i].revents & POLLIN) DrainFd(fds[i].fd);
    }
    Step();
  }
}

void PrefetchController::RunOnce() {
  wake_.Drain();
  for (l2::L2Adapter* a : adapters_) {
    DrainFd(a->lookup_event_fd());
    DrainFd(a->load_event_fd());
  }
  Step();
}

void PrefetchController::Step() {
  try {
    {
      MutexLock lock(&mu_);
      while (!submitted_.empty()) {
        waiting_.push_back(std::move(submitted_.front()));
        submitted_.pop_front();
      }
    }
    Admit();
    for (size_t i = 0; i < active_.size();) {
      Advance(*active_[i]);
      if (active_[i]->phase == Phase::kDone) {
        active_[i] = std::move(active_.back());
        active_.pop_back();
        Admit();
      } else {
        ++i;
      }
    }
    PollStuck();
  } catch (const std::exception& e) {
    counters_.loop_errors.fetch_add(1);
    KVT_LOG_ERROR("prefetch controller: unexpected error, continuing: {}", e.what());
  } catch (...) {
    counters_.loop_errors.fetch_add(1);
    KVT_LOG_ERROR("prefetch controller: unexpected error, continuing");
  }
  counters_.in_flight.store(active_.size());
  counters_.queued.store(waiting_.size());
}

void PrefetchController::Admit() {
  while (active_.size() < options_.max_in_flight && !waiting_.empty()) {
    auto r = std::make_unique<Request>(std::move(waiting_.front()));
    waiting_.pop_front();
    if (std::chrono::steady_clock::now() >= r->deadline) {
      counters_.timed_out.fetch_add(1);
      Publish(*r, Bitmap(r->spec.keys.size()));  // expired while queued
      continue;
    }
    StartLookup(*r);
    if (r->phase != Phase::kDone) active_.push_back(std::move(r));
  }
}

void PrefetchController::Advance(Request& r) {
  if (std::chrono::steady_clock::now() >= r.deadline) {
    Abandon(r);
    return;
  }
  if (r.phase == Phase::kLookup && CollectLookups(r)) PlanAndLoad(r);
  if (r.phase == Phase::kLoad && CollectLoads(r)) Finish(r, /*timed_out=*/false);
}

void PrefetchController::StartLookup(Request& r) {
  const size_t n = r.spec.keys.size();
  r.loaded = Bitmap(n);
  if (adapters_.empty()) {
    {
      MutexLock lock(&mu_);
      lookup_hits_[r.id] = 0;
    }
    Publish(r, Bitmap(n));
    return;
  }
  r.lookups.assign(adapters_.size(), std::nullopt);
  r.lookup_tasks.resize(adapters_.size());
  for (size_t a = 0; a < adapters_.size(); ++a) {
    r.lookup_tasks[a] = adapters_[a]->SubmitLookupAndLock(r.spec.keys);
  }
  r.phase = Phase::kLookup;
}

bool PrefetchController::CollectLookups(Request& r) {
  bool all = true;
  for (size_t a = 0; a < adapters_.size(); ++a) {
    if (r.lookups[a]) continue;
    if (auto b = adapters_[a]->QueryLookupAndLockResult(r.lookup_tasks[a])) {
      r.lookups[a] = Sized(std::move(b), r.spec.keys.size());
    } else {
      all = false;
    }
  }
  return all;
}

void PrefetchController::PlanAndLoad(Request& r) {
  const auto& keys = r.spec.keys;
  const size_t n = keys.size();
  // Default load plan: each key from the lowest-index adapter holding it.
  r.source.assign(n, -1);
  for (size_t i = 0; i < n; ++i) {
    for (size_t a = 0; a < adapters_.size(); ++a) {
      if (r.lookups[a]->Test(i)) {
        r.source[i] = static_cast<int>(a);
        break;
      }
    }
  }
  size_t prefix = 0;
  while (prefix < n && r.source[prefix] >= 0) ++prefix;
  {
    MutexLock lock(&mu_);
    lookup_hits_[r.id] = prefix;
  }
  counters_.keys_found.fetch_add(prefix);

  // Stage the prefix in L1 (temporary: freed when its last reader is done, never stored back).
  std::vector<l1::ObjectView> views;
  if (prefix > 0) {
    std::span<const ObjectKey> want(keys.data(), prefix);
    std::vector<L1Result> reserved =
        l1_->ReserveWrite(want, r.spec.object_size, /*temporary=*/true, tag_, &views);
    while (r.planned < prefix && reserved[r.planned] == L1Result::kSuccess) ++r.planned;
    counters_.keys_l1_oom.fetch_add(prefix - r.planned);
    // Reservations after the cut are useless: give them back.
    std::vector<ObjectKey> extra;
    for (size_t i = r.planned; i < prefix; ++i) {
      if (reserved[i] == L1Result::kSuccess) extra.push_back(keys[i]);
    }
    if (!extra.empty()) l1_->FinishWriteAndDelete(extra, tag_);
  }

  // Release the L2 locks of everything that will not be loaded from that adapter.
  for (size_t a = 0; a < adapters_.size(); ++a) {
    std::vector<ObjectKey> unlock;
    for (size_t i = 0; i < n; ++i) {
      if (r.lookups[a]->Test(i) && !(i < r.planned && r.source[i] == static_cast<int>(a))) {
        unlock.push_back(keys[i]);
      }
    }
    if (!unlock.empty()) adapters_[a]->SubmitUnlock(unlock);
  }
  if (r.planned == 0) {
    Finish(r, false);
    return;
  }
  for (size_t a = 0; a < adapters_.size(); ++a) {
    Task t{a, 0, {}};
    std::vector<ObjectKey> task_keys;
    std::vector<std::span<uint8_t>> buffers;
    for (size_t i = 0; i < r.planned; ++i) {
      if (r.source[i] != static_cast<int>(a)) continue;
      t.indices.push_back(i);
      task_keys.push_back(keys[i]);
      buffers.emplace_back(views[i].data, views[i].size);
    }
    if (t.indices.empty()) continue;
    t.id = adapters_[a]->SubmitLoad(task_keys, buffers);
    r.loads.push_back(std::move(t));
  }
  r.phase = Phase::kLoad;
}

bool PrefetchController::CollectLoads(Request& r) {
  for (size_t t = 0; t < r.loads.size();) {
    Task& task = r.loads[t];
    std::optional<Bitmap> b = adapters_[task.adapter]->QueryLoadResult(task.id);
    if (!b) {
      ++t;
      continue;
    }
    Bitmap ok = Sized(std::move(b), task.indices.size());
    for (size_t j = 0; j < task.indices.size(); ++j) {
      if (ok.Test(j)) r.loaded.Set(task.indices[j]);
    }
    r.loads[t] = std::move(r.loads.back());
    r.loads.pop_back();
  }
  return r.loads.empty();
}

void PrefetchController::Finish(Request& r, bool timed_out) {
  const auto& keys = r.spec.keys;
  const size_t n = keys.size();
  // Keys of loads still outstanding (stuck) are theirs to clean up.
  Bitmap stuck_keys(n);
  for (const Task& t : r.loads) {
    for (size_t i : t.indices) stuck_keys.Set(i);
  }
  // 1. L2 locks of the plan (except stuck loads, unlocked when they land).
  for (size_t a = 0; a < adapters_.size(); ++a) {
    std::vector<ObjectKey> unlock;
    for (size_t i = 0; i < r.planned; ++i) {
      if (r.source[i] == static_cast<int>(a) && !stuck_keys.Test(i)) unlock.push_back(keys[i]);
    }
    if (!unlock.empty()) adapters_[a]->SubmitUnlock(unlock);
  }
  // 2. L1: admit what loaded (read-locked for the caller), abort the rest.
  std::vector<ObjectKey> admit, abort;
  std::vector<size_t> admit_index;
  for (size_t i = 0; i < r.planned; ++i) {
    if (stuck_keys.Test(i)) continue;
    if (r.loaded.Test(i)) {
      admit.push_back(keys[i]);
      admit_index.push_back(i);
    } else {
      abort.push_back(keys[i]);
    }
  }
  Bitmap usable(n);
  if (!admit.empty()) {
    std::vector<L1Result> res = l1_->FinishWriteAndReserveRead(admit, r.spec.read_locks, tag_);
    for (size_t j = 0; j < admit.size(); ++j) {
      if (res[j] == L1Result::kSuccess) usable.Set(admit_index[j]);
    }
  }
  if (!abort.empty()) l1_->FinishWriteAndDelete(abort, tag_);
  counters_.keys_load_failed.fetch_add(abort.size());
  // 3. Only a prefix is useful: release what was admitted after the first gap.
  const size_t prefix = usable.CountLeadingOnes();
  std::vector<ObjectKey> release;
  for (size_t i = prefix; i < n; ++i) {
    if (usable.Test(i)) release.push_back(keys[i]);
  }
  if (!release.empty()) l1_->FinishRead(release, r.spec.read_locks);
  Bitmap result(n);
  for (size_t i = 0; i < prefix; ++i) result.Set(i);
  counters_.keys_loaded.fetch_add(prefix);
  if (timed_out) counters_.timed_out.fetch_add(1);
  Publish(r, std::move(result));
}

void PrefetchController::Abandon(Request& r) {
  if (r.phase == Phase::kDone) return;
  const size_t n = r.spec.keys.size();
  if (r.phase == Phase::kLookup) {
    // Collect what arrived; cancel the rest. A lookup that cannot be cancelled is watched: the
    // locks it takes when it lands are released then.
    CollectLookups(r);
    for (size_t a = 0; a < adapters_.size(); ++a) {
      if (r.lookups[a]) {
        std::vector<ObjectKey> unlock;
        for (size_t i = 0; i < n; ++i) {
          if (r.lookups[a]->Test(i)) unlock.push_back(r.spec.keys[i]);
        }
        if (!unlock.empty()) adapters_[a]->SubmitUnlock(unlock);
      } else if (!adapters_[a]->Cancel(r.lookup_tasks[a])) {
        stuck_.push_back(StuckTask{StuckTask::Kind::kLookup, a, r.lookup_tasks[a], r.spec.keys});
      }
    }
    counters_.timed_out.fetch_add(1);
    Publish(r, Bitmap(n));
    return;
  }
  if (r.phase == Phase::kLoad) {
    CollectLoads(r);
    for (size_t t = 0; t < r.loads.size();) {
      Task& task = r.loads[t];
      if (adapters_[task.adapter]->Cancel(task.id)) {
        // Never touched again: its keys count as failed below.
        r.loads[t] = std::move(r.loads.back());
        r.loads.pop_back();
      } else {
        ++t;
      }
    }
    // Stuck loads keep their staging buffers until they land.
    for (Task& task : r.loads) {
      std::vector<ObjectKey> ks;
      for (size_t i : task.indices) ks.push_back(r.spec.keys[i]);
      stuck_.push_back(StuckTask{StuckTask::Kind::kLoad, task.adapter, task.id, std::move(ks)});
    }
    Finish(r, /*timed_out=*/true);
    r.loads.clear();
  }
  counters_.stuck.store(stuck_.size());
}

void PrefetchController::PollStuck() {
  for (size_t s = 0; s < stuck_.size();) {
    StuckTask& st = stuck_[s];
    l2::L2Adapter* a = adapters_[st.adapter];
    bool landed = false;
    if (st.kind == StuckTask::Kind::kLookup) {
      if (auto b = a->QueryLookupAndLockResult(st.id)) {
        std::vector<ObjectKey> unlock;
        for (size_t i = 0; i < b->size() && i < st.keys.size(); ++i) {
          if (b->Test(i)) unlock.push_back(st.keys[i]);
        }
        if (!unlock.empty()) a->SubmitUnlock(unlock);
        landed = true;
      }
    } else if (a->QueryLoadResult(st.id)) {
      l1_->FinishWriteAndDelete(st.keys, tag_);
      a->SubmitUnlock(st.keys);
      landed = true;
    }
    if (landed) {
      stuck_[s] = std::move(stuck_.back());
      stuck_.pop_back();
    } else {
      ++s;
    }
  }
  counters_.stuck.store(stuck_.size());
}

void PrefetchController::Publish(Request& r, Bitmap result) {
  r.phase = Phase::kDone;
  counters_.completed.fetch_add(1);
  std::vector<std::function<void()>> watchers;
  {
    MutexLock lock(&mu_);
    pending_.erase(r.id);
    results_[r.id] = std::move(result);
    if (!lookup_hits_.contains(r.id)) lookup_hits_[r.id] = 0;
    if (auto it = watchers_.find(r.id); it != watchers_.end()) {
      watchers = std::move(it->second);
      watchers_.erase(it);
    }
    done_cv_.NotifyAll();
  }
  for (auto& fn : watchers) fn();
}

void PrefetchController::NotifyWhenDone(PrefetchId id, std::function<void()> fn) {
  {
    MutexLock lock(&mu_);
    if (pending_.contains(id)) {
      watchers_[id].push_back(std::move(fn));
      return;
    }
  }
  fn();
}

PrefetchControllerStats PrefetchController::stats() const {
  PrefetchControllerStats s;
  {
    MutexLock lock(&mu_);
    s.requests = requests_;
    s.keys_requested = keys_requested_;
  }
  s.completed = counters_.completed.load();
  s.timed_out = counters_.timed_out.load();
  s.keys_found = counters_.keys_found.load();
  s.keys_loaded = counters_.keys_loaded.load();
  s.keys_l1_oom = counters_.keys_l1_oom.load();
  s.keys_load_failed = counters_.keys_load_failed.load();
  s.loop_errors = counters_.loop_errors.load();
  s.in_flight = counters_.in_flight.load();
  s.queued = counters_.queued.load();
  s.stuck_tasks = counters_.stuck.load();
  {
    MutexLock lock(&thread_mu_);
    s.running = thread_.joinable();
  }
  return s;
}

nlohmann::json PrefetchController::StatusJson() const {
  PrefetchControllerStats s = stats();
  return {{"running", s.running},
          {"adapters", adapters_.size()},
          {"max_in_flight", options_.max_in_flight},
          {"requests", s.requests},
          {"completed", s.completed},
          {"timed_out", s.timed_out},
          {"queued", s.queued},
          {"in_flight", s.in_flight},
          {"stuck_tasks", s.stuck_tasks},
          {"keys_requested", s.keys_requested},
          {"keys_found", s.keys_found},
          {"keys_loaded", s.keys_loaded},
          {"keys_l1_oom", s.keys_l1_oom},
          {"keys_load_failed", s.keys_load_failed},
          {"loop_errors", s.loop_errors}};
}

}  // namespace kvtier::storage
