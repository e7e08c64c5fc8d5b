// Peer fetch against the real pieces, in-process: the cluster controller service, a kvtier
// server whose reporter registers with it and reports its L1, and a peer adapter (another
// server's L2 tier) that finds the chunks through the controller and loads them from the server.
#include <cstring>
#include <thread>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>
#include <poll.h>
#include <unistd.h>

#include "kvtier/controller/controller_service.h"
#include "kvtier/l2/factory.h"
#include "kvtier/l2/peer/peer_adapter.h"
#include "kvtier/service/service.h"

namespace kvtier::l2 {
namespace {

using namespace std::chrono_literals;

constexpr uint64_t kObjectSize = 8192;
constexpr Duration kWait = 20s;

ObjectKey Key(uint8_t n) {
  keys::ChunkHash hash;
  hash.bytes.fill(n);
  return ObjectKey::Create(hash, "interop-model", keys::KvRank{1, 0}, 0).value();
}

std::vector<uint8_t> Contents(uint8_t seed) {
  std::vector<uint8_t> bytes(kObjectSize);
  for (size_t j = 0; j < bytes.size(); ++j) bytes[j] = static_cast<uint8_t>(seed * 29 + j * 3);
  return bytes;
}

// Waits on `fd` (an adapter eventfd) until the one-shot `query` answers.
template <typename F>
auto WaitResult(int fd, F query) {
  const auto deadline = std::chrono::steady_clock::now() + kWait;
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

std::unique_ptr<L2Adapter> Peer(const std::string& controller, const std::string& own_id) {
  auto a =
      MakeL2Adapter({{"type", "peer"}, {"controller", controller}, {"instance_id", own_id}}, 0);
  EXPECT_TRUE(a.has_value()) << a.error().ToString();
  return a ? std::move(*a) : nullptr;
}

Bitmap Lookup(L2Adapter& adapter, const std::vector<ObjectKey>& keys) {
  const TaskId t = adapter.SubmitLookupAndLock(keys);
  return WaitResult(adapter.lookup_event_fd(), [&] { return adapter.QueryLookupAndLockResult(t); })
      .value_or(Bitmap());
}

TEST(PeerInteropTest, ChunksAServerReportedAreFetchedThroughTheRealController) {
  controller::ControllerOptions co;
  co.request_endpoint = "tcp://127.0.0.1:0";
  co.events_endpoint = "tcp://127.0.0.1:0";
  co.heartbeat_endpoint = "tcp://127.0.0.1:0";
  co.admin_enabled = false;
  auto ctl = controller::ControllerService::Start(co);
  ASSERT_TRUE(ctl.has_value()) << ctl.error().ToString();
  const controller::BoundEndpoints& endpoints = (*ctl)->endpoints();

  service::ServiceOptions so;
  so.transport.endpoints = {"tcp://127.0.0.1:0"};
  so.transport.control_threads = 1;
  so.transport.transfer_threads = 1;
  so.storage.l1.capacity_bytes = 16ull << 20;
  so.engine.server_id = "server-b";
  so.admin_enabled = false;
  so.copy_threads = 0;
  so.reporter.endpoint = endpoints.requests;
  so.reporter.events_endpoint = endpoints.events;
  so.reporter.heartbeat_endpoint = endpoints.heartbeats;
  so.reporter.batch_interval = 5ms;
  so.reporter.sync_poll_interval = 10ms;
  auto server = service::Service::Start(so);
  ASSERT_TRUE(server.has_value()) << server.error().ToString();
  service::Service& b = **server;

  const std::vector<ObjectKey> keys{Key(1), Key(2), Key(3)};
  std::vector<l1::ObjectView> views;
  ASSERT_EQ(b.storage().ReserveWrite(keys, kObjectSize, &views).size(), keys.size());
  for (uint8_t i = 0; i < keys.size(); ++i) {
    const std::vector<uint8_t> bytes = Contents(i);
    std::memcpy(views[i].data, bytes.data(), bytes.size());
  }
  b.storage().FinishWrite(keys);
  // Registered and synced once; the keys travel in that sync or as ADMIT events after it.
  ASSERT_TRUE(b.reporter()->WaitForStats(
      [](const reporter::ReporterStats& s) {
        return s.state == "registered" && s.full_syncs_completed >= 1;
      },
      kWait))
      << b.reporter()->StatusJson().dump();

  std::unique_ptr<L2Adapter> adapter = Peer(endpoints.requests, "server-a");
  ASSERT_NE(adapter, nullptr);
  // Events reach the controller asynchronously: look up until it indexed all three.
  Bitmap found;
  const auto deadline = std::chrono::steady_clock::now() + kWait;
  do {
    found = Lookup(*adapter, keys);
    adapter->SubmitUnlock(keys);
  } while (!found.All() && std::chrono::steady_clock::now() < deadline);
  ASSERT_TRUE(found.All()) << found.ToString();

  std::vector<std::vector<uint8_t>> got(keys.size(), std::vector<uint8_t>(kObjectSize, 0));
  std::vector<std::span<uint8_t>> buffers(got.begin(), got.end());
  const TaskId t = adapter->SubmitLoad(keys, buffers);
  const std::optional<Bitmap> loaded =
      WaitResult(adapter->load_event_fd(), [&] { return adapter->QueryLoadResult(t); });
  ASSERT_TRUE(loaded.has_value());
  EXPECT_TRUE(loaded->All()) << loaded->ToString();
  for (uint8_t i = 0; i < keys.size(); ++i) EXPECT_EQ(got[i], Contents(i)) << int{i};

  // The server itself is excluded: it never fetches from itself.
  std::unique_ptr<L2Adapter> self = Peer(endpoints.requests, "server-b");
  ASSERT_NE(self, nullptr);
  EXPECT_TRUE(Lookup(*self, keys).None());

  adapter.reset();
  self.reset();
  server->reset();
  (*ctl)->Stop();
}

}  // namespace
}  // namespace kvtier::l2
