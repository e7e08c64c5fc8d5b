#include "kvtier/controller/msgpack_io.h"

#include <algorithm>
#include <cstring>
#include <exception>

#include <fmt/format.h>

#include "kvtier/common/check.h"

namespace kvtier::controller::internal {
namespace {

constexpr uint32_t kMaxDepth = 8;

// The length of the valid UTF-8 sequence at the start of `s`, or 0 if it is not one.
size_t Utf8SequenceLength(std::string_view s) {
  const auto b0 = static_cast<uint8_t>(s[0]);
  if (b0 < 0x80) return 1;
  size_t n;
  uint32_t lo = 0x80, hi = 0xBF;  // the allowed range of the second byte
  if (b0 >= 0xC2 && b0 <= 0xDF) {
    n = 2;
  } else if (b0 >= 0xE0 && b0 <= 0xEF) {
    n = 3;
    if (b0 == 0xE0) lo = 0xA0;  // no overlong forms
    if (b0 == 0xED) hi = 0x9F;  // no surrogates
  } else if (b0 >= 0xF0 && b0 <= 0xF4) {
    n = 4;
    if (b0 == 0xF0) lo = 0x90;  // no overlong forms
    if (b0 == 0xF4) hi = 0x8F;  // nothing above U+10FFFF
  } else {
    return 0;
  }
  if (s.size() < n) return 0;
  const auto b1 = static_cast<uint8_t>(s[1]);
  if (b1 < lo || b1 > hi) return 0;
  for (size_t i = 2; i < n; ++i) {
    if ((static_cast<uint8_t>(s[i]) & 0xC0) != 0x80) return 0;
  }
  return n;
}

// A first pass over the body that allocates nothing (msgpack::parse with a visitor that keeps no
// values). See ParseBody.
class ShapeChecker : public msgpack::null_visitor {
 public:
  ShapeChecker(size_t body_size, uint64_t max_elements)
      : body_size_(body_size), max_elements_(max_elements) {}

  // The visitor concept of msgpack::parse (names fixed by msgpack-cxx).
  // NOLINTBEGIN(readability-identifier-naming)
  bool visit_nil() { return Scalar("nil"); }
  bool visit_boolean(bool) { return Scalar("bool"); }
  bool visit_positive_integer(uint64_t) { return Scalar("an integer"); }
  bool visit_negative_integer(int64_t) { return Scalar("an integer"); }
  bool visit_float32(float) { return Scalar("a float"); }
  bool visit_float64(double) { return Scalar("a float"); }
  bool visit_str(const char*, uint32_t) { return Scalar("str"); }
  bool visit_bin(const char*, uint32_t) { return Scalar("bin"); }
  bool visit_ext(const char*, uint32_t) { return Scalar("ext"); }
  bool start_array(uint32_t n) { return depth_ == 0 ? NotAMap("an array") : Open(n); }
  bool start_map(uint32_t n) { return Open(2 * static_cast<uint64_t>(n)); }
  bool end_array() {
    --depth_;
    return true;
  }
  bool end_map() {
    --depth_;
    return true;
  }
  void parse_error(size_t /*parsed_offset*/, size_t error_offset) {
    error_ = fmt::format("malformed msgpack at body byte {}", error_offset);
  }
  void insufficient_bytes(size_t /*parsed_offset*/, size_t /*error_offset*/) {
    error_ = fmt::format("truncated msgpack: the body ends ({} bytes) inside a value", body_size_);
  }
  // NOLINTEND(readability-identifier-naming)

  const std::string& error() const { return error_; }

 private:
  bool Scalar(const char* type) { return depth_ == 0 ? NotAMap(type) : true; }
  bool NotAMap(const char* type) {
    error_ = fmt::format("the body must be a msgpack map, got {}", type);
    return false;
  }
  bool Open(uint64_t elements) {
    if (++depth_ > kMaxDepth) {
      error_ = fmt::format("msgpack nested deeper than {} levels", kMaxDepth);
      return false;
    }
    elements_ += elements;
    // Every element takes at least one byte, so a declaration beyond the body's size is a lie.
    if (elements_ > body_size_) {
      error_ = fmt::format(
          "truncated msgpack: containers declare {} elements, more than the body's {} bytes can "
          "hold",
          elements_, body_size_);
      return false;
    }
    if (elements_ > max_elements_) {
      error_ = fmt::format("msgpack containers hold more than {} elements", max_elements_);
      return false;
    }
    return true;
  }

