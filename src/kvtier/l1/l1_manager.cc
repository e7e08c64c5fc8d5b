#include "kvtier/l1/l1_manager.h"

#include <algorithm>
#include <bit>

#include <absl/container/flat_hash_map.h>
#include <fmt/format.h>

#include "kvtier/common/check.h"
#include "kvtier/common/logging.h"
#include "kvtier/common/units.h"

namespace kvtier::l1 {
namespace {

struct Staging {
  WriterTag tag = kDefaultWriter;
  memory::Allocation mem;
  int64_t write_expiry = 0;  // clock nanos
  bool temporary = false;

  bool Live(int64_t now) const { return now < write_expiry; }
};

// One key's state: an optional resident object plus the staging buffers of its writers.
struct Slot {
  memory::Allocation mem;   // the resident object; empty when the key is only being staged
  int64_t read_expiry = 0;  // clock nanos
  uint32_t read_locks = 0;
  bool temporary = false;
  std::unique_ptr<std::vector<Staging>> staging;  // null when nobody is writing

  bool resident() const { return static_cast<bool>(mem); }
  bool ReadLocked(int64_t now) const { return read_locks > 0 && now < read_expiry; }
  bool HasStaging() const { return staging != nullptr && !staging->empty(); }
  bool Empty() const { return !resident() && !HasStaging(); }

  Staging* FindStaging(WriterTag tag) {
    if (!staging) return nullptr;
    for (Staging& s : *staging) {
      if (s.tag == tag) return &s;
    }
    return nullptr;
  }
  bool HasLiveStaging(int64_t now) const {
    if (!staging) return false;
    return std::any_of(staging->begin(), staging->end(),
                       [now](const Staging& s) { return s.Live(now); });
  }
  bool HasExpiredStaging(int64_t now) const {
    if (!staging) return false;
    return std::any_of(staging->begin(), staging->end(),
                       [now](const Staging& s) { return !s.Live(now); });
  }
  ObjectView View() const { return ObjectView{mem.data(), mem.size()}; }
};

uint32_t ClampLocks(uint32_t n) { return std::clamp<uint32_t>(n, 1, kMaxReadLocksPerCall); }

// Keys reported to listeners at the end of one call.
class EventKeys {
 public:
  explicit EventKeys(bool wanted) : wanted_(wanted) {}
  void Add(const ObjectKey& key) {
    if (wanted_) keys_.push_back(key);
  }
  std::span<const ObjectKey> keys() const { return keys_; }
  bool empty() const { return keys_.empty(); }

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

// A shard of the object table. Every state change of a slot goes through these methods so the
// counters stay exact.
struct alignas(64) L1Manager::Shard {
  mutable Mutex mu;
  absl::flat_hash_map<ObjectKey, Slot, keys::ObjectKeyHash> slots KVT_GUARDED_BY(mu);
  uint64_t resident_objects KVT_GUARDED_BY(mu) = 0;
  uint64_t temporary_objects KVT_GUARDED_BY(mu) = 0;
  uint64_t resident_bytes KVT_GUARDED_BY(mu) = 0;
  uint64_t staging_objects KVT_GUARDED_BY(mu) = 0;
  uint64_t staging_bytes KVT_GUARDED_BY(mu) = 0;

  Slot* Find(const ObjectKey& key, size_t hash) KVT_REQUIRES(mu) {
    auto it = slots.find(key, hash);
    return it == slots.end() ? nullptr : &it->second;
  }

  // Moves the resident object out into `freed`.
  void FreeResident(Slot& slot, std::vector<memory::Allocation>* freed) KVT_REQUIRES(mu) {
    KVT_DCHECK(slot.resident());
    --resident_objects;
    if (slot.temporary) --temporary_objects;
    resident_bytes -= slot.mem.size();
    freed->push_back(std::move(slot.mem));
    slot.read_locks = 0;
    slot.read_expiry = 0;
    slot.temporary = false;
  }

  void Admit(Slot& slot, Staging&& staging) KVT_REQUIRES(mu) {
    KVT_DCHECK(!slot.resident());
    slot.mem = std::move(staging.mem);
    slot.temporary = staging.temporary;
    slot.read_locks = 0;
    slot.read_expiry = 0;
    ++resident_objects;
    if (slot.temporary) ++temporary_objects;
    resident_bytes += slot.mem.size();
  }

  void AddStaging(Slot& slot, Staging staging) KVT_REQUIRES(mu) {
    if (!slot.staging) slot.staging = std::make_unique<std::vector<Staging>>();
    ++staging_objects;
    staging_bytes += staging.mem.size();
    slot.staging->push_back(std::move(staging));
  }

