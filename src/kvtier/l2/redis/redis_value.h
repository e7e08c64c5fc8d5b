// The bytes the redis adapter stores under a key: a 24-byte header, then the object.
//
//   offset  size  field
//   0       4     magic "kvtR"
//   4       1     format version (1)
//   5       1     flags: bit 0 = the checksum field holds XXH3-64 of the payload
//   6       2     reserved, zero
//   8       8     payload length, little-endian
//   16      8     XXH3-64 of the payload (seed 0), little-endian; zero without the flag
//   24      n     payload: the object's bytes
//
// A value that does not decode (foreign data under our prefix, truncation, a flipped bit, a
// newer format) is never handed out as an object: loads treat it as a miss.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <span>

#include "kvtier/common/result.h"

namespace kvtier::l2 {

inline constexpr size_t kRedisValueHeaderSize = 24;
using RedisValueHeader = std::array<uint8_t, kRedisValueHeaderSize>;

// The header for `payload`; with `checksum`, hashes the payload (XXH3-64, ~20 GB/s).
RedisValueHeader EncodeRedisValueHeader(std::span<const uint8_t> payload, bool checksum);

struct RedisValueInfo {
  uint64_t payload_size = 0;
  bool has_checksum = false;
  uint64_t checksum = 0;  // XXH3-64 (seed 0) of the payload, when has_checksum
};

// Checks the header of a stored value of `value_size` bytes (header included) without its
// payload: magic, version, flags, and that the length matches. kCorruption otherwise.
Result<RedisValueInfo> ParseRedisValueHeader(std::span<const uint8_t, kRedisValueHeaderSize> header,
                                             uint64_t value_size);

// Checks a whole stored value (header + payload) and returns its payload, a view into `value`.
// kCorruption names what is wrong. Verifies the checksum when the value carries one.
Result<std::span<const uint8_t>> DecodeRedisValue(std::span<const uint8_t> value);

}  // namespace kvtier::l2
