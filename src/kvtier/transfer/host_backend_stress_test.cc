// Concurrency stress for HostBackend and CopyPool: run under TSan (label `stress`).
//
// Several threads gather and scatter disjoint blocks of one segment at once, through two
// backends on the same segment (one sharing a CopyPool, one copying on the caller's thread), and
// check every result against the reference.
#include <algorithm>
#include <atomic>
#include <chrono>
#include <numeric>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include <gtest/gtest.h>

#include "kvtier/transfer/copy_pool.h"
#include "kvtier/transfer/host_backend.h"
#include "kvtier/transfer/reference_copy.h"
#include "kvtier/transfer/test_shm.h"

namespace kvtier::transfer {
namespace {

using testing::MakeRefLayout;
using testing::MakeRequest;
using testing::RefGather;
using testing::TestShm;
using testing::TestSpec;

constexpr int kThreads = 4;
constexpr size_t kObjects = 2;
constexpr auto kDuration = std::chrono::seconds(2);

TEST(HostBackendStressTest, ConcurrentGathersAndScattersOnDisjointBlocks) {
  for (auto format : {protocol::KvFormat::kNbKvHnd, protocol::KvFormat::kKvNhd}) {
    SCOPED_TRACE(KvFormatString(format));
    // 4 blocks per chunk; each thread reads 8 blocks and writes 8 others.
    const TestSpec spec{format, protocol::DType::kBf16, 4, 2 * kThreads * 8, 4, 2, 64, 16, true};
    const uint32_t bpc = spec.chunk / spec.block_size;
    const uint32_t per_range = kObjects * bpc;
    uint64_t size = 0;
    const auto ref = MakeRefLayout(spec, &size);
    TestShm shm(size);
    shm.Fill(77);
    const auto request = MakeRequest(spec, ref, shm.name(), size);

    CopyPool pool(2);
    HostBackendOptions pooled_options;
    pooled_options.pool = &pool;
    pooled_options.min_parallel_bytes = 0;
    pooled_options.stream_min_bytes = 0;
    auto pooled = HostBackend::Create(request, spec.chunk, pooled_options);
    auto plain = HostBackend::Create(request, spec.chunk, nullptr);
    ASSERT_TRUE(pooled.has_value() && plain.has_value());
    HostBackend* backends[] = {pooled->get(), plain->get()};

    // Thread t reads blocks `sources[t]` and writes blocks `targets[t]`; all disjoint.
    std::vector<uint32_t> ids(spec.blocks);
    std::iota(ids.begin(), ids.end(), 0u);
    std::shuffle(ids.begin(), ids.end(), std::mt19937_64(3));
    std::vector<std::vector<uint32_t>> sources(kThreads);
    std::vector<std::vector<uint32_t>> targets(kThreads);
    std::vector<std::vector<testing::Bytes>> expected(kThreads);
    for (int t = 0; t < kThreads; ++t) {
      sources[t].assign(ids.begin() + 2 * t * per_range, ids.begin() + (2 * t + 1) * per_range);
      targets[t].assign(ids.begin() + (2 * t + 1) * per_range,
                        ids.begin() + (2 * t + 2) * per_range);
      expected[t] = RefGather(ref, shm.bytes(), sources[t], kObjects);
    }

    std::atomic<uint64_t> rounds{0};
    std::atomic<uint64_t> mismatches{0};
    std::atomic<uint64_t> errors{0};
    const auto deadline = std::chrono::steady_clock::now() + kDuration / 2;
    auto worker = [&](int t) {
      std::mt19937_64 rng(100 + t);
      const uint64_t object_size = backends[0]->object_size();
      std::vector<testing::Bytes> objects(kObjects, testing::Bytes(object_size));
      std::vector<std::span<uint8_t>> out(objects.begin(), objects.end());
      std::vector<std::span<const uint8_t>> in(objects.begin(), objects.end());
      bool targets_written = false;
      do {  // at least one round per thread, however late it starts
        HostBackend* b = backends[rng() % 2];
        if (!b->Gather(sources[t], out).ok()) errors.fetch_add(1);
        if (objects != expected[t]) mismatches.fetch_add(1);
        // The first scatter writes everything; later ones skip a random prefix, which the
        // earlier ones already wrote with the same bytes.
        const uint32_t skip =
            targets_written ? static_cast<uint32_t>(rng() % (kObjects * spec.chunk + 1)) : 0;
        if (!backends[rng() % 2]->Scatter(in, targets[t], skip).ok()) errors.fetch_add(1);
        targets_written = true;
        std::fill(objects[0].begin(), objects[0].end(), uint8_t{0});
        if (!backends[rng() % 2]->Gather(targets[t], out).ok()) errors.fetch_add(1);
        if (objects != expected[t]) mismatches.fetch_add(1);
        rounds.fetch_add(1);
      } while (std::chrono::steady_clock::now() < deadline);
    };
    std::vector<std::thread> threads;
    for (int t = 0; t < kThreads; ++t) threads.emplace_back(worker, t);
    for (auto& th : threads) th.join();

    EXPECT_EQ(errors.load(), 0u);
    EXPECT_EQ(mismatches.load(), 0u);
    RecordProperty(std::string("rounds_") + KvFormatString(format), std::to_string(rounds.load()));
    // Sources were only read.
    for (int t = 0; t < kThreads; ++t) {
      EXPECT_TRUE(RefGather(ref, shm.bytes(), sources[t], kObjects) == expected[t]);
    }
  }
}

}  // namespace
}  // namespace kvtier::transfer
