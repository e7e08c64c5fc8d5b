#include "kvtier/common/msgpack_map.h"

#include <array>
#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <vector>

#include <gtest/gtest.h>

namespace kvtier::msgpack_map {
namespace {

constexpr Dialect kTestDialect{.document = "doc",
                               .error_code = StatusCode::kProtocolError,
                               .max_depth = 3,
                               .max_elements = 16,
                               .max_bytes = 256,
                               .max_string_bytes = 8};
const Where kWhere{&kTestDialect, "TEST", "request"};

std::vector<uint8_t> Doc(const std::function<void(Writer&)>& fill) {
  std::vector<uint8_t> out;
  Writer w(&out);
  fill(w);
  return out;
}

// The error of parsing `bytes` and reading it with `read`, or "" on success.
std::string ErrorOf(const std::vector<uint8_t>& bytes,
                    const std::function<Status(const MapReader&)>& read = nullptr) {
  Result<msgpack::object_handle> handle = Parse(kWhere, bytes);
  if (!handle) return std::string(handle.error().message());
  Result<MapReader> m = MapReader::Of(handle->get(), kWhere, "");
  if (!m) return std::string(m.error().message());
  if (read == nullptr) return "";
  const Status status = read(*m);
  if (!status.ok()) {
    EXPECT_EQ(status.code(), StatusCode::kProtocolError);
    return std::string(status.message());
  }
  return "";
}

TEST(MsgpackMapTest, ReadsWhatTheWriterWrote) {
  const std::array<uint8_t, 4> bin{1, 2, 3, 4};
  const auto bytes = Doc([&](Writer& w) {
    w.Map(6);
    w.Field("n", uint32_t{7});
    w.Field("s", "abc");
    w.Field("b", true);
    w.Field("bin", bin);
    w.Str("ids");
    w.UintArray(std::vector<uint16_t>{1, 2, 3});
    w.Str("nil");
    w.Nil();
  });
  uint32_t n = 0;
  std::string s;
  bool b = false;
  std::array<uint8_t, 4> got{};
  std::vector<uint16_t> ids;
  std::optional<uint64_t> nil = 5;
  EXPECT_EQ(ErrorOf(bytes,
                    [&](const MapReader& m) -> Status {
                      KVT_RETURN_IF_ERROR(m.Uint("n", Need::kRequired, &n));
                      KVT_RETURN_IF_ERROR(m.Text("s", Need::kRequired, &s, 1, 8));
                      KVT_RETURN_IF_ERROR(m.Bool("b", Need::kRequired, &b));
                      KVT_RETURN_IF_ERROR(m.FixedBin("bin", Need::kRequired, &got));
                      KVT_RETURN_IF_ERROR(m.UintArray("ids", 3, &ids));
                      KVT_RETURN_IF_ERROR(m.OptionalUint("nil", &nil));
                      return m.Uint("absent", Need::kOptional, &n);
                    }),
            "");
  EXPECT_EQ(n, 7u);
  EXPECT_EQ(s, "abc");
  EXPECT_TRUE(b);
  EXPECT_EQ(got, bin);
  EXPECT_EQ(ids, (std::vector<uint16_t>{1, 2, 3}));
  EXPECT_FALSE(nil.has_value());
}

TEST(MsgpackMapTest, ErrorsNameTheField) {
  const auto bytes = Doc([](Writer& w) {
    w.Map(5);
    w.Field("n", uint32_t{300});
    w.Field("s", "a long string");
    w.Field("t", "\xff");
    w.Str("inner");
    w.Map(1);
    w.Field("x", "str");
    w.Str("list");
    w.Array(2);
    w.Uint(1);
    w.Str("two");
  });
  uint8_t u8 = 0;
  std::string s;
  std::vector<uint32_t> list;
  EXPECT_EQ(ErrorOf(bytes, [&](const MapReader& m) { return m.Uint("n", Need::kRequired, &u8); }),
            "TEST request: field 'n' must be in [0, 255], got 300");
  EXPECT_EQ(ErrorOf(bytes, [&](const MapReader& m) { return m.String("s", Need::kRequired, &s); }),
            "TEST request: field 's' is 13 bytes, the limit is 8");
  EXPECT_EQ(
      ErrorOf(bytes, [&](const MapReader& m) { return m.Text("t", Need::kRequired, &s, 0, 8); }),
      "TEST request: field 't' is not valid UTF-8");
  EXPECT_EQ(
      ErrorOf(bytes, [&](const MapReader& m) { return m.Bool("s", Need::kRequired, nullptr); }),
      "TEST request: field 's' must be a bool, got str");
  EXPECT_EQ(
      ErrorOf(bytes, [&](const MapReader& m) { return m.String("gone", Need::kRequired, &s); }),
      "TEST request: missing required field 'gone'");
  EXPECT_EQ(ErrorOf(bytes,
                    [&](const MapReader& m) -> Status {
                      KVT_ASSIGN_OR_RETURN(MapReader inner, m.Nested("inner"));
                      return inner.Uint("x", Need::kRequired, &u8);
                    }),
            "TEST request: field 'inner.x' must be an unsigned integer, got str");
  EXPECT_EQ(ErrorOf(bytes, [&](const MapReader& m) { return m.UintArray("list", 8, &list); }),
            "TEST request: field 'list[1]' must be an unsigned integer, got str");
  EXPECT_EQ(ErrorOf(bytes, [&](const MapReader& m) { return m.UintArray("list", 1, &list); }),
            "TEST request: field 'list' has 2 elements, the limit is 1");
  std::array<uint8_t, 3> bin{};
  EXPECT_EQ(
      ErrorOf(bytes, [&](const MapReader& m) { return m.FixedBin("s", Need::kRequired, &bin); }),
      "TEST request: field 's' must be bin (3 bytes), got str");

  const auto twice = Doc([](Writer& w) {
    w.Map(2);
    w.Field("a", uint32_t{1});
    w.Field("a", uint32_t{2});
  });
  EXPECT_EQ(ErrorOf(twice, [&](const MapReader& m) { return m.Uint("a", Need::kRequired, &u8); }),
            "TEST request: field 'a' appears more than once");
}

TEST(MsgpackMapTest, LimitsHoldBeforeAllocation) {
  EXPECT_EQ(ErrorOf({}), "TEST request: empty doc (expected a msgpack map)");
  EXPECT_EQ(ErrorOf(std::vector<uint8_t>(257, 0x80)),
            "TEST request: doc is 257 bytes, the limit is 256");
  EXPECT_EQ(ErrorOf({0x80, 0x80}), "TEST request: 1 trailing bytes after the doc map");
  EXPECT_EQ(ErrorOf({0x91, 0x01}), "TEST request: the doc must be a msgpack map, got an array");
  EXPECT_EQ(ErrorOf({0x81, 0x01, 0x02}),
            "TEST request: map keys must be str, got a non-negative integer");
  // A map declaring 2^32-1 entries in 5 bytes.
  EXPECT_EQ(ErrorOf({0xdf, 0xff, 0xff, 0xff, 0xff})
                .find("TEST request: truncated msgpack: containers declare"),
            0u);
  // Nested 4 deep, the limit is 3.
  EXPECT_EQ(ErrorOf({0x81, 0xa1, 'a', 0x81, 0xa1, 'b', 0x81, 0xa1, 'c', 0x80}),
            "TEST request: msgpack nested deeper than 3 levels");
  // 17 elements, the limit is 16.
  std::vector<uint8_t> many{0x81, 0xa1, 'a', 0xdc, 0x00, 15};
  many.resize(many.size() + 15, 0x00);
  EXPECT_EQ(ErrorOf(many), "TEST request: msgpack containers hold more than 16 elements");
  // And the caller may lower the element limit.
  const auto small = Doc([](Writer& w) {
    w.Map(2);
    w.Field("a", uint32_t{1});
    w.Field("b", uint32_t{2});
  });
  EXPECT_TRUE(Parse(kWhere, small, 4).has_value());
  ASSERT_FALSE(Parse(kWhere, small, 3).has_value());
  EXPECT_EQ(Parse(kWhere, small, 3).error().message(),
            "TEST request: msgpack containers hold more than 3 elements");
}

TEST(MsgpackMapTest, SanitizeTextKeepsValidUtf8) {
  EXPECT_TRUE(IsValidUtf8("h\xc3\xa9llo"));
  EXPECT_FALSE(IsValidUtf8("\xc0\x80"));  // overlong
  EXPECT_EQ(SanitizeText("a\xff"
                         "b",
                         16),
            "a?b");
  EXPECT_EQ(SanitizeText("\xc3\xa9\xc3\xa9", 3), "\xc3\xa9");
}

}  // namespace
}  // namespace kvtier::msgpack_map
