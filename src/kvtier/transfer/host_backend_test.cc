#include "kvtier/transfer/host_backend.h"

#include <algorithm>
#include <cstring>
#include <numeric>
#include <ostream>
#include <random>
#include <string>
#include <vector>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "kvtier/transfer/copy_pool.h"
#include "kvtier/transfer/reference_copy.h"
#include "kvtier/transfer/test_shm.h"

namespace kvtier::transfer {
namespace {

using protocol::DType;
using protocol::KvFormat;
using ::testing::HasSubstr;
using testing::MakeRefLayout;
using testing::MakeRequest;
using testing::RefGather;
using testing::RefLayout;
using testing::RefScatter;
using testing::TestShm;
using testing::TestSpec;

using Objects = std::vector<testing::Bytes>;

std::vector<std::span<uint8_t>> Spans(Objects& objects) { return {objects.begin(), objects.end()}; }
std::vector<std::span<const uint8_t>> ConstSpans(const Objects& objects) {
  return {objects.begin(), objects.end()};
}

// A seeded permutation of [0, blocks), so a range's blocks are scattered over the cache.
std::vector<uint32_t> ShuffledBlocks(uint32_t blocks, uint64_t seed) {
  std::vector<uint32_t> ids(blocks);
  std::iota(ids.begin(), ids.end(), 0u);
  std::mt19937_64 rng(seed);
  std::shuffle(ids.begin(), ids.end(), rng);
  return ids;
}

// One registered engine cache: the segment, the reference's view of it and a backend.
struct Fixture {
  TestSpec spec;
  RefLayout ref;
  uint64_t segment_size = 0;
  std::unique_ptr<TestShm> shm;
  protocol::RegisterKvCacheRequest request;
  std::unique_ptr<HostBackend> backend;

