// Byte sizes and durations written by people: "20GiB", "512MB", "4096", "1.5 GiB", "300s".
//
// Sizes: B; KB MB GB TB (powers of 1000); KiB MiB GiB TiB and the bare K M G T (powers of 1024).
// Case-insensitive suffixes, optional space, fractional values allowed when the result is a
// whole number of bytes after rounding down. Durations: ns us ms s m h, a bare number is seconds.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>

#include "kvtier/common/clock.h"
#include "kvtier/common/result.h"

namespace kvtier {

inline constexpr uint64_t kKiB = 1ULL << 10;
inline constexpr uint64_t kMiB = 1ULL << 20;
inline constexpr uint64_t kGiB = 1ULL << 30;
inline constexpr uint64_t kTiB = 1ULL << 40;

Result<uint64_t> ParseSize(std::string_view text);
// 1536 -> "1.50 KiB"; exact multiples print without decimals ("20 GiB").
std::string FormatSize(uint64_t bytes);

Result<Duration> ParseDuration(std::string_view text);
std::string FormatDuration(Duration d);

}  // namespace kvtier
