// Internal to the controller protocol's codec: its dialect of the shared msgpack maps
// (common/msgpack_map.h) and its schema's own fields (chunk hashes, model names, cache salts).
// Not a public API.
#pragma once

#include <cstdint>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "kvtier/common/msgpack_map.h"
#include "kvtier/controller/messages.h"
#include "kvtier/keys/object_key.h"

namespace kvtier::controller::internal {

using msgpack_map::MapReader;
using msgpack_map::Need;
using msgpack_map::SanitizeText;
using msgpack_map::TypeName;
using msgpack_map::Where;

// Frame bodies: nested at most 8 deep, no bigger than a frame. The element limit depends on the
// message (decode.cc).
inline constexpr msgpack_map::Dialect kDialect{.document = "body",
                                               .error_code = StatusCode::kProtocolError,
                                               .max_depth = 8,
                                               .max_elements = 1u << 15,
                                               .max_bytes = kMaxFrameBytes,
                                               .max_string_bytes = kMaxTextLength};

// What a decoder reports errors as: "<TYPE> <kind>: <what>".
inline Where WhereOf(MessageType type, std::string_view kind) {
  return Where{&kDialect, MessageTypeName(type), kind};
}

class Writer : public msgpack_map::Writer {
 public:
  using msgpack_map::Writer::Writer;

  // A bin of 32 * hashes.size() bytes.
  void Hashes(std::span<const keys::ChunkHash> hashes);
};

// A model name and cache salt under keys/' rules (checked without interning).
Status ReadModel(const MapReader& m, std::string_view name, std::string* out);
Status ReadCacheSalt(const MapReader& m, std::string_view name, std::string* out);
// A bin of 32 * n bytes, n <= *budget; n is taken from the budget.
Status ReadHashes(const MapReader& m, std::string_view name, size_t* budget,
                  std::vector<keys::ChunkHash>* out);

}  // namespace kvtier::controller::internal
