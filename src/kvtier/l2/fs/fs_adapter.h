// The fs L2 adapter: one file per key under a local directory.
//
// Config ("fs adapter '<name>'"):
//   base_path         required; created if missing. One adapter per directory (a LOCK file).
//   max_capacity      size ("500GiB"); 0 = unbounded. A soft limit: stores are never refused for
//                     space; the storage layer's L2 eviction controller deletes down to it.
//   use_odirect       false. O_DIRECT reads and writes (no page cache). Unaligned caller buffers
//                     or sizes go through aligned bounce buffers. A filesystem that refuses
//                     O_DIRECT fails adapter creation; a later refusal (EINVAL from an open,
//                     read or write) fails that task, marks the adapter unhealthy for good and
//                     shows in the status JSON. Never downgraded to buffered I/O: later tasks are
//                     still tried with O_DIRECT.
//   io_engine         "io_uring" (default; falls back to "pread", logged, when io_uring cannot
//                     be set up) or "pread". An io_uring submission that fails for good later
//                     fails the operations caught in it (their tasks fail with an IOError), and
//                     that thread goes on with blocking I/O; the adapter turns unhealthy, with
//                     the reason in io_engine_error and last_error. Never a crash.
//   io_threads        2. Threads running store and load tasks; each has its own engine.
//   queue_depth       32. io_uring entries per thread (operations in flight per thread).
//   recover_on_start  true. Start() scans base_path: corrupt records are removed, the others
//                     indexed and reported through NotifyStored (usage, listeners such as the
//                     L2 eviction controller). Only headers are read (4 KiB per file: magic,
//                     version, header checksum, key against the file name, size against the
//                     file's); payload checksums are checked by the first load. Without Start
//                     (or with false) files already there stay invisible and uncounted. Temp
//                     files left by a crash are removed at creation either way.
//   fsync             false. fsync each file before the rename that publishes it. Without it a
//                     power loss (not a process crash) can leave a published record with lost
//                     data; the checksum turns that into a miss. With it, a published record is
//                     durable, at the cost of one device flush per object. Directories are never
//                     fsynced: a record published just before a power loss may vanish (a miss).
//
// Loads need a buffer of exactly the stored size (anything else fails that key). Delete: bit i
// set when keys[i] is not stored after the call (deleted now, or absent); a key locked (unless
// forced), being written by a concurrent store, or whose unlink failed stays. ListKeys: one pass
// over the in-memory index per page (O(n log page_size)); the cursor is the last key's text.
//
// Files and format: fs_format.h. Every load verifies the record (header checksum, key, size,
// payload XXH3); a bad record is a miss, counted (corrupt_records), removed, and reported
// through NotifyDeleted. Never KV bytes that were not stored under that key.
//
// Threading: Submit* only enqueue (stores, loads) or touch the in-memory index (lookups and
// unlocks complete at once, on the caller's thread: they need no I/O). Store and load tasks run
// on the I/O threads, in submission order, each task on one thread; completions are reported
// from there. Delete and ListKeys are synchronous on the caller's thread.
//
// Ordering: a key's entry blocks deletion from its publication until its store was accounted
// and reported, and blocks a new store from its deletion until that was reported, so the
// accounts never go negative and listeners hear of one key's store and deletion in order.
//
// Lock order: queue_mu_ and index_mu_ are never held together; status_mu_ is a leaf. No lock
// is held across a listener call or a system call.
#pragma once

#include <array>
#include <atomic>
#include <cstdint>
#include <deque>
#include <functional>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include <absl/container/flat_hash_map.h>
#include <absl/container/flat_hash_set.h>
#include <nlohmann/json.hpp>

#include "kvtier/common/mutex.h"
#include "kvtier/common/result.h"
#include "kvtier/l2/adapter.h"
#include "kvtier/l2/fs/fs_io.h"

