// Allocator: hands out aligned byte ranges of one contiguous region (the L1 host pool).
//
// Free space is a set of maximal free extents, indexed by address (to coalesce on free) and by
// size (best fit). Every request is rounded up to the alignment. With objects of equal size
// this never fragments into failure: every free extent is a whole number of object slots, so
// an allocation succeeds whenever free bytes >= the rounded size (LMCache issue #1285).
// Thread-safe: one internal mutex, held only for the bookkeeping (never for a copy).
#pragma once

#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "kvtier/common/result.h"

namespace kvtier::memory {

class Allocator;

// Owns one allocation; frees it on destruction. Move-only. Must not outlive its Allocator.
class Allocation {
 public:
  Allocation() = default;
  ~Allocation() { Reset(); }
  Allocation(Allocation&& other) noexcept;
  Allocation& operator=(Allocation&& other) noexcept;
  Allocation(const Allocation&) = delete;
  Allocation& operator=(const Allocation&) = delete;

  explicit operator bool() const { return allocator_ != nullptr; }
  uint8_t* data() const;
  // The size that was asked for (the reservation is that, rounded up to the alignment).
  uint64_t size() const { return size_; }
  // Byte offset from the start of the region.
  uint64_t offset() const { return offset_; }
  // Frees now (no-op when empty).
  void Reset();

  // Gives up ownership without freeing and returns what was owned. The caller must hand it back
  // exactly once through Allocator::Adopt, which makes a handle again (and so frees it in the
  // end). For compact owners, such as the L1 table, that keep 16 bytes per object instead of a
  // handle.
  struct Raw {
    uint64_t offset = 0;
    uint64_t size = 0;
  };
  Raw Detach();

 private:
  friend class Allocator;
  Allocation(Allocator* allocator, uint64_t offset, uint64_t size)
      : allocator_(allocator), offset_(offset), size_(size) {}

  Allocator* allocator_ = nullptr;
  uint64_t offset_ = 0;
  uint64_t size_ = 0;
};

struct AllocatorStats {
  uint64_t capacity_bytes = 0;
  uint64_t used_bytes = 0;  // reserved, i.e. rounded sizes
  uint64_t free_bytes = 0;
  uint64_t largest_free_extent = 0;
  uint64_t num_allocations = 0;
  uint64_t num_free_extents = 0;
  uint64_t failed_allocations = 0;  // requests answered kOutOfMemory, since creation
};

class Allocator {
 public:
  // Manages [base, base + capacity). `alignment` is a power of two >= 8; `base` must be
  // aligned to it. `base` may be null in tests that never touch data(). A capacity that is
  // not a multiple of the alignment is rounded down (capacity() reports the usable part);
  // kInvalidArgument when that leaves nothing.
  static Result<std::unique_ptr<Allocator>> Create(uint8_t* base, uint64_t capacity,
                                                   uint64_t alignment = 4096);
  ~Allocator();  // KVT_DCHECKs that no allocation is outstanding
  Allocator(const Allocator&) = delete;
  Allocator& operator=(const Allocator&) = delete;

  // size > 0. kOutOfMemory (retryable) when no free extent fits; kInvalidArgument for 0 or
  // a size larger than the capacity.
  Result<Allocation> Allocate(uint64_t size);

  // All or nothing: on success appends sizes.size() allocations to `out`, in order; on failure
  // appends nothing and leaves the free space exactly as it was. Each size is checked as in
  // Allocate; a batch whose rounded total exceeds the capacity (it can never fit) is
  // kInvalidArgument; otherwise a batch that does not fit now is kOutOfMemory. An empty batch
  // succeeds. Takes the lock once.
  Status AllocateBatch(std::span<const uint64_t> sizes, std::vector<Allocation>* out);
  // `count` allocations of one size. Carves as many as fit from the best-fitting extent, then
  // the next; succeeds whenever count * RoundUp(size) <= free bytes if every allocation of
  // this allocator has that one size.
  Status AllocateBatch(uint64_t size, size_t count, std::vector<Allocation>* out);

  // Frees every non-empty allocation in `allocations` (all from this allocator) under one lock
  // acquisition and leaves them empty.
  void FreeBatch(std::span<Allocation> allocations);

  // Re-wraps what Allocation::Detach returned. `raw` must come from this allocator and be
  // adopted once.
  Allocation Adopt(Allocation::Raw raw);

  AllocatorStats Stats() const;
  uint64_t used_bytes() const;  // cheap (an atomic read); Stats() takes the lock
  // Verifies the free extents are sorted, disjoint, maximal (no two adjacent), aligned, and
  // that free + used == capacity. An error describes the first problem found.
  Status CheckConsistency() const;

  uint8_t* base() const { return base_; }
  uint64_t capacity() const { return capacity_; }
  uint64_t alignment() const { return alignment_; }
  uint64_t RoundUp(uint64_t size) const { return (size + alignment_ - 1) & ~(alignment_ - 1); }

 private:
  friend class Allocation;
  struct Impl;
  Allocator(uint8_t* base, uint64_t capacity, uint64_t alignment);
  void Free(uint64_t offset, uint64_t size);

  uint8_t* const base_;
  const uint64_t capacity_;
  const uint64_t alignment_;
  std::unique_ptr<Impl> impl_;
};

}  // namespace kvtier::memory
