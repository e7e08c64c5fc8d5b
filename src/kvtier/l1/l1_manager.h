// L1Manager: the CPU-memory tier. Owns the host pool and the object table.
//
// Staging model (LMCache MP, newest design):
//  - A *resident* object is readable and immutable. Readers take TTL read locks on it.
//  - A *staging* object is being written. It is keyed by (key, writer tag), invisible to
//    readers, and holds a TTL write lock. Writers with different tags may stage the same key at
//    once; the first FinishWrite admits its buffer as the resident object, later ones are
//    discarded (with success: the key is resident either way).
//  - Locks self-heal: a read lock expires read_ttl after it was last taken, a write lock
//    write_ttl after it was reserved, so a crashed client never pins memory forever. A reader
//    must finish within read_ttl: after that the object may be evicted under it.
//  - A *temporary* object (an L2 prefetch buffer) is freed when its last read lock drops and is
//    never announced as written (so it is never stored back to L2).
//
// Every multi-key call returns one L1Result per key, in order. Each key is handled atomically;
// a call is not atomic across keys (keys in different shards are handled one shard at a time).
//
// Concurrency: the table is split into shards by key hash, each with its own mutex, so lookups
// on different keys do not contend. No lock is held across a copy or any I/O: callers copy
// through the ObjectView they get, while they hold the object's read or write lock.
//
// Lock order: Shard::mu -> Allocator's lock. Listener callbacks run after the call's table work,
// with no L1 lock held.
#pragma once

#include <array>
#include <atomic>
#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "kvtier/common/clock.h"
#include "kvtier/common/mutex.h"
#include "kvtier/common/result.h"
#include "kvtier/keys/object_key.h"
#include "kvtier/memory/allocator.h"
#include "kvtier/memory/host_pool.h"

namespace kvtier::l1 {

using keys::ObjectKey;

// Per-key outcome. Stable values.
enum class L1Result : uint8_t {
  kSuccess = 0,
  kKeyNotExist = 1,
  kKeyNotReadable = 2,
  kKeyNotWritable = 3,
  kKeyInWrongState = 4,
  kKeyIsLocked = 5,
  kOutOfMemory = 6,
};
std::string_view L1ResultName(L1Result result);

// Identifies one writer of a key (e.g. the store path vs. an L2 prefetch).
using WriterTag = uint64_t;
inline constexpr WriterTag kDefaultWriter = 0;

// Read locks per call are clamped to [1, kMaxReadLocksPerCall].
inline constexpr uint32_t kMaxReadLocksPerCall = 128;
// The largest object L1 stores (one chunk of KV is tens of MiB at most).
inline constexpr uint64_t kMaxObjectSize = (1ULL << 32) - 1;

// Bytes of one object in the pool. Valid while the caller holds the lock it got it with.
struct ObjectView {
  uint8_t* data = nullptr;
  uint64_t size = 0;
};

// Observers of L1 events (eviction policy bridge, store controller, stats). Each L1 call
// reports each kind of event at most once, after its table work, with the affected keys in
// request order (so a policy sees one request's chunks as one batch). Callbacks run on the
// caller's thread with no L1 lock held; they must be quick and must not block (enqueue and
// signal). Events of concurrent calls on the same key can arrive in either order: a listener
// that mirrors L1's contents must confirm a deletion with L1 (Contains / Exists) before acting.
class L1Listener {
 public:
  enum Event : uint32_t {
    kReservedRead = 1u << 0,
    kReadFinished = 1u << 1,
    kReservedWrite = 1u << 2,
    kWriteFinished = 1u << 3,  // non-temporary objects became resident (triggers L2 store)
    kWriteFinishedAndReadReserved = 1u << 4,
    kDeleted = 1u << 5,   // keys that left L1 entirely (no resident, no staging)
    kAccessed = 1u << 6,  // explicit touch (end of a session)
    kAllocationFailed = 1u << 7,
  };

  virtual ~L1Listener() = default;
  // The events this listener wants; the manager skips building key lists nobody wants.
  virtual uint32_t events() const = 0;

