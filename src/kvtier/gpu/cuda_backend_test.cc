// CudaBackend and the gather/scatter kernels against the byte-at-a-time CPU reference
// (transfer/reference_copy.h), for every layout and element size. Label `gpu`: skipped where no
// device is visible. The layers live in this process (CreateLocal); the IPC path is covered by
// the Python end-to-end tests, which need two processes.
#include "kvtier/gpu/cuda_backend.h"

#include <cstring>
#include <random>
#include <string>
#include <vector>

#include <cuda_runtime_api.h>
#include <fmt/format.h>
#include <gtest/gtest.h>

#include "kvtier/transfer/reference_copy.h"

namespace kvtier::gpu {
namespace {

using protocol::DType;
using protocol::KvFormat;
using transfer::testing::Bytes;
using transfer::testing::MakeRefLayout;
using transfer::testing::MakeRequest;
using transfer::testing::RefGather;
using transfer::testing::RefLayout;
using transfer::testing::RefScatter;
using transfer::testing::TestSpec;

#define SKIP_WITHOUT_GPU() \
  if (!DeviceAvailable()) GTEST_SKIP() << "no CUDA device visible"

// Pinned, mapped host memory standing in for the L1 pool, carved into page-aligned objects.
class HostArena {
 public:
  explicit HostArena(uint64_t bytes) : size_(bytes) {
    EXPECT_EQ(cudaHostAlloc(&base_, bytes, cudaHostAllocMapped | cudaHostAllocPortable),
              cudaSuccess);
  }
  ~HostArena() { cudaFreeHost(base_); }
  uint8_t* base() const { return static_cast<uint8_t*>(base_); }
  uint64_t size() const { return size_; }
  std::span<uint8_t> Take(uint64_t bytes) {
    const uint64_t at = (used_ + 4095) / 4096 * 4096;
    EXPECT_LE(at + bytes, size_);
    used_ = at + bytes;
    return {base() + at, bytes};
  }
  CudaBackendOptions Options(uint32_t per_launch = 256) const {
    return CudaBackendOptions{base(), size_, per_launch};
  }