  size_t body_size_;
  uint64_t max_elements_;
  uint32_t depth_ = 0;
  uint64_t elements_ = 0;
  std::string error_;
};

// Strings and bins point into the body instead of being copied.
bool ReferenceAll(msgpack::type::object_type, size_t, void*) { return true; }

std::string_view AsView(const msgpack::object_str& s) { return {s.ptr, s.size}; }

std::string IntText(const msgpack::object& o) {
  return o.type == msgpack::type::NEGATIVE_INTEGER ? fmt::format("{}", o.via.i64)
                                                   : fmt::format("{}", o.via.u64);
}

}  // namespace

bool IsValidUtf8(std::string_view text) {
  while (!text.empty()) {
    const size_t n = Utf8SequenceLength(text);
    if (n == 0) return false;
    text.remove_prefix(n);
  }
  return true;
}

std::string SanitizeText(std::string_view text, size_t limit) {
  std::string out;
  out.reserve(std::min(text.size(), limit));
  while (!text.empty()) {
    size_t n = Utf8SequenceLength(text);
    const bool valid = n != 0;
    if (!valid) n = 1;
    if (out.size() + (valid ? n : 1) > limit) break;
    if (valid) {
      out.append(text.substr(0, n));
    } else {
      out.push_back('?');
    }
    text.remove_prefix(n);
  }
  return out;
}

// ---- Writer ----

void Writer::Str(std::string_view s) {
  packer_.pack_str(static_cast<uint32_t>(s.size()));
  packer_.pack_str_body(s.data(), static_cast<uint32_t>(s.size()));
}

void Writer::Bool(bool b) {
  if (b) {
    packer_.pack_true();
  } else {
    packer_.pack_false();
  }
}

void Writer::Hashes(std::span<const keys::ChunkHash> hashes) {
  static_assert(sizeof(keys::ChunkHash) == keys::kChunkHashBytes);
  const size_t bytes = hashes.size() * keys::kChunkHashBytes;
  KVT_DCHECK(bytes <= std::numeric_limits<uint32_t>::max());
  packer_.pack_bin(static_cast<uint32_t>(bytes));
  packer_.pack_bin_body(reinterpret_cast<const char*>(hashes.data()), static_cast<uint32_t>(bytes));
}

// ---- Parsing ----

Status Where::Error(std::string_view what) const {
  return Status(StatusCode::kProtocolError,
                fmt::format("{} {}: {}", MessageTypeName(type), kind, what));
}

Result<msgpack::object_handle> ParseBody(const Where& where, std::span<const uint8_t> body,
                                         uint64_t max_elements) {
  if (body.empty()) return MakeError(where.Error("empty body (expected a msgpack map)"));
  const char* data = reinterpret_cast<const char*>(body.data());
  try {
    ShapeChecker checker(body.size(), max_elements);
    size_t off = 0;
    if (!msgpack::parse(data, body.size(), off, checker)) {
      return MakeError(
          where.Error(checker.error().empty() ? "malformed msgpack" : checker.error()));
    }
    if (off != body.size()) {
      return MakeError(
          where.Error(fmt::format("{} trailing bytes after the body map", body.size() - off)));
    }
    const msgpack::unpack_limit limits(/*array=*/max_elements, /*map=*/max_elements,
                                       /*str=*/kMaxFrameBytes, /*bin=*/kMaxFrameBytes,
                                       /*ext=*/kMaxFrameBytes, /*depth=*/kMaxDepth + 1);
    off = 0;
    return msgpack::unpack(data, body.size(), off, &ReferenceAll, nullptr, limits);
  } catch (const std::exception& e) {
    return MakeError(where.Error(fmt::format("cannot parse msgpack: {}", e.what())));
  }
}

const char* TypeName(const msgpack::object& o) {
  switch (o.type) {
    case msgpack::type::NIL:
      return "nil";
    case msgpack::type::BOOLEAN:
      return "bool";
    case msgpack::type::POSITIVE_INTEGER:
      return "a non-negative integer";
    case msgpack::type::NEGATIVE_INTEGER:
      return "a negative integer";
    case msgpack::type::FLOAT32:
    case msgpack::type::FLOAT64:
      return "a float";
    case msgpack::type::STR:
      return "str";
    case msgpack::type::BIN:
      return "bin";
    case msgpack::type::ARRAY:
      return "an array";
    case msgpack::type::MAP:
      return "a map";
    case msgpack::type::EXT:
      return "ext";
  }
  return "an unknown type";
}

// ---- MapReader ----

Result<MapReader> MapReader::Of(const msgpack::object& o, const Where& where, std::string prefix) {
  if (o.type != msgpack::type::MAP) {
    return MakeError(where.Error(
        prefix.empty() ? fmt::format("the body must be a map, got {}", TypeName(o))
                       : fmt::format("field '{}' must be a map, got {}",
                                     prefix.substr(0, prefix.size() - 1), TypeName(o))));
  }
  const msgpack::object_map& map = o.via.map;
  for (uint32_t i = 0; i < map.size; ++i) {
    if (map.ptr[i].key.type != msgpack::type::STR) {
      return MakeError(where.Error(fmt::format(
          "{}map keys must be str, got {}",
          prefix.empty() ? "" : fmt::format("field '{}': ", prefix.substr(0, prefix.size() - 1)),
          TypeName(map.ptr[i].key))));
    }
  }
  return MapReader(map, where, std::move(prefix));
}

Status MapReader::Error(std::string_view name, std::string_view what) const {
  return where_->Error(fmt::format("field '{}{}' {}", prefix_, name, what));
}

Result<const msgpack::object*> MapReader::Find(std::string_view name) const {
  const msgpack::object* found = nullptr;
  for (uint32_t i = 0; i < map_->size; ++i) {
    if (AsView(map_->ptr[i].key.via.str) != name) continue;
    if (found != nullptr) return MakeError(Error(name, "appears more than once"));
    found = &map_->ptr[i].val;
  }
  return found;
}

Result<const msgpack::object*> MapReader::Required(std::string_view name) const {
  KVT_ASSIGN_OR_RETURN(const msgpack::object* o, Find(name));
  if (o == nullptr) {
    return MakeError(where_->Error(fmt::format("missing required field '{}{}'", prefix_, name)));
  }
  return o;
}

Result<uint64_t> MapReader::ToUint(std::string_view name, const msgpack::object& o, uint64_t lo,
                                   uint64_t hi) const {
  if (o.type == msgpack::type::POSITIVE_INTEGER && o.via.u64 >= lo && o.via.u64 <= hi) {
    return o.via.u64;
  }
  if (o.type == msgpack::type::POSITIVE_INTEGER || o.type == msgpack::type::NEGATIVE_INTEGER) {
    return MakeError(Error(name, fmt::format("must be in [{}, {}], got {}", lo, hi, IntText(o))));
  }
  return MakeError(Error(name, fmt::format("must be an unsigned integer, got {}", TypeName(o))));
}

Status MapReader::Bool(std::string_view name, Need need, bool* out) const {
  KVT_ASSIGN_OR_RETURN(const msgpack::object* o, Get(name, need));
  if (o == nullptr) return Status::OK();
  if (o->type != msgpack::type::BOOLEAN) {
    return Error(name, fmt::format("must be a bool, got {}", TypeName(*o)));
  }
  *out = o->via.boolean;
  return Status::OK();
}

Result<std::string_view> MapReader::Str(std::string_view name, Need need, size_t min_length,
                                        size_t max_length, bool* present) const {
  KVT_ASSIGN_OR_RETURN(const msgpack::object* o, Get(name, need));
  *present = o != nullptr;
  if (o == nullptr) return std::string_view();
  if (o->type != msgpack::type::STR) {
    return MakeError(Error(name, fmt::format("must be str, got {}", TypeName(*o))));
  }
  const std::string_view value = AsView(o->via.str);
  if (value.size() > max_length) {
    return MakeError(
        Error(name, fmt::format("is {} bytes, the limit is {}", value.size(), max_length)));
  }
  if (value.size() < min_length) {
    return MakeError(Error(name, min_length == 1
                                     ? std::string("must not be empty")
                                     : fmt::format("must be at least {} bytes", min_length)));
  }
  return value;
}

Status MapReader::Text(std::string_view name, Need need, std::string* out, size_t min_length,
                       size_t max_length) const {
  bool present = false;
  KVT_ASSIGN_OR_RETURN(std::string_view value, Str(name, need, min_length, max_length, &present));
  if (!present) return Status::OK();
  if (!IsValidUtf8(value)) return Error(name, "is not valid UTF-8");
  out->assign(value);
  return Status::OK();
}

Status MapReader::Ident(std::string_view name, Need need, std::string* out, size_t min_length,
                        size_t max_length) const {
  bool present = false;
  KVT_ASSIGN_OR_RETURN(std::string_view value, Str(name, need, min_length, max_length, &present));
  if (!present) return Status::OK();
  for (size_t i = 0; i < value.size(); ++i) {
    const auto c = static_cast<uint8_t>(value[i]);
    if (c < 0x21 || c > 0x7e) {
      return Error(name, fmt::format("has byte 0x{:02x} at offset {}: only printable ASCII "
                                     "without spaces is allowed",
                                     c, i));
    }
  }
  out->assign(value);
  return Status::OK();
}

Status MapReader::Model(std::string_view name, std::string* out) const {
  std::string model;
  KVT_RETURN_IF_ERROR(Text(name, Need::kRequired, &model, 1, keys::kMaxModelNameLength));
  if (model.find_first_of(std::string_view("@\0", 2)) != std::string::npos) {
    return Error(name, "must not contain '@' or NUL");
  }
  *out = std::move(model);
  return Status::OK();
}

Status MapReader::CacheSalt(std::string_view name, std::string* out) const {
  std::string salt;
  KVT_RETURN_IF_ERROR(Text(name, Need::kOptional, &salt, 0, keys::kMaxCacheSaltLength));
  if (salt.find_first_of(std::string_view("@/\\\0", 4)) != std::string::npos) {
    return Error(name, "must not contain '@', '/', '\\' or NUL");
  }
  *out = std::move(salt);
  return Status::OK();
}

Status MapReader::Hashes(std::string_view name, size_t* budget,
                         std::vector<keys::ChunkHash>* out) const {
  KVT_ASSIGN_OR_RETURN(const msgpack::object* o, Required(name));
  if (o->type != msgpack::type::BIN) {
    return Error(name, fmt::format("must be bin (32-byte chunk hashes), got {}", TypeName(*o)));
  }
  const msgpack::object_bin& bin = o->via.bin;
  if (bin.size % keys::kChunkHashBytes != 0) {
    return Error(name,
                 fmt::format("is {} bytes, not a multiple of {}", bin.size, keys::kChunkHashBytes));
  }
  const size_t count = bin.size / keys::kChunkHashBytes;
  if (count > *budget) {
    return Error(name, fmt::format("holds {} hashes, more than the {} left of the message's "
                                   "limit of {} keys",
                                   count, *budget, kMaxKeysPerMessage));
  }
  *budget -= count;
  out->resize(count);
  if (count > 0) std::memcpy(out->data(), bin.ptr, bin.size);
  return Status::OK();
}

Result<std::span<const msgpack::object>> MapReader::Array(std::string_view name,
                                                          size_t max_size) const {
  KVT_ASSIGN_OR_RETURN(const msgpack::object* o, Required(name));
  if (o->type != msgpack::type::ARRAY) {
    return MakeError(Error(name, fmt::format("must be an array, got {}", TypeName(*o))));
  }
  const msgpack::object_array& array = o->via.array;
  if (array.size > max_size) {
    return MakeError(
        Error(name, fmt::format("has {} elements, the limit is {}", array.size, max_size)));
  }
  return std::span<const msgpack::object>(array.ptr, array.size);
}

Result<MapReader> MapReader::Element(std::string_view name, size_t i,
                                     const msgpack::object& o) const {
  return Of(o, *where_, fmt::format("{}{}[{}].", prefix_, name, i));
}

}  // namespace kvtier::controller::internal
