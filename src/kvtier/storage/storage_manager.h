// StorageManager: L1 + its eviction + the L2 adapters + the store, prefetch and L2 eviction
// controllers, composed, started and stopped in order. This is the storage API the server uses.
//
// Start order: L1 -> L1 eviction -> L2 adapters (with their eviction controllers attached) ->
// store controller -> prefetch controller. Close order: prefetch and store controllers stop
// (cancelling what they can) -> L2 eviction stops -> adapters close (unfinished tasks fail;
// no adapter touches a buffer any more) -> the controllers release the L1 locks those tasks
// held -> L1 eviction stops.
#pragma once

#include <memory>
#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "kvtier/common/result.h"
#include "kvtier/eviction/l1_eviction_controller.h"
#include "kvtier/keys/bitmap.h"
#include "kvtier/l1/l1_manager.h"
#include "kvtier/l2/adapter.h"
#include "kvtier/storage/l2_eviction_controller.h"
#include "kvtier/storage/prefetch_controller.h"
#include "kvtier/storage/store_controller.h"

namespace kvtier::storage {

struct StorageOptions {
  l1::L1Options l1;
  std::string l1_eviction_policy = "lru";
  eviction::L1EvictionOptions l1_eviction;
  // One config per adapter, in order (see l2/factory.h); an optional "eviction" block per
  // adapter enables L2 eviction for it.
  std::vector<nlohmann::json> l2_adapters;
  std::string store_policy = "default";
  StoreControllerOptions store;
  PrefetchControllerOptions prefetch;
};

// What SubmitPrefetch started: the L1 part is known at once, the L2 part later.
struct PrefetchHandle {
  PrefetchId l2_request = 0;  // 0: nothing went to L2
  size_t l1_hits = 0;         // keys [0, l1_hits) are read-locked in L1 already
  size_t total = 0;
};

class StorageManager {
 public:
  static Result<std::unique_ptr<StorageManager>> Create(const StorageOptions& options);
  ~StorageManager();  // Close()
  StorageManager(const StorageManager&) = delete;
  StorageManager& operator=(const StorageManager&) = delete;

  // Stops everything in order (see above). Idempotent.
  void Close();
  // Waits until everything admitted to L1 so far reached L2 (or failed): see
  // StoreController::Flush. A graceful shutdown calls it before Close.
  bool FlushToL2(Timeout timeout) { return store_->Flush(timeout); }

  // The store path: stage, fill, admit (or abort). Admitted objects go to L2 in the
  // background. Keys already resident or being written report kKeyNotWritable: skip them.
  std::vector<l1::L1Result> ReserveWrite(std::span<const keys::ObjectKey> keys,
                                         uint64_t object_size, std::vector<l1::ObjectView>* views);
  std::vector<l1::L1Result> FinishWrite(std::span<const keys::ObjectKey> keys);
  std::vector<l1::L1Result> AbortWrite(std::span<const keys::ObjectKey> keys);

  // The lookup path. `keys` in prefix order (chunk-major). Takes `read_locks` read locks on
  // the L1 prefix at once (locks on L1 hits after the first miss are released), and sends the
  // rest to the L2 prefetch. Never blocks.
  PrefetchHandle SubmitPrefetch(std::span<const keys::ObjectKey> keys, uint64_t object_size,
                                uint32_t read_locks, Duration l2_timeout = Duration::zero());
  // The final bitmap (the usable prefix, read-locked for the caller) once the L2 part is done,
  // exactly once; std::nullopt before.
  std::optional<keys::Bitmap> QueryPrefetch(const PrefetchHandle& handle);
  bool WaitPrefetch(const PrefetchHandle& handle, Timeout timeout);
  // L1 hits plus the L2 lookup prefix, before the loads finish; std::nullopt until the L2
  // lookup is done. Does not consume anything.
  std::optional<size_t> QueryPrefetchLookupHits(const PrefetchHandle& handle);
  // Calls `fn` once QueryPrefetch(handle) has an answer (see PrefetchController::NotifyWhenDone).
  void NotifyWhenPrefetchDone(const PrefetchHandle& handle, std::function<void()> fn);

  // Views of prefetched (read-locked) objects: all or nothing. kNotFound (naming the first
  // missing key) when any key is not resident and read-locked; nothing is released then.
  Result<std::vector<l1::ObjectView>> ReadPrefetched(std::span<const keys::ObjectKey> keys);
  void FinishReadPrefetched(std::span<const keys::ObjectKey> keys, uint32_t read_locks);

  void TouchKeys(std::span<const keys::ObjectKey> keys) { l1_->TouchKeys(keys); }
  // Clears L1 (force: also locked objects and live staging). L2 keeps its data.
  uint64_t ClearL1(bool force) { return l1_->Clear(force); }

  // {"healthy", "l1", "l1_eviction", "store_controller", "prefetch_controller", "l2_adapters",
  //  "l2_eviction"}
  nlohmann::json StatusJson() const;
  bool healthy() const;

  l1::L1Manager& l1() { return *l1_; }
  const std::vector<std::unique_ptr<l2::L2Adapter>>& adapters() const { return adapters_; }
  eviction::L1EvictionController& l1_eviction() { return *l1_eviction_; }
  StoreController& store_controller() { return *store_; }
  PrefetchController& prefetch_controller() { return *prefetch_; }
  const std::vector<std::unique_ptr<L2EvictionController>>& l2_eviction() const {
    return l2_eviction_;
  }

 private:
  StorageManager() = default;

  std::unique_ptr<l1::L1Manager> l1_;
  std::unique_ptr<eviction::L1EvictionController> l1_eviction_;
  std::vector<std::unique_ptr<l2::L2Adapter>> adapters_;
  std::vector<std::unique_ptr<L2EvictionController>> l2_eviction_;
  std::unique_ptr<StoreController> store_;
  std::unique_ptr<PrefetchController> prefetch_;
  bool closed_ = false;
};

// L1Status as JSON (shared by the server's /api/status).
nlohmann::json L1StatusJson(const l1::L1Status& status);

}  // namespace kvtier::storage