 private:
  void* base_ = nullptr;
  uint64_t size_ = 0;
  uint64_t used_ = 0;
};

std::vector<uint8_t> RandomBytes(uint64_t n, uint32_t seed) {
  std::mt19937_64 rng(seed);
  std::vector<uint8_t> out(n);
  for (auto& b : out) b = static_cast<uint8_t>(rng());
  return out;
}

struct Case {
  TestSpec spec;
  std::string name;
};

std::vector<Case> Cases() {
  std::vector<Case> out;
  for (KvFormat f : {KvFormat::kKvNhd, KvFormat::kNbKvNhd, KvFormat::kKvHnd, KvFormat::kNbKvHnd,
                     KvFormat::kMla, KvFormat::kCrossLayer}) {
    for (DType d : {DType::kBf16, DType::kFp8E4m3, DType::kFp32}) {
      for (bool aligned : {true, false}) {
        TestSpec s;
        s.format = f;
        s.dtype = d;
        s.layers = 3;
        s.blocks = 12;
        s.block_size = 4;
        s.heads = f == KvFormat::kMla ? 1 : 2;
        s.dim = f == KvFormat::kMla ? 24 : 8;
        s.chunk = 16;
        s.aligned = aligned;
        out.push_back({s, fmt::format("{}_{}_{}", protocol::KvFormatName(f), protocol::DTypeName(d),
                                      aligned ? "aligned" : "odd")});
      }
    }
  }
  // Production sizes: Llama-3.1-8B per-layer blocks (32 KiB) and DeepSeek MLA rows (576).
  for (KvFormat f : {KvFormat::kKvNhd, KvFormat::kKvHnd, KvFormat::kCrossLayer}) {
    TestSpec s{f, DType::kBf16, 2, 40, 16, 8, 128, 256, true};
    out.push_back({s, fmt::format("llama_{}", protocol::KvFormatName(f))});
  }
  TestSpec mla{KvFormat::kMla, DType::kBf16, 2, 40, 64, 1, 576, 256, true};
  out.push_back({mla, "deepseek_mla"});
  return out;
}

class CudaBackendTest : public ::testing::TestWithParam<Case> {};

TEST_P(CudaBackendTest, GatherAndScatterMatchTheReference) {
  SKIP_WITHOUT_GPU();
  const TestSpec& spec = GetParam().spec;
  uint64_t segment_size = 0;
  const RefLayout ref = MakeRefLayout(spec, &segment_size);
  const protocol::RegisterKvCacheRequest request = MakeRequest(spec, ref, "unused", segment_size);

  std::vector<uint8_t> segment = RandomBytes(segment_size, 7);
  void* device = nullptr;
  ASSERT_EQ(cudaMalloc(&device, segment_size), cudaSuccess);
  ASSERT_EQ(cudaMemcpy(device, segment.data(), segment_size, cudaMemcpyHostToDevice), cudaSuccess);
  std::vector<void*> layers;
  for (uint64_t off : ref.offsets) layers.push_back(static_cast<uint8_t*>(device) + off);

  const uint64_t bpc = spec.chunk / spec.block_size;
  const size_t num_objects = 5;
  // Both copy modes, and staging with one slot (kernel and DMA in turn on one stream), two and
  // three slots (one object per group: double-buffered over two streams, an odd number of
  // groups), and four (groups of two objects, which a round of three splits), one after the
  // other on the same cache (the device state carries over). With two or three objects per
  // round, a call runs several rounds and the skip crosses them.
  struct Config {
    CudaCopyMode mode;
    uint32_t staging_objects;
    uint32_t per_launch;
  };
  for (Config config :
       {Config{CudaCopyMode::kStagedDma, 1, 2}, Config{CudaCopyMode::kStagedDma, 2, 2},
        Config{CudaCopyMode::kStagedDma, 3, 2}, Config{CudaCopyMode::kStagedDma, 4, 3},
        Config{CudaCopyMode::kMapped, 1, 2}}) {
    SCOPED_TRACE(fmt::format("{}, {} staging objects, {} per launch",
                             config.mode == CudaCopyMode::kStagedDma ? "staged_dma" : "mapped",
                             config.staging_objects, config.per_launch));
    HostArena arena(num_objects * 2 * (ref.ObjectBytes() + 4096));
    CudaBackendOptions options = arena.Options(config.per_launch);
    options.mode = config.mode;
    options.staging_objects = config.staging_objects;
    auto backend = CudaBackend::CreateLocal(request.layout, spec.chunk, 0, layers, options);
    ASSERT_TRUE(backend.has_value()) << backend.error().ToString();
    EXPECT_EQ((*backend)->object_size(), ref.ObjectBytes());

    // Distinct block ids in a scrambled order.
    std::vector<uint32_t> ids;
    for (uint32_t i = 0; i < num_objects * bpc; ++i)
      ids.push_back(static_cast<uint32_t>((i * 7 + 3) % spec.blocks));
    const size_t objects_n = std::min<size_t>(num_objects, spec.blocks / bpc);
    ids.resize(objects_n * bpc);

    std::vector<std::span<uint8_t>> objects;
    for (size_t i = 0; i < objects_n; ++i) objects.push_back(arena.Take(ref.ObjectBytes()));
    for (auto& o : objects) std::memset(o.data(), 0xEE, o.size());

    // on_enqueued: once per call, with the done event already set.
    transfer::DeviceOrder order;
    int enqueued = 0;
    order.on_enqueued = [&] {
      ++enqueued;
      EXPECT_TRUE(order.done_event.has_value());
    };
    ASSERT_TRUE((*backend)->Gather(ids, objects, &order).ok());
    EXPECT_TRUE(order.done_event.has_value());
    EXPECT_EQ(enqueued, 1);
    const std::vector<Bytes> expected = RefGather(ref, segment, ids, objects_n);
    for (size_t i = 0; i < objects_n; ++i) {
      ASSERT_EQ(std::memcmp(objects[i].data(), expected[i].data(), expected[i].size()), 0)
          << "object " << i;
    }

    // Scatter fresh objects back, skipping a prefix that ends inside a block of object 1.
    std::vector<Bytes> fresh;
    std::vector<std::span<const uint8_t>> in;
    for (size_t i = 0; i < objects_n; ++i) {
      std::vector<uint8_t> r = RandomBytes(ref.ObjectBytes(), 100 + static_cast<uint32_t>(i));
      fresh.emplace_back(r.begin(), r.end());
      std::memcpy(objects[i].data(), r.data(), r.size());
      in.emplace_back(objects[i].data(), objects[i].size());
    }
    const uint32_t skip = static_cast<uint32_t>(spec.chunk + spec.block_size / 2 + 1);
    ASSERT_TRUE((*backend)->Scatter(in, ids, skip, &order).ok());
    EXPECT_EQ(enqueued, 2);
    RefScatter(ref, segment, fresh, ids, skip);
    std::vector<uint8_t> back(segment_size);
    ASSERT_EQ(cudaMemcpy(back.data(), device, segment_size, cudaMemcpyDeviceToHost), cudaSuccess);
    EXPECT_EQ(back, segment);
    backend->reset();
  }
  cudaFree(device);
}

INSTANTIATE_TEST_SUITE_P(AllLayouts, CudaBackendTest, ::testing::ValuesIn(Cases()),
                         [](const auto& param_info) { return param_info.param.name; });

TEST(CudaBackendErrors, BadArgumentsCopyNothing) {
  SKIP_WITHOUT_GPU();
  TestSpec spec{KvFormat::kKvNhd, DType::kBf16, 2, 8, 4, 2, 8, 16, true};
  uint64_t segment_size = 0;
  const RefLayout ref = MakeRefLayout(spec, &segment_size);
  const auto request = MakeRequest(spec, ref, "unused", segment_size);
  void* device = nullptr;
  ASSERT_EQ(cudaMalloc(&device, segment_size), cudaSuccess);
  std::vector<void*> layers;
  for (uint64_t off : ref.offsets) layers.push_back(static_cast<uint8_t*>(device) + off);
  HostArena arena(4 * (ref.ObjectBytes() + 4096));
  auto backend = CudaBackend::CreateLocal(request.layout, spec.chunk, 0, layers, arena.Options());
  ASSERT_TRUE(backend.has_value()) << backend.error().ToString();

  std::span<uint8_t> object = arena.Take(ref.ObjectBytes());
  std::memset(object.data(), 0x11, object.size());
  std::vector<std::span<uint8_t>> objects{object};
  // A block id past the end.
  std::vector<uint32_t> ids{0, 1, 2, 8};
  Status s = (*backend)->Gather(ids, objects);
  EXPECT_EQ(s.code(), StatusCode::kOutOfRange) << s.ToString();
  EXPECT_EQ(object[0], 0x11);
  // An object outside the registered host memory.
  std::vector<uint8_t> outside(ref.ObjectBytes());
  std::vector<std::span<uint8_t>> bad{std::span(outside)};
  s = (*backend)->Gather(std::vector<uint32_t>{0, 1, 2, 3}, bad);
  EXPECT_EQ(s.code(), StatusCode::kInvalidArgument) << s.ToString();
  EXPECT_NE(s.message().find("not in the L1 host memory"), std::string::npos);
  // A garbage engine event.
  // A garbage engine event: refused before anything is enqueued, so no early reply either.
  transfer::DeviceOrder order;
  order.wait_event.emplace();
  order.wait_event->fill(0x42);
  order.on_enqueued = [] { ADD_FAILURE() << "on_enqueued for a refused call"; };
  s = (*backend)->Gather(std::vector<uint32_t>{0, 1, 2, 3}, objects, &order);
  EXPECT_EQ(s.code(), StatusCode::kInvalidArgument) << s.ToString();
  EXPECT_FALSE(order.done_event.has_value());
  // Still usable afterwards.
  EXPECT_TRUE((*backend)->Gather(std::vector<uint32_t>{0, 1, 2, 3}, objects).ok());
  backend->reset();
  cudaFree(device);
}

TEST(CudaUtil, UuidRoundTripAndExport) {
  SKIP_WITHOUT_GPU();
  auto uuid = DeviceUuidOf(0);
  ASSERT_TRUE(uuid.has_value()) << uuid.error().ToString();
  auto ordinal = DeviceOrdinalForUuid(*uuid);
  ASSERT_TRUE(ordinal.has_value());
  EXPECT_EQ(*ordinal, 0);
  protocol::DeviceUuid other{};
  other.fill(0xAB);
  auto missing = DeviceOrdinalForUuid(other);
  ASSERT_FALSE(missing.has_value());
  EXPECT_EQ(missing.error().code(), StatusCode::kNotFound);
  EXPECT_NE(missing.error().message().find("GPU-abababab-"), std::string::npos);

  void* device = nullptr;
  ASSERT_EQ(cudaMalloc(&device, 1 << 20), cudaSuccess);
  auto exported = ExportIpcMemory(static_cast<uint8_t*>(device) + 4096);
  ASSERT_TRUE(exported.has_value()) << exported.error().ToString();
  EXPECT_EQ(exported->offset, 4096u);
  EXPECT_GE(exported->allocation_size, 1u << 20);
  cudaFree(device);
}

}  // namespace
}  // namespace kvtier::gpu
