#include "kvtier/memory/allocator.h"

#include <algorithm>
#include <atomic>
#include <iterator>
#include <utility>

#include <absl/container/btree_map.h>
#include <absl/container/btree_set.h>
#include <fmt/format.h>

#include "kvtier/common/check.h"
#include "kvtier/common/mutex.h"

namespace kvtier::memory {
namespace {

constexpr uint64_t kMinAlignment = 8;
// Keeps every sum of sizes below the capacity far from overflow.
constexpr uint64_t kMaxCapacity = uint64_t{1} << 62;
constexpr size_t kCacheLine = 64;

}  // namespace

static_assert(sizeof(Allocation) == 24, "Allocation is (allocator, offset, size)");

// Free space as maximal free extents, indexed twice: by address, and by size then address.
// The size index is two-level (size -> offsets): objects of one model are all one size, so it
// holds a handful of sizes and finding the best fit is a short walk plus begin(). All members
// are touched under `mu_` except `used_bytes_`, which is written under `mu_` and read anywhere.
struct Allocator::Impl {
  using Offsets = absl::btree_set<uint64_t>;
  using BySize = absl::btree_map<uint64_t, Offsets>;  // never holds an empty Offsets

  explicit Impl(uint64_t capacity) KVT_NO_THREAD_SAFETY_ANALYSIS : capacity_(capacity) {
    by_addr_.emplace(0, capacity);
    by_size_[capacity].insert(0);
  }

  // The smallest size class of at least `bytes` (its lowest offset is the best fit); end()
  // when none fits.
  BySize::iterator FindFit(uint64_t bytes) KVT_REQUIRES(mu_) { return by_size_.lower_bound(bytes); }

  // Takes `bytes` (aligned, <= the class's size) from the low end of the lowest extent of the
  // size class `fit` (from FindFit) and returns their offset.
  uint64_t CarveFrom(BySize::iterator fit, uint64_t bytes) KVT_REQUIRES(mu_) {
    const uint64_t size = fit->first;
    KVT_DCHECK(size >= bytes && !fit->second.empty());
    const uint64_t offset = *fit->second.begin();
    fit->second.erase(fit->second.begin());
    if (fit->second.empty()) by_size_.erase(fit);
    auto at = by_addr_.find(offset);
    KVT_DCHECK(at != by_addr_.end() && at->second == size);
    if (size == bytes) {
      by_addr_.erase(at);
    } else {
      auto next = by_addr_.erase(at);
      by_addr_.emplace_hint(next, offset + bytes, size - bytes);
      by_size_[size - bytes].insert(offset + bytes);
    }
    return offset;
  }

  // Returns [offset, offset + bytes) to the free set, merging with its neighbours. Aborts on
  // a range that overlaps free space (a double free) or leaves the region.
  void Release(uint64_t offset, uint64_t bytes) KVT_REQUIRES(mu_) {
    KVT_CHECK_MSG(bytes > 0 && offset <= capacity_ && bytes <= capacity_ - offset,
                  "free of [{}, +{}) outside the region of {} bytes", offset, bytes, capacity_);
    const uint64_t end = offset + bytes;
    auto next = by_addr_.lower_bound(offset);
    KVT_CHECK_MSG(next == by_addr_.end() || next->first >= end,
                  "double free: [{}, +{}) overlaps the free extent at {}", offset, bytes,
                  next->first);
    const bool merge_next = next != by_addr_.end() && next->first == end;
    bool merge_prev = false;
    auto prev = by_addr_.end();
    if (next != by_addr_.begin()) {
      prev = std::prev(next);
      const uint64_t prev_end = prev->first + prev->second;
      KVT_CHECK_MSG(prev_end <= offset, "double free: [{}, +{}) overlaps the free extent [{}, +{})",
                    offset, bytes, prev->first, prev->second);
      merge_prev = prev_end == offset;
    }
    const uint64_t next_size = merge_next ? next->second : 0;
    if (merge_next) EraseBySize(next_size, end);
    if (merge_prev) {
      // Grow the previous extent in place (its key stays), then drop the next one.
      EraseBySize(prev->second, prev->first);
      prev->second += bytes + next_size;
      by_size_[prev->second].insert(prev->first);
      if (merge_next) by_addr_.erase(next);
    } else {
      if (merge_next) next = by_addr_.erase(next);
      by_addr_.emplace_hint(next, offset, bytes + next_size);
      by_size_[bytes + next_size].insert(offset);
    }
  }

