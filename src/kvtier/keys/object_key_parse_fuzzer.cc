// Fuzzes the parsers of outside text: ObjectKey::Parse and ChunkHash::FromHex.
// Seed corpus: fuzz_corpus/object_key/.
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <string>
#include <string_view>

#include "kvtier/common/check.h"
#include "kvtier/common/status.h"
#include "kvtier/keys/object_key.h"

namespace kvtier::keys {
namespace {

void CheckObjectKeyParse(std::string_view text) {
  Result<ObjectKey> key = ObjectKey::Parse(text);
  if (!key) {
    // Unbounded distinct namespaces may exhaust the intern table; nothing else may fail.
    KVT_CHECK_MSG(key.error().code() == StatusCode::kInvalidKey ||
                      key.error().code() == StatusCode::kResourceExhausted,
                  "{}", key.error().ToString());
    return;
  }
  // Parse accepts only the canonical form, so the text must come back unchanged.
  std::string again = key->ToString();
  KVT_CHECK(again == text);
  Result<ObjectKey> reparsed = ObjectKey::Parse(again);
  KVT_CHECK(reparsed.has_value() && *reparsed == *key && reparsed->Hash() == key->Hash());
}

void CheckChunkHashHex(std::string_view text) {
  Result<ChunkHash> hash = ChunkHash::FromHex(text);
  if (!hash) {
    KVT_CHECK(hash.error().code() == StatusCode::kInvalidKey);
    return;
  }
  std::string hex = hash->ToHex();
  KVT_CHECK(hex.size() == text.size());
  for (size_t i = 0; i < hex.size(); ++i) {
    char c = text[i];
    if (c >= 'A' && c <= 'F') c = static_cast<char>(c - 'A' + 'a');
    KVT_CHECK(hex[i] == c);
  }
}

void CheckChunkHashBytes(const uint8_t* data, size_t size) {
  if (size < kChunkHashBytes) return;
  ChunkHash hash;
  std::memcpy(hash.bytes.data(), data, kChunkHashBytes);
  Result<ChunkHash> back = ChunkHash::FromHex(hash.ToHex());
  KVT_CHECK(back.has_value() && *back == hash);
}

}  // namespace
}  // namespace kvtier::keys

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  std::string_view text(reinterpret_cast<const char*>(data), size);
  kvtier::keys::CheckObjectKeyParse(text);
  kvtier::keys::CheckChunkHashHex(text);
  kvtier::keys::CheckChunkHashBytes(data, size);
  return 0;
}
