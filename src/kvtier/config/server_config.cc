#include "kvtier/config/server_config.h"

#include <bit>
#include <cctype>
#include <filesystem>
#include <fstream>
#include <limits>
#include <map>
#include <set>
#include <sstream>
#include <tuple>

#include <arpa/inet.h>
#include <fmt/format.h>
#include <fmt/ranges.h>
#include <netinet/in.h>
#include <yaml-cpp/yaml.h>

#include "kvtier/common/units.h"
#include "kvtier/config/l2_adapter_config.h"
#include "kvtier/config/yaml_reader.h"
#include "kvtier/eviction/policy.h"
#include "kvtier/keys/token_hasher.h"
#include "kvtier/storage/store_policy.h"

namespace kvtier::config {

using internal::MapReader;
using internal::YamlSource;

namespace {

// ---- single-field rules: shared by the parser (with a file position) and the validator ----

Status Invalid(std::string msg) { return Status::InvalidArgument(std::move(msg)); }

Status NoRule(const auto& /*value*/) { return Status::OK(); }

auto AtLeast(uint64_t min) {
  return [min](uint64_t v) {
    return v >= min ? Status::OK() : Invalid(fmt::format("must be at least {}, got {}", min, v));
  };
}

Status Positive(Duration d) {
  return d > Duration::zero()
             ? Status::OK()
             : Invalid(fmt::format("must be greater than 0, got {}", FormatDuration(d)));
}

Status NonNegative(Duration d) {
  return d >= Duration::zero()
             ? Status::OK()
             : Invalid(fmt::format("must not be negative, got {}", FormatDuration(d)));
}

Status PositiveSize(uint64_t bytes) {
  return bytes > 0 ? Status::OK() : Invalid("must be greater than 0");
}

constexpr std::string_view kLogLevels[] = {"trace", "debug",    "info", "warn",
                                           "error", "critical", "off"};

Status OneOf(std::string_view value, std::span<const std::string_view> choices) {
  std::vector<std::string> names(choices.begin(), choices.end());
  if (std::find(names.begin(), names.end(), value) != names.end()) return Status::OK();
  return Invalid(fmt::format("'{}' is not one of {}{}", value, fmt::join(names, ", "),
                             internal::DidYouMean(value, names)));
}

Status CheckLogLevel(const std::string& level) { return OneOf(level, kLogLevels); }

Status CheckServerId(const std::string& id) {
  if (id.size() > 256) return Invalid(fmt::format("must be at most 256 bytes, got {}", id.size()));
  for (char c : id) {
    if (std::iscntrl(static_cast<unsigned char>(c)) || c == ' ') {
      return Invalid(fmt::format("'{}' must not contain spaces or control characters", id));
    }
  }
  return Status::OK();
}

Status CheckAdminHost(const std::string& host) {
  // The admin server does no DNS lookups.
  if (host == "localhost") return Status::OK();
  in_addr v4{};
  in6_addr v6{};
  if (::inet_pton(AF_INET, host.c_str(), &v4) == 1 ||
      ::inet_pton(AF_INET6, host.c_str(), &v6) == 1) {
    return Status::OK();
  }
  return Invalid(fmt::format(
      "'{}' is not a numeric IPv4/IPv6 address or localhost (e.g. 127.0.0.1, 0.0.0.0, ::1)", host));
}

struct TcpEndpoint {
  std::string host;
  std::string port;  // digits or "*"
};

std::string_view kEndpointForms = "tcp://HOST:PORT (PORT 0 or * for any free port) or ipc:///PATH";

// Parses tcp://HOST:PORT ([V6]:PORT for IPv6). Errors say what is wrong.
Result<TcpEndpoint> ParseTcpEndpoint(std::string_view endpoint) {
  std::string_view rest = endpoint.substr(std::string_view("tcp://").size());
  auto bad = [&](std::string_view why) {
    return MakeError(
        Invalid(fmt::format("endpoint '{}': {}; expected {}", endpoint, why, kEndpointForms)));
  };
  std::string_view host, port;
  if (rest.starts_with('[')) {
    size_t close = rest.find(']');
    if (close == std::string_view::npos) return bad("an IPv6 host needs its closing ']'");
    host = rest.substr(1, close - 1);
    if (rest.substr(close + 1).size() < 2 || rest[close + 1] != ':') return bad("no port");
    port = rest.substr(close + 2);
  } else {
    size_t colon = rest.rfind(':');
    if (colon == std::string_view::npos) return bad("no port");
    host = rest.substr(0, colon);
    port = rest.substr(colon + 1);
  }
  if (host.empty()) return bad("no host (use 0.0.0.0 or * for every interface)");
  for (char c : host) {
    if (std::isspace(static_cast<unsigned char>(c)) ||
        std::iscntrl(static_cast<unsigned char>(c)) || c == '/') {
      return bad(fmt::format("bad host '{}'", host));
    }
  }
  if (port != "*") {
    Result<uint64_t> n = internal::ParseUnsigned(port, 65535);
    if (!n) return bad(fmt::format("the port '{}' is not a number in [0, 65535] or *", port));
  }
  return TcpEndpoint{std::string(host), std::string(port)};
}

Status CheckEndpoint(std::string_view endpoint) {
  if (endpoint.starts_with("tcp://"))
    return ToStatus(ParseTcpEndpoint(endpoint).map([](auto&&) {}));
  if (endpoint.starts_with("ipc://")) {
    std::string_view path = endpoint.substr(6);
    if (path.empty()) return Invalid(fmt::format("endpoint '{}': no path", endpoint));
    // sockaddr_un::sun_path holds 108 bytes with the terminating NUL.
    if (path.size() > 107) {
      return Invalid(fmt::format("endpoint '{}': the path is longer than 107 bytes", endpoint));
    }
    if (path.find('\0') != std::string_view::npos) {
      return Invalid(fmt::format("endpoint '{}': the path contains a NUL byte", endpoint));
    }
    return Status::OK();
  }
  return Invalid(fmt::format("endpoint '{}' is not {}", endpoint, kEndpointForms));
}

// The list as a whole (each endpoint is CheckEndpoint's).
Status CheckEndpointList(const std::vector<std::string>& endpoints) {
  if (endpoints.empty()) return Invalid("at least one endpoint is needed");
  std::set<std::string_view> seen;
  for (const std::string& e : endpoints) {
    if (!seen.insert(e).second) return Invalid(fmt::format("endpoint '{}' is listed twice", e));
  }
  return Status::OK();
}

// Where the controller listens (connect side): "" (reporting off), tcp://HOST:PORT with a real
// host and port, or ipc:///PATH.
Status CheckControllerEndpoint(const std::string& endpoint) {
  if (endpoint.empty()) return Status::OK();
  KVT_RETURN_IF_ERROR(CheckEndpoint(endpoint));
  if (!endpoint.starts_with("tcp://")) return Status::OK();
  Result<TcpEndpoint> tcp = ParseTcpEndpoint(endpoint);
  if (tcp->port == "*" || tcp->port == "0") {
    return Invalid(
        fmt::format("endpoint '{}': connecting needs a port, not {}", endpoint, tcp->port));
  }
  if (tcp->host == "*" || tcp->host == "0.0.0.0" || tcp->host == "::") {
    return Invalid(fmt::format("endpoint '{}': connecting needs a host, not the wildcard {}",
                               endpoint, tcp->host));
  }
  return Status::OK();
}

// The protocol's identifiers: printable ASCII without spaces.
Status CheckControllerIdentifier(const std::string& value, size_t max) {
  if (value.size() > max) {
    return Invalid(fmt::format("must be at most {} bytes, got {}", max, value.size()));
  }
  for (char c : value) {
    if (c < 0x21 || c > 0x7e) {
      return Invalid(fmt::format(
          "'{}' must be printable ASCII without spaces (a controller identifier)", value));
    }
  }
  return Status::OK();
}

Status CheckAdvertiseAddress(const std::string& address) {
  return CheckControllerIdentifier(address, 512);
}

Status CheckBatchKeys(uint64_t n) {
  // The protocol's cap on keys per message.
  if (n < 1 || n > 65536) return Invalid(fmt::format("must be in [1, 65536], got {}", n));
  return Status::OK();
}

Status CheckChunkSize(uint64_t chunk_size) {
  // TokenHasher owns the rule (a chunk is [1, 1 << 20] tokens).
  if (chunk_size > std::numeric_limits<uint32_t>::max()) {
    return Invalid(fmt::format("chunk size {} is too large", chunk_size));
  }
  Result<keys::TokenHasher> hasher =
      keys::TokenHasher::Create(keys::HashAlgorithm::kSha256, static_cast<uint32_t>(chunk_size));
  return hasher ? Status::OK() : Invalid(std::string(hasher.error().message()));
}

Status CheckAlignment(uint64_t alignment) {
  // The allocator's rule: a power of two >= 8.
  if (alignment < 8 || !std::has_single_bit(alignment)) {
    return Invalid(fmt::format("must be a power of two >= 8, got {}", alignment));
  }
  return Status::OK();
}

Status CheckNumShards(uint64_t shards) {
  if (shards == 0 || shards > 4096 || !std::has_single_bit(shards)) {
    return Invalid(fmt::format("must be a power of two in [1, 4096], got {}", shards));
  }
  return Status::OK();
}

Status CheckShmName(const std::string& name) {
  if (name.find('/') != std::string::npos) {
    return Invalid(fmt::format("'{}' must not contain '/' (the object is /<shm_name>)", name));
  }
  if (name.size() > 200) return Invalid("must be at most 200 bytes");
  return Status::OK();
}

Status CheckEvictionPolicy(const std::string& name) {
  auto policy = eviction::MakeEvictionPolicy(name);
  return policy ? Status::OK() : Invalid(std::string(policy.error().message()));
}

Status CheckStorePolicy(const std::string& name) {
  auto policy = storage::MakeStorePolicy(name);
  return policy ? Status::OK() : Invalid(std::string(policy.error().message()));
}

Status CheckTrigger(double v) {
  return v > 0 && v <= 1 ? Status::OK() : Invalid(fmt::format("must be in (0, 1], got {}", v));
}

Status CheckTarget(double v) {
  return v >= 0 && v < 1 ? Status::OK() : Invalid(fmt::format("must be in [0, 1), got {}", v));
}

// ---- the schema: every key, its field and its rule, once ----
//
// A visitor V has String, Bool, Count, Size, Duration, Double, StringList, Hash, Adapters and
// Section(key, body); C is ServerConfig or const ServerConfig.
template <typename V, typename C>
void VisitServerConfig(V& v, C& c) {
  v.String("server_id", c.server_id, CheckServerId);
  v.String("log_level", c.log_level, CheckLogLevel);
  v.Duration("tick_interval", c.tick_interval, Positive);
  v.Section("transport", [&] {
    v.StringList("endpoints", c.transport.endpoints, CheckEndpoint, CheckEndpointList);
    v.Count("control_threads", c.transport.control_threads, AtLeast(1));
    v.Count("transfer_threads", c.transport.transfer_threads, AtLeast(1));
    v.Count("max_queued_requests", c.transport.max_queued_requests, AtLeast(1));
  });
  v.Section("admin", [&] {
    v.Bool("enabled", c.admin.enabled);
    v.String("host", c.admin.host, CheckAdminHost);
    v.Count("port", c.admin.port, NoRule<uint64_t>);
  });
  v.Section("engine", [&] {
    v.Count("chunk_size", c.engine.chunk_size, CheckChunkSize);
    v.Hash("hash", c.engine.hash);
    v.Duration("session_ttl", c.engine.session_ttl, Positive);
    v.Duration("worker_timeout", c.engine.worker_timeout, NonNegative);
    v.Duration("registration_grace", c.engine.registration_grace, Positive);
    v.Duration("max_wait", c.engine.max_wait, Positive);
  });
  v.Section("l1", [&] {
    auto& l1 = c.storage.l1;
    v.Size("capacity", l1.capacity_bytes, PositiveSize);
    v.Size("alignment", l1.alignment, CheckAlignment);
    v.Bool("use_hugepages", l1.use_hugepages);
    v.String("shm_name", l1.shm_name, CheckShmName);
    v.Bool("populate", l1.populate);
    v.Bool("register_with_cuda", l1.register_with_cuda);
    v.Duration("read_ttl", l1.read_ttl, Positive);
    v.Duration("write_ttl", l1.write_ttl, Positive);
    v.Duration("allocation_wait", l1.allocation_wait, NonNegative);
    v.Count("num_shards", l1.num_shards, CheckNumShards);
  });
  v.Section("l1_eviction", [&] {
    auto& e = c.storage.l1_eviction;
    v.String("policy", c.storage.l1_eviction_policy, CheckEvictionPolicy);
    v.Double("trigger_watermark", e.trigger_watermark, CheckTrigger);
    v.Double("target_watermark", e.target_watermark, CheckTarget);
    v.Duration("check_interval", e.check_interval, Positive);
    v.Count("victims_per_round", e.victims_per_round, AtLeast(1));
    v.Count("queue_wake_threshold", e.queue_wake_threshold, AtLeast(1));
  });
  v.Section("l2", [&] {
    v.Adapters("adapters", c.storage.l2_adapters);
    v.String("store_policy", c.storage.store_policy, CheckStorePolicy);
    v.Section("store", [&] {
      auto& s = c.storage.store;
      v.Count("max_pending_keys", s.max_pending_keys, AtLeast(1));
      v.Count("max_keys_per_task", s.max_keys_per_task, AtLeast(1));
      v.Duration("store_timeout", s.store_timeout, NonNegative);
      v.Duration("poll_interval", s.poll_interval, Positive);
    });
    v.Section("prefetch", [&] {
      auto& p = c.storage.prefetch;
      v.Count("max_in_flight", p.max_in_flight, AtLeast(1));
      v.Duration("poll_interval", p.poll_interval, Positive);
    });
  });
  v.Section("host_transfer", [&] {
    v.Size("min_parallel_bytes", c.host_transfer.min_parallel_bytes, NoRule<uint64_t>);
    v.Size("stream_min_bytes", c.host_transfer.stream_min_bytes, NoRule<uint64_t>);
  });
  v.Section("controller", [&] {
    auto& r = c.controller;
    v.String("endpoint", r.endpoint, CheckControllerEndpoint);
    v.String("events_endpoint", r.events_endpoint, CheckControllerEndpoint);
    v.String("heartbeat_endpoint", r.heartbeat_endpoint, CheckControllerEndpoint);
    v.String("advertise_address", r.advertise_address, CheckAdvertiseAddress);
    v.Count("batch_keys", r.batch_keys, CheckBatchKeys);
    v.Duration("batch_interval", r.batch_interval, Positive);
    v.Duration("request_timeout", r.request_timeout, Positive);
    v.Count("max_pending_keys", r.max_pending_keys, AtLeast(1));
  });
}

// Finds where in an adapter's YAML an error of the l2 parsers points: the first 'quoted' word
// of the message that is a key of the adapter (or of its "eviction" / "inner" block).
YAML::Mark LocateAdapterError(const YAML::Node& item, std::string_view message) {
  YAML::Mark mark = item.Mark();
  YAML::Node map = item;
  size_t pos = 0;
  // storage::ParseL2EvictionOptions' section names no key: "eviction of L2 adapter '<name>'".
  if (message.starts_with("eviction of L2 adapter") && item["eviction"].IsMap()) {
    for (auto it = item.begin(); it != item.end(); ++it) {
      if (it->first.IsScalar() && it->first.Scalar() == "eviction") mark = it->first.Mark();
    }
    map.reset(item["eviction"]);
  }
  while (map.IsMap()) {
    size_t open = message.find('\'', pos);
    if (open == std::string_view::npos) break;
    size_t close = message.find('\'', open + 1);
    if (close == std::string_view::npos) break;
    const std::string word(message.substr(open + 1, close - open - 1));
    pos = close + 1;
    for (auto it = map.begin(); it != map.end(); ++it) {
      if (!it->first.IsScalar() || it->first.Scalar() != word) continue;
      mark = it->first.Mark();
      if ((word == "eviction" || word == "inner") && it->second.IsMap()) {
        // The rest of the message is about this block. reset() rebinds: assigning a Node
        // would write through to the document.
        map.reset(it->second);
        break;
      }
      return mark;
    }
  }
  return mark;
}

// JsonConfig reports "unknown setting 'x' (known: a, b, c)": add the closest known key.
std::string WithSuggestion(std::string_view message) {
  constexpr std::string_view kUnknown = "unknown setting '";
  constexpr std::string_view kKnown = "(known: ";
  size_t u = message.find(kUnknown);
  size_t k = message.rfind(kKnown);
  if (u == std::string_view::npos || k == std::string_view::npos) return std::string(message);
  size_t end = message.find('\'', u + kUnknown.size());
  size_t close = message.find(')', k);
  if (end == std::string_view::npos || close == std::string_view::npos) {
    return std::string(message);
  }
  std::string_view word = message.substr(u + kUnknown.size(), end - u - kUnknown.size());
  std::vector<std::string> known;
  std::string_view list = message.substr(k + kKnown.size(), close - k - kKnown.size());
  while (!list.empty()) {
    size_t comma = list.find(", ");
    known.emplace_back(list.substr(0, comma));
    list = comma == std::string_view::npos ? std::string_view() : list.substr(comma + 2);
  }
  return std::string(message) + internal::DidYouMean(word, known);
}

// Duplicate adapter names: the factory's StorageManager refuses them at start.
Status CheckAdapterNames(const std::vector<nlohmann::json>& adapters, size_t* duplicate) {
  std::map<std::string, size_t> names;
  for (size_t i = 0; i < adapters.size(); ++i) {
    std::string name = L2AdapterName(adapters[i], i);
    auto [it, inserted] = names.emplace(name, i);
    if (!inserted) {
      *duplicate = i;
      return Invalid(fmt::format("two L2 adapters are named '{}' (l2.adapters[{}] and [{}])", name,
                                 it->second, i));
    }
  }
  return Status::OK();
}

// ---- visitors ----

// Reads YAML into a ServerConfig: types, units, single-field rules and unknown keys, with file
// positions.
class Reader {
 public:
  explicit Reader(const YamlSource* source) : source_(source) {}

