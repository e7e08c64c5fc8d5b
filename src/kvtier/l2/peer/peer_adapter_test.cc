#include "kvtier/l2/peer/peer_adapter.h"

#include <cstring>
#include <map>
#include <thread>

#include <fmt/format.h>
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>
#include <poll.h>
#include <unistd.h>
#include <zmq.hpp>

#include "kvtier/common/mutex.h"
#include "kvtier/controller/codec.h"
#include "kvtier/l2/factory.h"
#include "kvtier/service/service.h"
#include "kvtier/storage/storage_manager.h"

namespace kvtier::l2 {
namespace {

using namespace std::chrono_literals;

constexpr uint64_t kObjectSize = 4096;

ObjectKey Key(uint8_t n, uint16_t rank = 0) {
  keys::ChunkHash hash;
  hash.bytes.fill(n);
  return ObjectKey::Create(hash, "peer-model", keys::KvRank{2, rank}, 0, "salt").value();
}

// A minimal controller: a ROUTER that answers FIND_KV from a scripted index (and PING), or, when
// muted, answers nothing (a dead controller).
class FakeController {
 public:
  FakeController() : socket_(context_, zmq::socket_type::router) {
    socket_.set(zmq::sockopt::linger, 0);
    socket_.bind("tcp://127.0.0.1:*");
    endpoint_ = socket_.get(zmq::sockopt::last_endpoint);
    thread_ = std::thread([this] { Loop(); });
  }
  ~FakeController() {
    stop_.store(true);
    thread_.join();
  }
  const std::string& endpoint() const { return endpoint_; }

  void Add(const ObjectKey& key, controller::Holder holder) {
    MutexLock lock(&mu_);
    index_[key.ToString()].push_back(std::move(holder));
  }
  void set_muted(bool muted) { muted_.store(muted); }
  uint64_t find_kv_requests() const { return find_kv_.load(); }
  // The exclude_instance of every FIND_KV seen.
  std::vector<std::string> excluded() const {
    MutexLock lock(&mu_);
    return excluded_;
  }

 private:
  void Loop() {
    while (!stop_.load()) {
      zmq::pollitem_t item{socket_.handle(), 0, ZMQ_POLLIN, 0};
      zmq::poll(&item, 1, std::chrono::milliseconds(20));
      if ((item.revents & ZMQ_POLLIN) == 0) continue;
      std::vector<zmq::message_t> parts;
      bool more = true;
      while (more) {
        zmq::message_t part;
        (void)socket_.recv(part);
        more = part.more();
        parts.push_back(std::move(part));
      }
      if (muted_.load() || parts.size() < 2) continue;
      const auto* data = static_cast<const uint8_t*>(parts.back().data());
      auto request = controller::DecodeRequest({data, parts.back().size()});
      if (!request) continue;
      const auto* find = std::get_if<controller::FindKvRequest>(&request->body);
      if (find == nullptr) continue;
      ++find_kv_;
      controller::FindKvReply reply;
      {
        MutexLock lock(&mu_);
        excluded_.push_back(find->exclude_instance);
        const ObjectKey key =
            ObjectKey::Create(find->hash, find->space.model, find->space.kv_rank(),
                              find->space.object_group, find->space.cache_salt)
                .value();
        auto it = index_.find(key.ToString());
        if (it != index_.end()) {
          for (const controller::Holder& h : it->second) {
            if (h.instance_id != find->exclude_instance) reply.holders.push_back(h);
          }
        }
      }
      const std::vector<uint8_t> frame = controller::EncodeReply(controller::MessageType::kFindKv,
                                                                 request->header.request_id, reply);
      socket_.send(parts[0], zmq::send_flags::sndmore);
      socket_.send(zmq::buffer(frame), zmq::send_flags::none);
    }
  }

