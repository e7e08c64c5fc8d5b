#include "kvtier/keys/bitmap.h"

#include <random>
#include <vector>

#include <gtest/gtest.h>

namespace kvtier::keys {
namespace {

// Sizes around the 64-bit word boundaries, where tail handling matters.
class BitmapSizeTest : public ::testing::TestWithParam<size_t> {};

INSTANTIATE_TEST_SUITE_P(Sizes, BitmapSizeTest, ::testing::Values(0, 1, 63, 64, 65, 130));

// A plain vector<bool> model of the expected contents.
std::vector<bool> RandomBits(size_t n, uint32_t seed) {
  std::mt19937 rng(seed);
  std::vector<bool> bits(n);
  for (size_t i = 0; i < n; ++i) bits[i] = (rng() & 1) != 0;
  return bits;
}

Bitmap FromBits(const std::vector<bool>& bits) {
  Bitmap b(bits.size());
  for (size_t i = 0; i < bits.size(); ++i) b.Set(i, bits[i]);
  return b;
}

void ExpectMatches(const Bitmap& b, const std::vector<bool>& bits) {
  ASSERT_EQ(b.size(), bits.size());
  size_t pop = 0;
  std::string str;
  std::vector<size_t> indices;
  for (size_t i = 0; i < bits.size(); ++i) {
    EXPECT_EQ(b.Test(i), bits[i]) << "bit " << i;
    if (bits[i]) {
      ++pop;
      indices.push_back(i);
    }
    str.push_back(bits[i] ? '1' : '0');
  }
  size_t leading = 0;
  while (leading < bits.size() && bits[leading]) ++leading;
  EXPECT_EQ(b.PopCount(), pop);
  EXPECT_EQ(b.CountLeadingOnes(), leading);
  EXPECT_EQ(b.SetIndices(), indices);
  EXPECT_EQ(b.ToString(), str);
  EXPECT_EQ(b.All(), pop == bits.size());
  EXPECT_EQ(b.Any(), pop != 0);
  EXPECT_EQ(b.None(), pop == 0);
  EXPECT_EQ(b.empty(), bits.empty());
}

TEST_P(BitmapSizeTest, ConstructsAllClearOrAllSet) {
  size_t n = GetParam();
  ExpectMatches(Bitmap(n), std::vector<bool>(n, false));
  ExpectMatches(Bitmap(n, true), std::vector<bool>(n, true));
}

TEST_P(BitmapSizeTest, SetResetAndTest) {
  size_t n = GetParam();
  std::vector<bool> bits = RandomBits(n, 1234);
  Bitmap b = FromBits(bits);
  ExpectMatches(b, bits);
  for (size_t i = 0; i < n; i += 3) {
    b.Reset(i);
    bits[i] = false;
  }
  ExpectMatches(b, bits);
  for (size_t i = 0; i < n; i += 5) {
    b.Set(i);
    bits[i] = true;
  }
  ExpectMatches(b, bits);
}

TEST_P(BitmapSizeTest, SetAllKeepsTailClear) {
  size_t n = GetParam();
  Bitmap b(n);
  b.SetAll();
  ExpectMatches(b, std::vector<bool>(n, true));
  // A tail bit left set would make this unequal to a bitmap built bit by bit.
  EXPECT_EQ(b, FromBits(std::vector<bool>(n, true)));
  b.ResetAll();
  ExpectMatches(b, std::vector<bool>(n, false));
  EXPECT_EQ(b, Bitmap(n));
}

TEST_P(BitmapSizeTest, ComplementIsWithinSize) {
  size_t n = GetParam();
  std::vector<bool> bits = RandomBits(n, 99);
  std::vector<bool> flipped(n);
  for (size_t i = 0; i < n; ++i) flipped[i] = !bits[i];
  Bitmap b = FromBits(bits);
  ExpectMatches(~b, flipped);
  EXPECT_EQ(~~b, b);
  ExpectMatches(~Bitmap(n), std::vector<bool>(n, true));
  EXPECT_EQ((~Bitmap(n)).PopCount(), n);
}

TEST_P(BitmapSizeTest, AndOr) {
  size_t n = GetParam();
  std::vector<bool> x = RandomBits(n, 7);
  std::vector<bool> y = RandomBits(n, 8);
  std::vector<bool> x_and_y(n), x_or_y(n);
  for (size_t i = 0; i < n; ++i) {
    x_and_y[i] = x[i] && y[i];
    x_or_y[i] = x[i] || y[i];
  }
  ExpectMatches(FromBits(x) & FromBits(y), x_and_y);
  ExpectMatches(FromBits(x) | FromBits(y), x_or_y);
  Bitmap b = FromBits(x);
  b &= FromBits(y);
  ExpectMatches(b, x_and_y);
  b = FromBits(x);
  b |= FromBits(y);
  ExpectMatches(b, x_or_y);
}

TEST_P(BitmapSizeTest, CountLeadingOnesStopsAtFirstZero) {
  size_t n = GetParam();
  for (size_t zero_at = 0; zero_at < n; ++zero_at) {
    Bitmap b(n, true);
    b.Reset(zero_at);
    ASSERT_EQ(b.CountLeadingOnes(), zero_at);
  }
  EXPECT_EQ(Bitmap(n, true).CountLeadingOnes(), n);
}

TEST_P(BitmapSizeTest, ResizeGrowKeepsBitsAndFillsNew) {
  size_t n = GetParam();
  std::vector<bool> bits = RandomBits(n, 5);
  for (bool value : {false, true}) {
    for (size_t grown : {n, n + 1, n + 63, n + 64, n + 100}) {
      Bitmap b = FromBits(bits);
      b.Resize(grown, value);
      std::vector<bool> expected = bits;
      expected.resize(grown, value);
      ExpectMatches(b, expected);
      EXPECT_EQ(b, FromBits(expected));
    }
  }
}

TEST_P(BitmapSizeTest, ResizeShrinkDropsBitsAndRegrowsClear) {
  size_t n = GetParam();
  Bitmap b(n, true);
  size_t half = n / 2;
  b.Resize(half);
  ExpectMatches(b, std::vector<bool>(half, true));
  // Bits dropped by the shrink must not reappear.
  b.Resize(n);
  std::vector<bool> expected(n, false);
  for (size_t i = 0; i < half; ++i) expected[i] = true;
  ExpectMatches(b, expected);
}

TEST(BitmapTest, EqualityComparesSizeAndBits) {
  EXPECT_EQ(Bitmap(), Bitmap(0, true));
  EXPECT_NE(Bitmap(3), Bitmap(4));
  Bitmap a(70), b(70);
  EXPECT_EQ(a, b);
  b.Set(69);
  EXPECT_NE(a, b);
  a.Set(69);
  EXPECT_EQ(a, b);
}

TEST(BitmapTest, ToStringPutsBitZeroFirst) {
  Bitmap b(5);
  b.Set(0);
  b.Set(1);
  b.Set(3);
  EXPECT_EQ(b.ToString(), "11010");
  EXPECT_EQ(b.CountLeadingOnes(), 2u);
  EXPECT_EQ(b.SetIndices(), (std::vector<size_t>{0, 1, 3}));
}

TEST(BitmapDeathTest, SizeMismatchAborts) {
  Bitmap a(3), b(4);
  EXPECT_DEATH(a &= b, "size mismatch");
  EXPECT_DEATH(a |= b, "size mismatch");
}

}  // namespace
}  // namespace kvtier::keys
