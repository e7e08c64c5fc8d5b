#include "kvtier/common/units.h"

#include <gtest/gtest.h>

namespace kvtier {
namespace {

TEST(ParseSizeTest, UnitsAndSpacing) {
  EXPECT_EQ(ParseSize("4096").value(), 4096u);
  EXPECT_EQ(ParseSize("20GiB").value(), 20 * kGiB);
  EXPECT_EQ(ParseSize("512MB").value(), 512000000u);
  EXPECT_EQ(ParseSize("512 mib").value(), 512 * kMiB);
  EXPECT_EQ(ParseSize("1.5GiB").value(), 3 * kGiB / 2);
  EXPECT_EQ(ParseSize("64K").value(), 64 * kKiB);
  EXPECT_EQ(ParseSize("2T").value(), 2 * kTiB);
  EXPECT_EQ(ParseSize("  7 B ").value(), 7u);
  EXPECT_EQ(ParseSize("0").value(), 0u);
}

TEST(ParseSizeTest, RejectsGarbageWithClearErrors) {
  for (const char* bad : {"", "GiB", "-1GiB", "1..5G", "12 parsecs", "1e3", "0x10"}) {
    auto r = ParseSize(bad);
    ASSERT_FALSE(r) << bad;
    EXPECT_EQ(r.error().code(), StatusCode::kInvalidArgument) << bad;
    EXPECT_NE(r.error().message().find(bad), std::string::npos) << r.error().ToString();
  }
  EXPECT_EQ(ParseSize("99999999999TiB").error().code(), StatusCode::kOutOfRange);
}

TEST(FormatSizeTest, ReadableForms) {
  EXPECT_EQ(FormatSize(0), "0 B");
  EXPECT_EQ(FormatSize(1023), "1023 B");
  EXPECT_EQ(FormatSize(20 * kGiB), "20 GiB");
  EXPECT_EQ(FormatSize(1536), "1.50 KiB");
  EXPECT_EQ(ParseSize(FormatSize(3 * kMiB)).value(), 3 * kMiB);
}

TEST(ParseDurationTest, UnitsAndDefaultSeconds) {
  using namespace std::chrono_literals;
  EXPECT_EQ(ParseDuration("300").value(), 300s);
  EXPECT_EQ(ParseDuration("300s").value(), 300s);
  EXPECT_EQ(ParseDuration("1.5s").value(), 1500ms);
  EXPECT_EQ(ParseDuration("250ms").value(), 250ms);
  EXPECT_EQ(ParseDuration("10m").value(), 600s);
  EXPECT_EQ(ParseDuration("2h").value(), 7200s);
  EXPECT_EQ(ParseDuration("5us").value(), 5us);
  EXPECT_FALSE(ParseDuration("5 fortnights"));
  EXPECT_FALSE(ParseDuration("abc"));
  EXPECT_EQ(FormatDuration(1500ms), "1500ms");
  EXPECT_EQ(FormatDuration(300s), "300s");
}

}  // namespace
}  // namespace kvtier
