// The redis adapter when the server dies, hangs, never answers or is not there yet.
#include <arpa/inet.h>
#include <fmt/format.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include "kvtier/l2/redis/redis_adapter.h"
#include "kvtier/l2/redis/redis_test_util.h"
#include "kvtier/l2/redis/testing/tcp_fault_proxy.h"

namespace kvtier::l2 {
namespace {

using redis_test::ConstSpans;
using redis_test::KeyListener;
using redis_test::LogCapture;
using redis_test::MakeKeys;
using redis_test::MakeObject;
using redis_test::RedisServerTest;
using redis_test::Spans;
using redis_test::StoreWaiter;
using redis_test::WaitLoad;
using redis_test::WaitLookup;
using testing::RedisServerOptions;
using testing::TcpFaultProxy;

// Submit* hand tasks to the I/O threads and never touch the network: a generous liveness bound,
// far below every timeout in these tests.
constexpr Duration kPromptSubmit = std::chrono::milliseconds(500);

class RedisFaultTest : public RedisServerTest {
 protected:
  // Times a Submit* call and checks it returned promptly.
  template <typename F>
  TaskId Prompt(F&& submit) {
    auto start = std::chrono::steady_clock::now();
    TaskId t = submit();
    EXPECT_LT(std::chrono::steady_clock::now() - start, kPromptSubmit);
    return t;
  }
};

TEST_F(RedisFaultTest, KillAndRestartMidRunOfStores) {
  auto adapter = MakeAdapter({{"connections", 2},
                              {"command_timeout", "2s"},
                              {"connect_timeout", "1s"},
                              {"reconnect_backoff_min", "20ms"},
                              {"reconnect_backoff_max", "200ms"}});
  ASSERT_NE(adapter, nullptr);
  StoreWaiter stores(adapter.get());
  constexpr size_t kTasks = 40, kKeysPerTask = 4;
  auto keys = MakeKeys(kTasks * kKeysPerTask * 2);
  std::vector<std::vector<uint8_t>> objects;
  for (size_t i = 0; i < kKeysPerTask; ++i) objects.push_back(MakeObject(256 << 10, i));
  auto spans = ConstSpans(objects);
  auto store = [&](size_t task_index) {
    return Prompt([&] {
      return adapter->SubmitStore(std::span(keys).subspan(task_index * kKeysPerTask, kKeysPerTask),
                                  spans);
    });
  };

  // A run of stores, with the server killed half-way through the submissions.
  std::vector<TaskId> before, after;
  for (size_t i = 0; i < kTasks; ++i) {
    if (i == kTasks / 2) {
      ASSERT_TRUE(server_->Kill().ok());
    }
    (i < kTasks / 2 ? before : after).push_back(store(i));
  }
  size_t failed = 0;
  for (TaskId t : before) {
    auto r = stores.Wait(t);
    ASSERT_TRUE(r) << "task " << t << " never completed";
    if (!r->status.ok()) ++failed;
  }
  for (TaskId t : after) {
    auto r = stores.Wait(t);
    ASSERT_TRUE(r) << "task " << t << " never completed";
    EXPECT_FALSE(r->status.ok()) << "stored into a dead server?";
    EXPECT_TRUE(r->status.retryable()) << r->status.ToString();
    ++failed;
  }
  EXPECT_EQ(adapter->Counters().store_tasks_failed, failed);
  EXPECT_EQ(adapter->Counters().in_flight_tasks, 0u);

  // Down: unhealthy, and new tasks fail at once instead of queueing.
  ASSERT_TRUE(adapter->WaitForHealth(false, std::chrono::seconds(10)));
  EXPECT_FALSE(adapter->healthy());
  nlohmann::json status = adapter->StatusJson();
  EXPECT_EQ(status["healthy"], false);
  EXPECT_EQ(status["redis"]["connections_up"], 0);
  EXPECT_FALSE(status["redis"]["last_error"].get<std::string>().empty());
  for (size_t i = 0; i < 10; ++i) {
    TaskId t = store(kTasks + i);
    auto r = stores.Wait(t, kPromptSubmit);
    ASSERT_TRUE(r) << "a store submitted while down did not fail promptly";
    EXPECT_EQ(r->status.code(), StatusCode::kUnavailable) << r->status.ToString();
    EXPECT_NE(r->status.message().find("not connected"), std::string_view::npos);
  }
  std::vector<std::vector<uint8_t>> buffers(kKeysPerTask, std::vector<uint8_t>(256 << 10));
  TaskId load = Prompt(
      [&] { return adapter->SubmitLoad(std::span(keys).first(kKeysPerTask), Spans(buffers)); });
  auto loaded = WaitLoad(adapter.get(), load, kPromptSubmit);
  ASSERT_TRUE(loaded);
  EXPECT_TRUE(loaded->None());
  TaskId lookup = Prompt([&] { return adapter->SubmitLookupAndLock(keys); });
  auto found = WaitLookup(adapter.get(), lookup, kPromptSubmit);
  ASSERT_TRUE(found);
  EXPECT_TRUE(found->None());
  EXPECT_FALSE(adapter->Delete(keys));

  // Back on the same port: picked up without a restart of the adapter.
  ASSERT_TRUE(server_->Restart().ok());
  ASSERT_TRUE(adapter->WaitForHealth(true, std::chrono::seconds(20)));
  auto r = stores.Wait(store(kTasks + 20));
  ASSERT_TRUE(r);
  EXPECT_TRUE(r->status.ok()) << r->status.ToString();
  EXPECT_GE(adapter->StatusJson()["redis"]["reconnects"].get<int>(), 1);
  loaded = WaitLoad(
      adapter.get(),
      adapter->SubmitLoad(std::span(keys).subspan((kTasks + 20) * kKeysPerTask, kKeysPerTask),
                          Spans(buffers)));
  ASSERT_TRUE(loaded && loaded->All());
  for (size_t i = 0; i < kKeysPerTask; ++i) EXPECT_EQ(buffers[i], objects[i]);
}

TEST_F(RedisFaultTest, CommandTimeoutFailsTasksOfAHungServer) {
  auto adapter = MakeAdapter({{"connections", 1},
                              {"command_timeout", "300ms"},
                              {"reconnect_backoff_min", "20ms"},
                              {"reconnect_backoff_max", "100ms"}});
  ASSERT_NE(adapter, nullptr);
  StoreWaiter stores(adapter.get());
  auto keys = MakeKeys(2);
  std::vector<std::vector<uint8_t>> objects = {MakeObject(1000, 1), MakeObject(1000, 2)};
  ASSERT_TRUE(stores.Wait(adapter->SubmitStore(keys, ConstSpans(objects)))->status.ok());

  ASSERT_TRUE(server_->Pause().ok());  // accepts bytes, answers nothing
  auto start = std::chrono::steady_clock::now();
  TaskId store =
      Prompt([&] { return adapter->SubmitStore(MakeKeys(1, 10), ConstSpans(objects, 0, 1)); });
  std::vector<std::vector<uint8_t>> buffers(2, std::vector<uint8_t>(1000));
  TaskId load = Prompt([&] { return adapter->SubmitLoad(keys, Spans(buffers)); });
  TaskId lookup = Prompt([&] { return adapter->SubmitLookupAndLock(keys); });
  auto r = stores.Wait(store, std::chrono::seconds(10));
  ASSERT_TRUE(r) << "the store hung";
  Duration elapsed = std::chrono::steady_clock::now() - start;
  EXPECT_EQ(r->status.code(), StatusCode::kTimeout) << r->status.ToString();
  EXPECT_TRUE(r->status.retryable());
  EXPECT_NE(r->status.message().find("command_timeout"), std::string_view::npos);
  EXPECT_GE(elapsed, std::chrono::milliseconds(250));  // it was the timeout that ended it
  auto loaded = WaitLoad(adapter.get(), load, std::chrono::seconds(10));
  ASSERT_TRUE(loaded);
  EXPECT_TRUE(loaded->None());
  auto found = WaitLookup(adapter.get(), lookup, std::chrono::seconds(10));
  ASSERT_TRUE(found);
  EXPECT_TRUE(found->None());
  EXPECT_EQ(adapter->StatusJson()["redis"]["locked_keys"], 0);
  ASSERT_TRUE(adapter->WaitForHealth(false, std::chrono::seconds(5)));

  ASSERT_TRUE(server_->Resume().ok());
  ASSERT_TRUE(adapter->WaitForHealth(true, std::chrono::seconds(20)));
  loaded = WaitLoad(adapter.get(), adapter->SubmitLoad(keys, Spans(buffers)));
  ASSERT_TRUE(loaded && loaded->All());
  EXPECT_EQ(buffers, objects);
}

// Sizes of the replies the tests below let through a TcpFaultProxy.
constexpr size_t kPongReply = sizeof("+PONG\r\n") - 1;
constexpr size_t kIntegerReply = sizeof(":1\r\n") - 1;

class RedisProxiedTest : public RedisServerTest {
 protected:
  void SetUp() override {
    RedisServerTest::SetUp();
    if (IsSkipped() || HasFatalFailure()) return;
    auto proxy = TcpFaultProxy::Start(server_->host(), server_->port());
    ASSERT_TRUE(proxy) << proxy.error().ToString();
    proxy_ = std::move(*proxy);
  }
  // An adapter connected through the proxy, with `listener` attached.
  std::unique_ptr<RedisAdapter> MakeProxiedAdapter(L2Listener* listener,
                                                   nlohmann::json extra = {}) {
    nlohmann::json config = {{"port", proxy_->port()},
                             {"max_capacity", "1GiB"},  // exact per-key accounting
                             {"connections", 1},
                             {"reconnect_backoff_min", "20ms"},
                             {"reconnect_backoff_max", "100ms"}};
    if (!extra.is_null()) config.update(extra);
    auto adapter = MakeAdapter(config);
    if (adapter != nullptr) adapter->AddListener(listener);
    return adapter;
  }
  std::unique_ptr<TcpFaultProxy> proxy_;
};

// The connection of a Delete fails after the first replies: what they confirmed is reported
// (accounts, listeners, result bits); the rest stays counted until a later Delete finds it gone.
TEST_F(RedisProxiedTest, DeleteReportsTheKeysConfirmedBeforeItsConnectionFailed) {
  KeyListener listener;
  auto adapter = MakeProxiedAdapter(&listener);
  ASSERT_NE(adapter, nullptr);
  auto keys = MakeKeys(4);
  std::vector<std::vector<uint8_t>> objects(4, MakeObject(1000, 1));
  StoreWaiter stores(adapter.get());
  auto stored = stores.Wait(adapter->SubmitStore(keys, ConstSpans(objects)));
  ASSERT_TRUE(stored && stored->status.ok());
  ASSERT_EQ(adapter->Usage().used_bytes, 4000u);

  // Delete opens its connection now: PING's reply and two UNLINK replies pass, then it is cut.
  proxy_->CutAfter(kPongReply + 2 * kIntegerReply);
  auto deleted = adapter->Delete(keys);
  ASSERT_TRUE(deleted) << deleted.error().ToString();
  EXPECT_EQ(deleted->ToString(), "1100");
  EXPECT_EQ(adapter->Usage().used_bytes, 2000u);
  EXPECT_EQ(listener.deleted(), std::vector<ObjectKey>(keys.begin(), keys.begin() + 2));
  EXPECT_EQ(adapter->Counters().deleted_keys, 2u);
  // Redis ran every UNLINK; the adapter could not know it for the last two.
  EXPECT_EQ(server_->Command({"DBSIZE"}).value(), "0");

  // Once it can tell, it reports them, with the bytes they were counted with.
  proxy_->PassAll();
  deleted = adapter->Delete(keys);
  ASSERT_TRUE(deleted) << deleted.error().ToString();
  EXPECT_EQ(deleted->ToString(), "1111");
  EXPECT_EQ(adapter->Usage().used_bytes, 0u);
  EXPECT_EQ(listener.deleted(), keys);

  // No reply at all: nothing is known, the call fails, and the key stays counted.
  stored = stores.Wait(adapter->SubmitStore(std::span(keys).first(1), ConstSpans(objects, 0, 1)));
  ASSERT_TRUE(stored && stored->status.ok());
  proxy_->CutAfter(0);  // the Delete connection, open since the last call
  deleted = adapter->Delete(std::span(keys).first(1));
  ASSERT_FALSE(deleted);
  EXPECT_NE(deleted.error().message().find("Delete"), std::string_view::npos)
      << deleted.error().ToString();
  EXPECT_EQ(adapter->Usage().used_bytes, 1000u);
  EXPECT_EQ(listener.deleted().size(), 4u);
  adapter->Close();
}

// A load finds a damaged value, then its connection fails on the next reply: the damaged value
// is counted at once and removed (and reported) once a connection is up again.
TEST_F(RedisProxiedTest, DamagedValueFoundBeforeAConnectionFailureIsCountedAndRemoved) {
  KeyListener listener;
  auto adapter = MakeProxiedAdapter(&listener);
  ASSERT_NE(adapter, nullptr);
  auto keys = MakeKeys(2);
  std::vector<std::vector<uint8_t>> objects = {MakeObject(100, 1), MakeObject(100, 2)};
  StoreWaiter stores(adapter.get());
  auto stored = stores.Wait(adapter->SubmitStore(keys, ConstSpans(objects)));
  ASSERT_TRUE(stored && stored->status.ok());
  const std::string damaged = "not a kvtier value";
  ASSERT_TRUE(server_->Command({"SET", adapter->RedisKey(keys[0]), damaged}));

  // The first GET's reply passes whole, the second is cut.
  proxy_->CutAfter(fmt::format("${}\r\n{}\r\n", damaged.size(), damaged).size());
  std::vector<std::vector<uint8_t>> buffers(2, std::vector<uint8_t>(100));
  auto loaded = WaitLoad(adapter.get(), adapter->SubmitLoad(keys, Spans(buffers)));
  ASSERT_TRUE(loaded);
  EXPECT_EQ(loaded->ToString(), "00");
  EXPECT_EQ(adapter->StatusJson()["redis"]["corrupt_values"], 1);

  proxy_->PassAll();
  ASSERT_TRUE(adapter->WaitForHealth(true, std::chrono::seconds(20)));
  ASSERT_TRUE(listener.WaitDeleted(1));
  EXPECT_EQ(listener.deleted(), std::vector<ObjectKey>{keys[0]});
  EXPECT_EQ(server_->Command({"EXISTS", adapter->RedisKey(keys[0])}).value(), "0");
  EXPECT_EQ(adapter->Usage().used_bytes, 100u);  // keys[1]'s
  auto found = WaitLookup(adapter.get(), adapter->SubmitLookupAndLock(keys));
  ASSERT_TRUE(found);
  EXPECT_EQ(found->ToString(), "01");
  adapter->SubmitUnlock(std::span(keys).subspan(1));
  adapter->Close();
}

class RedisAclFaultTest : public RedisFaultTest {
 protected:
  RedisServerOptions ServerOptions() override {
    RedisServerOptions o;
    o.acl_users = {"alice on >alice-pw ~kvtier:* +@all"};
    return o;
  }
};

// Credentials that stop working while the adapter runs (a rotated password) leave it down; that
// must be visible: a warning naming the reason, then rate-limited, and the reason in the status.
TEST_F(RedisAclFaultTest, ChangedPasswordIsLoggedAsAWarningWithTheReason) {
  LogCapture logs;  // before the adapter: see what its threads log
  {
    auto adapter = MakeAdapter({{"username", "alice"},
                                {"password", "alice-pw"},
                                {"connections", 2},
                                {"reconnect_backoff_min", "5ms"},
                                {"reconnect_backoff_max", "10ms"}});
    ASSERT_NE(adapter, nullptr);
    ASSERT_TRUE(adapter->healthy());
    ASSERT_TRUE(server_->Command({"ACL", "SETUSER", "alice", "resetpass", ">rotated"}));
    ASSERT_TRUE(server_->Command({"CLIENT", "KILL", "USER", "alice"}));

    ASSERT_TRUE(logs.WaitFor(spdlog::level::warn, {"cannot reconnect", "WRONGPASS"}))
        << logs.Dump();
    EXPECT_FALSE(adapter->healthy());
    nlohmann::json status = adapter->StatusJson()["redis"];
    EXPECT_NE(status["last_error"].get<std::string>().find("AUTH as user 'alice' failed"),
              std::string::npos)
        << status.dump();
    EXPECT_GE(status["reconnect_failures"].get<int>(), 1);
    // Many more failed attempts, same error: no more warnings (the interval is 30 s).
    ASSERT_TRUE(logs.WaitFor(spdlog::level::debug, {"reconnect failed", "WRONGPASS"}, 10))
        << logs.Dump();
    EXPECT_EQ(logs.Count(spdlog::level::warn, {"cannot reconnect"}), 1u) << logs.Dump();
    adapter->Close();
  }
}

// A listener that completes TCP handshakes (the kernel does) and never reads or answers.
class BlackHole {
 public:
  BlackHole() {
    fd_ = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t len = sizeof(addr);
    EXPECT_EQ(::bind(fd_, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)), 0);
    EXPECT_EQ(::listen(fd_, 64), 0);
    EXPECT_EQ(::getsockname(fd_, reinterpret_cast<sockaddr*>(&addr), &len), 0);
    port_ = ntohs(addr.sin_port);
  }
  ~BlackHole() { ::close(fd_); }
  int port() const { return port_; }

