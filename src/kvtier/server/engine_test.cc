#include "kvtier/server/engine.h"

#include <cstring>
#include <latch>
#include <numeric>

#include <gtest/gtest.h>

#include "kvtier/common/units.h"
#include "kvtier/protocol/codec.h"

namespace kvtier::server {
namespace {

using namespace std::chrono_literals;
using protocol::Reply;

constexpr uint32_t kChunk = 16;
constexpr uint32_t kBlock = 4;
constexpr uint32_t kBlocksPerChunk = kChunk / kBlock;
constexpr uint32_t kBytesPerToken = 64;  // per rank
constexpr uint64_t kObjectSize = uint64_t{kChunk} * kBytesPerToken;

// A paged KV cache in plain memory: block b holds tokens' bytes at [b * kBlock * bpt, ...).
// Object layout: the chunk's tokens in order (what matters here is bitwise round trips).
class FakeBackend : public transfer::TransferBackend {
 public:
  explicit FakeBackend(uint32_t num_blocks)
      : TransferBackend(Geometry(num_blocks)),
        cache_(uint64_t{num_blocks} * kBlock * kBytesPerToken) {}

  static transfer::KvGeometry Geometry(uint32_t num_blocks) {
    transfer::KvGeometry g;
    g.num_blocks = num_blocks;
    g.block_size = kBlock;
    g.chunk_size = kChunk;
    g.blocks_per_chunk = kBlocksPerChunk;
    g.object_size = kObjectSize;
    return g;
  }

 protected:
  // The base class validated the arguments (counts, ids, sizes).
  Status GatherImpl(std::span<const uint32_t> blocks, std::span<const std::span<uint8_t>> objects,
                    transfer::DeviceOrder* /*order*/) override {
    for (size_t c = 0; c < objects.size(); ++c) {
      for (uint32_t b = 0; b < kBlocksPerChunk; ++b) {
        std::memcpy(
            objects[c].data() + b * kBlock * kBytesPerToken,
            cache_.data() + blocks[c * kBlocksPerChunk + b] * uint64_t{kBlock} * kBytesPerToken,
            kBlock * kBytesPerToken);
      }
    }
    return Status::OK();
  }
  Status ScatterImpl(std::span<const std::span<const uint8_t>> objects,
                     std::span<const uint32_t> blocks, uint32_t skip,
                     transfer::DeviceOrder* /*order*/) override {
    for (size_t c = 0; c < objects.size(); ++c) {
      for (uint32_t t = 0; t < kChunk; ++t) {
        uint64_t token = c * kChunk + t;
        if (token < skip) continue;
        uint32_t block = blocks[token / kBlock];
        std::memcpy(cache_.data() + (block * uint64_t{kBlock} + token % kBlock) * kBytesPerToken,
                    objects[c].data() + t * kBytesPerToken, kBytesPerToken);
      }
    }
    return Status::OK();
  }

 public:
  // The bytes of `n` tokens in blocks `blocks`.
  std::vector<uint8_t> Tokens(std::span<const uint32_t> blocks, size_t n) const {
    std::vector<uint8_t> out;
    for (size_t t = 0; t < n; ++t) {
      const uint8_t* p =
          cache_.data() + (blocks[t / kBlock] * uint64_t{kBlock} + t % kBlock) * kBytesPerToken;
      out.insert(out.end(), p, p + kBytesPerToken);
    }
    return out;
  }
  void Fill(std::span<const uint32_t> blocks, size_t n, uint8_t seed) {
    for (size_t t = 0; t < n; ++t) {
      uint8_t* p =
          cache_.data() + (blocks[t / kBlock] * uint64_t{kBlock} + t % kBlock) * kBytesPerToken;
      for (uint32_t i = 0; i < kBytesPerToken; ++i) p[i] = static_cast<uint8_t>(seed + t * 7 + i);
    }
  }

 private:
  std::vector<uint8_t> cache_;
};

// A device backend as the engine sees one (registered with backend "cuda"): it sets the done
// event and calls DeviceOrder::on_enqueued once its copies are "enqueued", runs `while_copying`
// (the copies are still in flight then), and may fail after that, like an asynchronous device
// fault.
class FakeDeviceBackend : public FakeBackend {
 public:
  using FakeBackend::FakeBackend;
  bool on_device() const override { return true; }

  std::function<void()> while_copying;
  Status fail_after_enqueue;

