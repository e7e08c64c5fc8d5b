// Fuzzes the fs adapter's parsers of outside bytes: the record header (and record
// verification) and the record file names. Seed corpus: fuzz_corpus/.
//
// The first input byte picks a mode:
//   0  the input is a record file: parse, and when it verifies, its payload must match
//   1  the input is a header with its checksum fixed up (reaches the checks after the checksum)
//   2  a valid record built from the input, with one byte changed: must never verify
//   3  the input is a file name: a parsed name must round-trip exactly
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "kvtier/common/check.h"
#include "kvtier/l2/fs/fs_format.h"

namespace kvtier::l2 {
namespace {

// Whatever parses and verifies must be internally consistent.
void CheckRecord(std::span<const uint8_t> file, std::span<const uint8_t> payload) {
  Result<FsRecordHeader> header = ParseFsRecordHeader(file);
  if (!header) {
    KVT_CHECK(header.error().code() == StatusCode::kCorruption);
    return;
  }
  KVT_CHECK(!header->key.empty() && header->key.size() <= kFsMaxKeyLength);
  Status s = VerifyFsRecord(*header, header->key, payload);
  if (s.ok()) {
    KVT_CHECK(payload.size() == header->payload_size);
    KVT_CHECK(FsChecksum(payload) == header->payload_checksum);
  } else {
    KVT_CHECK(s.code() == StatusCode::kCorruption);
  }
}

void RawRecord(std::span<const uint8_t> in) {
  std::span<const uint8_t> payload = in.size() > kFsRecordHeaderSize
                                         ? in.subspan(kFsRecordHeaderSize)
                                         : std::span<const uint8_t>();
  CheckRecord(in, payload);
}

void FixedUpHeader(std::span<const uint8_t> in) {
  std::vector<uint8_t> header(kFsRecordHeaderSize, 0);
  std::memcpy(header.data(), in.data(), std::min(in.size(), kFsRecordHeaderSize - 8));
  uint64_t sum = FsChecksum(std::span<const uint8_t>(header.data(), kFsRecordHeaderSize - 8));
  for (int i = 0; i < 8; ++i)
    header[kFsRecordHeaderSize - 8 + i] = static_cast<uint8_t>(sum >> (8 * i));
  // The input doubles as a payload candidate.
  CheckRecord(header, in);
}

void MutatedRecord(std::span<const uint8_t> in) {
  if (in.size() < 3) return;
  size_t pos_seed = in[0] | static_cast<size_t>(in[1]) << 8;
  auto flip = static_cast<uint8_t>(in[2] | 1);  // never zero: the byte really changes
  std::span<const uint8_t> payload = in.subspan(3);
  const std::string key =
      "org%2Fmodel@w2r1@g3@00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff@salt";
  Result<std::vector<uint8_t>> record = EncodeFsRecord(key, payload);
  KVT_CHECK(record.has_value());
  std::vector<uint8_t>& r = *record;
  {
    Result<FsRecordHeader> header = ParseFsRecordHeader(r);
    KVT_CHECK(header.has_value());
    KVT_CHECK(VerifyFsRecord(*header, key, payload).ok());
  }
  size_t pos = pos_seed % r.size();
  r[pos] ^= flip;
  std::span<const uint8_t> body(r.data() + kFsRecordHeaderSize, payload.size());
  Result<FsRecordHeader> header = ParseFsRecordHeader(r);
  if (header)
    KVT_CHECK_MSG(!VerifyFsRecord(*header, key, body).ok(), "changed byte {} verified", pos);
}

void FileName(std::string_view text) {
  if (Result<std::string> raw = FsUnescape(text)) KVT_CHECK(FsEscape(*raw) == text);
  Result<keys::ObjectKey> key = ParseFsRecordFileName(text);
  if (!key) return;
  KVT_CHECK(FsRecordFileName(*key) == text);
  KVT_CHECK(!IsFsHashedFileName(text));
}

}  // namespace
}  // namespace kvtier::l2

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size == 0) return 0;
  std::span<const uint8_t> in(data + 1, size - 1);
  switch (data[0] % 4) {
    case 0:
      kvtier::l2::RawRecord(in);
      break;
    case 1:
      kvtier::l2::FixedUpHeader(in);
      break;
    case 2:
      kvtier::l2::MutatedRecord(in);
      break;
    default:
      kvtier::l2::FileName(std::string_view(reinterpret_cast<const char*>(in.data()), in.size()));
      break;
  }
  return 0;
}