  Status Run(const YAML::Node& root, ServerConfig* config) {
    Result<MapReader> top = MapReader::Open(source_, root, "");
    if (!top) return top.error();
    stack_.push_back(std::move(*top));
    VisitServerConfig(*this, *config);
    if (status_.ok()) status_ = stack_.back().Finish();
    stack_.pop_back();
    return status_;
  }

  template <typename F>
  void Section(std::string_view key, F body) {
    if (!status_.ok()) return;
    YAML::Node node = top().Get(key);
    Result<MapReader> reader = MapReader::Open(source_, node, top().PathOf(key));
    if (!reader) {
      status_ = reader.error();
      return;
    }
    stack_.push_back(std::move(*reader));
    body();
    if (status_.ok()) status_ = stack_.back().Finish();
    stack_.pop_back();
  }

  template <typename Rule>
  void String(std::string_view key, std::string& value, Rule rule) {
    if (!status_.ok()) return;
    status_ = top().String(key, &value);
    Checked(key, rule(value));
  }
  void Bool(std::string_view key, bool& value) {
    if (!status_.ok()) return;
    status_ = top().Bool(key, &value);
  }
  template <typename T, typename Rule>
  void Count(std::string_view key, T& value, Rule rule) {
    if (!status_.ok()) return;
    uint64_t v = value;
    status_ = top().Unsigned(key, std::numeric_limits<T>::max(), &v);
    if (!status_.ok()) return;
    value = static_cast<T>(v);
    Checked(key, rule(v));
  }
  template <typename Rule>
  void Size(std::string_view key, uint64_t& value, Rule rule) {
    if (!status_.ok()) return;
    status_ = top().Size(key, &value);
    Checked(key, rule(value));
  }
  template <typename Rule>
  void Duration(std::string_view key, kvtier::Duration& value, Rule rule) {
    if (!status_.ok()) return;
    status_ = top().Duration(key, &value);
    Checked(key, rule(value));
  }
  template <typename Rule>
  void Double(std::string_view key, double& value, Rule rule) {
    if (!status_.ok()) return;
    status_ = top().Double(key, &value);
    Checked(key, rule(value));
  }
  template <typename ItemRule, typename Rule>
  void StringList(std::string_view key, std::vector<std::string>& value, ItemRule item_rule,
                  Rule rule) {
    if (!status_.ok()) return;
    status_ = top().StringList(key, &value);
    if (!status_.ok() || !top().Has(key)) return;
    const YAML::Node node = top().Get(key);
    for (size_t i = 0; i < value.size(); ++i) {
      Status s = item_rule(value[i]);
      if (s.ok()) continue;
      // A single scalar stands for a list of one.
      status_ =
          node.IsSequence()
              ? source_->Error(node[i], fmt::format("{}[{}]", top().PathOf(key), i), s.message())
              : top().ErrorAt(key, s.message());
      return;
    }
    Checked(key, rule(value));
  }
  void Hash(std::string_view key, keys::HashAlgorithm& value) {
    if (!status_.ok()) return;
    std::string name;
    status_ = top().String(key, &name);
    if (!status_.ok() || !top().Has(key)) return;
    Result<keys::HashAlgorithm> hash = keys::ParseHashAlgorithm(name);
    if (!hash) {
      status_ = top().ErrorAt(key, hash.error().message());
      return;
    }
    value = *hash;
  }
  void Adapters(std::string_view key, std::vector<nlohmann::json>& value) {
    if (!status_.ok()) return;
    status_ = ReadAdapters(key, &value);
  }