  virtual void OnL1KeysReservedRead(std::span<const ObjectKey> keys) {}
  virtual void OnL1KeysReadFinished(std::span<const ObjectKey> keys) {}
  virtual void OnL1KeysReservedWrite(std::span<const ObjectKey> keys) {}
  virtual void OnL1KeysWriteFinished(std::span<const ObjectKey> keys) {}
  virtual void OnL1KeysWriteFinishedAndReadReserved(std::span<const ObjectKey> keys) {}
  virtual void OnL1KeysDeleted(std::span<const ObjectKey> keys) {}
  virtual void OnL1KeysAccessed(std::span<const ObjectKey> keys) {}
  // A ReserveWrite could not allocate `bytes`. Wake whoever frees memory.
  virtual void OnL1AllocationFailed(uint64_t bytes) {}
};

struct L1Options {
  uint64_t capacity_bytes = 0;  // > 0
  uint64_t alignment = 4096;    // power of two
  bool use_hugepages = false;
  std::string shm_name;  // see memory::HostPoolOptions
  bool populate = false;
  bool register_with_cuda = true;
  Duration read_ttl = std::chrono::seconds(300);
  Duration write_ttl = std::chrono::seconds(600);
  // How long ReserveWrite waits for memory to be freed (by eviction) before answering
  // kOutOfMemory. 0 answers at once. The wait happens on the caller's thread.
  Duration allocation_wait = Duration::zero();
  uint32_t num_shards = 64;  // power of two
  Clock* clock = Clock::Real();
};

struct L1Status {
  bool healthy = false;  // allocator consistent
  uint64_t resident_objects = 0;
  uint64_t read_locked_objects = 0;  // holding a live read lock now
  uint64_t temporary_objects = 0;
  uint64_t staging_objects = 0;
  uint64_t live_staging_objects = 0;  // write lock not expired
  uint64_t resident_bytes = 0;        // sum of object sizes
  uint64_t staging_bytes = 0;
  uint64_t used_bytes = 0;  // allocator view (rounded to the alignment)
  uint64_t capacity_bytes = 0;
  double usage_ratio = 0;
  uint64_t allocation_failures = 0;
  Duration read_ttl{};
  Duration write_ttl{};
  bool cuda_registered = false;
};

class L1Manager {
 public:
  static Result<std::unique_ptr<L1Manager>> Create(const L1Options& options);
  ~L1Manager();
  L1Manager(const L1Manager&) = delete;
  L1Manager& operator=(const L1Manager&) = delete;

  // Registers an observer. Call before the manager is shared between threads; `listener`
  // must outlive the manager (or be removed first, while no call is in progress).
  void AddListener(L1Listener* listener);
  void RemoveListener(L1Listener* listener);

  // Resident keys -> kSuccess and `read_locks` more read locks (and the view). Others
  // (absent, or only being staged) -> kKeyNotExist.
  std::vector<L1Result> ReserveRead(std::span<const ObjectKey> keys, uint32_t read_locks,
                                    std::vector<ObjectView>* views = nullptr);

  // Views of objects the caller already read-locked; takes no lock. Resident and read-locked
  // -> kSuccess; resident but unlocked -> kKeyNotReadable; otherwise kKeyNotExist.
  std::vector<L1Result> UnsafeRead(std::span<const ObjectKey> keys, std::vector<ObjectView>* views);

  // Drops `read_locks` read locks per key. Not resident -> kKeyNotExist; not read-locked (or
  // the lock expired) -> kKeyInWrongState. A temporary object is freed when its last lock goes.
  std::vector<L1Result> FinishRead(std::span<const ObjectKey> keys, uint32_t read_locks);

  // Reserves a staging buffer of `object_size` bytes per key for writer `tag`.
  // Resident -> kKeyNotWritable; live staging of the same tag -> kKeyNotWritable; expired
  // staging of the same tag and size -> that buffer is handed over (re-locked), kSuccess.
  // All new buffers are allocated as one batch: if it does not fit, every new key gets
  // kOutOfMemory (after waiting up to allocation_wait for eviction). A size of 0, above the
  // capacity or above kMaxObjectSize can never fit: kOutOfMemory for every key.
  std::vector<L1Result> ReserveWrite(std::span<const ObjectKey> keys, uint64_t object_size,
                                     bool temporary, WriterTag tag, std::vector<ObjectView>* views);