namespace kvtier::l2 {

enum class FsIoEngineKind : uint8_t { kIoUring, kPread };

struct FsAdapterOptions {
  std::string base_path;
  uint64_t max_capacity = 0;
  bool use_odirect = false;
  FsIoEngineKind io_engine = FsIoEngineKind::kIoUring;
  int io_threads = 2;
  int queue_depth = 32;
  bool recover_on_start = true;
  bool fsync = false;
  // Tests: wraps each I/O thread's engine (fault injection). Called once per thread at creation.
  std::function<std::unique_ptr<FsIoEngine>(std::unique_ptr<FsIoEngine>)> wrap_engine;
};

// Reads the config described above (section "fs adapter '<name>'"); unknown keys are errors.
Result<FsAdapterOptions> ParseFsAdapterConfig(const nlohmann::json& config,
                                              const std::string& name);

// What Start's recovery scan found (removed_temp_files: at creation).
struct FsRecoveryStats {
  uint64_t keys = 0, bytes = 0;
  uint64_t removed_temp_files = 0;
  uint64_t removed_corrupt_files = 0;
  uint64_t ignored_files = 0;  // names that are not records of this format (left alone)
};

class FsAdapter final : public L2Adapter {
 public:
  static Result<std::unique_ptr<FsAdapter>> Create(FsAdapterOptions options, std::string name);
  ~FsAdapter() override;

  // "io_uring" or "pread": the engine actually in use.
  std::string_view io_engine_name() const { return engine_name_; }
  // What Start's recovery scan found (and the temp files creation removed).
  FsRecoveryStats recovery_stats() const;
  const std::string& base_path() const { return options_.base_path; }
  // The file of `key`, relative to base_path ("ab/<escaped key>.kv").
  static std::string RelativePath(const ObjectKey& key);

  // Keys currently stored (published and not being deleted), with sizes.
  std::vector<std::pair<ObjectKey, uint64_t>> StoredKeys() const;
  size_t LockedKeyCount() const;
  uint64_t corrupt_records() const { return corrupt_records_.load(std::memory_order_relaxed); }

 protected:
  void DoSubmitStore(TaskId task, std::span<const ObjectKey> keys,
                     std::span<const std::span<const uint8_t>> objects) override;
  void DoSubmitLookupAndLock(TaskId task, std::span<const ObjectKey> keys) override;
  void DoUnlock(std::span<const ObjectKey> keys) override;
  void DoSubmitLoad(TaskId task, std::span<const ObjectKey> keys,
                    std::span<const std::span<uint8_t>> buffers) override;
  bool DoCancel(TaskId task) override;
  Result<Bitmap> DoDelete(std::span<const ObjectKey> keys, bool force) override;
  Result<KeyPage> DoListKeys(std::string_view model_name, size_t page_size,
                             std::string_view cursor) override;
  void DoClose() override;
  Status DoStart() override;
  bool DoHealthy() const override;
  void DoStatusJson(nlohmann::json* out) const override;

 private:
  struct Task;
  struct StoreItem;
  struct LoadItem;

  // A key's entry in the index. Only kPresent entries are visible to lookups, loads and lists.
  enum class EntryState : uint8_t {
    kWriting,   // a store task is writing it
    kPresent,   // published
    kRemoving,  // being unlinked (Delete, or a corrupt record found by a load)
  };
  struct Entry {
    uint64_t size = 0;
    uint64_t generation = 0;  // distinguishes a re-created key from the entry a load saw
    EntryState state = EntryState::kWriting;
    // Its bytes are in the base's accounting and the listeners heard of it (CompleteStore or
    // NotifyStored returned). Removals wait for this, so a deletion never reaches the accounts
    // or the listeners before the store it undoes.
    bool accounted = false;
  };

