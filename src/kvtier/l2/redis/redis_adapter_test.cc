// The redis adapter against a real redis-server: round trips, accounting, key format, damaged
// values, size limits, delete/list, cancel, AUTH, configuration.
#include "kvtier/l2/redis/redis_adapter.h"

#include <atomic>
#include <cstdlib>
#include <map>

#include <fmt/format.h>
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "kvtier/common/mutex.h"
#include "kvtier/l2/redis/redis_test_util.h"
#include "kvtier/l2/redis/redis_value.h"

namespace kvtier::l2 {
namespace {

using redis_test::ConstSpans;
using redis_test::Gate;
using redis_test::KeyListener;
using redis_test::MakeKeys;
using redis_test::MakeObject;
using redis_test::RedisServerTest;
using redis_test::Spans;
using redis_test::StoreWaiter;
using redis_test::WaitLoad;
using redis_test::WaitLookup;
using testing::RedisServerOptions;

class RecordingListener : public L2Listener {
 public:
  void OnL2KeysStored(std::span<const ObjectKey> keys, std::span<const uint64_t> sizes) override {
    MutexLock lock(&mu_);
    for (size_t i = 0; i < keys.size(); ++i) stored_bytes_ += sizes[i];
    stored_keys_ += keys.size();
  }
  void OnL2KeysDeleted(std::span<const ObjectKey> keys) override {
    MutexLock lock(&mu_);
    deleted_keys_ += keys.size();
  }
  uint64_t stored_keys() const {
    MutexLock lock(&mu_);
    return stored_keys_;
  }
  uint64_t stored_bytes() const {
    MutexLock lock(&mu_);
    return stored_bytes_;
  }
  uint64_t deleted_keys() const {
    MutexLock lock(&mu_);
    return deleted_keys_;
  }

