// JsonConfig: reads one JSON object of settings with clear errors.
//
// Every getter records the key as known; Finish() fails on any key nobody asked for, so a typo
// in a config file is an error instead of a silently ignored setting. Errors name the section
// and the key: "fs adapter 'disk0': 'max_capacity': invalid size '12 parsecs' ...".
#pragma once

#include <cstdint>
#include <optional>
#include <set>
#include <string>
#include <string_view>

#include <nlohmann/json.hpp>

#include "kvtier/common/clock.h"
#include "kvtier/common/result.h"

namespace kvtier {

class JsonConfig {
 public:
  // `section` names the object in error messages. A non-object `json` is an error at Finish().
  JsonConfig(const nlohmann::json& json, std::string section);

  Result<std::string> String(std::string_view key,
                             std::optional<std::string> fallback = std::nullopt);
  Result<bool> Bool(std::string_view key, std::optional<bool> fallback = std::nullopt);
  Result<int64_t> Int(std::string_view key, std::optional<int64_t> fallback = std::nullopt,
                      int64_t min = INT64_MIN, int64_t max = INT64_MAX);
  Result<double> Double(std::string_view key, std::optional<double> fallback = std::nullopt,
                        double min = -1e300, double max = 1e300);
  // A byte size: a number of bytes or a string with a unit ("20GiB", "512MB").
  Result<uint64_t> Size(std::string_view key, std::optional<uint64_t> fallback = std::nullopt);
  // A duration: a number of seconds or a string with a unit ("300s", "250ms").
  Result<Duration> Seconds(std::string_view key, std::optional<Duration> fallback = std::nullopt);
  // A nested object (null JSON when absent and no fallback is wanted).
  Result<nlohmann::json> Object(std::string_view key, bool required = false);
  bool Has(std::string_view key) const;

  // kInvalidArgument naming every key that no getter asked for.
  Status Finish() const;
  const std::string& section() const { return section_; }

 private:
  Status Error(std::string_view key, std::string_view what) const;
  const nlohmann::json* Find(std::string_view key);

  const nlohmann::json json_;  // a copy: configs are small, and callers pass temporaries
  std::string section_;
  std::set<std::string, std::less<>> known_;
};

}  // namespace kvtier
