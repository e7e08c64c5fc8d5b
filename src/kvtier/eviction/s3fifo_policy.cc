#include "kvtier/eviction/s3fifo_policy.h"

#include <algorithm>

namespace kvtier::eviction {

using internal::kNilIndex;

void S3FifoPolicy::Touch(uint32_t index) {
  uint8_t& freq = table_.node(index).extra.freq;
  if (freq < kMaxFrequency) ++freq;
}

void S3FifoPolicy::OnCreated(std::span<const ObjectKey> keys) {
  for (auto it = keys.rbegin(); it != keys.rend(); ++it) {
    auto [index, inserted] = table_.FindOrInsert(*it);
    if (!inserted) {
      Touch(index);
      continue;
    }
    uint32_t ghost = ghost_table_.Find(internal::FingerprintOf(*it));
    if (ghost != kNilIndex) {
      ghost_.Unlink(ghost_table_, ghost);
      ghost_table_.Erase(ghost);
      table_.node(index).extra = Meta{Queue::kMain, 0};
      main_.PushBack(table_, index);
    } else {
      table_.node(index).extra = Meta{Queue::kSmall, 0};
      small_.PushBack(table_, index);
    }
  }
  peak_size_ = std::max(peak_size_, table_.size());
}

void S3FifoPolicy::OnTouched(std::span<const ObjectKey> keys) {
  for (const ObjectKey& key : keys) {
    uint32_t index = table_.Find(key);
    if (index != kNilIndex) Touch(index);
  }
}

void S3FifoPolicy::OnRemoved(std::span<const ObjectKey> keys) {
  for (const ObjectKey& key : keys) {
    const uint32_t index = table_.Remove(key);
    if (index == kNilIndex) continue;
    if (table_.node(index).extra.queue == Queue::kSmall) {
      small_.Unlink(table_, index);
      AddGhost(internal::FingerprintOf(key));
    } else {
      main_.Unlink(table_, index);
    }
    table_.Free(index);
  }
}

void S3FifoPolicy::AddGhost(internal::Fingerprint fingerprint) {
  auto [ghost, inserted] = ghost_table_.FindOrInsert(fingerprint);
  if (inserted) {
    ghost_.PushBack(ghost_table_, ghost);
  } else {
    ghost_.MoveToBack(ghost_table_, ghost);
  }
  const size_t capacity = ghost_capacity();
  while (ghost_.size() > capacity) {
    ghost_table_.Erase(ghost_.PopFront(ghost_table_));
  }
}

uint32_t S3FifoPolicy::NextSmallVictim(uint32_t* cursor, uint32_t* main_cursor,
                                       const std::function<bool(const ObjectKey&)>& eligible) {
  while (*cursor != kNilIndex) {
    const uint32_t index = *cursor;
    Table::Node& node = table_.node(index);
    *cursor = node.next;
    if (node.extra.freq > 0) {
      small_.Unlink(table_, index);
      node.extra = Meta{Queue::kMain, 0};
      main_.PushBack(table_, index);
      if (*main_cursor == kNilIndex) *main_cursor = index;
      continue;
    }
    if (eligible(node.key)) return index;
  }
  return kNilIndex;
}

uint32_t S3FifoPolicy::NextMainVictim(uint32_t* cursor,
                                      const std::function<bool(const ObjectKey&)>& eligible) {
  // Terminates: a key revisited after reinsertion has a lower freq than before.
  while (*cursor != kNilIndex) {
    const uint32_t index = *cursor;
    Table::Node& node = table_.node(index);
    *cursor = node.next;
    if (node.extra.freq > 0) {
      --node.extra.freq;
      main_.MoveToBack(table_, index);
      if (*cursor == kNilIndex) *cursor = index;  // it was the back: visit it again
      continue;
    }
    if (eligible(node.key)) return index;
  }
  return kNilIndex;
}

void S3FifoPolicy::SelectVictims(size_t max, const std::function<bool(const ObjectKey&)>& eligible,
                                 std::vector<ObjectKey>* out) {
  // Victims stay where they are, so each cursor passes each of them once: no duplicates.
  uint32_t small_cursor = small_.front();
  uint32_t main_cursor = main_.front();
  size_t taken_small = 0;
  size_t taken_main = 0;
  while (taken_small + taken_main < max &&
         (small_cursor != kNilIndex || main_cursor != kNilIndex)) {
    // Keys that would remain once this call's victims are gone.
    const size_t remaining = table_.size() - taken_small - taken_main;
    const size_t small_remaining = small_.size() - taken_small;
    const bool small_over_target = small_remaining * 10 >= remaining;
    uint32_t victim;
    if (small_cursor != kNilIndex && (small_over_target || main_cursor == kNilIndex)) {
      victim = NextSmallVictim(&small_cursor, &main_cursor, eligible);
      if (victim != kNilIndex) ++taken_small;
    } else {
      victim = NextMainVictim(&main_cursor, eligible);
      if (victim != kNilIndex) ++taken_main;
    }
    if (victim != kNilIndex) out->push_back(table_.node(victim).key);
  }
}

bool S3FifoPolicy::Contains(const ObjectKey& key) const { return table_.Find(key) != kNilIndex; }

bool S3FifoPolicy::InMain(const ObjectKey& key) const {
  uint32_t index = table_.Find(key);
  return index != kNilIndex && table_.node(index).extra.queue == Queue::kMain;
}

}  // namespace kvtier::eviction