  Fixture(const TestSpec& s, uint64_t seed, const HostBackendOptions& options = {}) : spec(s) {
    ref = MakeRefLayout(spec, &segment_size);
    shm = std::make_unique<TestShm>(segment_size);
    if (seed != 0) shm->Fill(seed);
    request = MakeRequest(spec, ref, shm->name(), segment_size);
    auto created = HostBackend::Create(request, spec.chunk, options);
    KVT_CHECK_MSG(created.has_value(), "{}", created.error().ToString());
    backend = std::move(*created);
  }
  uint64_t bpc() const { return spec.chunk / spec.block_size; }
  // Objects for `n` chunks, filled with `fill`.
  Objects MakeObjects(size_t n, uint8_t fill = 0) const {
    return Objects(n, testing::Bytes(ref.ObjectBytes(), fill));
  }
  std::vector<uint8_t> Snapshot() const { return {shm->data(), shm->data() + segment_size}; }
};

// Copies with memcpy, or with streaming stores (whatever the call's size).
HostBackendOptions CopyMode(bool stream) {
  HostBackendOptions options;
  options.stream_min_bytes = stream ? 0 : UINT64_MAX;
  return options;
}

// ---- Conformance over formats, dtypes and shapes ----------------------------------------

struct Case {
  std::string name;
  TestSpec spec;
  size_t objects;
};
void PrintTo(const Case& c, std::ostream* os) { *os << c.name; }

std::vector<Case> Cases() {
  std::vector<Case> cases;
  const std::pair<const char*, KvFormat> formats[] = {{"KvNhd", KvFormat::kKvNhd},
                                                      {"NbKvNhd", KvFormat::kNbKvNhd},
                                                      {"KvHnd", KvFormat::kKvHnd},
                                                      {"NbKvHnd", KvFormat::kNbKvHnd},
                                                      {"CrossLayer", KvFormat::kCrossLayer}};
  for (const auto& [fname, format] : formats) {
    const std::string f = fname;
    // bf16, 3 heads of 16 (32-byte rows: the generic row copy), 4 blocks per chunk.
    cases.push_back({f + "Bf16", {format, DType::kBf16, 3, 37, 4, 3, 16, 16}, 3});
    // fp32, 128-byte rows (a fixed-size row copy), 2 blocks per chunk.
    cases.push_back({f + "Fp32", {format, DType::kFp32, 2, 11, 8, 2, 32, 16}, 4});
    // fp8, a single head, block_size == chunk_size.
    cases.push_back(
        {f + "Fp8OneHeadBlockIsChunk", {format, DType::kFp8E4m3, 3, 9, 16, 1, 64, 16}, 3});
    // fp16, one layer, tiny blocks, 256-byte rows.
    cases.push_back({f + "Fp16OneLayer", {format, DType::kFp16, 1, 20, 2, 4, 128, 8}, 5});
    // Five layers (the slot permutation falls back to in-order), block size 1.
    cases.push_back({f + "Fp8E5m2BlockOfOne", {format, DType::kFp8E5m2, 5, 12, 1, 2, 8, 4}, 2});
  }
  cases.push_back({"MlaBf16", {KvFormat::kMla, DType::kBf16, 2, 13, 4, 1, 576, 8}, 3});
  cases.push_back({"MlaFp8BlockIsChunk", {KvFormat::kMla, DType::kFp8E4m3, 3, 6, 8, 1, 656, 8}, 4});
  cases.push_back({"MlaFp32", {KvFormat::kMla, DType::kFp32, 1, 10, 2, 1, 16, 4}, 3});
  // Every case again with page-aligned layers: the streaming tile path for HND scatters.
  const size_t n = cases.size();
  for (size_t i = 0; i < n; ++i) {
    Case aligned = cases[i];
    aligned.name += "Aligned";
    aligned.spec.aligned = true;
    cases.push_back(aligned);
  }
  return cases;
}

class HostBackendLayoutTest : public ::testing::TestWithParam<Case> {
 protected:
  static void ScatterRoundTrip(const Case& c, const HostBackendOptions& options);
  static void ScatterWithSkips(const Case& c, const HostBackendOptions& options);
};

INSTANTIATE_TEST_SUITE_P(Layouts, HostBackendLayoutTest, ::testing::ValuesIn(Cases()),
                         [](const auto& test_info) { return test_info.param.name; });

TEST_P(HostBackendLayoutTest, ObjectSizeIsKv2ltd) {
  const Case& c = GetParam();
  Fixture f(c.spec, 1);
  EXPECT_EQ(f.backend->object_size(), f.ref.ObjectBytes());
  EXPECT_EQ(f.backend->blocks_per_chunk(), c.spec.chunk / c.spec.block_size);
  EXPECT_EQ(f.backend->chunk_size(), c.spec.chunk);
}

TEST_P(HostBackendLayoutTest, GatherMatchesReference) {
  const Case& c = GetParam();
  for (bool stream : {false, true}) {
    SCOPED_TRACE(stream ? "streaming stores" : "memcpy");
    Fixture f(c.spec, 11, CopyMode(stream));
    const auto ids = ShuffledBlocks(c.spec.blocks, 5);
    ASSERT_GE(ids.size(), c.objects * f.bpc());
    Objects objects = f.MakeObjects(c.objects, 0xCD);
    ASSERT_TRUE(f.backend->Gather(ids, Spans(objects)).ok());
    const Objects expected = RefGather(f.ref, f.shm->bytes(), ids, c.objects);
    for (size_t i = 0; i < c.objects; ++i) EXPECT_EQ(objects[i], expected[i]) << "object " << i;
  }
}

TEST_P(HostBackendLayoutTest, ScatterMatchesReferenceAndRoundTrips) {
  const Case& c = GetParam();
  for (bool stream : {false, true}) {
    SCOPED_TRACE(stream ? "streaming stores" : "memcpy");
    ScatterRoundTrip(c, CopyMode(stream));
  }
}

void HostBackendLayoutTest::ScatterRoundTrip(const Case& c, const HostBackendOptions& options) {
  Fixture src(c.spec, 21, options);
  Fixture dst(c.spec, 0, options);  // zeroed
  const auto src_ids = ShuffledBlocks(c.spec.blocks, 6);
  const auto dst_ids = ShuffledBlocks(c.spec.blocks, 7);
  Objects objects = src.MakeObjects(c.objects);
  ASSERT_TRUE(src.backend->Gather(src_ids, Spans(objects)).ok());

  ASSERT_TRUE(dst.backend->Scatter(ConstSpans(objects), dst_ids, 0).ok());
  std::vector<uint8_t> expected(dst.segment_size, 0);
  RefScatter(dst.ref, expected, objects, dst_ids, 0);
  EXPECT_TRUE(dst.Snapshot() == expected) << "scatter differs from the reference";

  // Bitwise round trip: the blocks written give back the same objects.
  Objects back = dst.MakeObjects(c.objects, 0x5A);
  ASSERT_TRUE(dst.backend->Gather(dst_ids, Spans(back)).ok());
  EXPECT_TRUE(back == objects);
}

TEST_P(HostBackendLayoutTest, ScatterLeavesSkippedTokensUntouched) {
  const Case& c = GetParam();
  for (bool stream : {false, true}) {
    SCOPED_TRACE(stream ? "streaming stores" : "memcpy");
    ScatterWithSkips(c, CopyMode(stream));
  }
}

void HostBackendLayoutTest::ScatterWithSkips(const Case& c, const HostBackendOptions& options) {
  Fixture src(c.spec, 31, options);
  const auto ids = ShuffledBlocks(c.spec.blocks, 8);
  Objects objects = src.MakeObjects(c.objects);
  ASSERT_TRUE(src.backend->Gather(ids, Spans(objects)).ok());

  const uint32_t bs = c.spec.block_size;
  const uint32_t total = static_cast<uint32_t>(c.objects) * c.spec.chunk;
  std::vector<uint32_t> skips = {0, bs, c.spec.chunk + bs / 2 + 1, total - 1, total};
  if (bs > 1) skips.push_back(bs / 2 + 1);  // inside the first block
  for (uint32_t skip : skips) {
    SCOPED_TRACE(::testing::Message() << "skip " << skip);
    Fixture dst(c.spec, 1000 + skip, options);  // a different pattern: untouched bytes show
    std::vector<uint8_t> expected = dst.Snapshot();
    RefScatter(dst.ref, expected, objects, ids, skip);
    ASSERT_TRUE(dst.backend->Scatter(ConstSpans(objects), ids, skip).ok());
    EXPECT_TRUE(dst.Snapshot() == expected);
  }
}

TEST_P(HostBackendLayoutTest, CopyPoolGivesTheSameBytes) {
  const Case& c = GetParam();
  const auto ids = ShuffledBlocks(c.spec.blocks, 9);
  Fixture plain(c.spec, 41);
  Objects want = plain.MakeObjects(c.objects);
  ASSERT_TRUE(plain.backend->Gather(ids, Spans(want)).ok());
  const uint32_t skip = c.spec.chunk / 2 + 1;
  std::vector<uint8_t> scattered_plain;
  {
    Fixture dst(c.spec, 42);
    ASSERT_TRUE(dst.backend->Scatter(ConstSpans(want), ids, skip).ok());
    scattered_plain = dst.Snapshot();
  }
  for (size_t threads : {1, 3}) {
    SCOPED_TRACE(::testing::Message() << threads << " pool threads");
    CopyPool pool(threads);
    HostBackendOptions options;
    options.pool = &pool;
    options.min_parallel_bytes = 0;  // always split
    options.stream_min_bytes = 0;    // and stream
    Fixture pooled(c.spec, 41, options);
    Objects got = pooled.MakeObjects(c.objects, 0x77);
    ASSERT_TRUE(pooled.backend->Gather(ids, Spans(got)).ok());
    EXPECT_TRUE(got == want);
    Fixture dst(c.spec, 42, options);
    ASSERT_TRUE(dst.backend->Scatter(ConstSpans(want), ids, skip).ok());
    EXPECT_TRUE(dst.Snapshot() == scattered_plain);
  }
}

TEST_P(HostBackendLayoutTest, ObjectsAtOddAddresses) {
  // Objects need no alignment: views 8 bytes into line-aligned buffers.
  const Case& c = GetParam();
  const auto ids = ShuffledBlocks(c.spec.blocks, 10);
  Fixture f(c.spec, 61, CopyMode(/*stream=*/true));
  const uint64_t size = f.backend->object_size();
  Objects buffers(c.objects, testing::Bytes(size + 8, 0));
  std::vector<std::span<uint8_t>> views;
  for (auto& b : buffers) views.emplace_back(b.data() + 8, size);
  ASSERT_TRUE(f.backend->Gather(ids, views).ok());
  const Objects expected = RefGather(f.ref, f.shm->bytes(), ids, c.objects);
  for (size_t i = 0; i < c.objects; ++i) {
    EXPECT_TRUE(std::equal(views[i].begin(), views[i].end(), expected[i].begin()));
  }
  Fixture dst(c.spec, 62, CopyMode(/*stream=*/true));
  std::vector<uint8_t> want = dst.Snapshot();
  RefScatter(dst.ref, want, expected, ids, 3);
  std::vector<std::span<const uint8_t>> in(views.begin(), views.end());
  ASSERT_TRUE(dst.backend->Scatter(in, ids, 3).ok());
  EXPECT_TRUE(dst.Snapshot() == want);
}

// ---- Call validation: fail closed ---------------------------------------------------------

const TestSpec kHnd{KvFormat::kKvHnd, DType::kBf16, 3, 12, 4, 2, 8, 8};  // 2 blocks per chunk

class HostBackendValidationTest : public ::testing::Test {
 protected:
  HostBackendValidationTest() : f_(kHnd, 51), ids_(ShuffledBlocks(kHnd.blocks, 3)) {}

