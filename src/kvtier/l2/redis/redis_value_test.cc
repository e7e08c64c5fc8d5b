#include "kvtier/l2/redis/redis_value.h"

#include <algorithm>
#include <vector>

#include <gtest/gtest.h>

namespace kvtier::l2 {
namespace {

std::vector<uint8_t> Encode(const std::vector<uint8_t>& payload, bool checksum) {
  RedisValueHeader h = EncodeRedisValueHeader(payload, checksum);
  std::vector<uint8_t> value(h.size() + payload.size());
  std::copy(h.begin(), h.end(), value.begin());
  std::copy(payload.begin(), payload.end(), value.begin() + h.size());
  return value;
}

std::vector<uint8_t> Payload(size_t n) {
  std::vector<uint8_t> p(n);
  for (size_t i = 0; i < n; ++i) p[i] = static_cast<uint8_t>(i * 131 + 7);
  return p;
}

TEST(RedisValueTest, RoundTripsWithAndWithoutChecksum) {
  for (bool checksum : {true, false}) {
    for (size_t n : {0, 1, 4096, 100'003}) {
      std::vector<uint8_t> payload = Payload(n);
      std::vector<uint8_t> value = Encode(payload, checksum);
      ASSERT_EQ(value.size(), kRedisValueHeaderSize + n);
      auto decoded = DecodeRedisValue(value);
      ASSERT_TRUE(decoded) << decoded.error().ToString();
      EXPECT_EQ(std::vector<uint8_t>(decoded->begin(), decoded->end()), payload);
      EXPECT_EQ(decoded->data(), value.data() + kRedisValueHeaderSize);  // a view, no copy
    }
  }
}

TEST(RedisValueTest, HeaderLayoutIsStable) {
  std::vector<uint8_t> value = Encode({1, 2, 3}, /*checksum=*/false);
  EXPECT_EQ(std::string(value.begin(), value.begin() + 4), "kvtR");
  EXPECT_EQ(value[4], 1);  // version
  EXPECT_EQ(value[5], 0);  // no checksum flag
  EXPECT_EQ(value[8], 3);  // little-endian length
  for (int i = 9; i < 24; ++i) EXPECT_EQ(value[i], 0) << i;
  EXPECT_EQ(Encode({1, 2, 3}, true)[5], 1);
}

TEST(RedisValueTest, ShortValueIsCorrupt) {
  std::vector<uint8_t> value = Encode(Payload(10), true);
  value.resize(kRedisValueHeaderSize - 1);
  auto decoded = DecodeRedisValue(value);
  ASSERT_FALSE(decoded);
  EXPECT_EQ(decoded.error().code(), StatusCode::kCorruption);
}

TEST(RedisValueTest, TruncatedOrExtendedPayloadIsCorrupt) {
  for (bool checksum : {true, false}) {
    std::vector<uint8_t> value = Encode(Payload(100), checksum);
    std::vector<uint8_t> truncated(value.begin(), value.end() - 1);
    EXPECT_FALSE(DecodeRedisValue(truncated));
    std::vector<uint8_t> extended = value;
    extended.push_back(0);
    EXPECT_FALSE(DecodeRedisValue(extended));
  }
}

TEST(RedisValueTest, FlippedPayloadBitIsCaughtByTheChecksum) {
  std::vector<uint8_t> value = Encode(Payload(1000), true);
  value[kRedisValueHeaderSize + 500] ^= 0x10;
  auto decoded = DecodeRedisValue(value);
  ASSERT_FALSE(decoded);
  EXPECT_EQ(decoded.error().code(), StatusCode::kCorruption);
  EXPECT_NE(decoded.error().message().find("checksum"), std::string_view::npos);
}

TEST(RedisValueTest, ForeignBytesAreCorrupt) {
  std::string text = "this value was written by somebody else, not kvtier";
  std::vector<uint8_t> value(text.begin(), text.end());
  EXPECT_FALSE(DecodeRedisValue(value));
}

TEST(RedisValueTest, UnknownVersionOrFlagsAreCorrupt) {
  std::vector<uint8_t> value = Encode(Payload(8), true);
  std::vector<uint8_t> v2 = value;
  v2[4] = 2;
  EXPECT_FALSE(DecodeRedisValue(v2));
  std::vector<uint8_t> flags = value;
  flags[5] |= 0x80;
  EXPECT_FALSE(DecodeRedisValue(flags));
  std::vector<uint8_t> reserved = value;
  reserved[7] = 1;
  EXPECT_FALSE(DecodeRedisValue(reserved));
  std::vector<uint8_t> stray_sum = Encode(Payload(8), false);
  stray_sum[20] = 1;
  EXPECT_FALSE(DecodeRedisValue(stray_sum));
}

}  // namespace
}  // namespace kvtier::l2