 private:
  mutable Mutex mu_;
  uint64_t stored_keys_ KVT_GUARDED_BY(mu_) = 0;
  uint64_t stored_bytes_ KVT_GUARDED_BY(mu_) = 0;
  uint64_t deleted_keys_ KVT_GUARDED_BY(mu_) = 0;
};

// ---- configuration (no server needed) ----

TEST(RedisAdapterConfigTest, Defaults) {
  auto o = RedisAdapterOptions::FromJson(nlohmann::json::object(), "r");
  ASSERT_TRUE(o) << o.error().ToString();
  EXPECT_EQ(o->connect.host, "127.0.0.1");
  EXPECT_EQ(o->connect.port, 6379);
  EXPECT_EQ(o->connect.db, 0);
  EXPECT_EQ(o->connections, 2);
  EXPECT_EQ(o->connect.connect_timeout, std::chrono::seconds(2));
  EXPECT_EQ(o->connect.command_timeout, std::chrono::seconds(5));
  EXPECT_EQ(o->reconnect_backoff_min, std::chrono::milliseconds(100));
  EXPECT_EQ(o->reconnect_backoff_max, std::chrono::seconds(5));
  EXPECT_EQ(o->max_value_size, 512ULL << 20);
  EXPECT_EQ(o->key_prefix, "kvtier:v1:");
  EXPECT_EQ(o->max_capacity, 0u);
  EXPECT_TRUE(o->checksum);
}

TEST(RedisAdapterConfigTest, ReadsEverySetting) {
  auto o = RedisAdapterOptions::FromJson({{"host", "redis.local"},
                                          {"port", 7000},
                                          {"username", "alice"},
                                          {"password", "pw"},
                                          {"db", 3},
                                          {"connections", 4},
                                          {"connect_timeout", "250ms"},
                                          {"command_timeout", 1.5},
                                          {"reconnect_backoff_min", "10ms"},
                                          {"reconnect_backoff_max", "1s"},
                                          {"max_value_size", "64MiB"},
                                          {"key_prefix", "p:"},
                                          {"max_capacity", "10GiB"},
                                          {"checksum", false}},
                                         "r");
  ASSERT_TRUE(o) << o.error().ToString();
  EXPECT_EQ(o->connect.host, "redis.local");
  EXPECT_EQ(o->connect.port, 7000);
  EXPECT_EQ(o->connect.username, "alice");
  EXPECT_EQ(o->connect.password, "pw");
  EXPECT_EQ(o->connect.db, 3);
  EXPECT_EQ(o->connections, 4);
  EXPECT_EQ(o->connect.connect_timeout, std::chrono::milliseconds(250));
  EXPECT_EQ(o->connect.command_timeout, std::chrono::milliseconds(1500));
  EXPECT_EQ(o->reconnect_backoff_min, std::chrono::milliseconds(10));
  EXPECT_EQ(o->reconnect_backoff_max, std::chrono::seconds(1));
  EXPECT_EQ(o->max_value_size, 64ULL << 20);
  EXPECT_EQ(o->key_prefix, "p:");
  EXPECT_EQ(o->max_capacity, 10ULL << 30);
  EXPECT_FALSE(o->checksum);
}

TEST(RedisAdapterConfigTest, RejectsBadSettings) {
  const nlohmann::json bad[] = {
      {{"hots", "x"}},  // unknown key
      {{"port", 0}},
      {{"port", 70000}},
      {{"connections", 0}},
      {{"connect_timeout", 0}},
      {{"command_timeout", "soon"}},
      {{"reconnect_backoff_min", "1s"}, {"reconnect_backoff_max", "100ms"}},
      {{"max_value_size", 24}},
      {{"username", "alice"}},  // a user needs a password
      {{"db", -1}},
  };
  for (const auto& config : bad) {
    auto o = RedisAdapterOptions::FromJson(config, "r9");
    ASSERT_FALSE(o) << config.dump();
    EXPECT_EQ(o.error().code(), StatusCode::kInvalidArgument);
    EXPECT_NE(o.error().message().find("redis adapter 'r9'"), std::string_view::npos)
        << o.error().message();
  }
}

TEST(RedisAdapterConfigTest, PasswordFromEnvironmentUnlessTheConfigHasOne) {
  ASSERT_EQ(::setenv(kRedisPasswordEnv, "from-env", 1), 0);
  auto env = RedisAdapterOptions::FromJson(nlohmann::json::object(), "r");
  auto config = RedisAdapterOptions::FromJson({{"password", "from-config"}}, "r");
  auto user = RedisAdapterOptions::FromJson({{"username", "alice"}}, "r");
  ::unsetenv(kRedisPasswordEnv);
  auto none = RedisAdapterOptions::FromJson(nlohmann::json::object(), "r");
  ASSERT_TRUE(env && config && user && none);
  EXPECT_EQ(env->connect.password, "from-env");
  EXPECT_EQ(config->connect.password, "from-config");
  EXPECT_EQ(user->connect.password, "from-env");
  EXPECT_EQ(none->connect.password, "");
}

TEST(RedisAdapterConfigTest, GlobEscapeMatchesLiterally) {
  EXPECT_EQ(RedisGlobEscape("plain:model@"), "plain:model@");
  EXPECT_EQ(RedisGlobEscape("a*b?c[d]e\\f"), "a\\*b\\?c\\[d\\]e\\\\f");
}

// ---- against a server ----

class RedisAdapterTest : public RedisServerTest {};

TEST_F(RedisAdapterTest, StoreLookupLoadRoundTrip) {
  auto adapter = MakeAdapter();
  ASSERT_NE(adapter, nullptr);
  EXPECT_TRUE(adapter->healthy());
  EXPECT_EQ(adapter->type(), "redis");
  EXPECT_EQ(adapter->connections_up(), 2);

  auto keys = MakeKeys(5);
  std::vector<std::vector<uint8_t>> objects;
  for (size_t i = 0; i < keys.size(); ++i)
    objects.push_back(MakeObject(i * 1000 + (i == 4 ? 0 : 7), i));
  StoreWaiter stores(adapter.get());
  TaskId t = adapter->SubmitStore(keys, ConstSpans(objects));
  auto r = stores.Wait(t);
  ASSERT_TRUE(r);
  ASSERT_TRUE(r->status.ok()) << r->status.ToString();
  uint64_t total = 0;
  for (const auto& o : objects) total += o.size();
  EXPECT_EQ(r->bytes_written, total);

  auto probe = keys;
  probe.push_back(MakeKeys(1, 100)[0]);
  auto found = WaitLookup(adapter.get(), adapter->SubmitLookupAndLock(probe));
  ASSERT_TRUE(found);
  EXPECT_EQ(found->ToString(), "111110");
  adapter->SubmitUnlock(keys);

  std::vector<std::vector<uint8_t>> buffers;
  buffers.reserve(objects.size() + 1);
  for (const auto& o : objects) buffers.emplace_back(o.size(), 0xee);
  buffers.emplace_back(16, 0);
  auto loaded = WaitLoad(adapter.get(), adapter->SubmitLoad(probe, Spans(buffers)));
  ASSERT_TRUE(loaded);
  EXPECT_EQ(loaded->ToString(), "111110");
  for (size_t i = 0; i < objects.size(); ++i) EXPECT_EQ(buffers[i], objects[i]) << i;

  AdapterCounters c = adapter->Counters();
  EXPECT_EQ(c.store_tasks, 1u);
  EXPECT_EQ(c.store_keys, 5u);
  EXPECT_EQ(c.store_bytes, total);
  EXPECT_EQ(c.lookup_hits, 5u);
  EXPECT_EQ(c.load_keys_failed, 1u);
  EXPECT_EQ(c.load_bytes, total);
  EXPECT_EQ(c.in_flight_tasks, 0u);
  EXPECT_EQ(adapter->Usage().used_bytes, total);
}

TEST_F(RedisAdapterTest, KeyFormatAndValueLayout) {
  auto adapter = MakeAdapter({{"key_prefix", "pfx:"}});
  ASSERT_NE(adapter, nullptr);
  auto keys = MakeKeys(1, 0, "meta-llama/Llama-3.1-8B", "tenant-a");
  auto object = MakeObject(100, 1);
  StoreWaiter stores(adapter.get());
  std::span<const uint8_t> src(object);
  auto r = stores.Wait(adapter->SubmitStore(keys, std::span(&src, 1)));
  ASSERT_TRUE(r && r->status.ok());
  const std::string name = "pfx:" + keys[0].ToString();
  EXPECT_EQ(adapter->RedisKey(keys[0]), name);
  EXPECT_EQ(name.substr(0, 28), "pfx:meta-llama/Llama-3.1-8B@");
  EXPECT_EQ(server_->Command({"EXISTS", name}).value(), "1");
  EXPECT_EQ(server_->Command({"STRLEN", name}).value(),
            std::to_string(100 + kRedisValueHeaderSize));
  EXPECT_EQ(server_->Command({"GETRANGE", name, "0", "3"}).value(), "kvtR");
}

TEST_F(RedisAdapterTest, StoringAPresentKeySucceedsWithoutCountingTwice) {
  auto adapter = MakeAdapter();
  RecordingListener listener;
  adapter->AddListener(&listener);
  auto keys = MakeKeys(3);
  std::vector<std::vector<uint8_t>> objects = {MakeObject(10, 1), MakeObject(20, 2),
                                               MakeObject(30, 3)};
  StoreWaiter stores(adapter.get());
  auto first =
      stores.Wait(adapter->SubmitStore(std::span(keys).first(2), ConstSpans(objects, 0, 2)));
  ASSERT_TRUE(first && first->status.ok());
  EXPECT_EQ(first->bytes_written, 30u);
  // Again, plus one new key: only the new one is new bytes.
  std::vector<std::vector<uint8_t>> other = {MakeObject(10, 9), MakeObject(20, 9),
                                             MakeObject(30, 3)};
  auto second = stores.Wait(adapter->SubmitStore(keys, ConstSpans(other)));
  ASSERT_TRUE(second && second->status.ok()) << second->status.ToString();
  EXPECT_EQ(second->bytes_written, 30u);
  EXPECT_EQ(adapter->Usage().used_bytes, 60u);
  EXPECT_EQ(listener.stored_keys(), 3u);
  EXPECT_EQ(listener.stored_bytes(), 60u);
  // SET NX kept the first value.
  std::vector<std::vector<uint8_t>> buffers = {std::vector<uint8_t>(10)};
  auto loaded =
      WaitLoad(adapter.get(), adapter->SubmitLoad(std::span(keys).first(1), Spans(buffers)));
  ASSERT_TRUE(loaded && loaded->All());
  EXPECT_EQ(buffers[0], objects[0]);
}

TEST_F(RedisAdapterTest, DamagedValuesAreMissesAndAreRemoved) {
  auto adapter = MakeAdapter();
  auto keys = MakeKeys(4);
  std::vector<std::vector<uint8_t>> objects;
  objects.reserve(4);
  for (int i = 0; i < 4; ++i) objects.push_back(MakeObject(64, i));
  StoreWaiter stores(adapter.get());
  auto r = stores.Wait(adapter->SubmitStore(keys, ConstSpans(objects)));
  ASSERT_TRUE(r && r->status.ok());
  // 1: foreign bytes; 2: a flipped payload byte (SETRANGE); 3: truncated.
  ASSERT_TRUE(server_->Command({"SET", adapter->RedisKey(keys[1]), "not a kvtier value"}));
  ASSERT_TRUE(server_->Command(
      {"SETRANGE", adapter->RedisKey(keys[2]), std::to_string(kRedisValueHeaderSize + 5), "X"}));
  std::string value3 = server_->Command({"GET", adapter->RedisKey(keys[3])}).value();
  ASSERT_TRUE(server_->Command({"SET", adapter->RedisKey(keys[3]), value3.substr(0, 50)}));

  std::vector<std::vector<uint8_t>> buffers(4, std::vector<uint8_t>(64));
  auto loaded = WaitLoad(adapter.get(), adapter->SubmitLoad(keys, Spans(buffers)));
  ASSERT_TRUE(loaded);
  EXPECT_EQ(loaded->ToString(), "1000");
  EXPECT_EQ(buffers[0], objects[0]);
  for (int i = 1; i < 4; ++i) {
    EXPECT_EQ(server_->Command({"EXISTS", adapter->RedisKey(keys[i])}).value(), "0") << i;
  }
  EXPECT_EQ(adapter->StatusJson()["redis"]["corrupt_values"], 3);
  // The damaged keys can be stored again.
  auto again =
      stores.Wait(adapter->SubmitStore(std::span(keys).subspan(1), ConstSpans(objects, 1)));
  ASSERT_TRUE(again && again->status.ok());
  loaded = WaitLoad(adapter.get(), adapter->SubmitLoad(keys, Spans(buffers)));
  ASSERT_TRUE(loaded && loaded->All());
  for (int i = 0; i < 4; ++i) EXPECT_EQ(buffers[i], objects[i]);
}

// Removing a value this process never stored (an earlier run's, another client's) must not
// subtract bytes that were never added: the accounts would under-count what this process holds.
TEST_F(RedisAdapterTest, RemovingValuesThisProcessNeverStoredSubtractsNothing) {
  auto adapter = MakeAdapter({{"max_capacity", "1GiB"}});
  KeyListener listener;
  adapter->AddListener(&listener);
  auto keys = MakeKeys(3);
  auto object = MakeObject(100, 1);
  std::span<const uint8_t> src(object);
  StoreWaiter stores(adapter.get());
  ASSERT_TRUE(stores.Wait(adapter->SubmitStore(std::span(keys).subspan(1, 1), std::span(&src, 1)))
                  ->status.ok());
  ASSERT_EQ(adapter->Usage().used_bytes, 100u);

  // keys[0]: a damaged 1000-byte value found by a load; keys[2]: a value deleted by Delete.
  ASSERT_TRUE(server_->Command({"SET", adapter->RedisKey(keys[0]), std::string(1000, 'x')}));
  ASSERT_TRUE(server_->Command({"SET", adapter->RedisKey(keys[2]), std::string(2000, 'y')}));
  std::vector<std::vector<uint8_t>> buffers(1, std::vector<uint8_t>(1000 - kRedisValueHeaderSize));
  auto loaded =
      WaitLoad(adapter.get(), adapter->SubmitLoad(std::span(keys).first(1), Spans(buffers)));
  ASSERT_TRUE(loaded);
  EXPECT_EQ(loaded->ToString(), "0");
  EXPECT_EQ(server_->Command({"EXISTS", adapter->RedisKey(keys[0])}).value(), "0");
  EXPECT_EQ(adapter->StatusJson()["redis"]["corrupt_values"], 1);
  EXPECT_EQ(adapter->Usage().used_bytes, 100u);

  auto deleted = adapter->Delete(std::span(keys).subspan(2, 1));
  ASSERT_TRUE(deleted) << deleted.error().ToString();
  EXPECT_EQ(deleted->ToString(), "1");
  EXPECT_EQ(adapter->Usage().used_bytes, 100u);
  EXPECT_EQ(adapter->Counters().deleted_keys, 2u);  // both were removed by this adapter
  EXPECT_EQ(listener.deleted(), (std::vector<ObjectKey>{keys[0], keys[2]}));

  // The one it did store still subtracts what it added.
  deleted = adapter->Delete(std::span(keys).subspan(1, 1));
  ASSERT_TRUE(deleted);
  EXPECT_EQ(adapter->Usage().used_bytes, 0u);
  adapter->Close();
}

// A key that vanished behind the adapter's back (here FLUSHDB; Redis eviction alike) is found
// gone by the next store or Delete of it, and its old bytes leave the accounts then.
TEST_F(RedisAdapterTest, KeysThatVanishedLeaveTheAccountsWhenFoundGone) {
  auto adapter = MakeAdapter({{"max_capacity", "1GiB"}});
  auto keys = MakeKeys(2);
  std::vector<std::vector<uint8_t>> objects = {MakeObject(100, 1), MakeObject(300, 2)};
  StoreWaiter stores(adapter.get());
  ASSERT_TRUE(stores.Wait(adapter->SubmitStore(keys, ConstSpans(objects)))->status.ok());
  ASSERT_EQ(adapter->Usage().used_bytes, 400u);
  ASSERT_TRUE(server_->Command({"FLUSHDB"}));
  auto deleted = adapter->Delete(std::span(keys).first(1));
  ASSERT_TRUE(deleted);
  EXPECT_EQ(deleted->ToString(), "1");
  EXPECT_EQ(adapter->Usage().used_bytes, 300u);
  // Stored again with another size: counted once, at the new size.
  auto other = MakeObject(50, 3);
  std::span<const uint8_t> src(other);
  ASSERT_TRUE(stores.Wait(adapter->SubmitStore(std::span(keys).subspan(1), std::span(&src, 1)))
                  ->status.ok());
  EXPECT_EQ(adapter->Usage().used_bytes, 50u);
  adapter->Close();
}

// Without max_capacity Redis owns the capacity and evicts behind kvtier's back, so the adapter
// keeps no per-key record (it would grow without bound): usage counts the bytes this process
// stored, and a deletion, which it cannot attribute, subtracts nothing.
TEST_F(RedisAdapterTest, WithoutACapacityUsageCountsBytesStored) {
  auto adapter = MakeAdapter();
  KeyListener listener;
  adapter->AddListener(&listener);
  auto keys = MakeKeys(2);
  std::vector<std::vector<uint8_t>> objects = {MakeObject(100, 1), MakeObject(300, 2)};
  StoreWaiter stores(adapter.get());
  ASSERT_TRUE(stores.Wait(adapter->SubmitStore(keys, ConstSpans(objects)))->status.ok());
  ASSERT_EQ(adapter->Usage().used_bytes, 400u);
  auto deleted = adapter->Delete(keys);
  ASSERT_TRUE(deleted);
  EXPECT_EQ(deleted->ToString(), "11");
  EXPECT_EQ(adapter->Usage().used_bytes, 400u);
  EXPECT_EQ(adapter->Counters().deleted_keys, 2u);
  EXPECT_EQ(listener.deleted(), keys);
  adapter->Close();
}

// A task goes to the connection with the least work, counting the task it is running: a lookup
// must not queue behind a long store while another connection is idle.
TEST_F(RedisAdapterTest, TasksGoToAnIdleConnectionNotBehindARunningStore) {
  auto options = RedisAdapterOptions::FromJson(Config({{"connections", 2}}), "redis0");
  ASSERT_TRUE(options) << options.error().ToString();
  Gate store_gate;
  std::atomic<bool> first{true};
  Mutex mu;
  std::map<TaskId, int> ran_on;  // task -> connection
  options->before_task = [&](int connection, TaskId task) {
    {
      MutexLock lock(&mu);
      ran_on[task] = connection;
    }
    if (first.exchange(false)) store_gate.Pass();  // the store: held until the test opens
  };
  auto created = RedisAdapter::Create(*options, "redis0");
  ASSERT_TRUE(created) << created.error().ToString();
  std::unique_ptr<RedisAdapter> adapter = std::move(*created);
  // Whatever fails below, the held store must be let go before the adapter closes.
  struct OpenOnExit {
    Gate* gate;
    ~OpenOnExit() { gate->Open(); }
  } open_on_exit{&store_gate};

  auto keys = MakeKeys(1);
  auto object = MakeObject(1 << 20, 1);
  std::span<const uint8_t> src(object);
  StoreWaiter stores(adapter.get());
  TaskId store = adapter->SubmitStore(keys, std::span(&src, 1));
  ASSERT_TRUE(store_gate.AwaitArrivals(1));
  int busy;
  {
    MutexLock lock(&mu);
    busy = ran_on.at(store);
  }
  // Round robin alone would send every other lookup to the busy connection.
  for (int i = 0; i < 4; ++i) {
    TaskId lookup = adapter->SubmitLookupAndLock(keys);
    auto found = WaitLookup(adapter.get(), lookup, std::chrono::seconds(10));
    ASSERT_TRUE(found) << "lookup " << i << " waited behind the held store";
    EXPECT_EQ(found->ToString(), "0");
    MutexLock lock(&mu);
    EXPECT_NE(ran_on.at(lookup), busy) << "lookup " << i;
  }
  store_gate.Open();
  auto r = stores.Wait(store);
  ASSERT_TRUE(r);
  EXPECT_TRUE(r->status.ok()) << r->status.ToString();
  adapter->Close();
}

TEST(ReconnectWarningsTest, FirstFailureChangedErrorsThenOnePerInterval) {
  using std::chrono::seconds;
  ReconnectWarnings w(seconds(30));
  const TimePoint t0 = std::chrono::steady_clock::now();
  uint64_t suppressed = 99;
  EXPECT_TRUE(w.OnFailure("connection refused", t0, &suppressed));
  EXPECT_EQ(suppressed, 0u);
  EXPECT_FALSE(w.OnFailure("connection refused", t0 + seconds(1), &suppressed));
  EXPECT_FALSE(w.OnFailure("connection refused", t0 + seconds(29), &suppressed));
  // Another reason (the password was changed meanwhile) is news: warn at once.
  EXPECT_TRUE(w.OnFailure("WRONGPASS", t0 + seconds(29), &suppressed));
  EXPECT_EQ(suppressed, 2u);
  EXPECT_FALSE(w.OnFailure("WRONGPASS", t0 + seconds(58), &suppressed));
  EXPECT_TRUE(w.OnFailure("WRONGPASS", t0 + seconds(59), &suppressed));
  EXPECT_EQ(suppressed, 1u);
  // Connected again: the next outage's first failure warns.
  w.OnConnected();
  EXPECT_TRUE(w.OnFailure("WRONGPASS", t0 + seconds(60), &suppressed));
  EXPECT_EQ(suppressed, 0u);
}

TEST_F(RedisAdapterTest, LoadIntoABufferOfAnotherSizeFails) {
  auto adapter = MakeAdapter();
  auto keys = MakeKeys(1);
  auto object = MakeObject(100, 1);
  std::span<const uint8_t> src(object);
  StoreWaiter stores(adapter.get());
  ASSERT_TRUE(stores.Wait(adapter->SubmitStore(keys, std::span(&src, 1)))->status.ok());
  for (size_t size : {99, 101}) {
    std::vector<uint8_t> buffer(size, 0x11);
    std::span<uint8_t> dst(buffer);
    auto loaded = WaitLoad(adapter.get(), adapter->SubmitLoad(keys, std::span(&dst, 1)));
    ASSERT_TRUE(loaded);
    EXPECT_EQ(loaded->ToString(), "0") << size;
    EXPECT_EQ(buffer, std::vector<uint8_t>(size, 0x11));  // untouched
  }
  // The key is intact (not taken for damaged).
  EXPECT_EQ(server_->Command({"EXISTS", adapter->RedisKey(keys[0])}).value(), "1");
}

TEST_F(RedisAdapterTest, OversizedObjectIsRejectedExplicitly) {
  auto adapter = MakeAdapter({{"max_value_size", "1KiB"}});
  auto keys = MakeKeys(2);
  const size_t limit = 1024 - kRedisValueHeaderSize;
  std::vector<std::vector<uint8_t>> objects = {MakeObject(limit, 1), MakeObject(limit + 1, 2)};
  StoreWaiter stores(adapter.get());
  auto rejected = stores.Wait(adapter->SubmitStore(keys, ConstSpans(objects)));
  ASSERT_TRUE(rejected);
  EXPECT_EQ(rejected->status.code(), StatusCode::kInvalidArgument);
  std::string_view msg = rejected->status.message();
  EXPECT_NE(msg.find(std::to_string(limit + 1) + " bytes"), std::string_view::npos) << msg;
  EXPECT_NE(msg.find("max_value_size 1 KiB (1024 bytes)"), std::string_view::npos) << msg;
  EXPECT_NE(msg.find("not split"), std::string_view::npos) << msg;
  // Nothing of the task was sent.
  EXPECT_EQ(server_->Command({"DBSIZE"}).value(), "0");
  EXPECT_EQ(adapter->Counters().store_tasks_failed, 1u);
  // Exactly at the limit is fine.
  auto ok = stores.Wait(adapter->SubmitStore(std::span(keys).first(1), ConstSpans(objects, 0, 1)));
  ASSERT_TRUE(ok);
  EXPECT_TRUE(ok->status.ok()) << ok->status.ToString();
}

TEST_F(RedisAdapterTest, ServerErrorRepliesFailTheStore) {
  auto adapter = MakeAdapter();
  ASSERT_TRUE(server_->Command({"CONFIG", "SET", "maxmemory", "1"}));
  auto keys = MakeKeys(2);
  std::vector<std::vector<uint8_t>> objects = {MakeObject(1000, 1), MakeObject(1000, 2)};
  StoreWaiter stores(adapter.get());
  auto r = stores.Wait(adapter->SubmitStore(keys, ConstSpans(objects)));
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status.code(), StatusCode::kResourceExhausted) << r->status.ToString();
  EXPECT_TRUE(r->status.retryable());
  EXPECT_NE(r->status.message().find("OOM"), std::string_view::npos);
  EXPECT_TRUE(adapter->healthy());  // an error reply is not a broken connection
  ASSERT_TRUE(server_->Command({"CONFIG", "SET", "maxmemory", "0"}));
  auto ok = stores.Wait(adapter->SubmitStore(keys, ConstSpans(objects)));
  ASSERT_TRUE(ok && ok->status.ok());
}

TEST_F(RedisAdapterTest, DeleteSkipsLockedKeysUnlessForced) {
  auto adapter = MakeAdapter({{"max_capacity", "1GiB"}});  // exact accounting
  RecordingListener listener;
  adapter->AddListener(&listener);
  auto keys = MakeKeys(3);
  std::vector<std::vector<uint8_t>> objects = {MakeObject(100, 1), MakeObject(200, 2),
                                               MakeObject(300, 3)};
  StoreWaiter stores(adapter.get());
  ASSERT_TRUE(stores.Wait(adapter->SubmitStore(keys, ConstSpans(objects)))->status.ok());
  auto found = WaitLookup(adapter.get(), adapter->SubmitLookupAndLock(std::span(keys).first(1)));
  ASSERT_TRUE(found && found->All());

  auto deleted = adapter->Delete(keys);
  ASSERT_TRUE(deleted) << deleted.error().ToString();
  EXPECT_EQ(deleted->ToString(), "011");
  EXPECT_EQ(adapter->Usage().used_bytes, 100u);
  EXPECT_EQ(listener.deleted_keys(), 2u);
  EXPECT_EQ(server_->Command({"DBSIZE"}).value(), "1");

  // Absent keys count as gone (bit set), without a second deleted notification.
  adapter->SubmitUnlock(std::span(keys).first(1));
  deleted = adapter->Delete(keys);
  ASSERT_TRUE(deleted);
  EXPECT_EQ(deleted->ToString(), "111");
  EXPECT_EQ(listener.deleted_keys(), 3u);
  EXPECT_EQ(adapter->Usage().used_bytes, 0u);

  // force ignores locks.
  ASSERT_TRUE(stores.Wait(adapter->SubmitStore(keys, ConstSpans(objects)))->status.ok());
  ASSERT_TRUE(WaitLookup(adapter.get(), adapter->SubmitLookupAndLock(keys))->All());
  deleted = adapter->Delete(keys, /*force=*/true);
  ASSERT_TRUE(deleted);
  EXPECT_EQ(deleted->ToString(), "111");
  EXPECT_EQ(adapter->StatusJson()["redis"]["locked_keys"], 3);
  adapter->SubmitUnlock(keys);
  EXPECT_EQ(adapter->StatusJson()["redis"]["locked_keys"], 0);
}

TEST_F(RedisAdapterTest, ListKeysPagesThroughOneModel) {
  auto adapter = MakeAdapter();
  const std::string odd_model = "org/m*d[e]l?";  // glob characters must match literally
  auto a = MakeKeys(25, 0, odd_model);
  auto a_salted = MakeKeys(5, 100, odd_model, "tenant");
  auto b = MakeKeys(10, 0, "org/m");  // not a match, though "org/m*..." would glob it
  auto b2 = MakeKeys(10, 0, "org/mXdel?");
  StoreWaiter stores(adapter.get());
  for (const auto* set : {&a, &a_salted, &b, &b2}) {
    std::vector<std::vector<uint8_t>> objects;
    for (size_t i = 0; i < set->size(); ++i) objects.push_back(MakeObject(10 + i, i));
    ASSERT_TRUE(stores.Wait(adapter->SubmitStore(*set, ConstSpans(objects)))->status.ok());
  }
  ASSERT_TRUE(server_->Command({"SET", "kvtier:v1:" + odd_model + "@garbage", "x"}));

  for (size_t page_size : {1, 4, 500}) {
    std::vector<std::pair<ObjectKey, uint64_t>> listed;
    std::string cursor;
    int pages = 0;
    do {
      auto page = adapter->ListKeys(odd_model, page_size, cursor);
      ASSERT_TRUE(page) << page.error().ToString();
      EXPECT_LE(page->keys.size(), page_size);
      listed.insert(listed.end(), page->keys.begin(), page->keys.end());
      cursor = page->next_cursor;
      ASSERT_LT(++pages, 1000);
    } while (!cursor.empty());
    if (page_size < 30) {
      EXPECT_GT(pages, 1);
    }
    absl::flat_hash_map<ObjectKey, uint64_t, keys::ObjectKeyHash> seen;
    for (const auto& [k, size] : listed) seen[k] = size;
    EXPECT_EQ(listed.size(), seen.size()) << "a key was listed twice, page size " << page_size;
    EXPECT_EQ(seen.size(), a.size() + a_salted.size()) << "page size " << page_size;
    for (size_t i = 0; i < a.size(); ++i) EXPECT_EQ(seen[a[i]], 10 + i);
    for (size_t i = 0; i < a_salted.size(); ++i) EXPECT_EQ(seen[a_salted[i]], 10 + i);
  }

  auto bad = adapter->ListKeys(odd_model, 4, "not-a-cursor");
  ASSERT_FALSE(bad);
  EXPECT_EQ(bad.error().code(), StatusCode::kInvalidArgument);
}

TEST_F(RedisAdapterTest, SelectsTheConfiguredDatabase) {
  auto adapter = MakeAdapter({{"db", 5}});
  auto keys = MakeKeys(1);
  auto object = MakeObject(10, 1);
  std::span<const uint8_t> src(object);
  StoreWaiter stores(adapter.get());
  ASSERT_TRUE(stores.Wait(adapter->SubmitStore(keys, std::span(&src, 1)))->status.ok());
  EXPECT_EQ(server_->Command({"DBSIZE"}).value(), "0");
  EXPECT_EQ(server_->Command({"DBSIZE"}, 5).value(), "1");
  auto deleted = adapter->Delete(keys);
  ASSERT_TRUE(deleted && deleted->All());
  EXPECT_EQ(server_->Command({"DBSIZE"}, 5).value(), "0");
}

TEST_F(RedisAdapterTest, BadDatabaseFailsCreate) {
  auto options = RedisAdapterOptions::FromJson(Config({{"db", 100000}}), "r");
  ASSERT_TRUE(options);
  auto adapter = RedisAdapter::Create(*options, "r");
  ASSERT_FALSE(adapter);
  EXPECT_EQ(adapter.error().code(), StatusCode::kInvalidArgument);
  EXPECT_NE(adapter.error().message().find("SELECT 100000"), std::string_view::npos);
}

TEST_F(RedisAdapterTest, EmptyTasksCompleteAtOnce) {
  auto adapter = MakeAdapter();
  StoreWaiter stores(adapter.get());
  auto r = stores.Wait(adapter->SubmitStore({}, {}));
  ASSERT_TRUE(r && r->status.ok());
  EXPECT_EQ(WaitLookup(adapter.get(), adapter->SubmitLookupAndLock({}))->size(), 0u);
  EXPECT_EQ(WaitLoad(adapter.get(), adapter->SubmitLoad({}, {}))->size(), 0u);
}

TEST_F(RedisAdapterTest, LargeObjectsAndLongPipelines) {
  auto adapter = MakeAdapter({{"connections", 1}});
  // 3 x 40 MiB crosses the 64 MiB pipeline window; 3000 small keys cross the command window.
  auto big_keys = MakeKeys(3, 0, "big");
  std::vector<std::vector<uint8_t>> big;
  big.reserve(3);
  for (int i = 0; i < 3; ++i) big.push_back(MakeObject(40 << 20, i));
  auto small_keys = MakeKeys(3000, 0, "small");
  std::vector<std::vector<uint8_t>> small;
  small.reserve(3000);
  for (int i = 0; i < 3000; ++i) small.push_back(MakeObject(64, i));
  StoreWaiter stores(adapter.get());
  auto r1 = stores.Wait(adapter->SubmitStore(big_keys, ConstSpans(big)));
  auto r2 = stores.Wait(adapter->SubmitStore(small_keys, ConstSpans(small)));
  ASSERT_TRUE(r1 && r1->status.ok() && r2 && r2->status.ok());
  EXPECT_EQ(WaitLookup(adapter.get(), adapter->SubmitLookupAndLock(small_keys))->PopCount(), 3000u);
  adapter->SubmitUnlock(small_keys);
  std::vector<std::vector<uint8_t>> big_out(3, std::vector<uint8_t>(40 << 20));
  std::vector<std::vector<uint8_t>> small_out(3000, std::vector<uint8_t>(64));
  ASSERT_TRUE(WaitLoad(adapter.get(), adapter->SubmitLoad(big_keys, Spans(big_out)))->All());
  ASSERT_TRUE(WaitLoad(adapter.get(), adapter->SubmitLoad(small_keys, Spans(small_out)))->All());
  EXPECT_TRUE(big_out == big);
  EXPECT_TRUE(small_out == small);
}

TEST_F(RedisAdapterTest, StatusJsonDescribesTheConnection) {
  auto adapter = MakeAdapter({{"connections", 3}});
  nlohmann::json j = adapter->StatusJson();
  EXPECT_EQ(j["type"], "redis");
  EXPECT_EQ(j["healthy"], true);
  EXPECT_EQ(j["redis"]["endpoint"], fmt::format("127.0.0.1:{}", server_->port()));
  EXPECT_EQ(j["redis"]["connections"], 3);
  EXPECT_EQ(j["redis"]["connections_up"], 3);
  EXPECT_EQ(j["redis"]["auth"], false);
  EXPECT_EQ(j.dump().find("password"), std::string::npos);
}

TEST_F(RedisAdapterTest, CancelQueuedTasksButNotLoadsInProgress) {
  auto adapter = MakeAdapter({{"connections", 1}, {"command_timeout", "30s"}});
  auto keys = MakeKeys(2);
  std::vector<std::vector<uint8_t>> objects = {MakeObject(100, 1), MakeObject(100, 2)};
  StoreWaiter stores(adapter.get());
  ASSERT_TRUE(stores.Wait(adapter->SubmitStore(keys, ConstSpans(objects)))->status.ok());

  // With the server paused, the first load blocks on its reply; later tasks queue behind it.
  ASSERT_TRUE(server_->Pause().ok());
  std::vector<std::vector<uint8_t>> first(1, std::vector<uint8_t>(100));
  std::vector<std::vector<uint8_t>> second(1, std::vector<uint8_t>(100));
  TaskId in_progress = adapter->SubmitLoad(std::span(keys).first(1), Spans(first));
  TaskId queued_load = adapter->SubmitLoad(std::span(keys).last(1), Spans(second));
  TaskId queued_store = adapter->SubmitStore(MakeKeys(1, 50), ConstSpans(objects, 0, 1));
  TaskId queued_lookup = adapter->SubmitLookupAndLock(keys);
  EXPECT_TRUE(adapter->Cancel(queued_load));
  EXPECT_TRUE(adapter->Cancel(queued_store));
  EXPECT_TRUE(adapter->Cancel(queued_lookup));
  // The first load may or may not have started yet; once started it is not cancellable.
  bool cancelled_first = adapter->Cancel(in_progress);
  ASSERT_TRUE(server_->Resume().ok());
  if (!cancelled_first) {
    auto loaded = WaitLoad(adapter.get(), in_progress);
    ASSERT_TRUE(loaded && loaded->All());
    EXPECT_EQ(first[0], objects[0]);
  }
  // A task after them completes, and the cancelled ones are never reported nor run.
  auto probe = WaitLookup(adapter.get(), adapter->SubmitLookupAndLock(keys));
  ASSERT_TRUE(probe && probe->All());
  adapter->SubmitUnlock(keys);
  EXPECT_FALSE(adapter->QueryLoadResult(queued_load));
  EXPECT_FALSE(adapter->QueryLookupAndLockResult(queued_lookup));
  for (const StoreResult& r : adapter->PopCompletedStores()) EXPECT_NE(r.task, queued_store);
  EXPECT_EQ(second[0], std::vector<uint8_t>(100));  // never written
  EXPECT_EQ(server_->Command({"EXISTS", adapter->RedisKey(MakeKeys(1, 50)[0])}).value(), "0");
  EXPECT_EQ(adapter->StatusJson()["redis"]["locked_keys"], 0);  // the cancelled lookup took none
  EXPECT_EQ(adapter->Counters().cancelled_tasks, cancelled_first ? 4u : 3u);
  EXPECT_EQ(adapter->Counters().in_flight_tasks, 0u);
}

TEST_F(RedisAdapterTest, CloseFailsTasksInFlightPromptly) {
  auto adapter = MakeAdapter({{"connections", 1}, {"command_timeout", "60s"}});
  auto keys = MakeKeys(1);
  ASSERT_TRUE(server_->Pause().ok());
  std::vector<std::vector<uint8_t>> buffers(1, std::vector<uint8_t>(100));
  TaskId load = adapter->SubmitLoad(keys, Spans(buffers));
  TaskId lookup = adapter->SubmitLookupAndLock(keys);
  auto start = std::chrono::steady_clock::now();
  adapter->Close();
  EXPECT_LT(std::chrono::steady_clock::now() - start, std::chrono::seconds(10));
  auto l = adapter->QueryLoadResult(load);
  ASSERT_TRUE(l);
  EXPECT_FALSE(l->Any());
  ASSERT_TRUE(adapter->QueryLookupAndLockResult(lookup));
  EXPECT_FALSE(adapter->healthy());
  ASSERT_TRUE(server_->Resume().ok());
}

// ---- AUTH ----

class RedisAuthTest : public RedisServerTest {
 protected:
  RedisServerOptions ServerOptions() override {
    RedisServerOptions o;
    o.requirepass = "s3cret";
    o.acl_users = {"alice on >alice-pw ~kvtier:* +@all"};
    return o;
  }
  Result<std::unique_ptr<RedisAdapter>> Create(const nlohmann::json& auth) {
    nlohmann::json config = {{"host", "127.0.0.1"}, {"port", server_->port()}};
    config.update(auth);
    KVT_ASSIGN_OR_RETURN(auto options, RedisAdapterOptions::FromJson(config, "auth"));
    return RedisAdapter::Create(std::move(options), "auth");
  }
  void ExpectWorks(RedisAdapter* adapter) {
    auto keys = MakeKeys(1);
    auto object = MakeObject(10, 1);
    std::span<const uint8_t> src(object);
    StoreWaiter stores(adapter);
    auto r = stores.Wait(adapter->SubmitStore(keys, std::span(&src, 1)));
    ASSERT_TRUE(r);
    EXPECT_TRUE(r->status.ok()) << r->status.ToString();
  }
};

TEST_F(RedisAuthTest, RightPasswordWorks) {
  auto adapter = Create({{"password", "s3cret"}});
  ASSERT_TRUE(adapter) << adapter.error().ToString();
  ExpectWorks(adapter->get());
  EXPECT_EQ((*adapter)->StatusJson()["redis"]["auth"], true);
  EXPECT_EQ((*adapter)->StatusJson().dump().find("s3cret"), std::string::npos);
}

TEST_F(RedisAuthTest, WrongPasswordFailsCleanly) {
  auto adapter = Create({{"password", "wrong"}});
  ASSERT_FALSE(adapter);
  EXPECT_EQ(adapter.error().code(), StatusCode::kPermissionDenied);
  EXPECT_NE(adapter.error().message().find("AUTH failed"), std::string_view::npos)
      << adapter.error().message();
  EXPECT_EQ(adapter.error().message().find("wrong"), std::string_view::npos);  // no secret
}

TEST_F(RedisAuthTest, MissingPasswordFailsCleanly) {
  auto adapter = Create(nlohmann::json::object());
  ASSERT_FALSE(adapter);
  EXPECT_EQ(adapter.error().code(), StatusCode::kPermissionDenied);
  EXPECT_NE(adapter.error().message().find("requires authentication"), std::string_view::npos)
      << adapter.error().message();
}

TEST_F(RedisAuthTest, AclUserWorksAndAWrongOneFails) {
  auto adapter = Create({{"username", "alice"}, {"password", "alice-pw"}});
  ASSERT_TRUE(adapter) << adapter.error().ToString();
  ExpectWorks(adapter->get());
  auto wrong = Create({{"username", "alice"}, {"password", "s3cret"}});
  ASSERT_FALSE(wrong);
  EXPECT_EQ(wrong.error().code(), StatusCode::kPermissionDenied);
  EXPECT_NE(wrong.error().message().find("as user 'alice'"), std::string_view::npos);
}

TEST_F(RedisAuthTest, PasswordFromTheEnvironment) {
  ASSERT_EQ(::setenv(kRedisPasswordEnv, "s3cret", 1), 0);
  auto adapter = Create(nlohmann::json::object());
  ::unsetenv(kRedisPasswordEnv);
  ASSERT_TRUE(adapter) << adapter.error().ToString();
  ExpectWorks(adapter->get());
}

}  // namespace
}  // namespace kvtier::l2
