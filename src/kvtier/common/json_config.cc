#include "kvtier/common/json_config.h"

#include <fmt/format.h>

#include "kvtier/common/units.h"

namespace kvtier {

JsonConfig::JsonConfig(const nlohmann::json& json, std::string section)
    : json_(json), section_(std::move(section)) {}

Status JsonConfig::Error(std::string_view key, std::string_view what) const {
  return Status::InvalidArgument(fmt::format("{}: '{}': {}", section_, key, what));
}

const nlohmann::json* JsonConfig::Find(std::string_view key) {
  known_.emplace(key);
  if (!json_.is_object()) return nullptr;
  auto it = json_.find(key);
  return it == json_.end() || it->is_null() ? nullptr : &*it;
}

bool JsonConfig::Has(std::string_view key) const {
  return json_.is_object() && json_.contains(key) && !json_.at(std::string(key)).is_null();
}

#define KVT_CONFIG_MISSING(fallback)                                              \
  do {                                                                            \
    if (!(fallback)) return MakeError(Error(key, "required setting is missing")); \
    return *(fallback);                                                           \
  } while (0)

Result<std::string> JsonConfig::String(std::string_view key, std::optional<std::string> fallback) {
  const nlohmann::json* v = Find(key);
  if (v == nullptr) KVT_CONFIG_MISSING(fallback);
  if (!v->is_string())
    return MakeError(Error(key, fmt::format("expected a string, got {}", v->dump())));
  return v->get<std::string>();
}

Result<bool> JsonConfig::Bool(std::string_view key, std::optional<bool> fallback) {
  const nlohmann::json* v = Find(key);
  if (v == nullptr) KVT_CONFIG_MISSING(fallback);
  if (!v->is_boolean())
    return MakeError(Error(key, fmt::format("expected true or false, got {}", v->dump())));
  return v->get<bool>();
}

Result<int64_t> JsonConfig::Int(std::string_view key, std::optional<int64_t> fallback, int64_t min,
                                int64_t max) {
  const nlohmann::json* v = Find(key);
  if (v == nullptr) KVT_CONFIG_MISSING(fallback);
  if (!v->is_number_integer())
    return MakeError(Error(key, fmt::format("expected an integer, got {}", v->dump())));
  int64_t x = v->get<int64_t>();
  if (x < min || x > max)
    return MakeError(Error(key, fmt::format("{} is outside [{}, {}]", x, min, max)));
  return x;
}

Result<double> JsonConfig::Double(std::string_view key, std::optional<double> fallback, double min,
                                  double max) {
  const nlohmann::json* v = Find(key);
  if (v == nullptr) KVT_CONFIG_MISSING(fallback);
  if (!v->is_number())
    return MakeError(Error(key, fmt::format("expected a number, got {}", v->dump())));
  double x = v->get<double>();
  if (x < min || x > max)
    return MakeError(Error(key, fmt::format("{} is outside [{}, {}]", x, min, max)));
  return x;
}

Result<uint64_t> JsonConfig::Size(std::string_view key, std::optional<uint64_t> fallback) {
  const nlohmann::json* v = Find(key);
  if (v == nullptr) KVT_CONFIG_MISSING(fallback);
  if (v->is_number_integer() && v->get<int64_t>() >= 0) return v->get<uint64_t>();
  if (v->is_string()) {
    auto size = ParseSize(v->get<std::string>());
    if (!size) return MakeError(Error(key, size.error().message()));
    return *size;
  }
  return MakeError(Error(key, fmt::format("expected a size such as 20GiB, got {}", v->dump())));
}

Result<Duration> JsonConfig::Seconds(std::string_view key, std::optional<Duration> fallback) {
  const nlohmann::json* v = Find(key);
  if (v == nullptr) KVT_CONFIG_MISSING(fallback);
  if (v->is_number() && v->get<double>() >= 0) {
    return Duration(static_cast<int64_t>(v->get<double>() * 1e9));
  }
  if (v->is_string()) {
    auto d = ParseDuration(v->get<std::string>());
    if (!d) return MakeError(Error(key, d.error().message()));
    return *d;
  }
  return MakeError(Error(key, fmt::format("expected a duration such as 300s, got {}", v->dump())));
}

Result<nlohmann::json> JsonConfig::Object(std::string_view key, bool required) {
  const nlohmann::json* v = Find(key);
  if (v == nullptr) {
    if (required) return MakeError(Error(key, "required setting is missing"));
    return nlohmann::json();
  }
  if (!v->is_object())
    return MakeError(Error(key, fmt::format("expected an object, got {}", v->dump())));
  return *v;
}

#undef KVT_CONFIG_MISSING

Status JsonConfig::Finish() const {
  if (!json_.is_object()) {
    return Status::InvalidArgument(
        fmt::format("{}: expected an object, got {}", section_, json_.dump()));
  }
  std::string unknown;
  for (const auto& [key, value] : json_.items()) {
    if (!known_.contains(key)) unknown += (unknown.empty() ? "'" : ", '") + key + "'";
  }
  if (unknown.empty()) return Status::OK();
  std::string choices;
  for (const auto& k : known_) choices += (choices.empty() ? "" : ", ") + k;
  return Status::InvalidArgument(
      fmt::format("{}: unknown setting {} (known: {})", section_, unknown, choices));
}

}  // namespace kvtier
