// Fuzzes the parsers of bytes a Redis server hands back: DecodeRedisValue (a value must decode
// or fail cleanly, and one that decodes must re-encode to the same bytes) and
// ParseRespBulkHeader (the start of a GET reply).
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <string>
#include <string_view>

#include "kvtier/l2/redis/redis_connection.h"
#include "kvtier/l2/redis/redis_value.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  std::string_view text(reinterpret_cast<const char*>(data), size);
  kvtier::l2::RespBulkHeader head = kvtier::l2::ParseRespBulkHeader(text);
  if (head.kind == kvtier::l2::RespBulkHeader::Kind::kBulk) {
    // The header is exactly "$<length>\r\n" in canonical decimal (leading zeros allowed).
    if (head.header_size > size || text.substr(head.header_size - 2, 2) != "\r\n") std::abort();
    std::string digits(text.substr(1, head.header_size - 3));
    if (std::stoull(digits) != head.length) std::abort();
  }

  std::span<const uint8_t> value(data, size);
  auto payload = kvtier::l2::DecodeRedisValue(value);
  if (!payload) return 0;
  if (payload->size() + kvtier::l2::kRedisValueHeaderSize != size) std::abort();
  bool checksum = (data[5] & 1) != 0;
  kvtier::l2::RedisValueHeader h = kvtier::l2::EncodeRedisValueHeader(*payload, checksum);
  if (std::memcmp(h.data(), data, h.size()) != 0) std::abort();
  return 0;
}