  // Removes the staging entry `s` (which points into slot.staging) and returns it.
  Staging TakeStaging(Slot& slot, Staging* s) KVT_REQUIRES(mu) {
    --staging_objects;
    staging_bytes -= s->mem.size();
    Staging out = std::move(*s);
    auto& v = *slot.staging;
    size_t i = static_cast<size_t>(s - v.data());
    v[i] = std::move(v.back());
    v.pop_back();
    if (v.empty()) slot.staging.reset();
    return out;
  }

  // Frees staging entries whose write lock expired (all of them when `all`).
  void ReclaimStaging(Slot& slot, int64_t now, bool all, std::vector<memory::Allocation>* freed)
      KVT_REQUIRES(mu) {
    if (!slot.staging) return;
    auto& v = *slot.staging;
    for (size_t i = 0; i < v.size();) {
      if (all || !v[i].Live(now)) {
        freed->push_back(TakeStaging(slot, &v[i]).mem);
        if (!slot.staging) return;
      } else {
        ++i;
      }
    }
  }

  // Drops the slot when nothing is left in it. Returns true when the key left L1.
  bool EraseIfEmpty(const ObjectKey& key, size_t hash) KVT_REQUIRES(mu) {
    auto it = slots.find(key, hash);
    if (it == slots.end() || !it->second.Empty()) return false;
    slots.erase(it);
    return true;
  }
};

L1Manager::L1Manager(const L1Options& options) : options_(options) {}

L1Manager::~L1Manager() {
  if (!shards_) return;  // Create failed before the table existed
  // Free every object before the allocator goes away.
  for (uint32_t i = 0; i < options_.num_shards; ++i) {
    Shard& s = shards_[i];
    MutexLock lock(&s.mu);
    s.slots.clear();
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
  allocations->clear();  // frees
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
    Slot* slot = shard.Find(keys[i], hash);
    if (slot == nullptr || !slot->resident()) continue;
    slot->read_locks = slot->ReadLocked(now) ? slot->read_locks + n : n;
    slot->read_expiry = expiry;
    results[i] = L1Result::kSuccess;
    if (views) (*views)[i] = slot->View();
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
    Slot* slot = shard.Find(keys[i], hash);
    if (slot == nullptr || !slot->resident()) continue;
    if (!slot->ReadLocked(now)) {
      results[i] = L1Result::kKeyNotReadable;
      continue;
    }
    results[i] = L1Result::kSuccess;
    if (views) (*views)[i] = slot->View();
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
    Slot* slot = shard.Find(keys[i], hash);
    if (slot == nullptr || !slot->resident()) continue;
    if (!slot->ReadLocked(now)) {
      results[i] = L1Result::kKeyInWrongState;
      continue;
    }
    slot->read_locks = slot->read_locks > n ? slot->read_locks - n : 0;
    results[i] = L1Result::kSuccess;
    finished.Add(keys[i]);
    if (slot->read_locks == 0 && slot->temporary) {
      shard.FreeResident(*slot, &freed);
      if (shard.EraseIfEmpty(keys[i], hash)) deleted.Add(keys[i]);
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
  if (object_size == 0 || object_size > allocator_->capacity()) {
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
    Slot* slot = shard.Find(keys[i], hash);
    if (slot != nullptr) {
      if (slot->resident()) continue;  // kKeyNotWritable
      if (Staging* s = slot->FindStaging(tag)) {
        if (s->Live(now)) continue;  // kKeyNotWritable
        if (s->mem.size() == object_size) {
          s->write_expiry = expiry;
          s->temporary = temporary;
          results[i] = L1Result::kSuccess;
          if (views) (*views)[i] = ObjectView{s->mem.data(), s->mem.size()};
          reserved.Add(keys[i]);
          continue;
        }
        freed.push_back(shard.TakeStaging(*slot, s).mem);  // wrong size: replace it
        if (shard.EraseIfEmpty(keys[i], hash)) deleted.Add(keys[i]);
      }
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
    Slot& slot = shard.slots[keys[i]];
    if (slot.resident()) {
      freed.push_back(std::move(buffers[j]));
      continue;  // kKeyNotWritable
    }
    if (Staging* s = slot.FindStaging(tag)) {
      if (s->Live(now)) {
        freed.push_back(std::move(buffers[j]));
        continue;  // kKeyNotWritable: a racing writer with our tag (or a duplicate key)
      }
      freed.push_back(shard.TakeStaging(slot, s).mem);
    }
    ObjectView view{buffers[j].data(), buffers[j].size()};
    shard.AddStaging(slot, Staging{tag, std::move(buffers[j]), expiry, temporary});
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
                                                 bool lock_for_read, uint32_t n,
                                                 std::vector<ObjectView>* views) {
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
    Slot* slot = shard.Find(keys[i], hash);
    Staging* s = slot ? slot->FindStaging(tag) : nullptr;
    if (s == nullptr) continue;  // kKeyNotExist
    if (!s->Live(now)) {
      results[i] = L1Result::kKeyInWrongState;  // left for reclaim by eviction
      continue;
    }
    Staging staging = shard.TakeStaging(*slot, s);
    bool admitted = false;
    if (slot->resident()) {
      freed.push_back(std::move(staging.mem));  // another writer won; same content by key
    } else {
      shard.Admit(*slot, std::move(staging));
      admitted = true;
    }
    if (lock_for_read) {
      slot->read_locks = slot->ReadLocked(now) ? slot->read_locks + n : n;
      slot->read_expiry = read_expiry;
      if (views) (*views)[i] = slot->View();
      written.Add(keys[i]);
    } else if (admitted && !slot->temporary) {
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
    Slot* slot = shard.Find(keys[i], hash);
    Staging* s = slot ? slot->FindStaging(tag) : nullptr;
    if (s == nullptr) continue;
    freed.push_back(shard.TakeStaging(*slot, s).mem);
    results[i] = L1Result::kSuccess;
    if (shard.EraseIfEmpty(keys[i], hash)) deleted.Add(keys[i]);
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
    Slot* slot = shard.Find(keys[i], hash);
    if (slot == nullptr) continue;
    shard.ReclaimStaging(*slot, now, /*all=*/force, &freed);
    bool freed_resident = false;
    if (slot->resident()) {
      if (!force && slot->ReadLocked(now)) {
        results[i] = L1Result::kKeyIsLocked;
        continue;
      }
      shard.FreeResident(*slot, &freed);
      freed_resident = true;
    }
    // Only a live staging buffer is left when nothing was freed: a writer holds the key.
    results[i] =
        freed_resident || !slot->HasStaging() ? L1Result::kSuccess : L1Result::kKeyIsLocked;
    if (shard.EraseIfEmpty(keys[i], hash)) deleted.Add(keys[i]);
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
      for (auto it = shard.slots.begin(); it != shard.slots.end();) {
        Slot& slot = it->second;
        shard.ReclaimStaging(slot, now, force, &freed);
        if (slot.resident() && (force || !slot.ReadLocked(now))) shard.FreeResident(slot, &freed);
        if (slot.Empty()) {
          ++count;
          deleted.Add(it->first);
          shard.slots.erase(it++);
        } else {
          ++it;
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
  Slot* slot = shard.Find(key, hash);
  if (slot == nullptr) return false;
  return (slot->resident() && !slot->ReadLocked(now)) || slot->HasExpiredStaging(now);
}

bool L1Manager::Contains(const ObjectKey& key) const {
  size_t hash = key.Hash();
  Shard& shard = ShardFor(hash);
  MutexLock lock(&shard.mu);
  Slot* slot = shard.Find(key, hash);
  return slot != nullptr && slot->resident();
}

bool L1Manager::Exists(const ObjectKey& key) const {
  size_t hash = key.Hash();
  Shard& shard = ShardFor(hash);
  MutexLock lock(&shard.mu);
  return shard.Find(key, hash) != nullptr;
}

L1Status L1Manager::GetStatus() const {
  const int64_t now = options_.clock->NowNanos();
  L1Status st;
  for (uint32_t si = 0; si < options_.num_shards; ++si) {
    Shard& shard = shards_[si];
    MutexLock lock(&shard.mu);
    st.resident_objects += shard.resident_objects;
    st.temporary_objects += shard.temporary_objects;
    st.resident_bytes += shard.resident_bytes;
    st.staging_objects += shard.staging_objects;
    st.staging_bytes += shard.staging_bytes;
    for (const auto& [key, slot] : shard.slots) {
      if (slot.resident() && slot.ReadLocked(now)) ++st.read_locked_objects;
      if (slot.staging) {
        for (const Staging& s : *slot.staging) st.live_staging_objects += s.Live(now) ? 1 : 0;
      }
    }
  }
  memory::AllocatorStats a = allocator_->Stats();
  st.used_bytes = a.used_bytes;
  st.capacity_bytes = a.capacity_bytes;
  st.usage_ratio = a.capacity_bytes ? static_cast<double>(a.used_bytes) / a.capacity_bytes : 0;
  st.allocation_failures = a.failed_allocations;
  st.healthy = allocator_->CheckConsistency().ok();
  st.read_ttl = options_.read_ttl;
  st.write_ttl = options_.write_ttl;
  st.cuda_registered = pool_->cuda_registered();
  return st;
}

#undef KVT_L1_NOTIFY

}  // namespace kvtier::l1
