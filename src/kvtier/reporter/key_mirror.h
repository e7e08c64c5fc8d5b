// KeyMirror: the keys one location (a tier: "L1", ...) holds, as the reporter last saw them, and
// the transitions (key became present / absent) not yet sent to the controller.
//
// Listener callbacks feed it on the server's hot paths: Reconcile() asks the tier whether each
// key is present now and, when that differs from the mirror, updates the mirror and appends the
// transition to a bounded pending list, under one short per-shard lock; it never blocks on
// anything else. Asking the tier (instead of trusting the event's kind) makes the mirror
// converge even though events of concurrent calls on one key can arrive out of order: the last
// callback for a key runs after its last change, and sees the final state.
//
// The reporter thread takes the pending transitions (Drain, coalesced per key) to send as
// ADMIT / EVICT, or a snapshot of every key for a full sync (Snapshot), each together with the
// exact key count they leave the controller with.
//
// Lock order: a shard's mutex -> whatever `present` takes (L1's shard lock). `present` must not
// call back into the mirror.
#pragma once

#include <array>
#include <atomic>
#include <cstdint>
#include <functional>
#include <span>
#include <string>
#include <utility>
#include <vector>

#include <absl/container/flat_hash_set.h>

#include "kvtier/common/mutex.h"
#include "kvtier/keys/object_key.h"
#include "kvtier/l1/l1_manager.h"

namespace kvtier::reporter {

class KeyMirror {
 public:
  // Whether the location holds `key` now (L1: L1Manager::Contains).
  using PresentFn = std::function<bool(const keys::ObjectKey&)>;

  // `max_pending_keys` (>= 1) bounds the transitions waiting for Drain.
  KeyMirror(std::string location, PresentFn present, size_t max_pending_keys);
  KeyMirror(const KeyMirror&) = delete;
  KeyMirror& operator=(const KeyMirror&) = delete;

  const std::string& location() const { return location_; }

  // `wake` runs (on the calling thread, no lock held) each time the pending count reaches
  // `threshold`. Set before the mirror is shared; it must not block.
  void SetWake(size_t threshold, std::function<void()> wake);

  // Hot path. Brings each key's mirror state in line with `present`, recording a transition
  // for each change. A transition that finds the pending list full is dropped and counted (the
  // mirror itself is still updated, so a later snapshot is right).
  void Reconcile(std::span<const keys::ObjectKey> keys);

  struct Changes {
    // Net changes since the previous Drain / Snapshot / DiscardPending: a key admitted and
    // evicted in between appears in neither list.
    std::vector<keys::ObjectKey> admitted;
    std::vector<keys::ObjectKey> evicted;
    uint64_t key_count = 0;  // keys in the mirror once these changes are applied
    uint64_t dropped = 0;    // transitions dropped since then: the changes are incomplete
  };
  Changes Drain();

  // Every key, consistent with the transitions drained so far plus those it discards: the
  // pending transitions and the dropped count are reset (the snapshot reflects them).
  std::vector<keys::ObjectKey> Snapshot();
  // Forgets the pending transitions and the dropped count (a full sync will follow).
  void DiscardPending();

  size_t pending() const { return pending_.load(std::memory_order_acquire); }
  uint64_t size() const { return size_.load(std::memory_order_relaxed); }
  uint64_t dropped_total() const { return dropped_total_.load(std::memory_order_relaxed); }

 private:
  static constexpr size_t kShards = 16;
  struct alignas(64) Shard {
    Mutex mu;
    absl::flat_hash_set<keys::ObjectKey, keys::ObjectKeyHash> keys KVT_GUARDED_BY(mu);
    std::vector<std::pair<keys::ObjectKey, bool>> pending KVT_GUARDED_BY(mu);  // (key, admitted)
    uint64_t dropped KVT_GUARDED_BY(mu) = 0;
  };

  Shard& ShardFor(size_t hash) { return shards_[(hash >> 7) % kShards]; }

  const std::string location_;
  const PresentFn present_;
  const size_t max_pending_;
  size_t wake_threshold_ = 0;
  std::function<void()> wake_;
  std::array<Shard, kShards> shards_;
  std::atomic<size_t> pending_{0};
  std::atomic<uint64_t> size_{0};
  std::atomic<uint64_t> dropped_total_{0};
};

// Feeds a KeyMirror from L1: keys written (kWriteFinished: non-temporary objects became
// resident) and keys that left L1 (kDeleted), each re-checked with L1Manager::Contains. L2
// prefetch buffers (temporary objects) are not reported.
class L1MirrorListener final : public l1::L1Listener {
 public:
  explicit L1MirrorListener(KeyMirror* mirror) : mirror_(mirror) {}
  uint32_t events() const override { return kWriteFinished | kDeleted; }
  void OnL1KeysWriteFinished(std::span<const keys::ObjectKey> keys) override {
    mirror_->Reconcile(keys);
  }
  void OnL1KeysDeleted(std::span<const keys::ObjectKey> keys) override { mirror_->Reconcile(keys); }

 private:
  KeyMirror* const mirror_;
};

}  // namespace kvtier::reporter