  void EraseBySize(uint64_t size, uint64_t offset) KVT_REQUIRES(mu_) {
    auto it = by_size_.find(size);
    KVT_DCHECK(it != by_size_.end());
    it->second.erase(offset);
    if (it->second.empty()) by_size_.erase(it);
  }

  uint64_t FreeBytes() const { return capacity_ - used_bytes_.load(std::memory_order_relaxed); }
  uint64_t LargestFree() const KVT_REQUIRES(mu_) {
    return by_size_.empty() ? 0 : by_size_.rbegin()->first;
  }

  // CheckConsistency's body.
  Status Check(uint64_t alignment) const KVT_REQUIRES(mu_) {
    size_t indexed = 0;
    for (const auto& [size, offsets] : by_size_) {
      if (offsets.empty()) return Status::Internal(fmt::format("empty size class {}", size));
      indexed += offsets.size();
    }
    if (by_addr_.size() != indexed) {
      return Status::Internal(
          fmt::format("{} extents by address but {} by size", by_addr_.size(), indexed));
    }
    uint64_t free_bytes = 0;
    uint64_t prev_end = 0;
    bool first = true;
    for (const auto& [offset, size] : by_addr_) {
      if (size == 0) return Status::Internal(fmt::format("empty free extent at {}", offset));
      if (offset % alignment != 0 || size % alignment != 0) {
        return Status::Internal(
            fmt::format("free extent [{}, +{}) is not aligned to {}", offset, size, alignment));
      }
      if (offset > capacity_ || size > capacity_ - offset) {
        return Status::Internal(fmt::format("free extent [{}, +{}) leaves the region of {} bytes",
                                            offset, size, capacity_));
      }
      if (!first && offset < prev_end) {
        return Status::Internal(
            fmt::format("free extent at {} overlaps the one ending at {}", offset, prev_end));
      }
      if (!first && offset == prev_end) {
        return Status::Internal(
            fmt::format("free extents meet at {} without being coalesced", offset));
      }
      auto size_class = by_size_.find(size);
      if (size_class == by_size_.end() || !size_class->second.contains(offset)) {
        return Status::Internal(
            fmt::format("free extent [{}, +{}) is missing from the size index", offset, size));
      }
      free_bytes += size;
      prev_end = offset + size;
      first = false;
    }
    const uint64_t used = used_bytes_.load(std::memory_order_relaxed);
    if (free_bytes + used != capacity_) {
      return Status::Internal(
          fmt::format("free {} + used {} != capacity {}", free_bytes, used, capacity_));
    }
    if ((num_allocations_ == 0) != (used == 0)) {
      return Status::Internal(fmt::format("{} allocations hold {} bytes", num_allocations_, used));
    }
    return Status::OK();
  }

