// On-disk layout of the fs L2 adapter: file names and the record format.
//
// Directory layout under base_path:
//   LOCK                 flock()ed by the one adapter using the directory
//   tmp/                 files being written (<pid>-<instance>-<seq>.tmp); a crash leaves them,
//                        the recovery scan removes them
//   00/ .. ff/           published records, fanned out by the first byte of the chunk hash
//                        (each created when its first record is stored)
//     <escaped key>.kv   one record per key
//
// File names: ObjectKey::ToString() percent-encoded (every byte outside [A-Za-z0-9-_.@] as %XX,
// uppercase hex) plus ".kv". The encoding is canonical, so a key has exactly one name and a name
// parses back to exactly one key. Keys whose escaped name would exceed kFsMaxFileNameLength use
// "~<32 hex of XXH3-128 of the key string>.kv" instead ('~' never starts an escaped name); the
// key of such a file is read from its record header.
//
// Record (all integers little-endian):
//   [0, 8)      magic "KVTIERFS"
//   [8, 12)     format version (1)
//   [12, 16)    header size = payload offset (4096)
//   [16, 24)    payload size in bytes
//   [24, 32)    XXH3-64 (seed 0) of the payload
//   [32, 34)    key length n
//   [34, 40)    reserved, zero
//   [40, 40+n)  the key, ObjectKey::ToString()
//   ...         zero up to 4088
//   [4088, 4096) XXH3-64 of bytes [0, 4088): the header checksum
//   [4096, ...) the payload; the file is exactly 4096 + payload size bytes long
// The payload starts at a 4096-byte boundary so it can be read and written with O_DIRECT.
#pragma once

#include <cstddef>
#include <cstdint>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "kvtier/common/result.h"
#include "kvtier/keys/object_key.h"

namespace kvtier::l2 {

inline constexpr size_t kFsRecordHeaderSize = 4096;
inline constexpr size_t kFsAlignment = 4096;  // O_DIRECT buffer, offset and length alignment
inline constexpr uint32_t kFsRecordVersion = 1;
inline constexpr size_t kFsMaxKeyLength = kFsRecordHeaderSize - 48;
// Leaves room under NAME_MAX (255) for the suffix.
inline constexpr size_t kFsMaxFileNameLength = 240;
inline constexpr std::string_view kFsRecordSuffix = ".kv";
inline constexpr std::string_view kFsTempSuffix = ".tmp";
inline constexpr std::string_view kFsTempDir = "tmp";
inline constexpr std::string_view kFsLockFile = "LOCK";

// The fan-out directory of a key: two lowercase hex digits, the first chunk-hash byte.
std::string FsFanoutDir(const keys::ObjectKey& key);
// Whether `name` is a fan-out directory name ("00" .. "ff", lowercase).
bool IsFsFanoutDir(std::string_view name);

// The record file name of `key` (no directory).
std::string FsRecordFileName(const keys::ObjectKey& key);
// "<fan-out dir>/<file name>", relative to base_path.
std::string FsRecordPath(const keys::ObjectKey& key);

// Parses an escaped record file name back to its key. kInvalidArgument for anything
// FsRecordFileName cannot produce, including hashed names (see IsFsHashedFileName).
Result<keys::ObjectKey> ParseFsRecordFileName(std::string_view name);
// Whether `name` has the shape of a hashed record name ("~" + 32 lowercase hex + ".kv").
bool IsFsHashedFileName(std::string_view name);

// Percent-encoding of the file names (exposed for tests and the fuzzer).
std::string FsEscape(std::string_view text);
// Fails on a malformed or non-canonical escape (lowercase hex, an escaped safe byte).
Result<std::string> FsUnescape(std::string_view name);

struct FsRecordHeader {
  std::string key;  // ObjectKey::ToString() of the stored key
  uint64_t payload_size = 0;
  uint64_t payload_checksum = 0;
};

// XXH3-64, seed 0 (vectorised for the CPU at run time).
uint64_t FsChecksum(std::span<const uint8_t> bytes);

// FsChecksum computed piecewise: Update over consecutive pieces, then Digest() equals
// FsChecksum of their concatenation.
class FsChecksummer {
 public:
  FsChecksummer();
  ~FsChecksummer();
  FsChecksummer(const FsChecksummer&) = delete;
  FsChecksummer& operator=(const FsChecksummer&) = delete;
  void Update(std::span<const uint8_t> bytes);
  uint64_t Digest() const;

 private:
  void* state_;  // XXH3_state_t (xxhash.h stays out of this header)
};

// Writes a header into `out` (exactly kFsRecordHeaderSize bytes). kInvalidArgument when the key
// is longer than kFsMaxKeyLength.
Status EncodeFsRecordHeader(const FsRecordHeader& header, std::span<uint8_t> out);

// Parses and checks a header: at least kFsRecordHeaderSize bytes, magic, version, header size,
// key length, reserved bytes, header checksum. kCorruption on any mismatch.
Result<FsRecordHeader> ParseFsRecordHeader(std::span<const uint8_t> bytes);

// Checks a parsed header against what the reader expects and the payload it read: the key, the
// size (`payload` must be exactly payload_size bytes) and the payload checksum. kCorruption on
// any mismatch.
Status VerifyFsRecord(const FsRecordHeader& header, std::string_view expected_key,
                      std::span<const uint8_t> payload);

// A whole record in memory (header + payload), for tests, the fuzzer and tools.
Result<std::vector<uint8_t>> EncodeFsRecord(std::string_view key, std::span<const uint8_t> payload);

}  // namespace kvtier::l2
