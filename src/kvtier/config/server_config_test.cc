#include "kvtier/config/server_config.h"

#include <fstream>
#include <sstream>

#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <yaml-cpp/yaml.h>

#include "kvtier/common/units.h"

namespace kvtier::config {
namespace {

using namespace std::chrono_literals;
using nlohmann::json;
using ::testing::HasSubstr;

std::string ReadFile(const std::string& path) {
  std::ifstream in(path);
  std::ostringstream text;
  text << in.rdbuf();
  return text.str();
}

// Parses and expects an error; returns its message.
std::string ParseError(const std::string& yaml) {
  auto config = ParseServerConfigYaml(yaml, "test.yaml");
  if (config) {
    ADD_FAILURE() << "parsed:\n" << yaml;
    return "";
  }
  EXPECT_EQ(config.error().code(), StatusCode::kInvalidArgument);
  return std::string(config.error().message());
}

std::string ValidateError(const ServerConfig& config) {
  Status s = ValidateServerConfig(config);
  EXPECT_FALSE(s.ok());
  return std::string(s.message());
}

// Whether `text` starts with `prefix` (reported with the whole text when not).
testing::AssertionResult StartsWith(const std::string& text, const std::string& prefix) {
  if (text.starts_with(prefix)) return testing::AssertionSuccess();
  return testing::AssertionFailure() << "'" << text << "' does not start with '" << prefix << "'";
}

ServerConfig MustParse(const std::string& yaml) {
  auto config = ParseServerConfigYaml(yaml, "test.yaml");
  EXPECT_TRUE(config) << config.error().ToString();
  return config ? std::move(*config) : ServerConfig();
}

// Every key set to a value other than its default.
constexpr char kEveryKey[] = R"(
server_id: node-7
log_level: debug
tick_interval: 250ms
transport:
  endpoints: [tcp://0.0.0.0:6000, ipc:///tmp/kvtier.sock]
  control_threads: 3
  transfer_threads: 9
  max_queued_requests: 100
admin:
  enabled: false
  host: "::1"
  port: 9090
engine:
  chunk_size: 512
  hash: xxh3_128
  session_ttl: 90s
  worker_timeout: 0
  registration_grace: 2h
  max_wait: 1500ms
l1:
  capacity: 3GiB
  alignment: 64KiB
  use_hugepages: true
  shm_name: ""
  populate: true
  register_with_cuda: false
  read_ttl: 7s
  write_ttl: 8s
  allocation_wait: 20ms
  num_shards: 128
l1_eviction:
  policy: s3fifo
  trigger_watermark: 0.9
  target_watermark: 0.5
  check_interval: 2s
  victims_per_round: 17
  queue_wake_threshold: 99
l2:
  adapters:
    - type: mock
      capacity: 1MiB
  store_policy: skip_l1
  store:
    max_pending_keys: 1000
    max_keys_per_task: 8
    store_timeout: 30s
    poll_interval: 50ms
  prefetch:
    max_in_flight: 3
    poll_interval: 60ms
host_transfer:
  min_parallel_bytes: 8MiB
  stream_min_bytes: 123
controller:
  endpoint: tcp://10.0.0.9:9100
  events_endpoint: tcp://10.0.0.9:9200
  heartbeat_endpoint: ipc:///run/kvtier-controller-hb.sock
  advertise_address: tcp://10.0.0.7:6000
  batch_keys: 256
  batch_interval: 5ms
  request_timeout: 2s
  max_pending_keys: 4096
)";

TEST(ServerConfigTest, EmptyFileGivesDefaultsThatValidate) {
  for (const char* text : {"", "\n", "# only a comment\n", "---\n", "{}\n"}) {
    ServerConfig c = MustParse(text);
    EXPECT_TRUE(ValidateServerConfig(c).ok()) << ValidateServerConfig(c).ToString();
    EXPECT_EQ(DumpServerConfigYaml(c), DumpServerConfigYaml(ServerConfig())) << text;
  }
  const ServerConfig d;
  EXPECT_TRUE(ValidateServerConfig(d).ok());
  // Localhost only, out of the box.
  EXPECT_EQ(d.transport.endpoints, std::vector<std::string>{"tcp://127.0.0.1:5555"});
  EXPECT_EQ(d.admin.host, "127.0.0.1");
  EXPECT_EQ(d.storage.l1.capacity_bytes, kDefaultL1Capacity);
  EXPECT_TRUE(d.storage.l2_adapters.empty());
}

TEST(ServerConfigTest, EveryKeyLandsInItsField) {
  const ServerConfig c = MustParse(kEveryKey);
  EXPECT_EQ(c.server_id, "node-7");
  EXPECT_EQ(c.log_level, "debug");
  EXPECT_EQ(c.tick_interval, 250ms);
  EXPECT_EQ(c.transport.endpoints,
            (std::vector<std::string>{"tcp://0.0.0.0:6000", "ipc:///tmp/kvtier.sock"}));
  EXPECT_EQ(c.transport.control_threads, 3u);
  EXPECT_EQ(c.transport.transfer_threads, 9u);
  EXPECT_EQ(c.transport.max_queued_requests, 100u);
  EXPECT_FALSE(c.admin.enabled);
  EXPECT_EQ(c.admin.host, "::1");
  EXPECT_EQ(c.admin.port, 9090);
  EXPECT_EQ(c.engine.chunk_size, 512u);
  EXPECT_EQ(c.engine.hash, keys::HashAlgorithm::kXxh3_128);
  EXPECT_EQ(c.engine.session_ttl, 90s);
  EXPECT_EQ(c.engine.worker_timeout, 0s);
  EXPECT_EQ(c.engine.registration_grace, 2h);
  EXPECT_EQ(c.engine.max_wait, 1500ms);
  const auto& l1 = c.storage.l1;
  EXPECT_EQ(l1.capacity_bytes, 3 * kGiB);
  EXPECT_EQ(l1.alignment, 64 * kKiB);
  EXPECT_TRUE(l1.use_hugepages);
  EXPECT_EQ(l1.shm_name, "");
  EXPECT_TRUE(l1.populate);
  EXPECT_FALSE(l1.register_with_cuda);
  EXPECT_EQ(l1.read_ttl, 7s);
  EXPECT_EQ(l1.write_ttl, 8s);
  EXPECT_EQ(l1.allocation_wait, 20ms);
  EXPECT_EQ(l1.num_shards, 128u);
  EXPECT_EQ(c.storage.l1_eviction_policy, "s3fifo");
  const auto& e = c.storage.l1_eviction;
  EXPECT_DOUBLE_EQ(e.trigger_watermark, 0.9);
  EXPECT_DOUBLE_EQ(e.target_watermark, 0.5);
  EXPECT_EQ(e.check_interval, 2s);
  EXPECT_EQ(e.victims_per_round, 17u);
  EXPECT_EQ(e.queue_wake_threshold, 99u);
  ASSERT_EQ(c.storage.l2_adapters.size(), 1u);
  EXPECT_EQ(c.storage.l2_adapters[0], (json{{"type", "mock"}, {"capacity", "1MiB"}}));
  EXPECT_EQ(c.storage.store_policy, "skip_l1");
  EXPECT_EQ(c.storage.store.max_pending_keys, 1000u);
  EXPECT_EQ(c.storage.store.max_keys_per_task, 8u);
  EXPECT_EQ(c.storage.store.store_timeout, 30s);
  EXPECT_EQ(c.storage.store.poll_interval, 50ms);
  EXPECT_EQ(c.storage.prefetch.max_in_flight, 3u);
  EXPECT_EQ(c.storage.prefetch.poll_interval, 60ms);
  EXPECT_EQ(c.host_transfer.min_parallel_bytes, 8 * kMiB);
  EXPECT_EQ(c.host_transfer.stream_min_bytes, 123u);
  const auto& r = c.controller;
  EXPECT_EQ(r.endpoint, "tcp://10.0.0.9:9100");
  EXPECT_EQ(r.events_endpoint, "tcp://10.0.0.9:9200");
  EXPECT_EQ(r.heartbeat_endpoint, "ipc:///run/kvtier-controller-hb.sock");
  EXPECT_EQ(r.advertise_address, "tcp://10.0.0.7:6000");
  EXPECT_EQ(r.batch_keys, 256u);
  EXPECT_EQ(r.batch_interval, 5ms);
  EXPECT_EQ(r.request_timeout, 2s);
  EXPECT_EQ(r.max_pending_keys, 4096u);
  EXPECT_TRUE(ValidateServerConfig(c).ok()) << ValidateServerConfig(c).ToString();
}

TEST(ServerConfigTest, EveryKeyIsSetByTheEveryKeyTextAndNoneIsDefault) {
  // Guards the test above: a key added to the schema must be added to kEveryKey too.
  YAML::Node root = YAML::Load(kEveryKey);
  const std::string defaults = DumpServerConfigYaml(ServerConfig());
  YAML::Node default_root = YAML::Load(defaults);
  for (const std::string& path : ServerConfigKeyPaths()) {
    YAML::Node node = YAML::Clone(root), def = YAML::Clone(default_root);
    std::stringstream parts(path);
    std::string part;
    while (std::getline(parts, part, '.')) {
      node.reset(node[part]);
      def.reset(def[part]);
    }
    EXPECT_TRUE(node.IsDefined()) << path << " is missing from kEveryKey";
    if (path != "l1.shm_name") {  // "" is its default, and any other name excludes hugepages
      EXPECT_NE(YAML::Dump(node), YAML::Dump(def)) << path << " has its default in kEveryKey";
    }
  }
}

TEST(ServerConfigTest, DumpRoundTrips) {
  for (const std::string& text : {std::string(), std::string(kEveryKey)}) {
    const ServerConfig c = MustParse(text);
    const std::string dumped = DumpServerConfigYaml(c);
    const ServerConfig again = MustParse(dumped);
    EXPECT_EQ(DumpServerConfigYaml(again), dumped);
    EXPECT_EQ(again.storage.l2_adapters, c.storage.l2_adapters);
    EXPECT_EQ(again.storage.l1.capacity_bytes, c.storage.l1.capacity_bytes);
    EXPECT_EQ(again.engine.max_wait, c.engine.max_wait);
    EXPECT_EQ(again.storage.l1_eviction.trigger_watermark, c.storage.l1_eviction.trigger_watermark);
  }
  // Values the dump must quote or write exactly.
  ServerConfig odd;
  odd.server_id = "true";
  odd.storage.l1.shm_name = "123";
  odd.storage.l1.capacity_bytes = kGiB + 1;
  odd.engine.session_ttl = 1234567ns;
  odd.storage.l1_eviction.target_watermark = 1.0 / 3;
  odd.storage.l2_adapters = {json{{"type", "redis"}, {"password", "0042"}, {"port", 7000}}};
  const ServerConfig back = MustParse(DumpServerConfigYaml(odd));
  EXPECT_EQ(back.server_id, "true");
  EXPECT_EQ(back.storage.l1.shm_name, "123");
  EXPECT_EQ(back.storage.l1.capacity_bytes, kGiB + 1);
  EXPECT_EQ(back.engine.session_ttl, 1234567ns);
  EXPECT_EQ(back.storage.l1_eviction.target_watermark, 1.0 / 3);
  EXPECT_EQ(back.storage.l2_adapters, odd.storage.l2_adapters);
}

TEST(ServerConfigTest, ExampleFileParsesValidatesAndRoundTrips) {
  ::unsetenv("KVT_REDIS_PASSWORD");
  auto c = LoadServerConfigFile(KVT_EXAMPLE_CONFIG);
  ASSERT_TRUE(c) << c.error().ToString();
  EXPECT_TRUE(ValidateServerConfig(*c).ok()) << ValidateServerConfig(*c).ToString();
  // Really read: the example departs from the defaults here.
  EXPECT_EQ(c->storage.l1.capacity_bytes, 20 * kGiB);
  ASSERT_EQ(c->storage.l2_adapters.size(), 2u);
  EXPECT_EQ(c->storage.l2_adapters[0]["type"], "fs");
  EXPECT_EQ(c->storage.l2_adapters[0]["eviction"]["policy"], "lru");
  EXPECT_EQ(c->storage.l2_adapters[1]["key_prefix"], "kvtier:v1:");
  const std::string dumped = DumpServerConfigYaml(*c);
  auto again = ParseServerConfigYaml(dumped, "dump");
  ASSERT_TRUE(again) << again.error().ToString() << "\n" << dumped;
  EXPECT_EQ(DumpServerConfigYaml(*again), dumped);
  EXPECT_EQ(again->storage.l2_adapters, c->storage.l2_adapters);
}

TEST(ServerConfigTest, ExampleFileSetsEveryKey) {
  YAML::Node root = YAML::LoadFile(KVT_EXAMPLE_CONFIG);
  for (const std::string& path : ServerConfigKeyPaths()) {
    YAML::Node node = YAML::Clone(root);
    std::stringstream parts(path);
    std::string part;
    while (std::getline(parts, part, '.')) node.reset(node[part]);
    EXPECT_TRUE(node.IsDefined()) << path << " is missing from " << KVT_EXAMPLE_CONFIG;
  }
}

TEST(ServerConfigTest, DocsDescribeEveryKey) {
  const std::string doc = ReadFile(KVT_CONFIG_DOC);
  ASSERT_FALSE(doc.empty());
  for (const std::string& path : ServerConfigKeyPaths()) {
    EXPECT_NE(doc.find("`" + path + "`"), std::string::npos)
        << "docs/configuration.md does not describe `" << path << "`";
  }
}

TEST(ServerConfigTest, UnknownKeysAtEveryLevelNameThePathAndSuggest) {
  struct Case {
    std::string yaml;
    std::string message;
  };
  const Case cases[] = {
      {"log_levl: info\n",
       "test.yaml:1:1: unknown key 'log_levl'; did you mean 'log_level'? (valid keys at the top "
       "level: server_id, log_level, tick_interval, transport, admin, engine, l1, l1_eviction, "
       "l2, host_transfer, controller)"},
      {"transport:\n  endpoint: tcp://127.0.0.1:1\n",
       "test.yaml:2:3: unknown key 'transport.endpoint'; did you mean 'transport.endpoints'?"},
      {"admin:\n  prot: 1\n",
       "test.yaml:2:3: unknown key 'admin.prot'; did you mean 'admin.port'?"},
      {"engine:\n  chunksize: 64\n",
       "test.yaml:2:3: unknown key 'engine.chunksize'; did you mean 'engine.chunk_size'?"},
      {"l1:\n  capacity_bytes: 1GiB\n",
       "test.yaml:2:3: unknown key 'l1.capacity_bytes'; did you mean 'l1.capacity'?"},
      {"l1_eviction:\n  policy: lru\n  trigger: 0.9\n",
       "test.yaml:3:3: unknown key 'l1_eviction.trigger'; did you mean "
       "'l1_eviction.trigger_watermark'?"},
      {"l2:\n  adaptors: []\n",
       "test.yaml:2:3: unknown key 'l2.adaptors'; did you mean 'l2.adapters'?"},
      {"l2:\n  store:\n    timeout: 1s\n", "test.yaml:3:5: unknown key 'l2.store.timeout'"},
      {"l2:\n  prefetch:\n    max_inflight: 2\n",
       "test.yaml:3:5: unknown key 'l2.prefetch.max_inflight'; did you mean "
       "'l2.prefetch.max_in_flight'?"},
      {"host_transfer:\n  stream_min: 1\n",
       "test.yaml:2:3: unknown key 'host_transfer.stream_min'; did you mean "
       "'host_transfer.stream_min_bytes'?"},
      // Inside an adapter: the l2 parser's error, placed and with a suggestion.
      {"l2:\n  adapters:\n    - type: fs\n      base_path: /tmp/x\n      max_capacty: 1GiB\n",
       "test.yaml:5:7: l2.adapters[0]: fs adapter 'fs0': unknown setting 'max_capacty'"},
      {"l2:\n  adapters:\n    - type: mock\n      capacity: 1GiB\n      eviction:\n"
       "        policy: lru\n        trigger: 0.9\n",
       "test.yaml:7:9: l2.adapters[0]: eviction of L2 adapter 'mock0': unknown setting "
       "'trigger'"},
  };
  for (const Case& c : cases) {
    const std::string message = ParseError(c.yaml);
    EXPECT_EQ(message.substr(0, c.message.size()), c.message) << c.yaml;
  }
  EXPECT_NE(ParseError(cases[10].yaml).find("did you mean 'max_capacity'?"), std::string::npos);
  EXPECT_NE(ParseError(cases[11].yaml).find("did you mean 'trigger_watermark'?"),
            std::string::npos);
}

TEST(ServerConfigTest, WrongTypesNameLineAndKey) {
  EXPECT_EQ(ParseError("transport: [a]\n"),
            "test.yaml:1:12: transport: expected a mapping, got a sequence");
  EXPECT_EQ(ParseError("admin:\n  port: http\n"),
            "test.yaml:2:9: admin.port: expected a non-negative integer, got 'http'");
  EXPECT_EQ(ParseError("admin:\n  enabled: yes\n"),
            "test.yaml:2:12: admin.enabled: expected true or false, got 'yes'");
  EXPECT_EQ(ParseError("transport:\n  endpoints: {a: b}\n"),
            "test.yaml:2:14: transport.endpoints: expected a list of strings, got a mapping");
  EXPECT_EQ(ParseError("transport:\n  endpoints:\n    - [tcp://x:1]\n"),
            "test.yaml:3:7: transport.endpoints[0]: expected a string, got a sequence");
  EXPECT_EQ(ParseError("engine:\n  chunk_size: 1.5\n"),
            "test.yaml:2:15: engine.chunk_size: expected a non-negative integer, got '1.5'");
  EXPECT_EQ(ParseError("l1_eviction:\n  trigger_watermark: high\n"),
            "test.yaml:2:22: l1_eviction.trigger_watermark: expected a number, got 'high'");
  EXPECT_EQ(ParseError("server_id: {a: 1}\n"),
            "test.yaml:1:12: server_id: expected a string, got a mapping");
  EXPECT_EQ(ParseError("l2:\n  adapters: {type: fs}\n"),
            "test.yaml:2:13: l2.adapters: expected a list of adapter configs, got a mapping");
  EXPECT_EQ(ParseError("l2:\n  adapters:\n    - fs\n"),
            "test.yaml:3:7: l2.adapters[0]: expected an adapter config (a mapping with a 'type'), "
            "got a scalar");
  EXPECT_EQ(ParseError("- a\n- b\n"), "test.yaml:1:1: expected a mapping, got a sequence");
}

TEST(ServerConfigTest, BadNumbersSizesDurationsAndUnits) {
  EXPECT_EQ(ParseError("l1:\n  capacity: -1GiB\n"),
            "test.yaml:2:13: l1.capacity: a size must not be negative, got '-1GiB' (use e.g. "
            "20GiB)");
  EXPECT_EQ(ParseError("l1:\n  capacity: 12 parsecs\n"),
            "test.yaml:2:13: l1.capacity: invalid size unit 'parsecs' in '12 parsecs': use B, KB, "
            "MB, GB, TB, KiB, MiB, GiB, TiB");
  EXPECT_EQ(ParseError("l1:\n  capacity: 0\n"),
            "test.yaml:2:13: l1.capacity: must be greater than 0");
  EXPECT_EQ(ParseError("engine:\n  session_ttl: -5s\n"),
            "test.yaml:2:16: engine.session_ttl: a duration must not be negative, got '-5s' (use "
            "e.g. 30s)");
  EXPECT_EQ(ParseError("engine:\n  session_ttl: 2 fortnights\n"),
            "test.yaml:2:16: engine.session_ttl: invalid duration unit 'fortnights' in '2 "
            "fortnights': use ns, us, ms, s, m, h");
  EXPECT_EQ(ParseError("engine:\n  session_ttl: 0s\n"),
            "test.yaml:2:16: engine.session_ttl: must be greater than 0, got 0s");
  EXPECT_EQ(ParseError("admin:\n  port: 70000\n"),
            "test.yaml:2:9: admin.port: must be at most 65535, got '70000'");
  EXPECT_EQ(ParseError("transport:\n  control_threads: -1\n"),
            "test.yaml:2:20: transport.control_threads: must not be negative, got '-1'");
  EXPECT_EQ(ParseError("transport:\n  control_threads: 0\n"),
            "test.yaml:2:20: transport.control_threads: must be at least 1, got 0");
  EXPECT_TRUE(
      StartsWith(ParseError("engine:\n  chunk_size: 0\n"), "test.yaml:2:15: engine.chunk_size: "));
  EXPECT_NE(
      ParseError("engine:\n  chunk_size: 2097152\n").find("chunk size must be in [1, 1048576]"),
      std::string::npos);
  EXPECT_EQ(ParseError("l1:\n  num_shards: 3\n"),
            "test.yaml:2:15: l1.num_shards: must be a power of two in [1, 4096], got 3");
  EXPECT_EQ(ParseError("l1:\n  alignment: 3KiB\n"),
            "test.yaml:2:14: l1.alignment: must be a power of two >= 8, got 3072");
  EXPECT_EQ(ParseError("l1_eviction:\n  trigger_watermark: 1.5\n"),
            "test.yaml:2:22: l1_eviction.trigger_watermark: must be in (0, 1], got 1.5");
  EXPECT_TRUE(StartsWith(ParseError("engine:\n  hash: md5\n"), "test.yaml:2:9: engine.hash: "));
  EXPECT_EQ(ParseError("log_level: loud\n"),
            "test.yaml:1:12: log_level: 'loud' is not one of trace, debug, info, warn, error, "
            "critical, off");
  EXPECT_EQ(ParseError("log_level: warning\n"),
            "test.yaml:1:12: log_level: 'warning' is not one of trace, debug, info, warn, error, "
            "critical, off; did you mean 'warn'?");
  EXPECT_NE(
      ParseError("l1_eviction:\n  policy: lfu\n").find("test.yaml:2:11: l1_eviction.policy: "),
      std::string::npos);
  EXPECT_NE(ParseError("l2:\n  store_policy: always\n").find("test.yaml:2:17: l2.store_policy: "),
            std::string::npos);
  EXPECT_EQ(ParseError("admin:\n  host: example.com\n"),
            "test.yaml:2:9: admin.host: 'example.com' is not a numeric IPv4/IPv6 address or "
            "localhost (e.g. 127.0.0.1, 0.0.0.0, ::1)");
  EXPECT_EQ(ParseError("l1:\n  shm_name: a/b\n"),
            "test.yaml:2:13: l1.shm_name: 'a/b' must not contain '/' (the object is /<shm_name>)");
}

TEST(ServerConfigTest, BadEndpoints) {
  auto error = [](const std::string& endpoint) {
    return ParseError("transport:\n  endpoints:\n    - \"" + endpoint + "\"\n");
  };
  EXPECT_EQ(error("udp://127.0.0.1:5555"),
            "test.yaml:3:7: transport.endpoints[0]: endpoint 'udp://127.0.0.1:5555' is not "
            "tcp://HOST:PORT (PORT 0 or * for any free port) or ipc:///PATH");
  EXPECT_NE(error("tcp://127.0.0.1").find("endpoint 'tcp://127.0.0.1': no port"),
            std::string::npos);
  EXPECT_NE(error("tcp://:5555").find("no host"), std::string::npos);
  EXPECT_NE(error("tcp://host:99999").find("the port '99999' is not a number in [0, 65535] or *"),
            std::string::npos);
  EXPECT_NE(error("tcp://[::1:5555").find("closing ']'"), std::string::npos);
  EXPECT_NE(error("ipc://").find("no path"), std::string::npos);
  EXPECT_NE(error("ipc:///" + std::string(200, 'x')).find("longer than 107 bytes"),
            std::string::npos);
  EXPECT_EQ(ParseError("transport:\n  endpoints: []\n"),
            "test.yaml:2:14: transport.endpoints: at least one endpoint is needed");
  EXPECT_NE(ParseError("transport:\n  endpoints: [tcp://a:1, tcp://a:1]\n").find("listed twice"),
            std::string::npos);
  // Good ones, including a single string for a list of one.
  ServerConfig c = MustParse(
      "transport:\n  endpoints: [\"tcp://*:0\", \"tcp://[::1]:7000\", \"tcp://eth0:*\", "
      "\"ipc:///run/kvtier.sock\"]\n");
  EXPECT_EQ(c.transport.endpoints.size(), 4u);
  c = MustParse("transport:\n  endpoints: tcp://10.0.0.1:7000\n");
  EXPECT_EQ(c.transport.endpoints, std::vector<std::string>{"tcp://10.0.0.1:7000"});
}

TEST(ServerConfigTest, YamlStructureErrors) {
  EXPECT_EQ(ParseError("transport:\n  endpoints: [tcp://a:1\n").substr(0, 26),
            "test.yaml:3:1: invalid YAM");
  EXPECT_EQ(ParseError("a: 1\n---\nb: 2\n"),
            "test.yaml:2:1: expected one YAML document, found more");
  // yaml-cpp 0.7 reports empty documents forever after this input (YAML::LoadAll never ends):
  // the parser asks for two documents at most, so it ends with an error.
  EXPECT_THAT(ParseError(",1:\n  capacity7  [1, 2, *a]\n"), HasSubstr("test.yaml:"));
  EXPECT_EQ(ParseError("l1:\n  capacity: 1GiB\n  capacity: 2GiB\n"),
            "test.yaml:3:3: duplicate key 'l1.capacity'");
  EXPECT_EQ(ParseError("just a string\n"), "test.yaml:1:1: expected a mapping, got a scalar");
  // An empty value keeps the default.
  ServerConfig c = MustParse("l1:\n  capacity:\n  read_ttl: ~\nadmin:\n");
  EXPECT_EQ(c.storage.l1.capacity_bytes, kDefaultL1Capacity);
  EXPECT_EQ(c.storage.l1.read_ttl, ServerConfig().storage.l1.read_ttl);
  // Quoted numbers are accepted for numeric keys.
  EXPECT_EQ(MustParse("admin:\n  port: \"8081\"\n").admin.port, 8081);
}

TEST(ServerConfigTest, AdapterErrorsPointIntoTheAdapter) {
  ::unsetenv("KVT_REDIS_PASSWORD");
  EXPECT_EQ(ParseError("l2:\n  adapters:\n    - type: fs\n      max_capacity: 1GiB\n"),
            "test.yaml:3:7: l2.adapters[0]: fs adapter 'fs0': 'base_path': required setting is "
            "missing");
  EXPECT_TRUE(StartsWith(ParseError("l2:\n  adapters:\n    - type: fs\n      base_path: /x\n"
                                    "      max_capacity: 12 parsecs\n"),
                         "test.yaml:5:7: l2.adapters[0]: fs adapter 'fs0': 'max_capacity': "));
  EXPECT_EQ(
      ParseError("l2:\n  adapters:\n    - type: fss\n"),
      "test.yaml:3:7: l2.adapters[0]: L2 adapter #0: 'type': unknown type 'fss'; did you mean "
      "'fs'? (known types: mock, fault_inject, fs, redis, peer)");
  EXPECT_EQ(
      ParseError("l2:\n  adapters:\n    - type: redis\n      name: r\n      port: 70000\n"),
      "test.yaml:5:7: l2.adapters[0]: redis adapter 'r': 'port': 70000 is outside [1, 65535]");
  EXPECT_EQ(
      ParseError("l2:\n  adapters:\n    - type: fs\n      base_path: /x\n      eviction:\n"
                 "        policy: lru\n"),
      "test.yaml:3:7: l2.adapters[0]: L2 adapter 'fs0' has an eviction block but no capacity (set "
      "max_capacity)");
  EXPECT_TRUE(StartsWith(
      ParseError("l2:\n  adapters:\n    - type: mock\n      capacity: 1GiB\n      eviction:\n"
                 "        policy: fifo\n"),
      "test.yaml:6:9: l2.adapters[0]: eviction of L2 adapter 'mock0': 'policy': "));
  EXPECT_TRUE(StartsWith(
      ParseError("l2:\n  adapters:\n    - type: fault_inject\n      inner:\n        type: fs\n"
                 "        base_path: /x\n        io_engin: pread\n"),
      "test.yaml:7:9: l2.adapters[0]: fault_inject adapter 'fault_inject0': 'inner': fs adapter "
      "'fault_inject0.inner': unknown setting 'io_engin'"));
  EXPECT_EQ(
      ParseError("l2:\n  adapters:\n    - {type: mock, capacity: 1MiB, name: a}\n"
                 "    - {type: mock, capacity: 1MiB, name: a}\n"),
      "test.yaml:4:7: l2.adapters[1]: two L2 adapters are named 'a' (l2.adapters[0] and [1])");
  // A password that looks like a number stays a string for the redis parser.
  ServerConfig c = MustParse("l2:\n  adapters:\n    - {type: redis, password: \"12345\"}\n");
  EXPECT_EQ(c.storage.l2_adapters[0]["password"], "12345");
}

TEST(ServerConfigTest, ValidateChecksFieldsSetInCode) {
  ServerConfig c;
  c.transport.control_threads = 0;
  EXPECT_EQ(ValidateError(c), "transport.control_threads: must be at least 1, got 0");
  c = ServerConfig();
  c.transport.endpoints = {"http://x:1"};
  EXPECT_NE(ValidateError(c).find("transport.endpoints[0]: endpoint 'http://x:1' is not"),
            std::string::npos);
  c = ServerConfig();
  c.storage.l1.capacity_bytes = 0;
  EXPECT_EQ(ValidateError(c), "l1.capacity: must be greater than 0");
  c = ServerConfig();
  c.engine.max_wait = -1s;
  EXPECT_EQ(ValidateError(c), "engine.max_wait: must be greater than 0, got -1s");
  c = ServerConfig();
  c.storage.l1_eviction_policy = "lfu";
  EXPECT_NE(ValidateError(c).find("l1_eviction.policy: "), std::string::npos);
  c = ServerConfig();
  c.storage.l2_adapters = {json{{"type", "fs"}}};
  EXPECT_EQ(ValidateError(c),
            "l2.adapters[0]: fs adapter 'fs0': 'base_path': required setting is missing");
  c = ServerConfig();
  c.storage.l2_adapters = {json{{"type", "fs"}, {"base_path", "/a"}},
                           json{{"type", "fs"}, {"base_path", "/b"}, {"name", "fs0"}}};
  EXPECT_EQ(ValidateError(c),
            "l2.adapters: two L2 adapters are named 'fs0' (l2.adapters[0] and [1])");
}

TEST(ServerConfigTest, ValidateChecksAcrossFields) {
  ServerConfig c = MustParse("l1_eviction:\n  trigger_watermark: 0.6\n  target_watermark: 0.6\n");
  EXPECT_EQ(ValidateError(c),
            "l1_eviction.target_watermark (0.6) must be below l1_eviction.trigger_watermark (0.6)");
  c = MustParse("l1:\n  capacity: 4KiB\n  alignment: 64KiB\n");
  EXPECT_EQ(ValidateError(c), "l1.capacity (4 KiB) must be at least l1.alignment (64 KiB)");
  c = MustParse("l1:\n  use_hugepages: true\n  shm_name: kvtier\n");
  EXPECT_EQ(ValidateError(c), "l1.shm_name and l1.use_hugepages cannot be used together");
  c = MustParse("transport:\n  endpoints: [tcp://0.0.0.0:8080]\n");
  EXPECT_EQ(ValidateError(c),
            "admin.port 8080 is also the port of transport endpoint 'tcp://0.0.0.0:8080'");
  c = MustParse("transport:\n  endpoints: [tcp://localhost:8080]\n");
  EXPECT_FALSE(ValidateServerConfig(c).ok());
  // Different hosts, the admin endpoint off, or an ephemeral admin port: no conflict.
  EXPECT_TRUE(
      ValidateServerConfig(MustParse("transport:\n  endpoints: [tcp://10.0.0.1:8080]\n")).ok());
  EXPECT_TRUE(ValidateServerConfig(
                  MustParse("transport:\n  endpoints: [tcp://127.0.0.1:8080]\nadmin:\n  enabled: "
                            "false\n"))
                  .ok());
  EXPECT_TRUE(ValidateServerConfig(
                  MustParse("transport:\n  endpoints: [tcp://127.0.0.1:0]\nadmin:\n  port: 0\n"))
                  .ok());
}

TEST(ServerConfigTest, ControllerSection) {
  // Off by default; the other endpoints derive from a tcp endpoint.
  EXPECT_FALSE(ServerConfig().controller.enabled());
  ServerConfig c = MustParse("controller:\n  endpoint: tcp://10.0.0.9:9100\n");
  EXPECT_TRUE(c.controller.enabled());
  EXPECT_TRUE(ValidateServerConfig(c).ok()) << ValidateServerConfig(c).ToString();
  EXPECT_EQ(c.controller.batch_keys, 1024u);
  EXPECT_EQ(c.controller.batch_interval, 20ms);

  // Single-field rules, at parse time.
  EXPECT_THAT(ParseError("controller:\n  endpoint: tcp://*:9100\n"),
              HasSubstr("controller.endpoint: endpoint 'tcp://*:9100': connecting needs a host"));
  EXPECT_THAT(ParseError("controller:\n  endpoint: tcp://10.0.0.9:0\n"),
              HasSubstr("connecting needs a port, not 0"));
  EXPECT_THAT(ParseError("controller:\n  events_endpoint: udp://x:1\n"),
              HasSubstr("controller.events_endpoint: endpoint 'udp://x:1' is not"));
  EXPECT_THAT(ParseError("controller:\n  advertise_address: tcp://my host:1\n"),
              HasSubstr("controller.advertise_address: 'tcp://my host:1' must be printable ASCII "
                        "without spaces"));
  EXPECT_THAT(ParseError("controller:\n  batch_keys: 0\n"),
              HasSubstr("controller.batch_keys: must be in [1, 65536], got 0"));
  EXPECT_THAT(ParseError("controller:\n  batch_keys: 65537\n"), HasSubstr("[1, 65536]"));
  EXPECT_THAT(ParseError("controller:\n  batch_interval: 0s\n"),
              HasSubstr("controller.batch_interval: must be greater than 0"));
  EXPECT_THAT(ParseError("controller:\n  max_pending_keys: 0\n"),
              HasSubstr("controller.max_pending_keys: must be at least 1"));

  // Across fields.
  c = MustParse("controller:\n  endpoint: ipc:///run/ctl.sock\n");
  EXPECT_EQ(ValidateError(c),
            "controller.events_endpoint must be set: it is derived only from a tcp:// "
            "controller.endpoint");
  c = MustParse(
      "controller:\n  endpoint: ipc:///run/ctl.sock\n  events_endpoint: ipc:///run/ev.sock\n"
      "  heartbeat_endpoint: ipc:///run/hb.sock\n");
  EXPECT_TRUE(ValidateServerConfig(c).ok()) << ValidateServerConfig(c).ToString();
  c = MustParse("controller:\n  endpoint: tcp://10.0.0.9:65534\n");
  EXPECT_EQ(ValidateError(c),
            "controller.heartbeat_endpoint must be set: controller.endpoint's port 65534 + 2 is "
            "not a port");
  c = MustParse("controller:\n  heartbeat_endpoint: tcp://10.0.0.9:9102\n");
  EXPECT_THAT(ValidateError(c), HasSubstr("controller.endpoint is empty (reporting is off)"));
  c = MustParse("server_id: \"n\u00f6de\"\ncontroller:\n  endpoint: tcp://10.0.0.9:9100\n");
  EXPECT_THAT(
      ValidateError(c),
      HasSubstr("must be printable ASCII without spaces (a controller identifier) (it is the "
                "instance id"));
  // Set in code: the validator checks the same rules.
  c = ServerConfig();
  c.controller.request_timeout = 0s;
  EXPECT_EQ(ValidateError(c), "controller.request_timeout: must be greater than 0, got 0s");
}

TEST(ServerConfigTest, LoadFileErrors) {
  auto missing = LoadServerConfigFile("/nonexistent/kvtier.yaml");
  ASSERT_FALSE(missing);
  EXPECT_EQ(missing.error().code(), StatusCode::kNotFound);
  EXPECT_EQ(missing.error().message(), "config file '/nonexistent/kvtier.yaml' does not exist");
  auto dir = LoadServerConfigFile("/tmp");
  ASSERT_FALSE(dir);
  EXPECT_EQ(dir.error().message(), "config file '/tmp' is not a file");

  const std::string path =
      testing::TempDir() + "/kvtier_config_test_" + std::to_string(::getpid()) + ".yaml";
  {
    std::ofstream out(path);
    out << "l1:\n  capacity: 2GiB\n  bogus: 1\n";
  }
  auto bad = LoadServerConfigFile(path);
  ASSERT_FALSE(bad);
  EXPECT_EQ(bad.error().message().substr(0, path.size() + 5), path + ":3:3:");
  {
    std::ofstream out(path);
    out << "l1:\n  capacity: 2GiB\n";
  }
  auto good = LoadServerConfigFile(path);
  ASSERT_TRUE(good) << good.error().ToString();
  EXPECT_EQ(good->storage.l1.capacity_bytes, 2 * kGiB);
  std::remove(path.c_str());
}

}  // namespace
}  // namespace kvtier::config