 private:
  int fd_ = -1;
  int port_ = 0;
};

TEST(RedisBlackHoleTest, ServerThatNeverAnswersLeavesTheAdapterUnhealthyNotHung) {
  BlackHole hole;
  auto options = RedisAdapterOptions::FromJson({{"port", hole.port()},
                                                {"connections", 2},
                                                {"connect_timeout", "200ms"},
                                                {"command_timeout", "200ms"},
                                                {"reconnect_backoff_min", "50ms"},
                                                {"reconnect_backoff_max", "100ms"}},
                                               "hole");
  ASSERT_TRUE(options);
  auto start = std::chrono::steady_clock::now();
  auto adapter = RedisAdapter::Create(*options, "hole");
  ASSERT_TRUE(adapter) << adapter.error().ToString();
  EXPECT_LT(std::chrono::steady_clock::now() - start, std::chrono::seconds(5));
  EXPECT_FALSE((*adapter)->healthy());
  std::string last_error = (*adapter)->StatusJson()["redis"]["last_error"];
  EXPECT_NE(last_error.find("command_timeout"), std::string::npos) << last_error;

  auto keys = MakeKeys(1);
  auto object = MakeObject(10, 1);
  std::span<const uint8_t> src(object);
  StoreWaiter stores(adapter->get());
  start = std::chrono::steady_clock::now();
  TaskId t = (*adapter)->SubmitStore(keys, std::span(&src, 1));
  EXPECT_LT(std::chrono::steady_clock::now() - start, kPromptSubmit);
  auto r = stores.Wait(t, kPromptSubmit);
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status.code(), StatusCode::kUnavailable);
  start = std::chrono::steady_clock::now();
  (*adapter)->Close();
  EXPECT_LT(std::chrono::steady_clock::now() - start, std::chrono::seconds(5));
}

TEST_F(RedisFaultTest, ServerThatComesUpLaterIsPickedUp) {
  ASSERT_TRUE(server_->Stop().ok());
  auto adapter =
      MakeAdapter({{"reconnect_backoff_min", "20ms"}, {"reconnect_backoff_max", "100ms"}});
  ASSERT_NE(adapter, nullptr);
  EXPECT_FALSE(adapter->healthy());
  EXPECT_NE(adapter->StatusJson()["redis"]["last_error"].get<std::string>().find("connect"),
            std::string::npos);
  ASSERT_TRUE(server_->Restart().ok());
  ASSERT_TRUE(adapter->WaitForHealth(true, std::chrono::seconds(20)));
  auto keys = MakeKeys(1);
  auto object = MakeObject(10, 1);
  std::span<const uint8_t> src(object);
  StoreWaiter stores(adapter.get());
  auto r = stores.Wait(adapter->SubmitStore(keys, std::span(&src, 1)));
  ASSERT_TRUE(r);
  EXPECT_TRUE(r->status.ok()) << r->status.ToString();
}

}  // namespace
}  // namespace kvtier::l2