  FsAdapter(FsAdapterOptions options, std::string name);
  Status Init();
  void StartThreads();
  void IoThread(FsIoEngine* engine);
  void RunStore(FsIoEngine* engine, Task* task);
  void RunLoad(FsIoEngine* engine, Task* task);
  // Unlinks the records of `keys` whose entries are still the ones seen (same generation),
  // after a load found them corrupt or missing.
  void RemoveBadRecords(std::span<const ObjectKey> keys, std::span<const uint64_t> generations);
  // Unlinks `keys` (entries the caller marked kRemoving; `sizes` theirs), tells the listeners of
  // the ones removed, then drops those from the index (a failed unlink restores kPresent).
  // Returns which were removed; the first unlink error goes to `first_error` when given.
  std::vector<bool> Unpublish(std::span<const ObjectKey> keys, std::span<const uint64_t> sizes,
                              Status* first_error);
  // Waits until no entry of `keys` is being removed or is published but not yet accounted (a
  // store between its rename and the end of CompleteStore): microseconds.
  void WaitForSettled(std::span<const ObjectKey> keys) KVT_REQUIRES(index_mu_);
  // Sets `accounted` on the entries of `keys` and wakes WaitForSettled.
  void MarkAccounted(std::span<const ObjectKey> keys);
  // Creates the key's fan-out directory unless it is known to exist.
  Status EnsureFanoutDir(const ObjectKey& key);
  // The file name for a new temp file.
  std::string NextTempPath();
  // Records an I/O error for the status JSON. `odirect_refused` (ODirectRefused): the first one
  // also sets odirect_error, marks the adapter unhealthy for good and logs why.
  void NoteError(const Status& status, bool odirect_refused);
  // Whether `op` failing with `err` means the filesystem refuses O_DIRECT: EINVAL from an open,
  // read or write with use_odirect (every offset, length and buffer we pass is aligned).
  bool ODirectRefused(const FsIoOp& op, int err) const;
  // When an I/O thread's engine has lost its asynchronous I/O (FsIoEngine::status), marks the
  // adapter unhealthy for good, and records and logs why (once per engine). On the I/O thread.
  void CheckEngine(const FsIoEngine* engine);
  int OpenFlags(bool write) const;

  const FsAdapterOptions options_;
  std::string engine_name_;
  std::string engine_fallback_reason_;
  int dir_fd_ = -1;   // base_path, for the *at() calls
  int lock_fd_ = -1;  // flock()ed LOCK file
  uint64_t instance_ = 0;
  std::atomic<uint64_t> next_temp_{0};
  std::atomic<uint64_t> next_generation_{1};
  std::array<std::atomic<bool>, 256> fanout_ready_{};  // fan-out directory exists
  std::vector<std::unique_ptr<FsIoEngine>> engines_;   // one per I/O thread
  std::vector<std::thread> threads_;

  mutable Mutex queue_mu_;
  CondVar queue_cv_;
  std::deque<std::unique_ptr<Task>> queue_ KVT_GUARDED_BY(queue_mu_);
  absl::flat_hash_set<TaskId> running_ KVT_GUARDED_BY(queue_mu_);
  bool stop_ KVT_GUARDED_BY(queue_mu_) = false;

  mutable Mutex index_mu_;
  absl::flat_hash_map<ObjectKey, Entry, keys::ObjectKeyHash> index_ KVT_GUARDED_BY(index_mu_);
  KeyLockTable locks_ KVT_GUARDED_BY(index_mu_);
  CondVar index_cv_;  // an entry became accounted, or was removed

  std::atomic<uint64_t> corrupt_records_{0};
  std::atomic<uint64_t> missing_records_{0};
  std::atomic<uint64_t> io_errors_{0};
  std::atomic<uint64_t> bounced_objects_{0};
  std::atomic<bool> odirect_failed_{false};
  std::atomic<bool> engine_failed_{false};
  mutable Mutex status_mu_;
  std::string last_error_ KVT_GUARDED_BY(status_mu_);
  std::string odirect_error_ KVT_GUARDED_BY(status_mu_);
  std::string engine_error_ KVT_GUARDED_BY(status_mu_);  // the first engine failure
  absl::flat_hash_set<const FsIoEngine*> failed_engines_ KVT_GUARDED_BY(status_mu_);
  FsRecoveryStats recovery_ KVT_GUARDED_BY(status_mu_);
};

// The factory entry for type "fs".
Result<std::unique_ptr<L2Adapter>> MakeFsAdapter(const nlohmann::json& config,
                                                 const std::string& name);

}  // namespace kvtier::l2