  zmq::context_t context_{1};
  zmq::socket_t socket_;
  std::string endpoint_;
  std::atomic<bool> stop_{false}, muted_{false};
  std::atomic<uint64_t> find_kv_{0};
  mutable Mutex mu_;
  std::map<std::string, std::vector<controller::Holder>> index_ KVT_GUARDED_BY(mu_);
  std::vector<std::string> excluded_ KVT_GUARDED_BY(mu_);
  std::thread thread_;
};

// A server (in-process kvtier::service) holding objects in its L1.
std::unique_ptr<service::Service> StartPeerServer() {
  service::ServiceOptions o;
  o.transport.endpoints = {"tcp://127.0.0.1:0"};
  o.transport.control_threads = 1;
  o.transport.transfer_threads = 1;
  o.storage.l1.capacity_bytes = 16ull << 20;
  o.engine.server_id = "server-b";
  o.admin_enabled = false;
  o.copy_threads = 1;
  o.tick_interval = 50ms;
  auto s = service::Service::Start(o);
  EXPECT_TRUE(s.has_value()) << s.error().ToString();
  return s ? std::move(*s) : nullptr;
}

std::vector<uint8_t> Contents(uint8_t seed) {
  std::vector<uint8_t> bytes(kObjectSize);
  for (size_t j = 0; j < bytes.size(); ++j) bytes[j] = static_cast<uint8_t>(seed * 13 + j * 7);
  return bytes;
}

void Put(service::Service& server, const ObjectKey& key, const std::vector<uint8_t>& bytes) {
  std::vector<l1::ObjectView> views;
  const std::vector<ObjectKey> keys{key};
  ASSERT_EQ(server.storage().ReserveWrite(keys, bytes.size(), &views)[0], l1::L1Result::kSuccess);
  std::memcpy(views[0].data, bytes.data(), bytes.size());
  ASSERT_EQ(server.storage().FinishWrite(keys)[0], l1::L1Result::kSuccess);
}

// Waits on the adapter's eventfd `fd` until the one-shot `query` has its result (20 s at most).
template <typename F>
auto WaitResult(int fd, F query) {
  const auto deadline = std::chrono::steady_clock::now() + 20s;
  while (true) {
    auto r = query();
    if (r.has_value() || std::chrono::steady_clock::now() > deadline) return r;
    pollfd p{fd, POLLIN, 0};
    if (::poll(&p, 1, 100) > 0) {
      uint64_t drained;
      (void)!::read(fd, &drained, sizeof(drained));
    }
  }
}

class PeerAdapterTest : public ::testing::Test {
 protected:
  void SetUp() override {
    server_ = StartPeerServer();
    ASSERT_NE(server_, nullptr);
  }
  void TearDown() override {
    adapter_.reset();
    server_.reset();
  }

  void MakeAdapter(Duration controller_timeout = 5s, Duration peer_timeout = 5s,
                   uint64_t max_read_bytes = 256ull << 20) {
    auto a = MakeL2Adapter({{"type", "peer"},
                            {"controller", controller_.endpoint()},
                            {"instance_id", "server-a"},
                            {"controller_timeout", fmt::format("{}ms", ToMs(controller_timeout))},
                            {"peer_timeout", fmt::format("{}ms", ToMs(peer_timeout))},
                            {"max_read_bytes", max_read_bytes}},
                           0);
    ASSERT_TRUE(a.has_value()) << a.error().ToString();
    adapter_ = std::move(*a);
    ASSERT_EQ(adapter_->type(), "peer");
  }
  static int64_t ToMs(Duration d) {
    return std::chrono::duration_cast<std::chrono::milliseconds>(d).count();
  }
  PeerAdapter& peer() { return static_cast<PeerAdapter&>(*adapter_); }

  Bitmap Lookup(const std::vector<ObjectKey>& keys) {
    const TaskId t = adapter_->SubmitLookupAndLock(keys);
    auto r = WaitResult(adapter_->lookup_event_fd(),
                        [&] { return adapter_->QueryLookupAndLockResult(t); });
    EXPECT_TRUE(r.has_value());
    return r.value_or(Bitmap());
  }
  Bitmap Load(const std::vector<ObjectKey>& keys, std::vector<std::vector<uint8_t>>* out) {
    out->assign(keys.size(), std::vector<uint8_t>(kObjectSize, 0xEE));
    std::vector<std::span<uint8_t>> buffers;
    for (auto& b : *out) buffers.emplace_back(b);
    const TaskId t = adapter_->SubmitLoad(keys, buffers);
    auto r = WaitResult(adapter_->load_event_fd(), [&] { return adapter_->QueryLoadResult(t); });
    EXPECT_TRUE(r.has_value());
    return r.value_or(Bitmap());
  }

