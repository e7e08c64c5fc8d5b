// A whole server in-process, driven through the real C++ client over real sockets: the data
// path end to end (register a shared-memory KV cache, store, look up, retrieve bit for bit),
// the admin endpoint, start-up failures and the graceful shutdown's flush to L2.
#include "kvtier/service/service.h"

#include <filesystem>

#include <gtest/gtest.h>
#include <httplib.h>
#include <nlohmann/json.hpp>
#include <unistd.h>

#include "kvtier/client.h"
#include "kvtier/transfer/test_shm.h"

namespace kvtier::service {
namespace {

constexpr uint32_t kChunk = 256;
constexpr uint32_t kBlock = 16;
constexpr uint32_t kLayers = 2, kHeads = 2, kDim = 32;
constexpr uint32_t kBlocks = 64;  // 1024 tokens
constexpr uint64_t kLayerBytes = 2ull * kBlocks * kBlock * kHeads * kDim * 2;

std::string UniqueIpc(const char* tag) {
  static std::atomic<int> n{0};
  return fmt::format("ipc:///tmp/kvt-service-test-{}-{}-{}.sock", tag, ::getpid(), n.fetch_add(1));
}

ServiceOptions SmallOptions(const char* tag) {
  ServiceOptions o;
  o.transport.endpoints = {UniqueIpc(tag)};
  o.transport.control_threads = 1;
  o.transport.transfer_threads = 2;
  o.storage.l1.capacity_bytes = 64ull << 20;
  o.engine.server_id = "test-server";
  o.admin.port = 0;
  o.copy_threads = 1;
  o.tick_interval = std::chrono::milliseconds(50);
  return o;
}

protocol::RegisterKvCacheRequest Registration(const transfer::testing::TestShm& shm) {
  protocol::RegisterKvCacheRequest r;
  r.instance_id = "engine-0";
  r.model = "test-model";
  r.layout = {
      kLayers, kBlocks, kBlock, kHeads, kDim, protocol::DType::kBf16, protocol::KvFormat::kKvNhd,
      {}};
  for (uint32_t l = 0; l < kLayers; ++l) r.layout.layer_offsets.push_back(l * kLayerBytes);
  r.shm_name = shm.name();
  r.shm_size = shm.size();
  return r;
}

protocol::Key MakeKey(const std::string& request_id, size_t tokens) {
  protocol::Key k;
  k.model = "test-model";
  k.request_id = request_id;
  for (size_t i = 0; i < tokens; ++i) k.tokens.push_back(static_cast<uint32_t>(i * 7 + 1));
  return k;
}

std::vector<uint32_t> Blocks(uint32_t first, uint32_t count) {
  std::vector<uint32_t> ids(count);
  for (uint32_t i = 0; i < count; ++i) ids[i] = first + i;
  return ids;
}

class ServiceTest : public ::testing::Test {
 protected:
  void Start(ServiceOptions o) {
    auto s = Service::Start(o);
    ASSERT_TRUE(s.has_value()) << s.error().ToString();
    service_ = std::move(*s);
    ClientOptions co;
    co.endpoint = service_->endpoints()[0];
    co.request_timeout = std::chrono::seconds(20);
    auto c = Client::Connect(co);
    ASSERT_TRUE(c.has_value()) << c.error().ToString();
    client_ = std::move(*c);
  }
  void TearDown() override {
    client_.reset();
    service_.reset();
  }