  // Runs a failing Gather and a failing Scatter; checks the code, the message and that
  // neither the objects nor the segment changed.
  void ExpectBothFail(std::span<const uint32_t> ids, Objects objects, uint32_t skip,
                      StatusCode code, const std::vector<std::string>& message_parts) {
    for (auto& o : objects) std::fill(o.begin(), o.end(), uint8_t{0xAB});
    const Objects before = objects;
    const std::vector<uint8_t> segment = f_.Snapshot();
    Status g = f_.backend->Gather(ids, Spans(objects));
    Status s = f_.backend->Scatter(ConstSpans(objects), ids, skip);
    for (const Status* st : {&g, &s}) {
      EXPECT_EQ(st->code(), code) << st->ToString();
      for (const auto& part : message_parts) EXPECT_THAT(st->ToString(), HasSubstr(part));
    }
    EXPECT_TRUE(objects == before) << "gather wrote into objects";
    EXPECT_TRUE(f_.Snapshot() == segment) << "scatter wrote into the segment";
  }

  Fixture f_;
  std::vector<uint32_t> ids_;
};

TEST_F(HostBackendValidationTest, BlockIdOutOfRange) {
  std::vector<uint32_t> ids(ids_.begin(), ids_.begin() + 6);
  ids[5] = kHnd.blocks;  // the very last one: everything before it is valid
  ExpectBothFail(ids, f_.MakeObjects(3), 0, StatusCode::kOutOfRange,
                 {"block id 12", "num_blocks is 12", "object 2"});
  ids[5] = 0xFFFFFFFFu;
  ExpectBothFail(ids, f_.MakeObjects(3), 0, StatusCode::kOutOfRange, {"block id 4294967295"});
}

TEST_F(HostBackendValidationTest, WrongObjectSize) {
  const uint64_t size = f_.backend->object_size();
  Objects objects = f_.MakeObjects(3);
  objects[2].resize(size - 1);
  ExpectBothFail(ids_, objects, 0, StatusCode::kInvalidArgument,
                 {"object 2 is " + std::to_string(size - 1) + " bytes",
                  "object_size is " + std::to_string(size)});
  objects[2].resize(size + 1);
  ExpectBothFail(ids_, objects, 0, StatusCode::kInvalidArgument,
                 {"object 2 is " + std::to_string(size + 1) + " bytes"});
  objects[2].clear();
  ExpectBothFail(ids_, objects, 0, StatusCode::kInvalidArgument, {"object 2 is 0 bytes"});
}

TEST_F(HostBackendValidationTest, TooFewBlockIds) {
  std::span<const uint32_t> ids(ids_.data(), 5);
  ExpectBothFail(ids, f_.MakeObjects(3), 0, StatusCode::kInvalidArgument,
                 {"need 6 block ids", "got 5"});
  ExpectBothFail({}, f_.MakeObjects(1), 0, StatusCode::kInvalidArgument,
                 {"need 2 block ids", "got 0"});
}

TEST_F(HostBackendValidationTest, SkipBeyondTheRange) {
  Objects objects = f_.MakeObjects(2);
  const std::vector<uint8_t> segment = f_.Snapshot();
  Status s = f_.backend->Scatter(ConstSpans(objects), ids_, 2 * kHnd.chunk + 1);
  EXPECT_EQ(s.code(), StatusCode::kOutOfRange);
  EXPECT_THAT(s.ToString(), HasSubstr("skip_first_n_tokens 17 exceeds the 16 tokens"));
  EXPECT_TRUE(f_.Snapshot() == segment);
  // Exactly the range: valid, and nothing to write.
  EXPECT_TRUE(f_.backend->Scatter(ConstSpans(objects), ids_, 2 * kHnd.chunk).ok());
  EXPECT_TRUE(f_.Snapshot() == segment);
}

// A scatter may not write one block twice (which copy lands would depend on timing); gathers
// may read one twice, and blocks wholly inside the skipped prefix are not written.
TEST_F(HostBackendValidationTest, ScatterRefusesToWriteABlockTwice) {
  std::vector<uint32_t> ids(ids_.begin(), ids_.begin() + 6);  // 3 chunks of 2 blocks of 4
  ids[4] = ids[1];
  Objects objects = f_.MakeObjects(3);
  const std::vector<uint8_t> segment = f_.Snapshot();
  Status s = f_.backend->Scatter(ConstSpans(objects), ids, 0);
  EXPECT_EQ(s.code(), StatusCode::kInvalidArgument) << s.ToString();
  EXPECT_THAT(s.ToString(), HasSubstr("block id " + std::to_string(ids[1]) +
                                      " would be written twice (indices 1 and 4)"));
  EXPECT_TRUE(f_.Snapshot() == segment);
  EXPECT_TRUE(f_.backend->Gather(ids, Spans(objects)).ok());
  // Skipping the first two blocks (8 tokens): block 1 is not written, so the repeat is fine.
  EXPECT_TRUE(f_.backend->Scatter(ConstSpans(objects), ids, 2 * kHnd.block_size).ok());
  // Skipping into block 1 (it is partly written): refused again.
  s = f_.backend->Scatter(ConstSpans(objects), ids, 2 * kHnd.block_size - 1);
  EXPECT_EQ(s.code(), StatusCode::kInvalidArgument) << s.ToString();
}

TEST_F(HostBackendValidationTest, ExtraBlockIdsAreIgnored) {
  std::vector<uint32_t> ids(ids_.begin(), ids_.begin() + 4);
  ids.push_back(kHnd.blocks + 100);  // beyond the range: not used, not checked
  Objects objects = f_.MakeObjects(2);
  ASSERT_TRUE(f_.backend->Gather(ids, Spans(objects)).ok());
  EXPECT_TRUE(objects == RefGather(f_.ref, f_.shm->bytes(), ids, 2));
  EXPECT_TRUE(f_.backend->Scatter(ConstSpans(objects), ids, 0).ok());
}

TEST_F(HostBackendValidationTest, NoObjectsIsANoOp) {
  const std::vector<uint8_t> segment = f_.Snapshot();
  EXPECT_TRUE(f_.backend->Gather({}, {}).ok());
  EXPECT_TRUE(f_.backend->Scatter({}, {}, 0).ok());
  EXPECT_EQ(f_.backend->Scatter({}, {}, 1).code(), StatusCode::kOutOfRange);
  EXPECT_TRUE(f_.Snapshot() == segment);
}

// ---- Registration ---------------------------------------------------------------------------

class HostBackendCreateTest : public ::testing::Test {
 protected:
  HostBackendCreateTest() {
    ref_ = MakeRefLayout(kHnd, &size_);
    shm_ = std::make_unique<TestShm>(size_);
    request_ = MakeRequest(kHnd, ref_, shm_->name(), size_);
  }
  Status CreateStatus(const protocol::RegisterKvCacheRequest& request, uint32_t chunk = 8) {
    auto created = HostBackend::Create(request, chunk, nullptr);
    return created ? Status::OK() : created.error();
  }
  void ExpectError(const protocol::RegisterKvCacheRequest& request, StatusCode code,
                   const std::vector<std::string>& parts, uint32_t chunk = 8) {
    Status s = CreateStatus(request, chunk);
    EXPECT_EQ(s.code(), code) << s.ToString();
    for (const auto& part : parts) EXPECT_THAT(s.ToString(), HasSubstr(part));
  }