 private:
  MapReader& top() { return stack_.back(); }

  void Checked(std::string_view key, const Status& rule_status) {
    if (status_.ok()) status_ = top().Check(key, rule_status);
  }

  Status ReadAdapters(std::string_view key, std::vector<nlohmann::json>* out) {
    YAML::Node list = top().Get(key);
    if (!top().Has(key)) return Status::OK();
    const std::string path = top().PathOf(key);
    if (!list.IsSequence()) {
      return top().ErrorAt(key, fmt::format("expected a list of adapter configs, got {}",
                                            internal::NodeKindName(list)));
    }
    std::vector<nlohmann::json> adapters;
    std::vector<YAML::Node> items;
    size_t i = 0;
    for (const YAML::Node& item : list) {
      const std::string item_path = fmt::format("{}[{}]", path, i);
      if (!item.IsMap()) {
        return source_->Error(item, item_path,
                              fmt::format("expected an adapter config (a mapping with a 'type'), "
                                          "got {}",
                                          internal::NodeKindName(item)));
      }
      KVT_ASSIGN_OR_RETURN(nlohmann::json json, internal::YamlToJson(*source_, item, item_path));
      if (Status s = ValidateL2AdapterConfig(json, i); !s.ok()) {
        return source_->Error(LocateAdapterError(item, s.message()), item_path,
                              WithSuggestion(s.message()));
      }
      adapters.push_back(std::move(json));
      items.push_back(item);
      ++i;
    }
    size_t duplicate = 0;
    if (Status s = CheckAdapterNames(adapters, &duplicate); !s.ok()) {
      return source_->Error(items[duplicate], fmt::format("{}[{}]", path, duplicate), s.message());
    }
    *out = std::move(adapters);
    return Status::OK();
  }

