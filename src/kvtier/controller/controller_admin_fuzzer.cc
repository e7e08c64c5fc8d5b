// Fuzzes the HTTP admin API's body parsers (POST /lookup, POST /clear): arbitrary bytes must
// never crash them, and every failure is kInvalidArgument (a 400 naming the field). A lookup that
// parses renders its answer. Seed corpus: fuzz_corpus/admin/.
#include <cstddef>
#include <cstdint>
#include <string_view>

#include "kvtier/common/check.h"
#include "kvtier/controller/controller_admin.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace kvtier::controller;
  // Small chunks, so that token ids get hashed too.
  static const kvtier::keys::TokenHasher hasher =
      *kvtier::keys::TokenHasher::Create(kvtier::keys::HashAlgorithm::kSha256, 4);
  const std::string_view body(reinterpret_cast<const char*>(data), size);
  auto lookup = ParseLookupJson(body, hasher);
  if (lookup.has_value()) {
    KVT_CHECK(lookup->request.hashes.size() <= kMaxKeysPerMessage);
    LookupReply reply{{LookupMatch{"i", "", 1}}};
    (void)LookupJson(*lookup, reply, hasher.chunk_size()).dump();
  } else {
    KVT_CHECK_MSG(lookup.error().code() == kvtier::StatusCode::kInvalidArgument, "{}",
                  lookup.error().ToString());
  }
  auto clear = ParseClearJson(body);
  if (!clear.has_value()) {
    KVT_CHECK_MSG(clear.error().code() == kvtier::StatusCode::kInvalidArgument, "{}",
                  clear.error().ToString());
  }
  return 0;
}