  const uint64_t capacity_;
  alignas(kCacheLine) mutable Mutex mu_;
  absl::btree_map<uint64_t, uint64_t> by_addr_ KVT_GUARDED_BY(mu_);  // offset -> size
  BySize by_size_ KVT_GUARDED_BY(mu_);
  uint64_t num_allocations_ KVT_GUARDED_BY(mu_) = 0;
  uint64_t failed_allocations_ KVT_GUARDED_BY(mu_) = 0;
  // Reserved (rounded) bytes. Polled by other threads, so kept off the lock's cache line.
  alignas(kCacheLine) std::atomic<uint64_t> used_bytes_{0};
};

// ---- Allocation ----

Allocation::Allocation(Allocation&& other) noexcept
    : allocator_(std::exchange(other.allocator_, nullptr)),
      offset_(other.offset_),
      size_(other.size_) {}

Allocation& Allocation::operator=(Allocation&& other) noexcept {
  if (this != &other) {
    Reset();
    allocator_ = std::exchange(other.allocator_, nullptr);
    offset_ = other.offset_;
    size_ = other.size_;
  }
  return *this;
}

uint8_t* Allocation::data() const {
  if (allocator_ == nullptr || allocator_->base() == nullptr) return nullptr;
  return allocator_->base() + offset_;
}

Allocation::Raw Allocation::Detach() {
  Raw raw{offset_, size_};
  allocator_ = nullptr;
  offset_ = 0;
  size_ = 0;
  return raw;
}

Allocation Allocator::Adopt(Allocation::Raw raw) {
  KVT_DCHECK(raw.size > 0 && raw.offset % alignment_ == 0 &&
             raw.offset + RoundUp(raw.size) <= capacity_);
  return Allocation(this, raw.offset, raw.size);
}

void Allocation::Reset() {
  if (allocator_ == nullptr) return;
  Allocator* allocator = std::exchange(allocator_, nullptr);
  allocator->Free(offset_, size_);
}

// ---- Allocator ----

Result<std::unique_ptr<Allocator>> Allocator::Create(uint8_t* base, uint64_t capacity,
                                                     uint64_t alignment) {
  if (alignment < kMinAlignment || (alignment & (alignment - 1)) != 0) {
    return MakeError(Status::InvalidArgument(fmt::format(
        "allocator alignment {} is not a power of two >= {}", alignment, kMinAlignment)));
  }
  if (reinterpret_cast<uintptr_t>(base) % alignment != 0) {
    return MakeError(Status::InvalidArgument(
        fmt::format("allocator base {} is not aligned to {}", fmt::ptr(base), alignment)));
  }
  const uint64_t usable = capacity & ~(alignment - 1);
  if (usable == 0 || usable > kMaxCapacity) {
    return MakeError(Status::InvalidArgument(
        fmt::format("allocator capacity {} (with alignment {}) must be in [alignment, 2^62]",
                    capacity, alignment)));
  }
  return std::unique_ptr<Allocator>(new Allocator(base, usable, alignment));
}

Allocator::Allocator(uint8_t* base, uint64_t capacity, uint64_t alignment)
    : base_(base), capacity_(capacity), alignment_(alignment), impl_(new Impl(capacity)) {}

Allocator::~Allocator() {
  KVT_DCHECK_MSG(used_bytes() == 0, "allocator destroyed with {} bytes still allocated",
                 used_bytes());
}

Result<Allocation> Allocator::Allocate(uint64_t size) {
  if (size == 0 || size > capacity_) {
    return MakeError(Status::InvalidArgument(
        fmt::format("allocation of {} bytes: size must be in [1, {}]", size, capacity_)));
  }
  const uint64_t bytes = RoundUp(size);
  uint64_t free_bytes = 0;
  uint64_t largest = 0;
  {
    MutexLock lock(&impl_->mu_);
    auto fit = impl_->FindFit(bytes);
    if (fit != impl_->by_size_.end()) {
      const uint64_t offset = impl_->CarveFrom(fit, bytes);
      ++impl_->num_allocations_;
      impl_->used_bytes_.fetch_add(bytes, std::memory_order_relaxed);
      return Allocation(this, offset, size);
    }
    ++impl_->failed_allocations_;
    free_bytes = impl_->FreeBytes();
    largest = impl_->LargestFree();
  }
  return MakeError(Status::OutOfMemory(fmt::format(
      "cannot allocate {} bytes: {} free, largest free extent {}", bytes, free_bytes, largest)));
}

Status Allocator::AllocateBatch(std::span<const uint64_t> sizes, std::vector<Allocation>* out) {
  KVT_DCHECK(out != nullptr);
  if (sizes.empty()) return Status::OK();
  uint64_t total = 0;
  for (size_t i = 0; i < sizes.size(); ++i) {
    if (sizes[i] == 0 || sizes[i] > capacity_) {
      return Status::InvalidArgument(
          fmt::format("batch allocation {}: size {} must be in [1, {}]", i, sizes[i], capacity_));
    }
    total += RoundUp(sizes[i]);  // <= 2 * kMaxCapacity: no overflow
    if (total > capacity_) {
      return Status::InvalidArgument(
          fmt::format("batch of {} allocations needs more than the capacity of {} bytes",
                      sizes.size(), capacity_));
    }
  }
  const size_t first = out->size();
  out->reserve(first + sizes.size());  // no allocation under the lock
  uint64_t free_bytes = 0;
  uint64_t largest = 0;
  {
    MutexLock lock(&impl_->mu_);
    if (total <= impl_->FreeBytes()) {
      bool fits = true;
      for (const uint64_t size : sizes) {
        auto fit = impl_->FindFit(RoundUp(size));
        if (fit == impl_->by_size_.end()) {
          fits = false;
          break;
        }
        out->push_back(Allocation(this, impl_->CarveFrom(fit, RoundUp(size)), size));
      }
      if (fits) {
        impl_->num_allocations_ += sizes.size();
        impl_->used_bytes_.fetch_add(total, std::memory_order_relaxed);
        return Status::OK();
      }
      // Roll back. The maximal extents of a set of free bytes are unique, so this restores
      // the free set exactly.
      for (size_t i = first; i < out->size(); ++i) {
        Allocation& a = (*out)[i];
        impl_->Release(a.offset_, RoundUp(a.size_));
        a.allocator_ = nullptr;
      }
    }
    ++impl_->failed_allocations_;
    free_bytes = impl_->FreeBytes();
    largest = impl_->LargestFree();
  }
  out->erase(out->begin() + static_cast<ptrdiff_t>(first), out->end());
  return Status::OutOfMemory(
      fmt::format("cannot allocate a batch of {} ({} bytes): {} free, largest free extent {}",
                  sizes.size(), total, free_bytes, largest));
}

Status Allocator::AllocateBatch(uint64_t size, size_t count, std::vector<Allocation>* out) {
  KVT_DCHECK(out != nullptr);
  if (count == 0) return Status::OK();
  if (size == 0 || size > capacity_) {
    return Status::InvalidArgument(
        fmt::format("batch allocation size {} must be in [1, {}]", size, capacity_));
  }
  const uint64_t bytes = RoundUp(size);
  if (count > capacity_ / bytes) {
    return Status::InvalidArgument(fmt::format(
        "batch of {} x {} bytes exceeds the capacity of {} bytes", count, bytes, capacity_));
  }
  const uint64_t total = bytes * count;
  const size_t first = out->size();
  out->reserve(first + count);
  uint64_t free_bytes = 0;
  uint64_t largest = 0;
  {
    MutexLock lock(&impl_->mu_);
    if (total <= impl_->FreeBytes()) {
      size_t remaining = count;
      while (remaining > 0) {
        auto fit = impl_->FindFit(bytes);
        if (fit == impl_->by_size_.end()) break;
        const size_t take = static_cast<size_t>(std::min<uint64_t>(remaining, fit->first / bytes));
        uint64_t offset = impl_->CarveFrom(fit, take * bytes);
        for (size_t i = 0; i < take; ++i, offset += bytes) {
          out->push_back(Allocation(this, offset, size));
        }
        remaining -= take;
      }
      if (remaining == 0) {
        impl_->num_allocations_ += count;
        impl_->used_bytes_.fetch_add(total, std::memory_order_relaxed);
        return Status::OK();
      }
      for (size_t i = first; i < out->size(); ++i) {
        Allocation& a = (*out)[i];
        impl_->Release(a.offset_, bytes);
        a.allocator_ = nullptr;
      }
    }
    ++impl_->failed_allocations_;
    free_bytes = impl_->FreeBytes();
    largest = impl_->LargestFree();
  }
  out->erase(out->begin() + static_cast<ptrdiff_t>(first), out->end());
  return Status::OutOfMemory(
      fmt::format("cannot allocate a batch of {} x {} bytes: {} free, largest free extent {}",
                  count, bytes, free_bytes, largest));
}

void Allocator::Free(uint64_t offset, uint64_t size) {
  const uint64_t bytes = RoundUp(size);
  MutexLock lock(&impl_->mu_);
  impl_->Release(offset, bytes);
  --impl_->num_allocations_;
  impl_->used_bytes_.fetch_sub(bytes, std::memory_order_relaxed);
}

void Allocator::FreeBatch(std::span<Allocation> allocations) {
  uint64_t freed = 0;
  uint64_t count = 0;
  MutexLock lock(&impl_->mu_);
  for (Allocation& a : allocations) {
    if (a.allocator_ == nullptr) continue;
    KVT_CHECK_MSG(a.allocator_ == this, "FreeBatch of an allocation from another allocator");
    const uint64_t bytes = RoundUp(a.size_);
    impl_->Release(a.offset_, bytes);
    a.allocator_ = nullptr;
    freed += bytes;
    ++count;
  }
  impl_->num_allocations_ -= count;
  impl_->used_bytes_.fetch_sub(freed, std::memory_order_relaxed);
}

AllocatorStats Allocator::Stats() const {
  MutexLock lock(&impl_->mu_);
  AllocatorStats stats;
  stats.capacity_bytes = capacity_;
  stats.used_bytes = impl_->used_bytes_.load(std::memory_order_relaxed);
  stats.free_bytes = capacity_ - stats.used_bytes;
  stats.largest_free_extent = impl_->LargestFree();
  stats.num_allocations = impl_->num_allocations_;
  stats.num_free_extents = impl_->by_addr_.size();
  stats.failed_allocations = impl_->failed_allocations_;
  return stats;
}

uint64_t Allocator::used_bytes() const {
  return impl_->used_bytes_.load(std::memory_order_relaxed);
}

Status Allocator::CheckConsistency() const {
  MutexLock lock(&impl_->mu_);
  return impl_->Check(alignment_);
}

}  // namespace kvtier::memory