 private:
  Status Enqueued(transfer::DeviceOrder* order) {
    order->done_event.emplace();
    order->done_event->fill(0x5d);
    if (order->on_enqueued) order->on_enqueued();
    if (while_copying) while_copying();
    return fail_after_enqueue;
  }
  Status GatherImpl(std::span<const uint32_t> blocks, std::span<const std::span<uint8_t>> objects,
                    transfer::DeviceOrder* order) override {
    KVT_RETURN_IF_ERROR(FakeBackend::GatherImpl(blocks, objects, order));
    return Enqueued(order);
  }
  Status ScatterImpl(std::span<const std::span<const uint8_t>> objects,
                     std::span<const uint32_t> blocks, uint32_t skip,
                     transfer::DeviceOrder* order) override {
    KVT_RETURN_IF_ERROR(FakeBackend::ScatterImpl(objects, blocks, skip, order));
    return Enqueued(order);
  }
};

std::vector<uint32_t> Seq(uint32_t first, size_t n) {
  std::vector<uint32_t> v(n);
  std::iota(v.begin(), v.end(), first);
  return v;
}

class EngineTest : public ::testing::Test {
 protected:
  void SetUp() override { Make({}); }

  void Make(std::vector<nlohmann::json> l2) {
    engine_.reset();
    storage_.reset();
    storage::StorageOptions so;
    so.l1.capacity_bytes = 256 * kObjectSize;
    so.l1.num_shards = 4;
    so.l2_adapters = std::move(l2);
    storage_ = storage::StorageManager::Create(so).value();
    EngineOptions eo;
    eo.chunk_size = kChunk;
    eo.server_id = "test-server";
    eo.server_version = "0.test";
    eo.worker_timeout = 120s;
    engine_ = Engine::Create(eo, storage_.get(), &clock_,
                             [this](const protocol::RegisterKvCacheRequest& r)
                                 -> Result<std::unique_ptr<transfer::TransferBackend>> {
                               std::unique_ptr<FakeBackend> b;
                               if (r.backend == "cuda") {
                                 auto d = std::make_unique<FakeDeviceBackend>(r.layout.num_blocks);
                                 devices_[r.instance_id] = d.get();
                                 b = std::move(d);
                               } else {
                                 b = std::make_unique<FakeBackend>(r.layout.num_blocks);
                               }
                               backends_[r.instance_id] = b.get();
                               return std::unique_ptr<transfer::TransferBackend>(std::move(b));
                             })
                  .value();
  }
  void TearDown() override {
    engine_->Shutdown();
    storage_->Close();
  }

  protocol::RegisterKvCacheRequest Registration(std::string id, uint16_t ws = 1,
                                                uint16_t rank = 0) {
    protocol::RegisterKvCacheRequest r;
    r.instance_id = std::move(id);
    r.model = "m";
    r.world_size = ws;
    r.worker_rank = rank;
    r.layout.num_layers = 1;
    r.layout.num_blocks = 256;
    r.layout.block_size = kBlock;
    r.layout.num_kv_heads = 1;
    r.layout.head_dim = 16;
    r.layout.layer_offsets = {0};
    r.shm_name = "fake";
    return r;
  }
  void Register(std::string id, uint16_t ws = 1, uint16_t rank = 0) {
    Reply r = engine_->HandleSync(Registration(std::move(id), ws, rank));
    ASSERT_TRUE(std::holds_alternative<protocol::RegisterKvCacheReply>(r)) << ErrorText(r);
  }

  protocol::Key Key(std::string request, const std::vector<uint32_t>& tokens,
                    std::optional<uint16_t> rank, uint16_t ws = 1) {
    protocol::Key k;
    k.model = "m";
    k.world_size = ws;
    k.worker_rank = rank;
    k.request_id = std::move(request);
    k.tokens = tokens;
    return k;
  }

  static std::string ErrorText(const Reply& r) {
    if (auto* e = std::get_if<protocol::ErrorReply>(&r))
      return StatusCodeName(e->code) + ": " + e->message;
    return "";
  }
  template <typename T>
  T Expect(const Reply& r) {
    EXPECT_TRUE(std::holds_alternative<T>(r)) << ErrorText(r);
    return std::holds_alternative<T>(r) ? std::get<T>(r) : T{};
  }
  StatusCode ErrorCode(const Reply& r) {
    auto* e = std::get_if<protocol::ErrorReply>(&r);
    return e ? e->code : StatusCode::kOk;
  }

  protocol::StoreReply Store(std::string instance, std::string request,
                             const std::vector<uint32_t>& tokens, std::vector<uint32_t> blocks,
                             uint16_t rank = 0, uint16_t ws = 1) {
    protocol::StoreRequest s{std::move(instance), Key(std::move(request), tokens, rank, ws),
                             std::move(blocks), std::nullopt};
    return Expect<protocol::StoreReply>(engine_->HandleSync(s));
  }
  // LOOKUP then wait for the answer.
  uint32_t Lookup(std::string request, const std::vector<uint32_t>& tokens, uint16_t ws = 1) {
    Expect<protocol::EmptyReply>(
        engine_->HandleSync(protocol::LookupRequest{Key(request, tokens, std::nullopt, ws)}));
    std::optional<Reply> answer;
    std::latch done(1);
    engine_->Handle(protocol::WaitPrefetchStatusRequest{request, 10000}, [&](Reply r) {
      answer = std::move(r);
      done.count_down();
    });
    done.wait();
    auto status = Expect<protocol::PrefetchStatusReply>(*answer);
    EXPECT_TRUE(status.done);
    return status.hit_chunks;
  }