  const YamlSource* source_;
  std::vector<MapReader> stack_;
  Status status_;
};

// Checks a ServerConfig's fields against their rules; errors name the key path.
class Validator {
 public:
  Status Run(const ServerConfig& config) {
    VisitServerConfig(*this, config);
    return status_;
  }

  template <typename F>
  void Section(std::string_view key, F body) {
    path_.emplace_back(key);
    body();
    path_.pop_back();
  }
  template <typename Rule>
  void String(std::string_view key, const std::string& value, Rule rule) {
    Checked(key, rule(value));
  }
  void Bool(std::string_view, bool) {}
  template <typename T, typename Rule>
  void Count(std::string_view key, T value, Rule rule) {
    Checked(key, rule(static_cast<uint64_t>(value)));
  }
  template <typename Rule>
  void Size(std::string_view key, uint64_t value, Rule rule) {
    Checked(key, rule(value));
  }
  template <typename Rule>
  void Duration(std::string_view key, kvtier::Duration value, Rule rule) {
    Checked(key, rule(value));
  }
  template <typename Rule>
  void Double(std::string_view key, double value, Rule rule) {
    Checked(key, rule(value));
  }
  template <typename ItemRule, typename Rule>
  void StringList(std::string_view key, const std::vector<std::string>& value, ItemRule item_rule,
                  Rule rule) {
    for (size_t i = 0; i < value.size(); ++i) {
      Status s = item_rule(value[i]);
      if (status_.ok() && !s.ok()) {
        status_ = Invalid(fmt::format("{}[{}]: {}", Path(key), i, s.message()));
      }
    }
    Checked(key, rule(value));
  }
  void Hash(std::string_view key, keys::HashAlgorithm value) {
    if (value != keys::HashAlgorithm::kSha256 && value != keys::HashAlgorithm::kXxh3_128) {
      Checked(key, Invalid(fmt::format("unknown hash algorithm {}", static_cast<int>(value))));
    }
  }
  void Adapters(std::string_view key, const std::vector<nlohmann::json>& adapters) {
    for (size_t i = 0; i < adapters.size() && status_.ok(); ++i) {
      Status s = ValidateL2AdapterConfig(adapters[i], i);
      if (!s.ok()) status_ = Invalid(fmt::format("{}[{}]: {}", Path(key), i, s.message()));
    }
    size_t duplicate = 0;
    if (status_.ok()) {
      Status s = CheckAdapterNames(adapters, &duplicate);
      if (!s.ok()) status_ = Invalid(fmt::format("{}: {}", Path(key), s.message()));
    }
  }