  // Admits the tag's staging buffers as resident objects. No staging for the tag ->
  // kKeyNotExist; the write lock expired -> kKeyInWrongState (left for reclaim); the key is
  // already resident -> the staging copy is discarded, kSuccess.
  std::vector<L1Result> FinishWrite(std::span<const ObjectKey> keys, WriterTag tag);

  // FinishWrite, then `read_locks` read locks on the resident object, in one step.
  std::vector<L1Result> FinishWriteAndReserveRead(std::span<const ObjectKey> keys,
                                                  uint32_t read_locks, WriterTag tag,
                                                  std::vector<ObjectView>* views = nullptr);

  // Aborts the tag's writes: frees its staging buffers. No staging for the tag -> kKeyNotExist.
  std::vector<L1Result> FinishWriteAndDelete(std::span<const ObjectKey> keys, WriterTag tag);

  // Frees the resident object and reclaims expired staging. Absent -> kKeyNotExist;
  // read-locked resident or live staging -> kKeyIsLocked, unless `force`, which frees
  // everything of the key regardless of locks (the caller vouches nobody uses it).
  std::vector<L1Result> Delete(std::span<const ObjectKey> keys, bool force = false);

  // Deletes everything (force) or everything unlocked plus expired staging. Returns the number
  // of keys that left L1.
  uint64_t Clear(bool force);

  // Marks keys as used (eviction recency), e.g. every key of a finished session. Takes no L1
  // lock; fires OnL1KeysAccessed; an empty list does nothing.
  void TouchKeys(std::span<const ObjectKey> keys);

  // Resident and not read-locked, or holding expired staging: Delete would free something.
  bool IsKeyEvictable(const ObjectKey& key) const;
  // Resident (regardless of locks).
  bool Contains(const ObjectKey& key) const;
  // Resident or being staged by any writer: the key still occupies memory.
  bool Exists(const ObjectKey& key) const;

  L1Status GetStatus() const;  // walks the table: for admin and tests, not the hot path
  uint64_t used_bytes() const { return allocator_->used_bytes(); }
  uint64_t capacity_bytes() const { return allocator_->capacity(); }
  const memory::Allocator& allocator() const { return *allocator_; }
  // The host memory every object lives in (the GPU path needs its range and CUDA registration).
  const memory::HostPool& pool() const { return *pool_; }
  Clock* clock() const { return options_.clock; }

 private:
  struct Shard;

  explicit L1Manager(const L1Options& options);

  Shard& ShardFor(size_t hash) const;
  std::vector<L1Result> FinishWriteImpl(std::span<const ObjectKey> keys, WriterTag tag,
                                        bool lock_for_read, uint32_t read_locks,
                                        std::vector<ObjectView>* views);
  // Frees `allocations` after the shard locks are gone and wakes writers waiting for memory.
  void ReleaseMemory(std::vector<memory::Allocation>* allocations);
  Status AllocateWithWait(uint64_t size, size_t count, std::vector<memory::Allocation>* out);
  void NotifyAllocationFailed(uint64_t bytes);

  const L1Options options_;
  std::unique_ptr<memory::HostPool> pool_;
  std::unique_ptr<memory::Allocator> allocator_;
  std::unique_ptr<Shard[]> shards_;
  uint32_t shard_shift_ = 0;

  // Listeners: a small fixed array read without locks on every call.
  static constexpr size_t kMaxListeners = 8;
  std::array<std::atomic<L1Listener*>, kMaxListeners> listeners_{};
  std::atomic<uint32_t> listener_events_{0};
  Mutex listeners_mu_;  // serialises Add/RemoveListener

  // Writers waiting for memory (allocation_wait > 0) sleep here; frees wake them.
  Mutex memory_wait_mu_;
  CondVar memory_freed_;
  uint64_t memory_free_generation_ KVT_GUARDED_BY(memory_wait_mu_) = 0;
  std::atomic<int> memory_waiters_{0};
};

}  // namespace kvtier::l1