  FakeClock clock_;
  std::unique_ptr<storage::StorageManager> storage_;
  std::unique_ptr<Engine> engine_;
  std::map<std::string, FakeBackend*> backends_;
  std::map<std::string, FakeDeviceBackend*> devices_;
};

TEST_F(EngineTest, HelloAndChunkSize) {
  auto hello = Expect<protocol::HelloReply>(engine_->HandleSync(protocol::HelloRequest{1, "test"}));
  EXPECT_EQ(hello.chunk_size, kChunk);
  EXPECT_EQ(hello.server_id, "test-server");
  EXPECT_EQ(hello.hash_algorithm, "sha256");
  EXPECT_EQ(ErrorCode(engine_->HandleSync(protocol::HelloRequest{2, "future"})),
            StatusCode::kUnsupportedVersion);
  EXPECT_EQ(Expect<protocol::ChunkSizeReply>(engine_->HandleSync(protocol::GetChunkSizeRequest{}))
                .chunk_size,
            kChunk);
  Expect<protocol::EmptyReply>(engine_->HandleSync(protocol::NoopRequest{}));
}

TEST_F(EngineTest, StoreThenLookupThenRetrieveIntoOtherBlocksIsBitwiseEqual) {
  Register("w0");
  auto tokens = Seq(1, 10 * kChunk);
  auto src = Seq(0, 10 * kBlocksPerChunk);
  backends_["w0"]->Fill(src, tokens.size(), 3);
  auto stored = Store("w0", "req-1", tokens, src);
  EXPECT_EQ(stored.stored_chunks, 10u);
  // A new request with the same prefix.
  EXPECT_EQ(Lookup("req-2", tokens), 10u);
  auto dst = Seq(100, 10 * kBlocksPerChunk);
  protocol::RetrieveRequest r{"w0", Key("req-2", tokens, 0), dst, 0, std::nullopt};
  EXPECT_EQ(Expect<protocol::RetrieveReply>(engine_->HandleSync(r)).retrieved_chunks, 10u);
  EXPECT_EQ(backends_["w0"]->Tokens(dst, tokens.size()),
            backends_["w0"]->Tokens(src, tokens.size()));
  // Every lock was released.
  EXPECT_EQ(storage_->l1().GetStatus().read_locked_objects, 0u);
}

TEST_F(EngineTest, PartialPrefixAndMisses) {
  Register("w0");
  auto tokens = Seq(1, 6 * kChunk + 5);  // 6 full chunks and a partial one
  Store("w0", "a", std::vector<uint32_t>(tokens.begin(), tokens.begin() + 3 * kChunk),
        Seq(0, 3 * kBlocksPerChunk));
  EXPECT_EQ(Lookup("b", tokens), 3u);
  auto other = Seq(1000, 4 * kChunk);
  EXPECT_EQ(Lookup("c", other), 0u);
  // Not retrieving: END_SESSION releases the held locks.
  Expect<protocol::EndSessionReply>(engine_->HandleSync(protocol::EndSessionRequest{"b"}));
  EXPECT_EQ(storage_->l1().GetStatus().read_locked_objects, 0u);
}

TEST_F(EngineTest, QueryAnswersOnceAndUnknownIdsAreErrors) {
  Register("w0");
  auto tokens = Seq(1, 2 * kChunk);
  Store("w0", "a", tokens, Seq(0, 2 * kBlocksPerChunk));
  EXPECT_EQ(ErrorCode(engine_->HandleSync(protocol::QueryPrefetchStatusRequest{"nobody"})),
            StatusCode::kNotFound);
  Expect<protocol::EmptyReply>(
      engine_->HandleSync(protocol::LookupRequest{Key("b", tokens, std::nullopt)}));
  auto first = Expect<protocol::PrefetchStatusReply>(
      engine_->HandleSync(protocol::QueryPrefetchStatusRequest{"b"}));
  EXPECT_TRUE(first.done);  // no L2: answered at once from L1
  EXPECT_EQ(first.hit_chunks, 2u);
  EXPECT_EQ(ErrorCode(engine_->HandleSync(protocol::QueryPrefetchStatusRequest{"b"})),
            StatusCode::kFailedPrecondition);
  auto hits = Expect<protocol::LookupHitsReply>(
      engine_->HandleSync(protocol::QueryPrefetchLookupHitsRequest{"b"}));
  EXPECT_TRUE(hits.known);
  EXPECT_EQ(hits.hit_chunks, 2u);
}

TEST_F(EngineTest, MultiRankLookupNeedsEveryRank) {
  Register("w0", 2, 0);
  Register("w1", 2, 1);
  auto tokens = Seq(1, 4 * kChunk);
  Store("w0", "a", tokens, Seq(0, 4 * kBlocksPerChunk), 0, 2);
  // Rank 1 stored only the first 2 chunks.
  Store("w1", "a", std::vector<uint32_t>(tokens.begin(), tokens.begin() + 2 * kChunk),
        Seq(0, 2 * kBlocksPerChunk), 1, 2);
  EXPECT_EQ(Lookup("b", tokens, 2), 2u);
  // Both ranks retrieve their share.
  for (uint16_t rank = 0; rank < 2; ++rank) {
    protocol::Key k =
        Key("b", std::vector<uint32_t>(tokens.begin(), tokens.begin() + 2 * kChunk), rank, 2);
    protocol::RetrieveRequest r{rank == 0 ? "w0" : "w1", k, Seq(200, 2 * kBlocksPerChunk), 0,
                                std::nullopt};
    EXPECT_EQ(Expect<protocol::RetrieveReply>(engine_->HandleSync(r)).retrieved_chunks, 2u);
  }
  EXPECT_EQ(storage_->l1().GetStatus().read_locked_objects, 0u);  // the partial chunk was released
}

TEST_F(EngineTest, RetrieveFailsClosedWithoutALookup) {
  Register("w0");
  auto tokens = Seq(1, 2 * kChunk);
  Store("w0", "a", tokens, Seq(0, 2 * kBlocksPerChunk));
  protocol::RetrieveRequest r{"w0", Key("never-looked-up", tokens, 0), Seq(50, 2 * kBlocksPerChunk),
                              0, std::nullopt};
  EXPECT_EQ(ErrorCode(engine_->HandleSync(r)), StatusCode::kNotFound);
  // Beyond the hits of a lookup.
  EXPECT_EQ(Lookup("b", std::vector<uint32_t>(tokens.begin(), tokens.begin() + kChunk)), 1u);
  protocol::RetrieveRequest beyond{"w0", Key("b", tokens, 0), Seq(50, 2 * kBlocksPerChunk), 0,
                                   std::nullopt};
  EXPECT_EQ(ErrorCode(engine_->HandleSync(beyond)), StatusCode::kNotFound);
  EXPECT_EQ(storage_->l1().GetStatus().read_locked_objects,
            0u);  // the failure released the rank's locks
}

TEST_F(EngineTest, SkipFirstNTokensLeavesThemUntouched) {
  Register("w0");
  auto tokens = Seq(1, 2 * kChunk);
  auto src = Seq(0, 2 * kBlocksPerChunk);
  backends_["w0"]->Fill(src, tokens.size(), 9);
  Store("w0", "a", tokens, src);
  EXPECT_EQ(Lookup("b", tokens), 2u);
  auto dst = Seq(100, 2 * kBlocksPerChunk);
  backends_["w0"]->Fill(dst, tokens.size(), 200);
  auto before = backends_["w0"]->Tokens(dst, tokens.size());
  protocol::RetrieveRequest r{"w0", Key("b", tokens, 0), dst, 5, std::nullopt};
  EXPECT_EQ(Expect<protocol::RetrieveReply>(engine_->HandleSync(r)).retrieved_chunks, 2u);
  auto after = backends_["w0"]->Tokens(dst, tokens.size());
  auto expect = backends_["w0"]->Tokens(src, tokens.size());
  EXPECT_TRUE(std::equal(after.begin(), after.begin() + 5 * kBytesPerToken, before.begin()));
  EXPECT_TRUE(std::equal(after.begin() + 5 * kBytesPerToken, after.end(),
                         expect.begin() + 5 * kBytesPerToken));
}

TEST_F(EngineTest, StoreValidatesEverythingAndCopiesNothingOnError) {
  Register("w0");
  auto tokens = Seq(1, 2 * kChunk);
  auto ask = [&](protocol::StoreRequest s) { return ErrorCode(engine_->HandleSync(s)); };
  EXPECT_EQ(ask({"nobody", Key("a", tokens, 0), Seq(0, 8), std::nullopt}), StatusCode::kNotFound);
  EXPECT_EQ(ask({"w0", Key("a", tokens, std::nullopt), Seq(0, 8), std::nullopt}),
            StatusCode::kInvalidArgument);  // no rank
  EXPECT_EQ(ask({"w0", Key("a", tokens, 0), Seq(0, 7), std::nullopt}),
            StatusCode::kInvalidArgument);  // too few blocks
  protocol::Key unaligned = Key("a", tokens, 0);
  unaligned.start = 3;
  EXPECT_EQ(ask({"w0", unaligned, Seq(0, 8), std::nullopt}), StatusCode::kInvalidArgument);
  protocol::Key bad_salt = Key("a", tokens, 0);
  bad_salt.cache_salt = "a/b";
  EXPECT_EQ(ask({"w0", bad_salt, Seq(0, 8), std::nullopt}), StatusCode::kInvalidArgument);
  EXPECT_EQ(ask({"w0", Key("a", tokens, 0), {0, 1, 2, 3, 4, 5, 6, 9999}, std::nullopt}),
            StatusCode::kOutOfRange);
  EXPECT_EQ(storage_->l1().used_bytes(), 0u);  // nothing staged or left behind
}

TEST_F(EngineTest, StoreReportsPresentAndFailedChunks) {
  Register("w0");
  auto tokens = Seq(1, 3 * kChunk);
  auto first = Store("w0", "a", tokens, Seq(0, 3 * kBlocksPerChunk));
  EXPECT_EQ(first.stored_chunks, 3u);
  auto again = Store("w0", "a", tokens, Seq(0, 3 * kBlocksPerChunk));
  EXPECT_EQ(again.stored_chunks, 0u);
  EXPECT_EQ(again.present_chunks, 3u);
}

TEST_F(EngineTest, StoreAfterEndSessionLeavesNoSession) {
  Register("w0");
  auto tokens = Seq(1, 2 * kChunk);
  Lookup("req", tokens);
  EXPECT_EQ(engine_->active_sessions(), 1u);
  auto end =
      Expect<protocol::EndSessionReply>(engine_->HandleSync(protocol::EndSessionRequest{"req"}));
  EXPECT_EQ(end.touched_keys, 2u);
  EXPECT_EQ(engine_->active_sessions(), 0u);
  Store("w0", "req", tokens, Seq(0, 2 * kBlocksPerChunk));  // late STORE: served statelessly
  EXPECT_EQ(engine_->active_sessions(), 0u);
  EXPECT_EQ(
      Expect<protocol::EndSessionReply>(engine_->HandleSync(protocol::EndSessionRequest{"req"}))
          .touched_keys,
      0u);
}

TEST_F(EngineTest, FreeLookupLocksReleasesWithoutRetrieving) {
  Register("w0");
  auto tokens = Seq(1, 3 * kChunk);
  Store("w0", "a", tokens, Seq(0, 3 * kBlocksPerChunk));
  EXPECT_EQ(Lookup("b", tokens), 3u);
  EXPECT_EQ(storage_->l1().GetStatus().read_locked_objects, 3u);
  auto freed = Expect<protocol::FreeLookupLocksReply>(
      engine_->HandleSync(protocol::FreeLookupLocksRequest{Key("b", tokens, std::nullopt)}));
  EXPECT_EQ(freed.released, 3u);
  EXPECT_EQ(storage_->l1().GetStatus().read_locked_objects, 0u);
}

TEST_F(EngineTest, SecondLookupReplacesTheFirstAndReleasesItsLocks) {
  Register("w0");
  auto tokens = Seq(1, 3 * kChunk);
  Store("w0", "a", tokens, Seq(0, 3 * kBlocksPerChunk));
  EXPECT_EQ(Lookup("b", tokens), 3u);
  EXPECT_EQ(Lookup("b", std::vector<uint32_t>(tokens.begin(), tokens.begin() + kChunk)), 1u);
  EXPECT_EQ(storage_->l1().GetStatus().read_locked_objects, 1u);
}

TEST_F(EngineTest, ExpiredSessionsAndReapedWorkersReleaseTheirLocks) {
  Register("w0");
  auto tokens = Seq(1, 2 * kChunk);
  Store("w0", "a", tokens, Seq(0, 2 * kBlocksPerChunk));
  EXPECT_EQ(Lookup("b", tokens), 2u);
  // The worker goes silent: reaped after the registration grace (it never pinged).
  clock_.Advance(3601s);
  engine_->Tick();
  EXPECT_EQ(engine_->registry().size(), 0u);
  EXPECT_EQ(storage_->l1().GetStatus().read_locked_objects, 0u);
  EXPECT_EQ(engine_->active_sessions(), 0u);  // the session expired too (600 s TTL)
  EXPECT_EQ(engine_->counters().workers_reaped.load(), 1u);
}

TEST_F(EngineTest, PingKeepsAWorkerAlive) {
  Register("w0");
  Expect<protocol::PingReply>(engine_->HandleSync(protocol::PingRequest{"w0"}));
  clock_.Advance(100s);
  Expect<protocol::PingReply>(engine_->HandleSync(protocol::PingRequest{"w0"}));
  clock_.Advance(100s);
  engine_->Tick();
  EXPECT_EQ(engine_->registry().size(), 1u);
  clock_.Advance(121s);  // pinged before: the 120 s timeout applies
  engine_->Tick();
  EXPECT_EQ(engine_->registry().size(), 0u);
}

TEST_F(EngineTest, RegistrationRulesAndUnregister) {
  Register("w0");
  Register("w0");  // identical: a refresh
  auto other = Registration("w0");
  other.layout.num_blocks = 512;
  EXPECT_EQ(ErrorCode(engine_->HandleSync(other)), StatusCode::kAlreadyExists);
  auto bad = Registration("w1");
  bad.layout.block_size = 5;
  EXPECT_EQ(ErrorCode(engine_->HandleSync(bad)), StatusCode::kInvalidArgument);
  Expect<protocol::EmptyReply>(engine_->HandleSync(protocol::UnregisterKvCacheRequest{"w0"}));
  EXPECT_EQ(ErrorCode(engine_->HandleSync(protocol::UnregisterKvCacheRequest{"w0"})),
            StatusCode::kNotFound);
}

TEST_F(EngineTest, WaitTimesOutThenTheResultIsStillThere) {
  Make({{{"type", "fault_inject"},
         {"inner", {{"type", "mock"}, {"capacity", "16MiB"}}},
         {"delay", "200ms"}}});
  Register("w0");
  auto tokens = Seq(1, 2 * kChunk);
  Store("w0", "a", tokens, Seq(0, 2 * kBlocksPerChunk));
  ASSERT_TRUE(storage_->FlushToL2(10s));
  storage_->ClearL1(false);
  Expect<protocol::EmptyReply>(
      engine_->HandleSync(protocol::LookupRequest{Key("b", tokens, std::nullopt)}));
  std::optional<Reply> answer;
  std::latch done(1);
  engine_->Handle(protocol::WaitPrefetchStatusRequest{"b", 1}, [&](Reply r) {
    answer = std::move(r);
    done.count_down();
  });
  done.wait();
  EXPECT_FALSE(Expect<protocol::PrefetchStatusReply>(*answer).done);  // 1 ms < the 200 ms delay
  std::latch done2(1);
  engine_->Handle(protocol::WaitPrefetchStatusRequest{"b", 30000}, [&](Reply r) {
    answer = std::move(r);
    done2.count_down();
  });
  done2.wait();
  auto status = Expect<protocol::PrefetchStatusReply>(*answer);
  EXPECT_TRUE(status.done);
  EXPECT_EQ(status.hit_chunks, 2u);  // from L2
}

TEST_F(EngineTest, ClearEmptiesL1) {
  Register("w0");
  Store("w0", "a", Seq(1, 2 * kChunk), Seq(0, 2 * kBlocksPerChunk));
  EXPECT_EQ(
      Expect<protocol::ClearReply>(engine_->HandleSync(protocol::ClearRequest{false})).cleared, 2u);
  EXPECT_EQ(storage_->l1().used_bytes(), 0u);
}

// ---- READ_OBJECTS (peer fetch) ----

keys::ObjectKey PeerKey(uint8_t n) {
  keys::ChunkHash hash;
  hash.bytes.fill(n);
  return keys::ObjectKey::Create(hash, "m", keys::KvRank{1, 0}, 0).value();
}

// Puts objects of `size` bytes (byte j of object i: i * 31 + j) into L1.
std::vector<std::vector<uint8_t>> PutObjects(storage::StorageManager& storage,
                                             const std::vector<keys::ObjectKey>& keys,
                                             uint64_t size) {
  std::vector<l1::ObjectView> views;
  auto reserved = storage.ReserveWrite(keys, size, &views);
  std::vector<std::vector<uint8_t>> contents;
  for (size_t i = 0; i < keys.size(); ++i) {
    EXPECT_EQ(reserved[i], l1::L1Result::kSuccess);
    std::vector<uint8_t> bytes(size);
    for (uint64_t j = 0; j < size; ++j) bytes[j] = static_cast<uint8_t>(i * 31 + j);
    std::memcpy(views[i].data, bytes.data(), size);
    contents.push_back(std::move(bytes));
  }
  for (l1::L1Result r : storage.FinishWrite(keys)) EXPECT_EQ(r, l1::L1Result::kSuccess);
  return contents;
}

TEST_F(EngineTest, ReadObjectsReturnsL1ObjectsBitwiseUnderReadLocks) {
  const std::vector<keys::ObjectKey> held = {PeerKey(1), PeerKey(2)};
  const auto contents = PutObjects(*storage_, held, kObjectSize);
  protocol::ReadObjectsRequest request;
  request.keys = {held[0].ToString(), PeerKey(9).ToString(), held[1].ToString()};
  request.max_bytes = 1ull << 30;
  {
    Reply r = engine_->HandleSync(request);
    const auto read = Expect<protocol::ReadObjectsReply>(r);
    EXPECT_EQ(read.found, (std::vector<bool>{true, false, true}));
    ASSERT_EQ(read.objects.size(), 2u);
    EXPECT_TRUE(std::equal(read.objects[0].begin(), read.objects[0].end(), contents[0].begin(),
                           contents[0].end()));
    EXPECT_TRUE(std::equal(read.objects[1].begin(), read.objects[1].end(), contents[1].begin(),
                           contents[1].end()));
    ASSERT_NE(read.hold, nullptr);
    // The objects stay read-locked (not evictable) while the reply lives.
    EXPECT_EQ(storage_->l1().GetStatus().read_locked_objects, 2u);
  }
  EXPECT_EQ(storage_->l1().GetStatus().read_locked_objects, 0u);
  EXPECT_EQ(engine_->counters().read_objects_found.load(), 2u);
  EXPECT_EQ(engine_->counters().read_objects_bytes.load(), 2 * kObjectSize);
}

TEST_F(EngineTest, ReadObjectsEnforcesTheByteBudget) {
  const std::vector<keys::ObjectKey> held = {PeerKey(1), PeerKey(2), PeerKey(3)};
  PutObjects(*storage_, held, kObjectSize);
  protocol::ReadObjectsRequest request;
  for (const auto& k : held) request.keys.push_back(k.ToString());
  request.max_bytes = 2 * kObjectSize + 1;  // two fit, the third does not
  {
    Reply r = engine_->HandleSync(request);
    const auto read = Expect<protocol::ReadObjectsReply>(r);
    EXPECT_EQ(read.found, (std::vector<bool>{true, true, false}));
    EXPECT_EQ(read.objects.size(), 2u);
    EXPECT_EQ(storage_->l1().GetStatus().read_locked_objects, 2u);  // the third was released
  }
  request.max_bytes = 1;
  Reply none = engine_->HandleSync(request);
  EXPECT_EQ(Expect<protocol::ReadObjectsReply>(none).found, (std::vector<bool>(3, false)));
  EXPECT_EQ(storage_->l1().GetStatus().read_locked_objects, 0u);
}

TEST_F(EngineTest, ReadObjectsRejectsBadRequests) {
  protocol::ReadObjectsRequest bad_key{{PeerKey(1).ToString(), "not-a-key"}, 100};
  Reply r = engine_->HandleSync(bad_key);
  ASSERT_TRUE(std::holds_alternative<protocol::ErrorReply>(r));
  EXPECT_EQ(std::get<protocol::ErrorReply>(r).code, StatusCode::kInvalidArgument);
  EXPECT_NE(std::get<protocol::ErrorReply>(r).message.find("keys[1]"), std::string::npos);

  protocol::ReadObjectsRequest empty{{}, 100};
  EXPECT_TRUE(std::holds_alternative<protocol::ErrorReply>(engine_->HandleSync(empty)));
  protocol::ReadObjectsRequest too_many{
      std::vector<std::string>(protocol::kMaxReadObjectsKeys + 1, PeerKey(1).ToString()), 100};
  EXPECT_TRUE(std::holds_alternative<protocol::ErrorReply>(engine_->HandleSync(too_many)));
}

// Device backends: Handle answers a STORE once the copies are enqueued, with the event, while
// the copies run; the chunks become visible only after they completed.
TEST_F(EngineTest, DeviceStoreAnswersOnceEnqueuedAndPublishesAfterTheCopies) {
  protocol::RegisterKvCacheRequest reg = Registration("gpu");
  reg.backend = "cuda";
  Expect<protocol::RegisterKvCacheReply>(engine_->HandleSync(reg));
  FakeDeviceBackend* device = devices_.at("gpu");
  const std::vector<uint32_t> tokens = Seq(1, 2 * kChunk);
  device->Fill(Seq(0, 2 * kBlocksPerChunk), 2 * kChunk, 3);

  std::vector<Reply> replies;
  size_t replies_while_copying = 0;
  uint32_t hits_while_copying = 99;
  device->while_copying = [&] {
    replies_while_copying = replies.size();
    hits_while_copying = Lookup("peek", tokens);
  };
  protocol::StoreRequest s{"gpu", Key("r", tokens, 0), Seq(0, 2 * kBlocksPerChunk), std::nullopt};
  engine_->Handle(s, [&](Reply r) { replies.push_back(std::move(r)); });
  EXPECT_EQ(replies_while_copying, 1u) << "the reply comes before the copies complete";
  EXPECT_EQ(hits_while_copying, 0u) << "nothing is visible before the copies complete";
  ASSERT_EQ(replies.size(), 1u);
  auto stored = Expect<protocol::StoreReply>(replies[0]);
  EXPECT_EQ(stored.stored_chunks, 2u);
  ASSERT_TRUE(stored.event_ipc_handle.has_value());
  EXPECT_EQ((*stored.event_ipc_handle)[0], 0x5d);

  // Published now: a lookup finds both chunks and a retrieve returns them bitwise.
  EXPECT_EQ(Lookup("after", tokens), 2u);
  replies.clear();
  device->while_copying = nullptr;
  protocol::RetrieveRequest rr{"gpu", Key("after", tokens, 0), Seq(100, 2 * kBlocksPerChunk), 0,
                               std::nullopt};
  engine_->Handle(rr, [&](Reply r) { replies.push_back(std::move(r)); });
  ASSERT_EQ(replies.size(), 1u);
  auto got = Expect<protocol::RetrieveReply>(replies[0]);
  EXPECT_EQ(got.retrieved_chunks, 2u);
  EXPECT_TRUE(got.event_ipc_handle.has_value());
  EXPECT_EQ(device->Tokens(Seq(100, 2 * kBlocksPerChunk), 2 * kChunk),
            device->Tokens(Seq(0, 2 * kBlocksPerChunk), 2 * kChunk));
  EXPECT_EQ(engine_->counters().device_failures_after_reply.load(), 0u);
}

// A device copy that fails after the early reply: the reply is not sent twice, the chunks are
// dropped (never published), the failure is counted, and the server keeps serving.
TEST_F(EngineTest, DeviceFailureAfterTheReplyDropsTheChunksAndIsCounted) {
  protocol::RegisterKvCacheRequest reg = Registration("gpu");
  reg.backend = "cuda";
  Expect<protocol::RegisterKvCacheReply>(engine_->HandleSync(reg));
  FakeDeviceBackend* device = devices_.at("gpu");
  const std::vector<uint32_t> tokens = Seq(1, kChunk);
  device->fail_after_enqueue = Status::Internal("injected device fault");
  std::vector<Reply> replies;
  protocol::StoreRequest s{"gpu", Key("r", tokens, 0), Seq(0, kBlocksPerChunk), std::nullopt};
  engine_->Handle(s, [&](Reply r) { replies.push_back(std::move(r)); });
  ASSERT_EQ(replies.size(), 1u);
  EXPECT_EQ(Expect<protocol::StoreReply>(replies[0]).stored_chunks, 1u);
  EXPECT_EQ(engine_->counters().device_failures_after_reply.load(), 1u);
  EXPECT_EQ(Lookup("r2", tokens), 0u);

  // The same chunk stores fine afterwards (nothing was left half-written), and a retrieve that
  // fails after its reply is counted too and releases its read locks.
  device->fail_after_enqueue = Status::OK();
  Store("gpu", "r3", tokens, Seq(0, kBlocksPerChunk));
  EXPECT_EQ(Lookup("r4", tokens), 1u);
  device->fail_after_enqueue = Status::Internal("injected device fault");
  replies.clear();
  protocol::RetrieveRequest rr{"gpu", Key("r4", tokens, 0), Seq(50, kBlocksPerChunk), 0,
                               std::nullopt};
  engine_->Handle(rr, [&](Reply r) { replies.push_back(std::move(r)); });
  ASSERT_EQ(replies.size(), 1u);
  EXPECT_EQ(Expect<protocol::RetrieveReply>(replies[0]).retrieved_chunks, 1u);
  EXPECT_EQ(engine_->counters().device_failures_after_reply.load(), 2u);
  EXPECT_EQ(engine_->counters().retrieve_failures.load(), 1u);
  Expect<protocol::EndSessionReply>(engine_->HandleSync(protocol::EndSessionRequest{"r4"}));
  EXPECT_EQ(
      Expect<protocol::ClearReply>(engine_->HandleSync(protocol::ClearRequest{false})).cleared, 1u)
      << "no read lock was left behind";
}

// HandleSync (no early reply): a device STORE's reply comes after the copies, with the event.
TEST_F(EngineTest, DeviceStoreThroughHandleSyncRepliesAfterTheCopies) {
  protocol::RegisterKvCacheRequest reg = Registration("gpu");
  reg.backend = "cuda";
  Expect<protocol::RegisterKvCacheReply>(engine_->HandleSync(reg));
  FakeDeviceBackend* device = devices_.at("gpu");
  bool copying = false;
  device->while_copying = [&] { copying = true; };
  protocol::StoreRequest s{"gpu", Key("r", Seq(1, kChunk), 0), Seq(0, kBlocksPerChunk),
                           std::nullopt};
  auto stored = Expect<protocol::StoreReply>(engine_->HandleSync(s));
  EXPECT_TRUE(copying);
  EXPECT_EQ(stored.stored_chunks, 1u);
  EXPECT_TRUE(stored.event_ipc_handle.has_value());
}

}  // namespace
}  // namespace kvtier::server