 private:
  std::string Path(std::string_view key) const {
    std::string path;
    for (const std::string& p : path_) path = internal::JoinPath(path, p);
    return internal::JoinPath(path, key);
  }
  void Checked(std::string_view key, const Status& s) {
    if (status_.ok() && !s.ok()) status_ = Invalid(fmt::format("{}: {}", Path(key), s.message()));
  }

  std::vector<std::string> path_;
  Status status_;
};

// Writes every key as YAML.
class Dumper {
 public:
  explicit Dumper(YAML::Emitter* out) : out_(*out) {}

  template <typename F>
  void Section(std::string_view key, F body) {
    Key(key);
    out_ << YAML::BeginMap;
    body();
    out_ << YAML::EndMap;
  }
  template <typename Rule>
  void String(std::string_view key, const std::string& value, Rule) {
    Key(key);
    internal::EmitString(out_, value);
  }
  void Bool(std::string_view key, bool value) {
    Key(key);
    out_ << (value ? "true" : "false");
  }
  template <typename T, typename Rule>
  void Count(std::string_view key, T value, Rule) {
    Key(key);
    out_ << static_cast<uint64_t>(value);
  }
  template <typename Rule>
  void Size(std::string_view key, uint64_t value, Rule) {
    Key(key);
    out_ << internal::FormatSizeForYaml(value);
  }
  template <typename Rule>
  void Duration(std::string_view key, kvtier::Duration value, Rule) {
    Key(key);
    out_ << FormatDuration(value);
  }
  template <typename Rule>
  void Double(std::string_view key, double value, Rule) {
    Key(key);
    out_ << internal::FormatDoubleForYaml(value);
  }
  template <typename ItemRule, typename Rule>
  void StringList(std::string_view key, const std::vector<std::string>& value, ItemRule, Rule) {
    Key(key);
    out_ << YAML::BeginSeq;
    for (const std::string& s : value) internal::EmitString(out_, s);
    out_ << YAML::EndSeq;
  }
  void Hash(std::string_view key, keys::HashAlgorithm value) {
    Key(key);
    out_ << std::string(keys::HashAlgorithmName(value));
  }
  void Adapters(std::string_view key, const std::vector<nlohmann::json>& adapters) {
    Key(key);
    if (adapters.empty()) {
      out_ << YAML::Flow << YAML::BeginSeq << YAML::EndSeq;
      return;
    }
    out_ << YAML::BeginSeq;
    for (const nlohmann::json& a : adapters) {
      if (!a.is_object()) {
        internal::EmitJson(out_, a);
        continue;
      }
      // "type" and "name" first, "eviction" last; the type's keys in between.
      out_ << YAML::BeginMap;
      auto emit = [&](const std::string& k, const nlohmann::json& v) {
        out_ << YAML::Key;
        internal::EmitString(out_, k);
        out_ << YAML::Value;
        internal::EmitJson(out_, v);
      };
      for (const char* first : {"type", "name"}) {
        if (a.contains(first)) emit(first, a[first]);
      }
      for (const auto& [k, v] : a.items()) {
        if (k != "type" && k != "name" && k != "eviction") emit(k, v);
      }
      if (a.contains("eviction")) emit("eviction", a["eviction"]);
      out_ << YAML::EndMap;
    }
    out_ << YAML::EndSeq;
  }

