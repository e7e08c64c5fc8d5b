#include "kvtier/l2/fs/fs_format.h"

#include <random>
#include <string>
#include <vector>

#include <gtest/gtest.h>

#include "kvtier/l2/fs/fs_test_util.h"

namespace kvtier::l2 {
namespace {

using fs_testing::MakeKey;
using fs_testing::MakePayload;

TEST(FsEscapeTest, RoundTripsEveryByte) {
  std::string all;
  for (int c = 0; c < 256; ++c) all.push_back(static_cast<char>(c));
  std::string escaped = FsEscape(all);
  for (char c : escaped) {
    EXPECT_TRUE(std::isalnum(static_cast<unsigned char>(c)) || c == '-' || c == '_' || c == '.' ||
                c == '@' || c == '%')
        << "unsafe byte " << static_cast<int>(c) << " in a file name";
  }
  auto back = FsUnescape(escaped);
  ASSERT_TRUE(back.has_value()) << back.error().ToString();
  EXPECT_EQ(*back, all);
  EXPECT_EQ(FsEscape("a/b c%"), "a%2Fb%20c%25");
}

TEST(FsEscapeTest, RejectsNonCanonicalSpellings) {
  EXPECT_FALSE(FsUnescape("a%2fb").has_value());  // lowercase hex
  EXPECT_FALSE(FsUnescape("%41").has_value());    // an escaped safe byte ('A')
  EXPECT_FALSE(FsUnescape("abc%2").has_value());  // truncated
  EXPECT_FALSE(FsUnescape("abc%").has_value());
  EXPECT_FALSE(FsUnescape("a/b").has_value());  // an unescaped unsafe byte
  EXPECT_FALSE(FsUnescape("a b").has_value());
  EXPECT_TRUE(FsUnescape("a%2Fb").has_value());
}

TEST(FsFileNameTest, RoundTripsModelsSaltsRanksAndGroups) {
  const std::vector<std::string> models = {"m", "meta-llama/Llama-3.1-8B", "org/sub/model v2",
                                           "weird%name+plus~tilde", "caf\xc3\xa9/\xe6\xa8\xa1"};
  const std::vector<std::string> salts = {"", "tenant-a", "s+l=t!", "x y"};
  const std::vector<keys::KvRank> ranks = {{1, 0}, {2, 1}, {8, 7}, {65535, 65534}};
  const std::vector<uint32_t> groups = {0, 1, 4294967295u};
  uint64_t i = 0;
  for (const auto& model : models) {
    for (const auto& salt : salts) {
      for (auto rank : ranks) {
        for (uint32_t group : groups) {
          ObjectKey key = MakeKey(++i, model, salt, rank, group);
          std::string name = FsRecordFileName(key);
          ASSERT_LE(name.size(), 255u);
          EXPECT_EQ(name.find('/'), std::string::npos) << name;
          auto back = ParseFsRecordFileName(name);
          ASSERT_TRUE(back.has_value()) << name << ": " << back.error().ToString();
          EXPECT_EQ(*back, key) << name;
          EXPECT_EQ(FsFanoutDir(key).size(), 2u);
          EXPECT_TRUE(IsFsFanoutDir(FsFanoutDir(key)));
          EXPECT_EQ(FsRecordPath(key), FsFanoutDir(key) + "/" + name);
        }
      }
    }
  }
}

TEST(FsFileNameTest, FanOutIsTheFirstHashByte) {
  ObjectKey key = MakeKey(7);
  EXPECT_EQ(FsFanoutDir(key), key.chunk_hash().ToHex().substr(0, 2));
  EXPECT_TRUE(IsFsFanoutDir("00"));
  EXPECT_TRUE(IsFsFanoutDir("ff"));
  EXPECT_FALSE(IsFsFanoutDir("FF"));
  EXPECT_FALSE(IsFsFanoutDir("tmp"));
  EXPECT_FALSE(IsFsFanoutDir("0"));
}

TEST(FsFileNameTest, LongKeysUseHashedNames) {
  std::string model(256, 'm');
  model[10] = '/';
  ObjectKey key = MakeKey(1, model, std::string(128, '!'));
  std::string name = FsRecordFileName(key);
  EXPECT_TRUE(IsFsHashedFileName(name)) << name;
  EXPECT_LE(name.size(), 255u);
  EXPECT_FALSE(ParseFsRecordFileName(name).has_value());  // its key lives in the header
  EXPECT_NE(FsRecordFileName(MakeKey(2, model, std::string(128, '!'))), name);
  EXPECT_FALSE(IsFsHashedFileName(FsRecordFileName(MakeKey(1))));
}

TEST(FsFileNameTest, UnparseableNamesAreRejected) {
  ObjectKey key = MakeKey(3, "org/model", "salt");
  std::string good = FsRecordFileName(key);
  ASSERT_TRUE(ParseFsRecordFileName(good).has_value());
  for (const std::string& bad : {
           std::string("notes.txt"), std::string("x.kv"), std::string(".kv"),
           good.substr(0, good.size() - 3),  // no suffix
           good + ".tmp",
           std::string("org/model@w1r0@g0@") + std::string(64, 'a') + ".kv",  // raw '/'
           std::string("org%2Fmodel@w1r0@g0@") + std::string(63, 'a') + ".kv",
           std::string("org%2fmodel@w1r0@g0@") + std::string(64, 'a') + ".kv",
           std::string("m@w1r1@g0@") + std::string(64, 'a') + ".kv",  // rank >= world size
           std::string("m@w1r0@g00@") + std::string(64, 'a') + ".kv",
           std::string("~") + std::string(32, 'a') + ".kv",  // hashed: not parseable by name
       }) {
    EXPECT_FALSE(ParseFsRecordFileName(bad).has_value()) << bad;
  }
  EXPECT_TRUE(IsFsHashedFileName(std::string("~") + std::string(32, 'a') + ".kv"));
  EXPECT_FALSE(IsFsHashedFileName(std::string("~") + std::string(32, 'A') + ".kv"));
  EXPECT_FALSE(IsFsHashedFileName(std::string("~") + std::string(31, 'a') + ".kv"));
}

TEST(FsRecordTest, EncodesAndVerifies) {
  std::string key = MakeKey(5).ToString();
  for (size_t size : {0, 1, 4095, 4096, 4097, 100000}) {
    std::vector<uint8_t> payload = MakePayload(size, size);
    auto record = EncodeFsRecord(key, payload);
    ASSERT_TRUE(record.has_value());
    ASSERT_EQ(record->size(), kFsRecordHeaderSize + size);
    auto header = ParseFsRecordHeader(*record);
    ASSERT_TRUE(header.has_value()) << header.error().ToString();
    EXPECT_EQ(header->key, key);
    EXPECT_EQ(header->payload_size, size);
    EXPECT_EQ(header->payload_checksum, FsChecksum(payload));
    std::span<const uint8_t> body(record->data() + kFsRecordHeaderSize, size);
    EXPECT_TRUE(VerifyFsRecord(*header, key, body).ok());
    EXPECT_TRUE(std::equal(body.begin(), body.end(), payload.begin()));
  }
}

TEST(FsRecordTest, PiecewiseChecksumEqualsOneShot) {
  std::vector<uint8_t> data = MakePayload(9, (2 << 20) + 5);
  for (size_t piece : {size_t{13}, size_t{4095}, size_t{1} << 20, size_t{3} << 20}) {
    FsChecksummer c;
    for (size_t off = 0; off < data.size(); off += piece) {
      c.Update(std::span(data).subspan(off, std::min(piece, data.size() - off)));
    }
    EXPECT_EQ(c.Digest(), FsChecksum(data)) << piece;
  }
  FsChecksummer empty;
  EXPECT_EQ(empty.Digest(), FsChecksum({}));
}

TEST(FsRecordTest, EveryHeaderByteFlipIsDetected) {
  std::string key = MakeKey(6, "org/model", "salt").ToString();
  std::vector<uint8_t> payload = MakePayload(1, 5000);
  auto record = *EncodeFsRecord(key, payload);
  for (size_t i = 0; i < kFsRecordHeaderSize; ++i) {
    std::vector<uint8_t> bad = record;
    bad[i] ^= 0x01;
    EXPECT_FALSE(ParseFsRecordHeader(bad).has_value()) << "flip at " << i;
  }
}

TEST(FsRecordTest, TruncationPayloadFlipsKeyAndSizeMismatchesAreCorruption) {
  std::string key = MakeKey(8).ToString();
  std::vector<uint8_t> payload = MakePayload(2, 9000);
  auto record = *EncodeFsRecord(key, payload);
  for (size_t cut : {size_t{0}, size_t{8}, size_t{100}, kFsRecordHeaderSize - 1}) {
    auto h = ParseFsRecordHeader(std::span<const uint8_t>(record.data(), cut));
    ASSERT_FALSE(h.has_value());
    EXPECT_EQ(h.error().code(), StatusCode::kCorruption);
  }
  auto header = *ParseFsRecordHeader(record);
  std::span<const uint8_t> body(record.data() + kFsRecordHeaderSize, payload.size());
  // Truncated payload.
  EXPECT_EQ(VerifyFsRecord(header, key, body.first(body.size() - 1)).code(),
            StatusCode::kCorruption);
  // Each payload byte flip (sampled) changes the checksum.
  std::mt19937_64 rng(42);
  for (int t = 0; t < 200; ++t) {
    std::vector<uint8_t> bad(body.begin(), body.end());
    bad[rng() % bad.size()] ^= static_cast<uint8_t>(1u << (rng() % 8));
    EXPECT_EQ(VerifyFsRecord(header, key, bad).code(), StatusCode::kCorruption);
  }
  // Another key.
  EXPECT_EQ(VerifyFsRecord(header, MakeKey(9).ToString(), body).code(), StatusCode::kCorruption);
}

TEST(FsRecordTest, RejectsKeysTooLongForTheHeader) {
  std::vector<uint8_t> out(kFsRecordHeaderSize);
  FsRecordHeader h{std::string(kFsMaxKeyLength + 1, 'k'), 0, 0};
  EXPECT_EQ(EncodeFsRecordHeader(h, out).code(), StatusCode::kInvalidArgument);
  h.key.resize(kFsMaxKeyLength);
  EXPECT_TRUE(EncodeFsRecordHeader(h, out).ok());
  EXPECT_TRUE(ParseFsRecordHeader(out).has_value());
}

TEST(FsRecordTest, RejectsAnotherFormatVersion) {
  auto record = *EncodeFsRecord(MakeKey(1).ToString(), MakePayload(1, 10));
  record[8] = 2;  // version 2, with a header checksum that matches
  uint64_t sum = FsChecksum(std::span<const uint8_t>(record.data(), kFsRecordHeaderSize - 8));
  for (int i = 0; i < 8; ++i)
    record[kFsRecordHeaderSize - 8 + i] = static_cast<uint8_t>(sum >> (8 * i));
  auto h = ParseFsRecordHeader(record);
  ASSERT_FALSE(h.has_value());
  EXPECT_NE(h.error().message().find("version"), std::string::npos) << h.error().ToString();
}

}  // namespace
}  // namespace kvtier::l2
