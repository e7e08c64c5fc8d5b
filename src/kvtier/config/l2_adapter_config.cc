#include "kvtier/config/l2_adapter_config.h"

#include <algorithm>
#include <optional>

#include <fmt/format.h>

#include "kvtier/config/yaml_reader.h"
#include "kvtier/eviction/policy.h"
#include "kvtier/l2/factory.h"
#include "kvtier/l2/fs/fs_adapter.h"
#include "kvtier/l2/peer/peer_adapter.h"
#include "kvtier/l2/redis/redis_adapter.h"
#include "kvtier/storage/l2_eviction_controller.h"

namespace kvtier::config {
namespace {

std::vector<std::string> KnownTypes() {
  std::vector<std::string> types;
  for (const l2::AdapterType& t : l2::AdapterTypes()) types.push_back(t.type);
  return types;
}

// The adapter's settings as its maker sees them: "type", "name" and "eviction" removed.
nlohmann::json OwnSettings(const nlohmann::json& config) {
  nlohmann::json rest = config;
  rest.erase("type");
  rest.erase("name");
  rest.erase("eviction");
  return rest;
}

// Checks `config` and returns the adapter's capacity in bytes (0: unbounded; std::nullopt:
// not known before start).
Result<std::optional<uint64_t>> CheckAdapter(const nlohmann::json& config, size_t index) {
  const std::string where = fmt::format("L2 adapter #{}", index);
  if (!config.is_object()) {
    return MakeError(Status::InvalidArgument(
        fmt::format("{}: expected a mapping, got {}", where, config.dump())));
  }
  const std::vector<std::string> known = KnownTypes();
  std::string known_list;
  for (const std::string& t : known) known_list += (known_list.empty() ? "" : ", ") + t;
  auto type_it = config.find("type");
  if (type_it == config.end() || !type_it->is_string()) {
    return MakeError(Status::InvalidArgument(
        fmt::format("{}: 'type' (a string) is required; known types: {}", where, known_list)));
  }
  const std::string type = type_it->get<std::string>();
  if (std::find(known.begin(), known.end(), type) == known.end()) {
    return MakeError(Status::InvalidArgument(
        fmt::format("{}: 'type': unknown type '{}'{} (known types: {})", where, type,
                    internal::DidYouMean(type, known), known_list)));
  }
  if (auto name_it = config.find("name"); name_it != config.end()) {
    if (!name_it->is_string() || name_it->get<std::string>().empty()) {
      return MakeError(Status::InvalidArgument(
          fmt::format("{}: 'name' must be a non-empty string, got {}", where, name_it->dump())));
    }
  }
  const std::string name = L2AdapterName(config, index);
  const nlohmann::json settings = OwnSettings(config);

  std::optional<uint64_t> capacity;
  if (type == "fs") {
    KVT_ASSIGN_OR_RETURN(l2::FsAdapterOptions o, l2::ParseFsAdapterConfig(settings, name));
    capacity = o.max_capacity;
  } else if (type == "redis") {
    KVT_ASSIGN_OR_RETURN(l2::RedisAdapterOptions o,
                         l2::RedisAdapterOptions::FromJson(settings, name));
    capacity = o.max_capacity;
  } else if (type == "peer") {
    // No capacity: a peer tier stores nothing (an "eviction" block is refused below).
    KVT_ASSIGN_OR_RETURN(l2::PeerAdapterOptions o,
                         l2::PeerAdapterOptions::FromJson(settings, name));
    (void)o;
  } else if (type == "fault_inject") {
    // The inner config is checked like any other (it may be an fs or redis adapter); the
    // wrapper's own settings are checked at start.
    if (!settings.contains("inner") || !settings["inner"].is_object()) {
      return MakeError(Status::InvalidArgument(fmt::format(
          "fault_inject adapter '{}': 'inner': an adapter config (a mapping) is required", name)));
    }
    nlohmann::json inner = settings["inner"];
    if (!inner.contains("name")) inner["name"] = name + ".inner";
    Result<std::optional<uint64_t>> inner_capacity = CheckAdapter(inner, 0);
    if (!inner_capacity) {
      return MakeError(inner_capacity.error().WithContext(
          fmt::format("fault_inject adapter '{}': 'inner'", name)));
    }
    capacity = *inner_capacity;
  }
  // Other types ("mock", and any the factory gains) have no parser that builds nothing: the
  // factory checks them at start. (Building a mock here would start a thread per check.)

  if (config.contains("eviction")) {
    KVT_ASSIGN_OR_RETURN(storage::L2EvictionOptions eo,
                         storage::ParseL2EvictionOptions(config["eviction"], name));
    const std::string section = fmt::format("eviction of L2 adapter '{}'", name);
    if (Result<std::unique_ptr<eviction::EvictionPolicy>> policy =
            eviction::MakeEvictionPolicy(eo.policy);
        !policy) {
      return MakeError(policy.error().WithContext(section + ": 'policy'"));
    }
    if (eo.check_interval <= Duration::zero()) {
      return MakeError(Status::InvalidArgument(
          fmt::format("{}: 'check_interval': must be greater than 0", section)));
    }
    if (capacity.has_value() && *capacity == 0) {
      return MakeError(Status::InvalidArgument(fmt::format(
          "L2 adapter '{}' has an eviction block but no capacity (set max_capacity)", name)));
    }
  }
  return capacity;
}

int HexValue(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

// Decodes %XX escapes; std::nullopt for a malformed one.
std::optional<std::string> PercentDecode(std::string_view s) {
  std::string out;
  for (size_t i = 0; i < s.size(); ++i) {
    if (s[i] != '%') {
      out.push_back(s[i]);
      continue;
    }
    if (i + 2 >= s.size() || HexValue(s[i + 1]) < 0 || HexValue(s[i + 2]) < 0) {
      return std::nullopt;
    }
    out.push_back(static_cast<char>(HexValue(s[i + 1]) * 16 + HexValue(s[i + 2])));
    i += 2;
  }
  return out;
}

}  // namespace

Status ValidateL2AdapterConfig(const nlohmann::json& config, size_t index) {
  // The parsers are ours, but nlohmann::json throws (e.g. dump() of a string that is not UTF-8
  // in an error message).
  try {
    Result<std::optional<uint64_t>> capacity = CheckAdapter(config, index);
    return capacity ? Status::OK() : capacity.error();
  } catch (const std::exception& e) {
    return Status::InvalidArgument(fmt::format("L2 adapter #{}: {}", index, e.what()));
  }
}

std::string L2AdapterName(const nlohmann::json& config, size_t index) {
  if (config.is_object()) {
    auto name = config.find("name");
    if (name != config.end() && name->is_string() && !name->get<std::string>().empty()) {
      return name->get<std::string>();
    }
    auto type = config.find("type");
    if (type != config.end() && type->is_string()) {
      return fmt::format("{}{}", type->get<std::string>(), index);
    }
  }
  return fmt::format("adapter{}", index);
}

nlohmann::json FsAdapterConfigForPath(const std::string& base_path) {
  return {{"type", "fs"}, {"base_path", base_path}};
}

Result<nlohmann::json> RedisAdapterConfigFromUrl(std::string_view url) {
  auto bad = [&](std::string_view why) {
    return MakeError(Status::InvalidArgument(fmt::format(
        "invalid Redis URL '{}': {} (expected redis://[[user][:password]@]host[:port][/db])", url,
        why)));
  };
  constexpr std::string_view kScheme = "redis://";
  if (url.starts_with("rediss://")) return bad("TLS (rediss://) is not supported");
  if (!url.starts_with(kScheme)) return bad("it must start with redis://");
  std::string_view rest = url.substr(kScheme.size());

  nlohmann::json config = {{"type", "redis"}};
  // Path: /db.
  std::string_view authority = rest;
  if (size_t slash = rest.find('/'); slash != std::string_view::npos) {
    authority = rest.substr(0, slash);
    std::string_view db = rest.substr(slash + 1);
    if (!db.empty()) {
      Result<uint64_t> n = internal::ParseUnsigned(db, INT32_MAX);
      if (!n) return bad(fmt::format("the database '{}' is not a number", db));
      config["db"] = *n;
    }
  }
  // Credentials: the last '@' ends them (a password may contain '@' only percent-encoded, but
  // be lenient).
  if (size_t at = authority.rfind('@'); at != std::string_view::npos) {
    std::string_view userinfo = authority.substr(0, at);
    authority = authority.substr(at + 1);
    std::string_view user = userinfo, password;
    bool has_password = false;
    if (size_t colon = userinfo.find(':'); colon != std::string_view::npos) {
      user = userinfo.substr(0, colon);
      password = userinfo.substr(colon + 1);
      has_password = true;
    }
    std::optional<std::string> user_text = PercentDecode(user);
    if (!user_text) return bad("bad percent-escape in the user name");
    std::optional<std::string> password_text = PercentDecode(password);
    if (!password_text) return bad("bad percent-escape in the password");
    if (!user_text->empty()) config["username"] = *user_text;
    if (has_password) {
      if (password_text->empty()) return bad("the password is empty");
      config["password"] = *password_text;
    }
  }
  // host[:port], host may be [v6].
  std::string_view host = authority, port;
  if (authority.starts_with('[')) {
    size_t close = authority.find(']');
    if (close == std::string_view::npos) return bad("an IPv6 host needs its closing ']'");
    host = authority.substr(1, close - 1);
    std::string_view after = authority.substr(close + 1);
    if (!after.empty()) {
      if (after.front() != ':') return bad("unexpected text after the IPv6 host");
      port = after.substr(1);
      if (port.empty()) return bad("the port is empty");
    }
  } else if (size_t colon = authority.rfind(':'); colon != std::string_view::npos) {
    host = authority.substr(0, colon);
    port = authority.substr(colon + 1);
    if (port.empty()) return bad("the port is empty");
  }
  if (host.empty()) return bad("the host is empty");
  config["host"] = std::string(host);
  uint64_t port_number = 6379;
  if (!port.empty()) {
    Result<uint64_t> n = internal::ParseUnsigned(port, 65535);
    if (!n || *n == 0) return bad(fmt::format("the port '{}' is not in [1, 65535]", port));
    port_number = *n;
  }
  config["port"] = port_number;
  return config;
}

}  // namespace kvtier::config