  RefLayout ref_;
  uint64_t size_ = 0;
  std::unique_ptr<TestShm> shm_;
  protocol::RegisterKvCacheRequest request_;
};

TEST_F(HostBackendCreateTest, ValidRequestMaps) {
  auto created = HostBackend::Create(request_, 8, nullptr);
  ASSERT_TRUE(created.has_value()) << created.error().ToString();
  EXPECT_EQ((*created)->mapped_size(), size_);
  EXPECT_EQ((*created)->shm_path(), shm_->name());
  // Without the leading '/' too.
  auto r = request_;
  r.shm_name = shm_->name().substr(1);
  EXPECT_TRUE(CreateStatus(r).ok());
}

TEST_F(HostBackendCreateTest, MappingOutlivesTheName) {
  shm_->Fill(3);
  auto created = HostBackend::Create(request_, 8, nullptr);
  ASSERT_TRUE(created.has_value());
  shm_->Unlink();  // the engine removed the name; its memory stays mapped
  const auto ids = ShuffledBlocks(kHnd.blocks, 1);
  Objects objects(2, testing::Bytes((*created)->object_size()));
  ASSERT_TRUE((*created)->Gather(ids, Spans(objects)).ok());
  EXPECT_TRUE(objects == RefGather(ref_, shm_->bytes(), ids, 2));
}

TEST_F(HostBackendCreateTest, ShmMissing) {
  auto r = request_;
  r.shm_name = "/kvt_xfer_test_no_such_segment";
  ExpectError(r, StatusCode::kNotFound, {"kvt_xfer_test_no_such_segment"});
}

TEST_F(HostBackendCreateTest, ShmSmallerThanShmSize) {
  TestShm small(size_ - 1);
  auto r = request_;
  r.shm_name = small.name();
  ExpectError(r, StatusCode::kInvalidArgument,
              {"is " + std::to_string(size_ - 1) + " bytes", "shm_size " + std::to_string(size_)});
}

TEST_F(HostBackendCreateTest, BadShmNames) {
  for (const char* name : {"", "/", "a/b", "/a/b"}) {
    auto r = request_;
    r.shm_name = name;
    ExpectError(r, StatusCode::kInvalidArgument, {"is not a shared-memory name"});
  }
  auto r = request_;
  r.shm_name = std::string(300, 'x');
  ExpectError(r, StatusCode::kInvalidArgument, {"is not a shared-memory name"});
}

TEST_F(HostBackendCreateTest, LayerBeyondTheSegment) {
  const uint64_t layer_bytes = 2 * kHnd.blocks * kHnd.block_size * kHnd.heads * kHnd.dim * 2;
  auto r = request_;
  r.layout.layer_offsets[1] = size_ - layer_bytes + 1;
  ExpectError(r, StatusCode::kOutOfRange,
              {"layer 1", "offset " + std::to_string(size_ - layer_bytes + 1),
               std::to_string(layer_bytes) + " bytes", "segment size " + std::to_string(size_)});
  // Exactly at the end is fine (the moved layer lands on no other).
  r.layout.layer_offsets = {13, 13 + layer_bytes, size_ - layer_bytes};
  EXPECT_TRUE(CreateStatus(r).ok()) << CreateStatus(r).ToString();
  // shm_size smaller than the layers imply, even though the segment is large enough.
  r = request_;
  r.shm_size = size_ - 14;
  ExpectError(r, StatusCode::kOutOfRange, {"segment size " + std::to_string(size_ - 14)});
}

TEST_F(HostBackendCreateTest, LayerOffsetOverflows) {
  auto r = request_;
  r.layout.layer_offsets[2] = UINT64_MAX - 5;
  ExpectError(r, StatusCode::kOutOfRange, {"layer 2", "offset 18446744073709551610"});
}

TEST_F(HostBackendCreateTest, OverlappingLayers) {
  auto r = request_;
  r.layout.layer_offsets[2] = r.layout.layer_offsets[0] + 1;
  ExpectError(r, StatusCode::kInvalidArgument, {"overlap"});
}

TEST_F(HostBackendCreateTest, BlockSizeMustDivideChunkSize) {
  ExpectError(request_, StatusCode::kInvalidArgument, {"block_size 4 does not divide chunk_size 6"},
              /*chunk=*/6);
  ExpectError(request_, StatusCode::kInvalidArgument, {"block_size 4 does not divide chunk_size 2"},
              /*chunk=*/2);
}

TEST_F(HostBackendCreateTest, BadCounts) {
  struct Mutation {
    const char* expected;
    void (*apply)(protocol::Layout*);
  };
  const Mutation mutations[] = {
      {"num_layers must be positive", [](protocol::Layout* l) { l->num_layers = 0; }},
      {"num_blocks must be positive", [](protocol::Layout* l) { l->num_blocks = 0; }},
      {"block_size must be positive", [](protocol::Layout* l) { l->block_size = 0; }},
      {"num_kv_heads must be positive", [](protocol::Layout* l) { l->num_kv_heads = 0; }},
      {"head_dim must be positive", [](protocol::Layout* l) { l->head_dim = 0; }},
      {"layer_offsets has 2 entries; num_layers is 3",
       [](protocol::Layout* l) { l->layer_offsets.pop_back(); }},
      {"layer_offsets has 3 entries; num_layers is 4",
       [](protocol::Layout* l) { l->num_layers = 4; }},
      {"mla needs num_kv_heads 1, got 2", [](protocol::Layout* l) { l->format = KvFormat::kMla; }},
  };
  for (const auto& m : mutations) {
    auto r = request_;
    m.apply(&r.layout);
    ExpectError(r, StatusCode::kInvalidArgument, {m.expected});
  }
  ExpectError(request_, StatusCode::kInvalidArgument, {"chunk_size must be positive"}, 0);
}

TEST_F(HostBackendCreateTest, UnsupportedDtypeAndFormat) {
  auto r = request_;
  r.layout.dtype = static_cast<DType>(42);
  ExpectError(r, StatusCode::kNotSupported, {"dtype 42"});
  r = request_;
  r.layout.format = static_cast<KvFormat>(9);
  ExpectError(r, StatusCode::kNotSupported, {"format 9"});
}

TEST_F(HostBackendCreateTest, SizesOverflowing64Bits) {
  auto r = request_;
  r.layout.num_kv_heads = 1u << 31;
  r.layout.head_dim = 1u << 31;
  ExpectError(r, StatusCode::kOutOfRange, {"overflow"});
}

TEST(KvGeometryTest, Llama31_8bChunkIs32MiB) {
  protocol::Layout layout;
  layout.num_layers = 32;
  layout.num_blocks = 1000;
  layout.block_size = 16;
  layout.num_kv_heads = 8;
  layout.head_dim = 128;
  layout.dtype = DType::kBf16;
  layout.layer_offsets.assign(32, 0);
  auto g = KvGeometry::Create(layout, 256);
  ASSERT_TRUE(g.has_value());
  EXPECT_EQ(g->object_size, 32u << 20);
  EXPECT_EQ(g->blocks_per_chunk, 16u);
  EXPECT_EQ(g->layer_bytes, 2ull * 1000 * 16 * 8 * 128 * 2);
  // DeepSeek-V3 MLA: 61 layers of 576 bf16 elements per token.
  layout.format = KvFormat::kMla;
  layout.num_layers = 61;
  layout.num_kv_heads = 1;
  layout.head_dim = 576;
  layout.layer_offsets.assign(61, 0);
  g = KvGeometry::Create(layout, 256);
  ASSERT_TRUE(g.has_value());
  EXPECT_EQ(g->object_size, 61ull * 256 * 576 * 2);
}

}  // namespace
}  // namespace kvtier::transfer
