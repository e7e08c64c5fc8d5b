#include "kvtier/common/units.h"

#include <cctype>
#include <charconv>
#include <cmath>
#include <limits>

#include <fmt/format.h>

namespace kvtier {
namespace {

std::string_view Trim(std::string_view s) {
  while (!s.empty() && std::isspace(static_cast<unsigned char>(s.front()))) s.remove_prefix(1);
  while (!s.empty() && std::isspace(static_cast<unsigned char>(s.back()))) s.remove_suffix(1);
  return s;
}

bool EqualsIgnoreCase(std::string_view a, std::string_view b) {
  if (a.size() != b.size()) return false;
  for (size_t i = 0; i < a.size(); ++i) {
    if (std::tolower(static_cast<unsigned char>(a[i])) !=
        std::tolower(static_cast<unsigned char>(b[i]))) {
      return false;
    }
  }
  return true;
}

// Splits "1.5 GiB" into the number 1.5 and the suffix "GiB".
bool SplitNumber(std::string_view text, double* number, std::string_view* suffix) {
  size_t i = 0;
  while (i < text.size() && (std::isdigit(static_cast<unsigned char>(text[i])) || text[i] == '.'))
    ++i;
  if (i == 0) return false;
  std::string_view digits = text.substr(0, i);
  if (digits.find('.') != digits.rfind('.')) return false;  // two dots
  auto [ptr, ec] = std::from_chars(digits.data(), digits.data() + digits.size(), *number);
  if (ec != std::errc() || ptr != digits.data() + digits.size()) return false;
  *suffix = Trim(text.substr(i));
  return true;
}

}  // namespace

Result<uint64_t> ParseSize(std::string_view text) {
  std::string_view s = Trim(text);
  double number = 0;
  std::string_view suffix;
  if (!SplitNumber(s, &number, &suffix)) {
    return MakeError(Status::InvalidArgument(fmt::format(
        "invalid size '{}': expected a number with an optional unit, e.g. 20GiB", text)));
  }
  struct Unit {
    std::string_view name;
    uint64_t factor;
  };
  static constexpr Unit kUnits[] = {
      {"", 1},         {"B", 1},           {"KB", 1000},
      {"MB", 1000000}, {"GB", 1000000000}, {"TB", 1000000000000ULL},
      {"K", kKiB},     {"M", kMiB},        {"G", kGiB},
      {"T", kTiB},     {"KiB", kKiB},      {"MiB", kMiB},
      {"GiB", kGiB},   {"TiB", kTiB},
  };
  for (const Unit& unit : kUnits) {
    if (!EqualsIgnoreCase(suffix, unit.name)) continue;
    long double bytes = static_cast<long double>(number) * unit.factor;
    if (bytes > static_cast<long double>(std::numeric_limits<uint64_t>::max())) {
      return MakeError(Status::OutOfRange(fmt::format("size '{}' is too large", text)));
    }
    return static_cast<uint64_t>(bytes);
  }
  return MakeError(Status::InvalidArgument(fmt::format(
      "invalid size unit '{}' in '{}': use B, KB, MB, GB, TB, KiB, MiB, GiB, TiB", suffix, text)));
}

std::string FormatSize(uint64_t bytes) {
  static constexpr std::string_view kNames[] = {"B", "KiB", "MiB", "GiB", "TiB"};
  size_t unit = 0;
  uint64_t factor = 1;
  while (unit + 1 < std::size(kNames) && bytes >= factor * 1024) {
    factor *= 1024;
    ++unit;
  }
  if (bytes % factor == 0) return fmt::format("{} {}", bytes / factor, kNames[unit]);
  return fmt::format("{:.2f} {}", static_cast<double>(bytes) / static_cast<double>(factor),
                     kNames[unit]);
}

Result<Duration> ParseDuration(std::string_view text) {
  std::string_view s = Trim(text);
  double number = 0;
  std::string_view suffix;
  if (!SplitNumber(s, &number, &suffix)) {
    return MakeError(Status::InvalidArgument(fmt::format(
        "invalid duration '{}': expected a number with an optional unit, e.g. 300s", text)));
  }
  struct Unit {
    std::string_view name;
    double nanos;
  };
  static constexpr Unit kUnits[] = {{"", 1e9},   {"s", 1e9},  {"ns", 1},    {"us", 1e3},
                                    {"ms", 1e6}, {"m", 60e9}, {"h", 3600e9}};
  for (const Unit& unit : kUnits) {
    if (suffix != unit.name) continue;
    double nanos = number * unit.nanos;
    if (nanos > static_cast<double>(std::numeric_limits<int64_t>::max())) {
      return MakeError(Status::OutOfRange(fmt::format("duration '{}' is too large", text)));
    }
    return Duration(static_cast<int64_t>(std::llround(nanos)));
  }
  return MakeError(Status::InvalidArgument(
      fmt::format("invalid duration unit '{}' in '{}': use ns, us, ms, s, m, h", suffix, text)));
}

std::string FormatDuration(Duration d) {
  int64_t ns = d.count();
  if (ns % 1000000000 == 0) return fmt::format("{}s", ns / 1000000000);
  if (ns % 1000000 == 0) return fmt::format("{}ms", ns / 1000000);
  if (ns % 1000 == 0) return fmt::format("{}us", ns / 1000);
  return fmt::format("{}ns", ns);
}

}  // namespace kvtier
