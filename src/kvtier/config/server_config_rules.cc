// The server config's rules: the single-field rules the schema (server_config_rules.h) names,
// the cross-field rules, and ValidateServerConfig, which checks a ServerConfig against both.
#include "kvtier/config/server_config_rules.h"

#include <algorithm>
#include <bit>
#include <cctype>
#include <limits>
#include <map>
#include <set>
#include <span>
#include <tuple>

#include <arpa/inet.h>
#include <fmt/ranges.h>
#include <netinet/in.h>

#include "kvtier/common/units.h"
#include "kvtier/config/l2_adapter_config.h"
#include "kvtier/config/yaml_reader.h"
#include "kvtier/eviction/policy.h"
#include "kvtier/keys/token_hasher.h"
#include "kvtier/storage/store_policy.h"

namespace kvtier::config::internal {
namespace {

constexpr std::string_view kLogLevels[] = {"trace", "debug",    "info", "warn",
                                           "error", "critical", "off"};

Status OneOf(std::string_view value, std::span<const std::string_view> choices) {
  std::vector<std::string> names(choices.begin(), choices.end());
  if (std::find(names.begin(), names.end(), value) != names.end()) return Status::OK();
  return Invalid(fmt::format("'{}' is not one of {}{}", value, fmt::join(names, ", "),
                             internal::DidYouMean(value, names)));
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

}  // namespace

Status Invalid(std::string msg) { return Status::InvalidArgument(std::move(msg)); }

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

Status CheckEndpointList(const std::vector<std::string>& endpoints) {
  if (endpoints.empty()) return Invalid("at least one endpoint is needed");
  std::set<std::string_view> seen;
  for (const std::string& e : endpoints) {
    if (!seen.insert(e).second) return Invalid(fmt::format("endpoint '{}' is listed twice", e));
  }
  return Status::OK();
}

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

namespace {

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
}  // namespace kvtier::config::internal

namespace kvtier::config {

Status ValidateServerConfig(const ServerConfig& config) {
  internal::Validator validator;
  KVT_RETURN_IF_ERROR(validator.Run(config));
  return internal::ValidateAcrossFields(config);
}

}  // namespace kvtier::config