  std::unique_ptr<Service> service_;
  std::unique_ptr<Client> client_;
};

TEST_F(ServiceTest, StoreLookupRetrieveRoundTripsBitForBit) {
  Start(SmallOptions("rt"));
  EXPECT_EQ(client_->server_info().chunk_size, kChunk);
  EXPECT_EQ(client_->server_info().server_id, "test-server");

  transfer::testing::TestShm shm(kLayers * kLayerBytes);
  shm.Fill(1);
  std::vector<uint8_t> original(shm.data(), shm.data() + shm.size());
  auto reg = client_->RegisterKvCache(Registration(shm)).Result();
  ASSERT_TRUE(reg.has_value()) << reg.error().ToString();
  EXPECT_EQ(reg->object_size, uint64_t{kChunk} * kLayers * 2 * kHeads * kDim * 2);

  // Store 3 chunks of a 3.5-chunk request from blocks 0..47.
  protocol::StoreRequest store;
  store.instance_id = "engine-0";
  store.key = MakeKey("req-1", 3 * kChunk + 128);
  store.key.worker_rank = 0;
  store.block_ids = Blocks(0, 3 * kChunk / kBlock);
  auto stored = client_->Store(store).Result();
  ASSERT_TRUE(stored.has_value()) << stored.error().ToString();
  EXPECT_EQ(stored->stored_chunks, 3u);
  ASSERT_TRUE(client_->EndSession("req-1").Result().has_value());

  // A second request with the same prefix: 3 chunks hit, retrieved into other blocks.
  protocol::LookupRequest lookup;
  lookup.key = MakeKey("req-2", 3 * kChunk + 200);
  ASSERT_TRUE(client_->Lookup(lookup).Result().has_value());
  auto status = client_->WaitPrefetchStatus("req-2", std::chrono::seconds(10)).Result();
  ASSERT_TRUE(status.has_value()) << status.error().ToString();
  EXPECT_TRUE(status->done);
  EXPECT_EQ(status->hit_chunks, 3u);

  std::memset(shm.data(), 0, shm.size());
  protocol::RetrieveRequest retrieve;
  retrieve.instance_id = "engine-0";
  retrieve.key = lookup.key;
  retrieve.key.worker_rank = 0;
  retrieve.key.end = 3 * kChunk;
  retrieve.block_ids = Blocks(16, 3 * kChunk / kBlock);  // blocks 16..63
  auto got = client_->Retrieve(retrieve).Result();
  ASSERT_TRUE(got.has_value()) << got.error().ToString();
  EXPECT_EQ(got->retrieved_chunks, 3u);
  // Block 16 + i now holds what block i held, in every layer and for K and V.
  const uint64_t block_bytes = uint64_t{kBlock} * kHeads * kDim * 2;
  for (uint32_t l = 0; l < kLayers; ++l) {
    for (uint32_t kv = 0; kv < 2; ++kv) {
      const uint64_t base = l * kLayerBytes + kv * (kLayerBytes / 2);
      for (uint32_t b = 0; b < 48; ++b) {
        ASSERT_EQ(std::memcmp(shm.data() + base + (16 + b) * block_bytes,
                              original.data() + base + b * block_bytes, block_bytes),
                  0)
            << "layer " << l << " kv " << kv << " block " << b;
      }
      for (uint32_t b = 0; b < 16; ++b) {  // untouched blocks stay zero
        const uint8_t* p = shm.data() + base + b * block_bytes;
        EXPECT_TRUE(std::all_of(p, p + block_bytes, [](uint8_t x) { return x == 0; }));
      }
    }
  }
  auto ended = client_->EndSession("req-2").Result();
  ASSERT_TRUE(ended.has_value());
  EXPECT_GE(ended->touched_keys, 3u);
  EXPECT_EQ(service_->engine().active_sessions(), 0u);
}

TEST_F(ServiceTest, ErrorsAreRepliesAndTheServerKeepsServing) {
  Start(SmallOptions("err"));
  // Unknown request id: an error, not a silent 0.
  auto q = client_->QueryPrefetchStatus("never-looked-up").Result();
  ASSERT_FALSE(q.has_value());
  EXPECT_EQ(q.error().code(), StatusCode::kNotFound);
  // STORE for an unregistered worker.
  protocol::StoreRequest store;
  store.instance_id = "nobody";
  store.key = MakeKey("r", kChunk);
  store.key.worker_rank = 0;
  store.block_ids = Blocks(0, kChunk / kBlock);
  auto s = client_->Store(store).Result();
  ASSERT_FALSE(s.has_value());
  EXPECT_EQ(s.error().code(), StatusCode::kNotFound);
  // A registration whose segment does not exist.
  transfer::testing::TestShm shm(kLayers * kLayerBytes);
  auto reg = Registration(shm);
  reg.shm_name = "/kvt-does-not-exist";
  EXPECT_FALSE(client_->RegisterKvCache(reg).Result().has_value());
  EXPECT_TRUE(client_->Ping().Result().has_value());
}

TEST_F(ServiceTest, AdminEndpointServesStatusMetricsAndClear) {
  Start(SmallOptions("admin"));
  ASSERT_NE(service_->admin_port(), 0);
  httplib::Client http("127.0.0.1", service_->admin_port());
  auto health = http.Get("/api/healthcheck");
  ASSERT_TRUE(health);
  EXPECT_EQ(health->status, 200);
  ASSERT_TRUE(client_->Noop().Result().has_value());
  auto status = http.Get("/api/status");
  ASSERT_TRUE(status);
  ASSERT_EQ(status->status, 200);
  auto j = nlohmann::json::parse(status->body);
  EXPECT_EQ(j["server"]["id"], "test-server");
  EXPECT_EQ(j["server"]["hash_algorithm"], "sha256");
  EXPECT_EQ(j["server"]["healthy"], true);
  EXPECT_GE(j["transport"]["requests"].get<uint64_t>(), 2u);  // HELLO and NOOP
  EXPECT_TRUE(j.contains("storage"));
  auto metrics = http.Get("/metrics");
  ASSERT_TRUE(metrics);
  EXPECT_EQ(metrics->status, 200);
  EXPECT_NE(metrics->body.find("kvtier_transport_requests"), std::string::npos);
  EXPECT_NE(
      metrics->body.find("kvtier_request_duration_seconds_bucket{opcode=\"NOOP\",le=\"+Inf\"} 1"),
      std::string::npos)
      << metrics->body;
  auto clear = http.Post("/api/clear", "", "application/json");
  ASSERT_TRUE(clear);
  EXPECT_EQ(clear->status, 200);
}

TEST(ServiceStartTest, FailuresNameThePartAndLeaveNothingRunning) {
  ServiceOptions o = SmallOptions("bad");
  o.transport.endpoints = {"bogus://nowhere"};
  auto s = Service::Start(o);
  ASSERT_FALSE(s.has_value());
  EXPECT_NE(s.error().message().find("transport"), std::string::npos) << s.error().ToString();

  o = SmallOptions("bad-l2");
  o.storage.l2_adapters = {nlohmann::json{{"type", "no-such-adapter"}}};
  s = Service::Start(o);
  ASSERT_FALSE(s.has_value());
  EXPECT_NE(s.error().message().find("storage"), std::string::npos) << s.error().ToString();

  // The admin port taken: the whole start fails, and the transport it had bound is released.
  auto first = Service::Start(SmallOptions("first"));
  ASSERT_TRUE(first.has_value());
  o = SmallOptions("second");
  o.admin.port = (*first)->admin_port();
  const std::string endpoint = o.transport.endpoints[0];
  s = Service::Start(o);
  ASSERT_FALSE(s.has_value());
  EXPECT_NE(s.error().message().find("admin"), std::string::npos) << s.error().ToString();
  o.admin_enabled = false;
  s = Service::Start(o);  // the same endpoint binds again
  EXPECT_TRUE(s.has_value()) << s.error().ToString();
}

TEST(ServiceShutdownTest, StoredChunksReachL2BeforeShutdownReturns) {
  const auto dir =
      std::filesystem::temp_directory_path() / fmt::format("kvt-service-l2-{}", ::getpid());
  std::filesystem::remove_all(dir);
  ServiceOptions o = SmallOptions("flush");
  o.storage.l2_adapters = {
      nlohmann::json{{"type", "fs"}, {"base_path", dir.string()}, {"max_capacity", "64MiB"}}};
  o.admin_enabled = false;
  auto s = Service::Start(o);
  ASSERT_TRUE(s.has_value()) << s.error().ToString();
  {
    ClientOptions co;
    co.endpoint = (*s)->endpoints()[0];
    auto client = Client::Connect(co);
    ASSERT_TRUE(client.has_value());
    transfer::testing::TestShm shm(kLayers * kLayerBytes);
    shm.Fill(2);
    ASSERT_TRUE((*client)->RegisterKvCache(Registration(shm)).Result().has_value());
    protocol::StoreRequest store;
    store.instance_id = "engine-0";
    store.key = MakeKey("req", 4 * kChunk);
    store.key.worker_rank = 0;
    store.block_ids = Blocks(0, 4 * kChunk / kBlock);
    auto stored = (*client)->Store(store).Result();
    ASSERT_TRUE(stored.has_value()) << stored.error().ToString();
    ASSERT_EQ(stored->stored_chunks, 4u);
  }
  EXPECT_TRUE((*s)->Shutdown());
  size_t files = 0;
  for (const auto& e : std::filesystem::recursive_directory_iterator(dir))
    files += e.is_regular_file() ? 1 : 0;
  EXPECT_GE(files, 4u) << "every stored chunk is in L2 once shutdown returns";
  s->reset();
  std::filesystem::remove_all(dir);
}

}  // namespace
}  // namespace kvtier::service
