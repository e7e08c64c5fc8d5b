#include "kvtier/l2/redis/redis_value.h"

#include <bit>
#include <cstring>

#include <fmt/format.h>
#include <xxhash.h>

namespace kvtier::l2 {
namespace {

constexpr uint8_t kMagic[4] = {'k', 'v', 't', 'R'};
constexpr uint8_t kVersion = 1;
constexpr uint8_t kFlagChecksum = 1;

void PutLe64(uint8_t* out, uint64_t v) {
  if constexpr (std::endian::native == std::endian::big) v = __builtin_bswap64(v);
  std::memcpy(out, &v, sizeof(v));
}

uint64_t GetLe64(const uint8_t* in) {
  uint64_t v;
  std::memcpy(&v, in, sizeof(v));
  if constexpr (std::endian::native == std::endian::big) v = __builtin_bswap64(v);
  return v;
}

}  // namespace

RedisValueHeader EncodeRedisValueHeader(std::span<const uint8_t> payload, bool checksum) {
  RedisValueHeader h{};
  std::memcpy(h.data(), kMagic, sizeof(kMagic));
  h[4] = kVersion;
  h[5] = checksum ? kFlagChecksum : 0;
  PutLe64(h.data() + 8, payload.size());
  PutLe64(h.data() + 16, checksum ? XXH3_64bits(payload.data(), payload.size()) : 0);
  return h;
}

Result<RedisValueInfo> ParseRedisValueHeader(std::span<const uint8_t, kRedisValueHeaderSize> header,
                                             uint64_t value_size) {
  const uint8_t* h = header.data();
  if (std::memcmp(h, kMagic, sizeof(kMagic)) != 0) {
    return MakeError(Status::Corruption("value does not start with the kvtier magic"));
  }
  if (h[4] != kVersion) {
    return MakeError(Status::Corruption(fmt::format("unsupported value format version {}", h[4])));
  }
  if ((h[5] & ~kFlagChecksum) != 0 || h[6] != 0 || h[7] != 0) {
    return MakeError(Status::Corruption("value header has unknown flags"));
  }
  RedisValueInfo info;
  info.payload_size = GetLe64(h + 8);
  info.has_checksum = (h[5] & kFlagChecksum) != 0;
  info.checksum = GetLe64(h + 16);
  if (info.payload_size != value_size - kRedisValueHeaderSize) {
    return MakeError(
        Status::Corruption(fmt::format("value header says {} payload bytes, {} are stored",
                                       info.payload_size, value_size - kRedisValueHeaderSize)));
  }
  if (!info.has_checksum && info.checksum != 0) {
    return MakeError(Status::Corruption("value without checksum has a non-zero checksum field"));
  }
  return info;
}

Result<std::span<const uint8_t>> DecodeRedisValue(std::span<const uint8_t> value) {
  if (value.size() < kRedisValueHeaderSize) {
    return MakeError(
        Status::Corruption(fmt::format("value of {} bytes is shorter than the {}-byte header",
                                       value.size(), kRedisValueHeaderSize)));
  }
  KVT_ASSIGN_OR_RETURN(RedisValueInfo info,
                       ParseRedisValueHeader(value.first<kRedisValueHeaderSize>(), value.size()));
  std::span<const uint8_t> payload = value.subspan(kRedisValueHeaderSize);
  if (info.has_checksum) {
    uint64_t sum = XXH3_64bits(payload.data(), payload.size());
    if (sum != info.checksum) {
      return MakeError(Status::Corruption(fmt::format(
          "payload checksum mismatch (stored {:016x}, computed {:016x})", info.checksum, sum)));
    }
  }
  return payload;
}

}  // namespace kvtier::l2