  FakeController controller_;
  std::unique_ptr<service::Service> server_;
  std::unique_ptr<L2Adapter> adapter_;
};

TEST_F(PeerAdapterTest, LookupAndLoadReturnTheBytesAPeerHolds) {
  const ObjectKey a = Key(1), b = Key(2, 1), missing = Key(3);
  Put(*server_, a, Contents(1));
  Put(*server_, b, Contents(2));
  const std::string address = server_->endpoints()[0];
  controller_.Add(a, {"server-b", 0, "l1", address});
  controller_.Add(b, {"server-b", 0, "l1", address});
  MakeAdapter();

  const std::vector<ObjectKey> keys{a, missing, b};
  const Bitmap found = Lookup(keys);
  EXPECT_TRUE(found.Test(0));
  EXPECT_FALSE(found.Test(1));
  EXPECT_TRUE(found.Test(2));
  for (const std::string& excluded : controller_.excluded()) EXPECT_EQ(excluded, "server-a");

  std::vector<std::vector<uint8_t>> got;
  const Bitmap loaded = Load(keys, &got);
  EXPECT_TRUE(loaded.Test(0));
  EXPECT_FALSE(loaded.Test(1));
  EXPECT_TRUE(loaded.Test(2));
  EXPECT_EQ(got[0], Contents(1));  // bitwise
  EXPECT_EQ(got[2], Contents(2));
  adapter_->SubmitUnlock(keys);

  EXPECT_EQ(peer().stats().fetched_keys, 2u);
  EXPECT_EQ(peer().stats().fetched_bytes, 2 * kObjectSize);
  EXPECT_EQ(peer().stats().peer_errors, 0u);
  EXPECT_EQ(server_->engine().counters().read_objects_found.load(), 2u);
  // The peer's read locks go once the server's ZMQ I/O thread has released the reply's
  // zero-copy frames, which may be a moment after the reply arrived here.
  const auto deadline = std::chrono::steady_clock::now() + 10s;
  while (server_->storage().l1().GetStatus().read_locked_objects != 0 &&
         std::chrono::steady_clock::now() < deadline) {
    std::this_thread::yield();
  }
  EXPECT_EQ(server_->storage().l1().GetStatus().read_locked_objects, 0u);

  // A load without a lookup asks the controller itself.
  const Bitmap again = Load({b}, &got);
  EXPECT_TRUE(again.Test(0));
  EXPECT_EQ(got[0], Contents(2));
}

TEST_F(PeerAdapterTest, LoadsAreCutIntoReadsOfAtMostMaxReadBytes) {
  std::vector<ObjectKey> keys;
  for (uint8_t i = 0; i < 5; ++i) {
    keys.push_back(Key(i));
    Put(*server_, keys.back(), Contents(i));
    controller_.Add(keys.back(), {"server-b", 0, "L1", server_->endpoints()[0]});
  }
  MakeAdapter(5s, 5s, 2 * kObjectSize);  // two objects per READ_OBJECTS
  std::vector<std::vector<uint8_t>> got;
  EXPECT_TRUE(Load(keys, &got).All());
  for (uint8_t i = 0; i < 5; ++i) EXPECT_EQ(got[i], Contents(i));
  EXPECT_EQ(server_->engine().counters().read_objects.load(), 3u);  // 2 + 2 + 1
}

TEST_F(PeerAdapterTest, OwnInstanceAndAddresslessHoldersAreNotPeers) {
  const ObjectKey a = Key(1), b = Key(2);
  Put(*server_, a, Contents(1));
  controller_.Add(a, {"server-a", 0, "l1", server_->endpoints()[0]});  // this server itself
  controller_.Add(b, {"server-c", 0, "l1", ""});                       // serves no peer fetch
  MakeAdapter();
  const Bitmap found = Lookup({a, b});
  EXPECT_FALSE(found.Test(0));
  EXPECT_FALSE(found.Test(1));
}

TEST_F(PeerAdapterTest, ADeadPeerIsAMissAndCounted) {
  const ObjectKey a = Key(1);
  Put(*server_, a, Contents(1));
  // A port nothing listens on (a dead server).
  controller_.Add(a, {"server-b", 0, "l1", "tcp://127.0.0.1:1"});
  MakeAdapter(5s, 300ms);
  EXPECT_TRUE(Lookup({a}).Test(0));
  std::vector<std::vector<uint8_t>> got;
  const Bitmap loaded = Load({a}, &got);
  EXPECT_FALSE(loaded.Test(0));
  EXPECT_EQ(got[0], std::vector<uint8_t>(kObjectSize, 0xEE));  // untouched
  EXPECT_EQ(peer().stats().peer_errors, 1u);
  EXPECT_EQ(adapter_->Counters().load_keys_failed, 1u);
  EXPECT_TRUE(adapter_->healthy());
}

TEST_F(PeerAdapterTest, ADeadControllerIsAMissAndCounted) {
  const ObjectKey a = Key(1);
  Put(*server_, a, Contents(1));
  controller_.Add(a, {"server-b", 0, "l1", server_->endpoints()[0]});
  controller_.set_muted(true);
  MakeAdapter(300ms, 5s);
  EXPECT_FALSE(Lookup({a}).Test(0));
  EXPECT_EQ(peer().stats().controller_errors, 1u);
  // It answers again: the adapter reconnects and finds the key.
  controller_.set_muted(false);
  EXPECT_TRUE(Lookup({a}).Test(0));
}

TEST_F(PeerAdapterTest, ASizeMismatchFailsTheKey) {
  const ObjectKey a = Key(1);
  Put(*server_, a, std::vector<uint8_t>(kObjectSize / 2, 7));  // not the size the buffer expects
  controller_.Add(a, {"server-b", 0, "l1", server_->endpoints()[0]});
  MakeAdapter();
  std::vector<std::vector<uint8_t>> got;
  EXPECT_FALSE(Load({a}, &got).Test(0));
  EXPECT_EQ(got[0], std::vector<uint8_t>(kObjectSize, 0xEE));
}

TEST_F(PeerAdapterTest, ReadOnly) {
  MakeAdapter();
  const std::vector<ObjectKey> keys{Key(1)};
  const std::vector<uint8_t> bytes(kObjectSize, 1);
  const std::vector<std::span<const uint8_t>> objects{bytes};
  const TaskId t = adapter_->SubmitStore(keys, objects);
  // A store completes at once, inside SubmitStore.
  std::vector<StoreResult> done = adapter_->PopCompletedStores();
  ASSERT_EQ(done.size(), 1u);
  EXPECT_EQ(done[0].task, t);
  EXPECT_EQ(done[0].status.code(), StatusCode::kNotSupported);
  auto deleted = adapter_->Delete(keys);
  ASSERT_TRUE(deleted.has_value());
  EXPECT_TRUE(deleted->All());
  EXPECT_EQ(adapter_->ListKeys("peer-model", 10, "").error().code(), StatusCode::kNotSupported);
}

// End to end through server A's storage: a prefetch of chunks only server B holds brings them
// into A's L1 through the peer adapter, bit for bit; a chunk nobody holds ends the prefix.
TEST_F(PeerAdapterTest, APrefetchOnAnotherServerLoadsThePeersChunks) {
  const std::vector<ObjectKey> keys{Key(1), Key(2), Key(3), Key(4)};
  for (uint8_t i = 0; i < 3; ++i) {
    Put(*server_, keys[i], Contents(i));
    controller_.Add(keys[i], {"server-b", 0, "L1", server_->endpoints()[0]});
  }
  storage::StorageOptions so;
  so.l1.capacity_bytes = 64 * kObjectSize;
  so.l2_adapters = {
      {{"type", "peer"}, {"controller", controller_.endpoint()}, {"instance_id", "server-a"}}};
  auto a = storage::StorageManager::Create(so);
  ASSERT_TRUE(a.has_value()) << a.error().ToString();
  storage::StorageManager& storage = **a;

  const storage::PrefetchHandle h = storage.SubmitPrefetch(keys, kObjectSize, 1);
  ASSERT_TRUE(storage.WaitPrefetch(h, std::chrono::seconds(20)));
  const std::optional<Bitmap> hit = storage.QueryPrefetch(h);
  ASSERT_TRUE(hit.has_value());
  EXPECT_EQ(hit->CountLeadingOnes(), 3u);
  auto views = storage.ReadPrefetched(std::span(keys).first(3));
  ASSERT_TRUE(views.has_value()) << views.error().ToString();
  for (uint8_t i = 0; i < 3; ++i) {
    const l1::ObjectView& v = (*views)[i];
    EXPECT_EQ(std::vector<uint8_t>(v.data, v.data + v.size), Contents(i)) << int{i};
  }
  storage.FinishReadPrefetched(std::span(keys).first(3), 1);
  storage.Close();
}

TEST(PeerAdapterConfigTest, RequiredAndUnknownKeys) {
  auto missing = MakeL2Adapter({{"type", "peer"}, {"controller", "tcp://127.0.0.1:1"}}, 0);
  ASSERT_FALSE(missing.has_value());
  EXPECT_NE(missing.error().message().find("instance_id"), std::string::npos)
      << missing.error().ToString();
  auto unknown = MakeL2Adapter(
      {{"type", "peer"}, {"controller", "tcp://127.0.0.1:1"}, {"instance_id", "a"}, {"bogus", 1}},
      0);
  ASSERT_FALSE(unknown.has_value());
  EXPECT_NE(unknown.error().message().find("bogus"), std::string::npos);
  auto ok = PeerAdapterOptions::FromJson(
      {{"controller", "tcp://c:1"}, {"instance_id", "a"}, {"peer_timeout", "250ms"}}, "p");
  ASSERT_TRUE(ok.has_value()) << ok.error().ToString();
  EXPECT_EQ(ok->peer_timeout, std::chrono::milliseconds(250));
  EXPECT_EQ(ok->controller_timeout, std::chrono::milliseconds(500));
}

}  // namespace
}  // namespace kvtier::l2