 private:
  void Key(std::string_view key) { out_ << YAML::Key << std::string(key) << YAML::Value; }

  YAML::Emitter& out_;
};

// Lists every key path.
class PathLister {
 public:
  std::vector<std::string> paths;

  template <typename F>
  void Section(std::string_view key, F body) {
    prefix_.emplace_back(key);
    body();
    prefix_.pop_back();
  }
  template <typename T, typename Rule>
  void String(std::string_view key, const T&, Rule) {
    Add(key);
  }
  void Bool(std::string_view key, bool) { Add(key); }
  template <typename T, typename Rule>
  void Count(std::string_view key, T, Rule) {
    Add(key);
  }
  template <typename Rule>
  void Size(std::string_view key, uint64_t, Rule) {
    Add(key);
  }
  template <typename Rule>
  void Duration(std::string_view key, kvtier::Duration, Rule) {
    Add(key);
  }
  template <typename Rule>
  void Double(std::string_view key, double, Rule) {
    Add(key);
  }
  template <typename ItemRule, typename Rule>
  void StringList(std::string_view key, const std::vector<std::string>&, ItemRule, Rule) {
    Add(key);
  }
  void Hash(std::string_view key, keys::HashAlgorithm) { Add(key); }
  void Adapters(std::string_view key, const std::vector<nlohmann::json>&) { Add(key); }

