// `kvtier bench l1`: the L1 lookup path, the store path under eviction, metadata per object.
#include <thread>

#include <absl/container/flat_hash_map.h>
#include <fmt/format.h>
#include <malloc.h>

#include "kvtier/common/units.h"
#include "kvtier/eviction/l1_eviction_controller.h"
#include "kvtier/eviction/policy.h"
#include "kvtier/l1/l1_manager.h"

#include "suites.h"

namespace kvtier::bench {
namespace {

using keys::ObjectKey;
using l1::L1Manager;
using l1::L1Result;

constexpr size_t kBatch = 64;

std::vector<ObjectKey> MakeKeys(size_t n, uint64_t seed) {
  std::vector<ObjectKey> keys;
  keys.reserve(n);
  auto ns = keys::InternNamespace("bench-model", "").value();
  uint64_t x = seed;
  for (size_t i = 0; i < n; ++i) {
    keys::ChunkHash h;
    for (size_t b = 0; b < keys::kChunkHashBytes; b += 8) {
      x = x * 6364136223846793005ULL + 1442695040888963407ULL;  // LCG: cheap distinct bytes
      for (int j = 0; j < 8; ++j) h.bytes[b + j] = static_cast<uint8_t>(x >> (8 * j));
    }
    keys.push_back(ObjectKey::Create(h, ns, keys::KvRank{1, 0}, 0).value());
  }
  return keys;
}

Result<std::unique_ptr<L1Manager>> MakeL1(uint64_t capacity, uint64_t alignment,
                                          Duration allocation_wait) {
  l1::L1Options o;
  o.capacity_bytes = capacity;
  o.alignment = alignment;
  o.allocation_wait = allocation_wait;
  o.register_with_cuda = false;
  return L1Manager::Create(o);
}

// Fills `l1` with `keys`, objects of `size` bytes, in batches.
Status Fill(L1Manager* l1, const std::vector<ObjectKey>& keys, uint64_t size) {
  std::vector<l1::ObjectView> views;
  for (size_t i = 0; i < keys.size(); i += kBatch) {
    std::span<const ObjectKey> batch(keys.data() + i, std::min(kBatch, keys.size() - i));
    for (L1Result r : l1->ReserveWrite(batch, size, false, l1::kDefaultWriter, &views)) {
      if (r != L1Result::kSuccess) return Status::Internal("fill: reserve_write failed");
    }
    for (L1Result r : l1->FinishWrite(batch, l1::kDefaultWriter)) {
      if (r != L1Result::kSuccess) return Status::Internal("fill: finish_write failed");
    }
  }
  return Status::OK();
}

// Lookup path: reserve_read + finish_read of 64-key batches over N resident keys.
Status LookupPath(const SuiteOptions& opt, Reporter* reporter, Progress* progress) {
  const size_t n = opt.quick ? 100'000 : 1'000'000;
  const uint64_t obj = 256;  // metadata path: the bytes are never touched
  KVT_ASSIGN_OR_RETURN(auto l1, MakeL1(n * obj, obj, Duration::zero()));
  auto keys = MakeKeys(n, 1);
  KVT_RETURN_STATUS_IF_ERROR(Fill(l1.get(), keys, obj));
  progress->Step();

  // Each thread walks its own random permutation of batches.
  auto body = [&](int t, const std::atomic<bool>* stop) -> uint64_t {
    std::vector<ObjectKey> order = keys;
    uint64_t x = 0x9e3779b97f4a7c15ULL * (t + 1);
    for (size_t i = order.size() - 1; i > 0; --i) {
      x ^= x << 13, x ^= x >> 7, x ^= x << 17;
      std::swap(order[i], order[x % (i + 1)]);
    }
    uint64_t ops = 0;
    size_t pos = 0;
    std::vector<l1::ObjectView> views;
    while (!stop->load(std::memory_order_relaxed)) {
      if (pos + kBatch > order.size()) pos = 0;
      std::span<const ObjectKey> batch(order.data() + pos, kBatch);
      auto r1 = l1->ReserveRead(batch, 1, &views);
      auto r2 = l1->FinishRead(batch, 1);
      if (r1[0] != L1Result::kSuccess || r2[kBatch - 1] != L1Result::kSuccess) std::abort();
      pos += kBatch;
      ops += kBatch;
    }
    return ops;
  };

  // Baseline: two finds per key in one flat hash map, no locks, no TTLs (the floor of any
  // lookup that must reach a 1M-entry table twice per key).
  absl::flat_hash_map<ObjectKey, uint64_t, keys::ObjectKeyHash> plain;
  plain.reserve(n);
  for (size_t i = 0; i < n; ++i) plain.emplace(keys[i], i);
  double baseline = MeasureRateThreads(1, opt.min_seconds, [&](int, const std::atomic<bool>* stop) {
    uint64_t ops = 0, sum = 0;
    size_t pos = 0;
    while (!stop->load(std::memory_order_relaxed)) {
      if (pos + kBatch > n) pos = 0;
      for (size_t i = pos; i < pos + kBatch; ++i) sum += plain.find(keys[i])->second;
      for (size_t i = pos; i < pos + kBatch; ++i) sum += plain.find(keys[i])->second;
      pos += kBatch;
      ops += kBatch;
    }
    if (sum == 42) std::abort();  // keep the loop
    return ops;
  });
  progress->Step();
  double one = MeasureRateThreads(1, opt.min_seconds, body);
  progress->Step();
  double two = MeasureRateThreads(2, opt.min_seconds, body);
  progress->Step();
  std::string label = fmt::format("lookup reserve+finish_read, 64-key batches, {} keys", n);
  reporter->Add({label + ", 1 thread", one, "keys/s", "flat_hash_map 2x find, 1 thread", baseline});
  reporter->Add({label + ", 2 threads", two, "keys/s", "same, 1 thread", one});
  return Status::OK();
}

// Store path: reserve_write + finish_write of 64 x 32 KiB under eviction, for a volume of at
// least twice the capacity.
Status StorePath(const SuiteOptions& opt, Reporter* reporter, Progress* progress) {
  const uint64_t obj = 32 * kKiB;
  const uint64_t capacity = (opt.quick ? 32 : 256) * kMiB;

  // Baseline: the raw allocator's batch allocate + free of the same objects.
  KVT_ASSIGN_OR_RETURN(auto allocator, memory::Allocator::Create(nullptr, capacity, 4096));
  double baseline = MeasureRate(
      [&] {
        std::vector<memory::Allocation> out;
        for (int i = 0; i < 16; ++i) {
          if (!allocator->AllocateBatch(obj, kBatch, &out).ok()) std::abort();
          out.clear();
        }
        return uint64_t{16 * kBatch};
      },
      opt.min_seconds);
  progress->Step();

  for (Duration wait : {Duration::zero(), Duration(std::chrono::milliseconds(100))}) {
    KVT_ASSIGN_OR_RETURN(auto l1, MakeL1(capacity, 4096, wait));
    KVT_ASSIGN_OR_RETURN(auto policy, eviction::MakeEvictionPolicy("lru"));
    KVT_ASSIGN_OR_RETURN(auto controller,
                         eviction::L1EvictionController::Create(l1.get(), std::move(policy), {}));
    KVT_RETURN_STATUS_IF_ERROR(controller->Start());
    const size_t pool_objects = capacity / obj;
    auto keys = MakeKeys(pool_objects * 64, 7);  // never reused within a run
    uint64_t attempted = 0, failed = 0;
    size_t pos = 0;
    std::vector<l1::ObjectView> views;
    double rate = MeasureRate(
        [&] {
          for (int i = 0; i < 16; ++i) {
            if (pos + kBatch > keys.size()) pos = 0;
            std::span<const ObjectKey> batch(keys.data() + pos, kBatch);
            pos += kBatch;
            auto r = l1->ReserveWrite(batch, obj, false, l1::kDefaultWriter, &views);
            l1->FinishWrite(batch, l1::kDefaultWriter);
            attempted += kBatch;
            for (L1Result x : r) failed += x == L1Result::kOutOfMemory ? 1 : 0;
          }
          return uint64_t{16 * kBatch};
        },
        std::max(opt.min_seconds, 0.2));
    controller->Stop();
    double volume = static_cast<double>(attempted) * obj / static_cast<double>(capacity);
    if (volume < 2) {
      return Status::Internal(fmt::format("store path wrote only {:.1f}x the capacity", volume));
    }
    std::string label =
        fmt::format("store reserve+finish_write 64 x 32KiB, {} L1, LRU eviction, wait {}",
                    FormatSize(capacity), FormatDuration(wait));
    reporter->Add({label, rate, "keys/s", "allocator batch alloc+free", baseline});
    reporter->Add({label + ": allocation failures", 100.0 * failed / attempted, "%", std::nullopt,
                   std::nullopt});
    progress->Step();
  }
  return Status::OK();
}

// Heap bytes per resident object: the L1 table plus the LRU policy tracking every key.
Status MetadataPerObject(const SuiteOptions& opt, Reporter* reporter, Progress* progress) {
  const size_t n = opt.quick ? 100'000 : 1'000'000;
  auto keys = MakeKeys(n, 3);
  {
    // Twice the room needed: stays under the eviction trigger, so every key stays tracked.
    KVT_ASSIGN_OR_RETURN(auto l1, MakeL1(2 * n * 256, 256, Duration::zero()));
    KVT_ASSIGN_OR_RETURN(auto policy, eviction::MakeEvictionPolicy("lru"));
    KVT_ASSIGN_OR_RETURN(auto controller,
                         eviction::L1EvictionController::Create(l1.get(), std::move(policy), {}));
    size_t empty = mallinfo2().uordblks;
    KVT_RETURN_STATUS_IF_ERROR(Fill(l1.get(), keys, 256));
    controller->RunOnce();  // apply the queued creates to the policy
    size_t full = mallinfo2().uordblks;
    if (controller->stats().tracked_keys != n)
      return Status::Internal("policy did not track every key");
    reporter->Add({fmt::format("metadata per resident object (L1 table + LRU), {} objects", n),
                   static_cast<double>(full - empty) / n, "bytes", std::nullopt, std::nullopt});
  }
  progress->Step();
  return Status::OK();
}

}  // namespace

Status RunL1Suite(const SuiteOptions& options, Reporter* reporter) {
  Progress progress("bench l1", 9, !options.json);
  KVT_RETURN_STATUS_IF_ERROR(LookupPath(options, reporter, &progress));
  KVT_RETURN_STATUS_IF_ERROR(StorePath(options, reporter, &progress));
  KVT_RETURN_STATUS_IF_ERROR(MetadataPerObject(options, reporter, &progress));
  return Status::OK();
}

}  // namespace kvtier::bench
