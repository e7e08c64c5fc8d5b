// S3FifoPolicy: S3-FIFO (Yang et al., SOSP'23) adapted to select-then-remove eviction.
//
// New keys enter the small FIFO; keys whose hash is in the ghost set enter the main FIFO. A
// touch (or a create of a tracked key) only bumps a frequency counter capped at 3. Victims come
// from the small FIFO while it holds at least 10% of the tracked keys, else from main:
//   small: a key with freq > 0 is promoted to the back of main (freq reset); otherwise it is a
//          victim;
//   main:  a key with freq > 0 is reinserted at the back of main with freq - 1; otherwise it is
//          a victim.
// SelectVictims performs these promotions and reinsertions as side effects and returns the
// keys that would be evicted; they stay tracked, in place, until OnRemoved. A key removed while
// in the small FIFO leaves a 32-bit fingerprint in the ghost set, a FIFO bounded by the main FIFO's
// nominal size (90% of the most keys ever tracked).
//
// A create batch is appended back to front, so its first key is evicted last.
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <span>
#include <string_view>
#include <vector>

#include "kvtier/eviction/key_table.h"
#include "kvtier/eviction/policy.h"

namespace kvtier::eviction {

class S3FifoPolicy final : public EvictionPolicy {
 public:
  static constexpr uint8_t kMaxFrequency = 3;

  S3FifoPolicy() = default;
  S3FifoPolicy(const S3FifoPolicy&) = delete;
  S3FifoPolicy& operator=(const S3FifoPolicy&) = delete;

  std::string_view name() const override { return "s3fifo"; }

  void OnCreated(std::span<const ObjectKey> keys) override;
  void OnTouched(std::span<const ObjectKey> keys) override;
  void OnRemoved(std::span<const ObjectKey> keys) override;
  void SelectVictims(size_t max, const std::function<bool(const ObjectKey&)>& eligible,
                     std::vector<ObjectKey>* out) override;

  size_t size() const override { return table_.size(); }
  bool Contains(const ObjectKey& key) const override;

  // Queue occupancy, for tests and metrics.
  size_t small_size() const { return small_.size(); }
  size_t main_size() const { return main_.size(); }
  size_t ghost_size() const { return ghost_.size(); }
  // The ghost set's bound: 90% of the most keys ever tracked.
  size_t ghost_capacity() const { return peak_size_ - peak_size_ / 10; }
  // Whether `key` sits in the main FIFO (false when untracked).
  bool InMain(const ObjectKey& key) const;

  // Approximate heap bytes held by the policy, ghost set included.
  size_t MemoryBytes() const {
    return sizeof(*this) + table_.MemoryBytes() + ghost_table_.MemoryBytes();
  }

 private:
  enum class Queue : uint8_t { kSmall, kMain };
  struct Meta {
    Queue queue = Queue::kSmall;
    uint8_t freq = 0;
  };
  using Table = internal::KeyTable<ObjectKey, Meta>;

  void Touch(uint32_t index);
  void AddGhost(internal::Fingerprint fingerprint);
  // Walks the small FIFO from *cursor: promotes keys with freq > 0 (resetting *main_cursor to a
  // promoted key when main has been walked to its end) and returns the next eligible key with
  // freq 0, or kNilIndex once the queue is exhausted.
  uint32_t NextSmallVictim(uint32_t* cursor, uint32_t* main_cursor,
                           const std::function<bool(const ObjectKey&)>& eligible);
  // Walks the main FIFO from *cursor, reinserting keys with freq > 0; returns the next eligible
  // key with freq 0, or kNilIndex.
  uint32_t NextMainVictim(uint32_t* cursor, const std::function<bool(const ObjectKey&)>& eligible);

  Table table_;
  internal::NodeList small_;  // front = oldest
  internal::NodeList main_;   // front = oldest
  internal::KeyTable<internal::Fingerprint> ghost_table_;
  internal::NodeList ghost_;  // front = oldest
  size_t peak_size_ = 0;
};

}  // namespace kvtier::eviction
