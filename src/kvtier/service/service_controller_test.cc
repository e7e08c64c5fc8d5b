// A service configured with a cluster controller: its reporter registers under the server id with
// the bound tcp endpoint as address, reports what L1 admits, shows up in /api/status and
// /metrics, and deregisters on shutdown. The controller is the reporter tests' in-process fake.
#include <atomic>
#include <set>

#include <fmt/format.h>
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>
#include <unistd.h>

#include "kvtier/l1/l1_test_util.h"
#include "kvtier/reporter/testing/fake_controller.h"
#include "kvtier/service/service.h"

namespace kvtier::service {
namespace {

using reporter::testing::FakeController;

constexpr Duration kWait = std::chrono::seconds(30);

std::string UniqueIpc(const char* tag) {
  static std::atomic<int> n{0};
  return fmt::format("ipc:///tmp/kvt-service-ctl-test-{}-{}-{}.sock", tag, ::getpid(),
                     n.fetch_add(1));
}

TEST(ServiceControllerTest, ReportsL1ToTheControllerAndDeregistersOnShutdown) {
  const reporter::ControllerEndpoints endpoints{UniqueIpc("req"), UniqueIpc("ev"), UniqueIpc("hb")};
  auto fake = FakeController::Start(endpoints);

  ServiceOptions o;
  o.transport.endpoints = {"tcp://127.0.0.1:0"};
  o.transport.control_threads = 1;
  o.transport.transfer_threads = 1;
  o.storage.l1.capacity_bytes = 16ull << 20;
  o.storage.l1.register_with_cuda = false;
  o.engine.server_id = "service-under-test";
  o.engine.server_version = "0.0-test";
  o.admin_enabled = false;
  o.copy_threads = 0;
  o.reporter.endpoint = endpoints.requests;
  o.reporter.events_endpoint = endpoints.events;
  o.reporter.heartbeat_endpoint = endpoints.heartbeats;
  o.reporter.batch_interval = std::chrono::milliseconds(5);
  o.reporter.sync_poll_interval = std::chrono::milliseconds(10);
  auto started = Service::Start(o);
  ASSERT_TRUE(started.has_value()) << started.error().ToString();
  std::unique_ptr<Service> service = std::move(*started);
  ASSERT_NE(service->reporter(), nullptr);

  ASSERT_TRUE(
      fake->WaitFor([](const FakeController::State& s) { return s.completed_syncs >= 1; }, kWait));
  const FakeController::State registered = fake->Observe();
  ASSERT_EQ(registered.registers.size(), 1u);
  EXPECT_EQ(registered.registers[0].instance_id, "service-under-test");
  EXPECT_EQ(registered.registers[0].address, service->endpoints()[0]);  // the bound port
  EXPECT_EQ(registered.registers[0].software_version, "kvtier 0.0-test");
  EXPECT_EQ(registered.registers[0].hash_algorithm, "sha256");
  EXPECT_EQ(registered.registers[0].chunk_size, o.engine.chunk_size);

  // Chunks stored through the storage API (what STORE does) reach the controller.
  const std::vector<keys::ObjectKey> keys = l1::testing::MakeKeys(5);
  ASSERT_EQ(service->storage().ReserveWrite(keys, 4096, nullptr),
            l1::testing::All(5, l1::L1Result::kSuccess));
  ASSERT_EQ(service->storage().FinishWrite(keys), l1::testing::All(5, l1::L1Result::kSuccess));
  std::set<std::string> want;
  for (const keys::ObjectKey& k : keys) want.insert(k.ToString());
  ASSERT_TRUE(fake->WaitFor(
      [&](const FakeController::State& s) {
        auto it = s.index.find("L1");
        return it != s.index.end() && it->second == want;
      },
      kWait));

  const nlohmann::json status = service->StatusJson();
  EXPECT_EQ(status["reporter"]["state"], "registered");
  EXPECT_EQ(status["reporter"]["locations"][0]["keys"], 5);
  const std::string metrics = service->MetricsText();
  EXPECT_NE(metrics.find("kvtier_reporter_batches_sent "), std::string::npos) << metrics;
  EXPECT_NE(metrics.find("kvtier_reporter_locations_keys{name=\"L1\"} 5"), std::string::npos)
      << metrics;

  service->Shutdown();
  const FakeController::State after = fake->Observe();
  ASSERT_EQ(after.deregisters.size(), 1u);
  EXPECT_EQ(after.deregisters[0].origin.instance_id, "service-under-test");
}

TEST(ServiceControllerTest, ReportingIsOffByDefault) {
  ServiceOptions o;
  o.transport.endpoints = {"tcp://127.0.0.1:0"};
  o.storage.l1.capacity_bytes = 16ull << 20;
  o.storage.l1.register_with_cuda = false;
  o.engine.server_id = "no-controller";
  o.admin_enabled = false;
  auto service = Service::Start(o);
  ASSERT_TRUE(service.has_value()) << service.error().ToString();
  EXPECT_EQ((*service)->reporter(), nullptr);
  EXPECT_EQ((*service)->StatusJson()["reporter"], (nlohmann::json{{"enabled", false}}));
}

TEST(ServiceControllerTest, ABadServerIdFailsTheStartNamingTheReporter) {
  ServiceOptions o;
  o.transport.endpoints = {"tcp://127.0.0.1:0"};
  o.storage.l1.capacity_bytes = 16ull << 20;
  o.storage.l1.register_with_cuda = false;
  o.engine.server_id = "has a space";
  o.admin_enabled = false;
  o.reporter.endpoint = "tcp://127.0.0.1:9";
  auto service = Service::Start(o);
  ASSERT_FALSE(service.has_value());
  EXPECT_NE(service.error().message().find("starting the controller reporter: the server id"),
            std::string::npos)
      << service.error().ToString();
}

}  // namespace
}  // namespace kvtier::service
