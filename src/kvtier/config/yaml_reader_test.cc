#include "kvtier/config/yaml_reader.h"

#include <fmt/format.h>
#include <gtest/gtest.h>

#include "kvtier/common/units.h"

namespace kvtier::config::internal {
namespace {

using nlohmann::json;
using namespace std::chrono_literals;

Result<json> Convert(const std::string& yaml) {
  YamlSource source("t.yaml");
  return YamlToJson(source, YAML::Load(yaml), "x");
}

TEST(PlainScalarToJsonTest, TypesPlainScalars) {
  EXPECT_EQ(PlainScalarToJson("true"), json(true));
  EXPECT_EQ(PlainScalarToJson("FALSE"), json(false));
  EXPECT_TRUE(PlainScalarToJson("6379").is_number_integer());
  EXPECT_EQ(PlainScalarToJson("-12").get<int64_t>(), -12);
  EXPECT_EQ(PlainScalarToJson("18446744073709551615").get<uint64_t>(), UINT64_MAX);
  EXPECT_TRUE(PlainScalarToJson("0.75").is_number_float());
  EXPECT_DOUBLE_EQ(PlainScalarToJson("1e-3").get<double>(), 1e-3);
  // Everything else stays a string: units, YAML 1.1 booleans, hex, odd signs.
  for (const char* text : {"500GiB", "yes", "on", "0x10", "+-5", "1.2.3", ".inf", "-", "1e"}) {
    EXPECT_EQ(PlainScalarToJson(text), json(text)) << text;
  }
}

TEST(YamlToJsonTest, QuotedScalarsStayStrings) {
  auto j = Convert("{password: \"12345\", port: 6379, flag: 'true', size: 1GiB, none: ~}");
  ASSERT_TRUE(j) << j.error().ToString();
  EXPECT_EQ((*j)["password"], json("12345"));
  EXPECT_EQ((*j)["port"], json(6379));
  EXPECT_EQ((*j)["flag"], json("true"));
  EXPECT_EQ((*j)["size"], json("1GiB"));
  EXPECT_TRUE((*j)["none"].is_null());
}

TEST(YamlToJsonTest, RejectsDuplicateAndNonScalarKeys) {
  auto dup = Convert("a: 1\nb: 2\na: 3\n");
  ASSERT_FALSE(dup);
  EXPECT_EQ(dup.error().message(), "t.yaml:3:1: duplicate key 'x.a'");
  auto complex_key = Convert("? [a, b]\n: 1\n");
  ASSERT_FALSE(complex_key);
  EXPECT_NE(complex_key.error().message().find("keys must be strings"), std::string::npos);
}

TEST(YamlToJsonTest, BoundsAliasExpansionAndDepth) {
  // Ten levels of ten aliases each: 10^10 nodes if expanded.
  std::string bomb = "a0: &a0 [x, x, x, x, x, x, x, x, x, x]\n";
  for (int i = 1; i <= 10; ++i) {
    bomb += fmt::format("a{}: &a{} [", i, i);
    for (int k = 0; k < 10; ++k) bomb += fmt::format("{}*a{}", k ? ", " : "", i - 1);
    bomb += "]\n";
  }
  auto j = Convert(bomb);
  ASSERT_FALSE(j);
  EXPECT_NE(j.error().message().find("too many aliases"), std::string::npos)
      << j.error().ToString();

  std::string deep(kMaxJsonDepth + 5, '[');
  deep += std::string(kMaxJsonDepth + 5, ']');
  auto d = Convert(deep);
  ASSERT_FALSE(d);
  EXPECT_NE(d.error().message().find("nested more than"), std::string::npos);
}

TEST(EmitJsonTest, RoundTripsThroughTheReader) {
  const json value = {
      {"strings",
       {"12345", "true", "null", "~", "", " padded ", "a: b", "- x", "#hash",
        "x:", "tcp://127.0.0.1:5555", "500GiB", "caf\xc3\xa9", "tab\there", "line\nbreak"}},
      {"numbers", {0, -7, UINT64_MAX, 5.0, 0.1, 1e-5, -2.5e300}},
      {"bools", {true, false}},
      {"null", nullptr},
      {"nested", {{"eviction", {{"policy", "lru"}}}, {"empty", json::object()}}},
      {"needs quotes: key", 1},
  };
  YAML::Emitter out;
  EmitJson(out, value);
  ASSERT_TRUE(out.good()) << out.GetLastError();
  auto back = Convert(out.c_str());
  ASSERT_TRUE(back) << back.error().ToString() << "\n" << out.c_str();
  EXPECT_EQ(*back, value) << out.c_str();
  // 5.0 stays a float (the dump writes "5.0").
  EXPECT_TRUE((*back)["numbers"][3].is_number_float());
}

TEST(ClosestMatchTest, TyposTranspositionsAndPrefixes) {
  const std::vector<std::string> keys = {"capacity", "alignment", "read_ttl", "write_ttl", "port"};
  EXPECT_EQ(ClosestMatch("capacty", keys), "capacity");
  EXPECT_EQ(ClosestMatch("capcaity", keys), "capacity");
  EXPECT_EQ(ClosestMatch("Capacity", keys), "capacity");
  EXPECT_EQ(ClosestMatch("capacity_bytes", keys), "capacity");
  EXPECT_EQ(ClosestMatch("prot", keys), "port");
  EXPECT_EQ(ClosestMatch("endpoints", keys), "");
  EXPECT_EQ(DidYouMean("read_tl", keys, "l1"), "; did you mean 'l1.read_ttl'?");
  EXPECT_EQ(DidYouMean("zzz", keys), "");
}

TEST(FormatForYamlTest, ExactAndReadBack) {
  EXPECT_EQ(FormatSizeForYaml(20 * kGiB), "20GiB");
  EXPECT_EQ(FormatSizeForYaml(4096), "4KiB");
  EXPECT_EQ(FormatSizeForYaml(1536 * kMiB), "1536MiB");
  EXPECT_EQ(FormatSizeForYaml(1537), "1537");
  EXPECT_EQ(FormatSizeForYaml(0), "0");
  for (uint64_t v : {uint64_t{0}, uint64_t{1537}, 3 * kTiB, kGiB + 1, UINT64_MAX}) {
    EXPECT_EQ(ParseSizeValue(FormatSizeForYaml(v)).value(), v) << v;
  }
  EXPECT_EQ(FormatDoubleForYaml(0.8), "0.8");
  EXPECT_EQ(FormatDoubleForYaml(1.0), "1.0");
  for (double v : {0.0, 0.7, 1.0 / 3, 1e-9, 123456789.0}) {
    EXPECT_EQ(ParseDoubleValue(FormatDoubleForYaml(v)).value(), v) << v;
  }
}

TEST(ScalarParsersTest, ClearErrors) {
  EXPECT_EQ(ParseUnsigned("42", 100).value(), 42u);
  EXPECT_EQ(ParseUnsigned("-1", 100).error().message(), "must not be negative, got '-1'");
  EXPECT_EQ(ParseUnsigned("1.5", 100).error().message(),
            "expected a non-negative integer, got '1.5'");
  EXPECT_EQ(ParseUnsigned("101", 100).error().message(), "must be at most 100, got '101'");
  EXPECT_EQ(ParseUnsigned("99999999999999999999999", 100).error().message(),
            "must be at most 100, got '99999999999999999999999'");
  EXPECT_EQ(ParseSizeValue("2GiB").value(), 2 * kGiB);
  EXPECT_NE(ParseSizeValue("-1GiB").error().message().find("must not be negative"),
            std::string::npos);
  EXPECT_NE(ParseSizeValue("12 parsecs").error().message().find("invalid size unit"),
            std::string::npos);
  EXPECT_EQ(ParseDurationValue("500ms").value(), 500ms);
  EXPECT_EQ(ParseDurationValue("10m").value(), 10min);
  EXPECT_NE(ParseDurationValue("-5s").error().message().find("must not be negative"),
            std::string::npos);
  EXPECT_NE(ParseDurationValue("3 fortnights").error().message().find("invalid duration unit"),
            std::string::npos);
  EXPECT_FALSE(ParseDoubleValue("nan"));
  EXPECT_FALSE(ParseDoubleValue("1e999"));
  EXPECT_FALSE(ParseBoolValue("yes"));
  EXPECT_TRUE(ParseBoolValue("True").value());
}

TEST(MapReaderTest, DefaultsStayForAbsentAndNullKeys) {
  YamlSource source("t.yaml");
  YAML::Node node = YAML::Load("a: 5\nb:\nc: ~\n");
  auto reader = MapReader::Open(&source, node, "sec");
  ASSERT_TRUE(reader);
  uint64_t a = 1, b = 2, c = 3, d = 4;
  ASSERT_TRUE(reader->Unsigned("a", 10, &a).ok());
  ASSERT_TRUE(reader->Unsigned("b", 10, &b).ok());
  ASSERT_TRUE(reader->Unsigned("c", 10, &c).ok());
  ASSERT_TRUE(reader->Unsigned("d", 10, &d).ok());
  EXPECT_EQ(a, 5u);
  EXPECT_EQ(b, 2u);
  EXPECT_EQ(c, 3u);
  EXPECT_EQ(d, 4u);
  EXPECT_TRUE(reader->Finish().ok());
}

TEST(MapReaderTest, UnknownKeyNamesPathPositionAndSuggestion) {
  YamlSource source("t.yaml");
  YAML::Node node = YAML::Load("alpha: 1\n  \nbeta_: 2\n");
  auto reader = MapReader::Open(&source, node, "sec");
  ASSERT_TRUE(reader);
  uint64_t v = 0;
  ASSERT_TRUE(reader->Unsigned("alpha", 10, &v).ok());
  ASSERT_TRUE(reader->Unsigned("beta", 10, &v).ok());
  Status s = reader->Finish();
  EXPECT_EQ(s.message(),
            "t.yaml:3:1: unknown key 'sec.beta_'; did you mean 'sec.beta'? (valid keys in 'sec': "
            "alpha, beta)");
}

}  // namespace
}  // namespace kvtier::config::internal