 private:
  void Add(std::string_view key) {
    std::string path;
    for (const std::string& p : prefix_) path = internal::JoinPath(path, p);
    paths.push_back(internal::JoinPath(path, key));
  }
  std::vector<std::string> prefix_;
};

bool IsWildcardHost(std::string_view host) {
  return host == "*" || host == "0.0.0.0" || host == "::" || host == "[::]";
}

std::string_view CanonicalHost(std::string_view host) {
  return host == "localhost" ? std::string_view("127.0.0.1") : host;
}

// The controller section as a whole: its other endpoints given or derivable from `endpoint`
// (tcp port + 1 and + 2), and a server id the protocol accepts.
Status ValidateController(const ServerConfig& c) {
  const reporter::ReporterOptions& r = c.controller;
  if (r.endpoint.empty()) {
    if (!r.events_endpoint.empty() || !r.heartbeat_endpoint.empty()) {
      return Invalid(
          "controller.events_endpoint / controller.heartbeat_endpoint are set but "
          "controller.endpoint is empty (reporting is off)");
    }
    return Status::OK();
  }
  for (auto [key, value, delta] : {std::tuple{"events_endpoint", &r.events_endpoint, 1},
                                   std::tuple{"heartbeat_endpoint", &r.heartbeat_endpoint, 2}}) {
    if (!value->empty()) continue;
    if (!r.endpoint.starts_with("tcp://")) {
      return Invalid(fmt::format(
          "controller.{} must be set: it is derived only from a tcp:// controller.endpoint", key));
    }
    Result<TcpEndpoint> tcp = ParseTcpEndpoint(r.endpoint);
    Result<uint64_t> port = tcp ? internal::ParseUnsigned(tcp->port, 65535) : Result<uint64_t>(0);
    if (port && *port + delta > 65535) {
      return Invalid(
          fmt::format("controller.{} must be set: controller.endpoint's port {} + {} is not a port",
                      key, tcp->port, delta));
    }
  }
  if (Status s = CheckControllerIdentifier(c.server_id, 256); !s.ok()) {
    return Invalid(
        fmt::format("server_id: {} (it is the instance id the controller knows this "
                    "server by)",
                    s.message()));
  }
  return Status::OK();
}

// Cross-field rules.
Status ValidateAcrossFields(const ServerConfig& c) {
  const auto& e = c.storage.l1_eviction;
  if (!(e.target_watermark < e.trigger_watermark)) {
    return Invalid(fmt::format(
        "l1_eviction.target_watermark ({}) must be below l1_eviction.trigger_watermark ({})",
        e.target_watermark, e.trigger_watermark));
  }
  const auto& l1 = c.storage.l1;
  if (l1.alignment > l1.capacity_bytes) {
    return Invalid(fmt::format("l1.capacity ({}) must be at least l1.alignment ({})",
                               FormatSize(l1.capacity_bytes), FormatSize(l1.alignment)));
  }
  if (l1.use_hugepages && !l1.shm_name.empty()) {
    return Invalid("l1.shm_name and l1.use_hugepages cannot be used together");
  }
  if (Status s = ValidateController(c); !s.ok()) return s;
  if (c.admin.enabled && c.admin.port != 0) {
    for (const std::string& endpoint : c.transport.endpoints) {
      if (!endpoint.starts_with("tcp://")) continue;
      Result<TcpEndpoint> tcp = ParseTcpEndpoint(endpoint);
      if (!tcp || tcp->port != std::to_string(c.admin.port)) continue;
      if (IsWildcardHost(tcp->host) || IsWildcardHost(c.admin.host) ||
          CanonicalHost(tcp->host) == CanonicalHost(c.admin.host)) {
        return Invalid(fmt::format("admin.port {} is also the port of transport endpoint '{}'",
                                   c.admin.port, endpoint));
      }
    }
  }
  return Status::OK();
}

}  // namespace

storage::StorageOptions DefaultStorageOptions() {
  storage::StorageOptions options;
  options.l1.capacity_bytes = kDefaultL1Capacity;
  return options;
}

Result<ServerConfig> ParseServerConfigYaml(std::string_view yaml_text,
                                           std::string_view source_name) {
  const YamlSource source{std::string(source_name)};
  try {
    KVT_ASSIGN_OR_RETURN(YAML::Node root, LoadOneDocument(source, yaml_text));
    ServerConfig config;
    Reader reader(&source);
    KVT_RETURN_IF_ERROR(reader.Run(root, &config));
    return config;
  } catch (const YAML::Exception& e) {
    return MakeError(source.Error(e.mark, "", fmt::format("invalid YAML: {}", e.msg)));
  } catch (const std::exception& e) {
    return MakeError(Invalid(fmt::format("{}: {}", source.name(), e.what())));
  } catch (...) {
    return MakeError(
        Invalid(fmt::format("{}: unexpected error while reading YAML", source.name())));
  }
}

Result<ServerConfig> LoadServerConfigFile(const std::string& path) {
  std::error_code ec;
  const auto status = std::filesystem::status(path, ec);
  if (ec || !std::filesystem::exists(status)) {
    return MakeError(Status::NotFound(fmt::format("config file '{}' does not exist", path)));
  }
  if (!std::filesystem::is_regular_file(status)) {
    return MakeError(Status::InvalidArgument(fmt::format("config file '{}' is not a file", path)));
  }
  std::ifstream in(path, std::ios::binary);
  std::ostringstream text;
  text << in.rdbuf();
  if (!in.good() && !in.eof()) {
    return MakeError(Status::IOError(fmt::format("cannot read config file '{}'", path)));
  }
  return ParseServerConfigYaml(text.str(), path);
}

Status ValidateServerConfig(const ServerConfig& config) {
  Validator validator;
  KVT_RETURN_IF_ERROR(validator.Run(config));
  return ValidateAcrossFields(config);
}

std::string DumpServerConfigYaml(const ServerConfig& config) {
  YAML::Emitter out;
  out << YAML::BeginMap;
  Dumper dumper(&out);
  VisitServerConfig(dumper, config);
  out << YAML::EndMap;
  return std::string(out.c_str()) + "\n";
}

std::vector<std::string> ServerConfigKeyPaths() {
  PathLister lister;
  const ServerConfig config;
  VisitServerConfig(lister, config);
  return std::move(lister.paths);
}

}  // namespace kvtier::config
