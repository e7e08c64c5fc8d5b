#include "kvtier/common/msgpack_map.h"

#include <algorithm>
#include <exception>
#include <utility>

namespace kvtier::msgpack_map {
namespace {

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

// A first pass over the document that allocates nothing (msgpack::parse with a visitor that keeps
// no values): it checks that the document is exactly one complete msgpack map, nested at most
// max_depth deep, whose containers declare at most max_elements elements. A declared size beyond
// the document's end fails here (early, by counting, or at the end, as truncated). Only then does
// msgpack::unpack build the object tree, which allocates for elements actually present.
class ShapeChecker : public msgpack::null_visitor {
 public:
  ShapeChecker(const Dialect& dialect, size_t size, uint64_t max_elements)
      : dialect_(dialect), size_(size), max_elements_(max_elements) {}

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
    error_ = fmt::format("malformed msgpack at {} byte {}", dialect_.document, error_offset);
  }
  void insufficient_bytes(size_t /*parsed_offset*/, size_t /*error_offset*/) {
    error_ = fmt::format("truncated msgpack: the {} ends ({} bytes) inside a value",
                         dialect_.document, size_);
  }
  // NOLINTEND(readability-identifier-naming)

  const std::string& error() const { return error_; }

 private:
  bool Scalar(const char* type) { return depth_ == 0 ? NotAMap(type) : true; }
  bool NotAMap(const char* type) {
    error_ = fmt::format("the {} must be a msgpack map, got {}", dialect_.document, type);
    return false;
  }
  bool Open(uint64_t elements) {
    if (++depth_ > dialect_.max_depth) {
      error_ = fmt::format("msgpack nested deeper than {} levels", dialect_.max_depth);
      return false;
    }
    elements_ += elements;
    // Every element takes at least one byte, so a declaration beyond the size is a lie.
    if (elements_ > size_) {
      error_ = fmt::format(
          "truncated msgpack: containers declare {} elements, more than the {}'s {} bytes can "
          "hold",
          elements_, dialect_.document, size_);
      return false;
    }
    if (elements_ > max_elements_) {
      error_ = fmt::format("msgpack containers hold more than {} elements", max_elements_);
      return false;
    }
    return true;
  }

  const Dialect& dialect_;
  size_t size_;
  uint64_t max_elements_;
  uint32_t depth_ = 0;
  uint64_t elements_ = 0;
  std::string error_;
};

// Strings and bins point into the document instead of being copied.
bool ReferenceAll(msgpack::type::object_type, size_t, void*) { return true; }

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

std::string_view TruncateUtf8(std::string_view text, size_t limit) {
  if (text.size() <= limit) return text;
  size_t cut = limit;
  while (cut > 0 && (static_cast<uint8_t>(text[cut]) & 0xC0) == 0x80) --cut;
  return text.substr(0, cut);
}

// ---- Parsing ----

Status Where::Error(std::string_view what) const {
  return Status(dialect->error_code, fmt::format("{} {}: {}", subject, kind, what));
}

Result<msgpack::object_handle> Parse(const Where& where, std::span<const uint8_t> document,
                                     uint64_t max_elements) {
  const Dialect& dialect = *where.dialect;
  if (document.size() > dialect.max_bytes) {
    return MakeError(where.Error(fmt::format("{} is {} bytes, the limit is {}", dialect.document,
                                             document.size(), dialect.max_bytes)));
  }
  if (document.empty()) {
    return MakeError(
        where.Error(fmt::format("empty {} (expected a msgpack map)", dialect.document)));
  }
  const char* data = reinterpret_cast<const char*>(document.data());
  try {
    ShapeChecker checker(dialect, document.size(), max_elements);
    size_t off = 0;
    if (!msgpack::parse(data, document.size(), off, checker)) {
      return MakeError(
          where.Error(checker.error().empty() ? "malformed msgpack" : checker.error()));
    }
    if (off != document.size()) {
      return MakeError(where.Error(fmt::format("{} trailing bytes after the {} map",
                                               document.size() - off, dialect.document)));
    }
    const msgpack::unpack_limit limits(
        /*array=*/max_elements, /*map=*/max_elements, /*str=*/dialect.max_bytes,
        /*bin=*/dialect.max_bytes, /*ext=*/dialect.max_bytes, /*depth=*/dialect.max_depth + 1);
    off = 0;
    return msgpack::unpack(data, document.size(), off, &ReferenceAll, nullptr, limits);
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
  // The map's own name: the prefix without its trailing '.'.
  const std::string_view self =
      prefix.empty() ? std::string_view() : std::string_view(prefix).substr(0, prefix.size() - 1);
  if (o.type != msgpack::type::MAP) {
    return MakeError(where.Error(
        prefix.empty()
            ? fmt::format("the {} must be a map, got {}", where.dialect->document, TypeName(o))
            : fmt::format("field '{}' must be a map, got {}", self, TypeName(o))));
  }
  const msgpack::object_map& map = o.via.map;
  for (uint32_t i = 0; i < map.size; ++i) {
    if (map.ptr[i].key.type != msgpack::type::STR) {
      return MakeError(where.Error(
          fmt::format("{}map keys must be str, got {}",
                      prefix.empty() ? std::string() : fmt::format("field '{}': ", self),
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

Result<MapReader> MapReader::Nested(std::string_view name) const {
  KVT_ASSIGN_OR_RETURN(const msgpack::object* o, Required(name));
  return Of(*o, *where_, fmt::format("{}{}.", prefix_, name));
}

Result<std::span<const msgpack::object>> MapReader::Array(std::string_view name, size_t max_size,
                                                          std::string_view what) const {
  KVT_ASSIGN_OR_RETURN(const msgpack::object* o, Required(name));
  if (o->type != msgpack::type::ARRAY) {
    return MakeError(Error(name, fmt::format("must be {}, got {}", what, TypeName(*o))));
  }
  KVT_RETURN_IF_ERROR(CheckSize(name, o->via.array.size, max_size));
  return std::span<const msgpack::object>(o->via.array.ptr, o->via.array.size);
}

Result<MapReader> MapReader::Element(std::string_view name, size_t i,
                                     const msgpack::object& o) const {
  return Of(o, *where_, fmt::format("{}{}[{}].", prefix_, name, i));
}

Status MapReader::CheckSize(std::string_view name, size_t size, size_t max_size) const {
  if (size > max_size) {
    return Error(name, fmt::format("has {} elements, the limit is {}", size, max_size));
  }
  return Status::OK();
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

Status MapReader::ToFixedBin(std::string_view name, const msgpack::object& o, size_t size,
                             uint8_t* out) const {
  if (o.type != msgpack::type::BIN) {
    return Error(name, fmt::format("must be bin ({} bytes), got {}", size, TypeName(o)));
  }
  if (o.via.bin.size != size) {
    return Error(name, fmt::format("is {} bytes, must be exactly {}", o.via.bin.size, size));
  }
  std::memcpy(out, o.via.bin.ptr, size);
  return Status::OK();
}

Result<bool> MapReader::AsBool(std::string_view name, const msgpack::object& o) const {
  if (o.type != msgpack::type::BOOLEAN) {
    return MakeError(Error(name, fmt::format("must be a bool, got {}", TypeName(o))));
  }
  return o.via.boolean;
}

Status MapReader::Bool(std::string_view name, Need need, bool* out) const {
  KVT_ASSIGN_OR_RETURN(const msgpack::object* o, Get(name, need));
  if (o == nullptr) return Status::OK();
  KVT_ASSIGN_OR_RETURN(*out, AsBool(name, *o));
  return Status::OK();
}

Result<std::string_view> MapReader::AsStr(std::string_view name, const msgpack::object& o,
                                          size_t min_length,
                                          std::optional<size_t> max_length) const {
  const size_t max = max_length.value_or(where_->dialect->max_string_bytes);
  if (o.type != msgpack::type::STR) {
    return MakeError(Error(name, fmt::format("must be str, got {}", TypeName(o))));
  }
  const std::string_view value = AsView(o.via.str);
  if (value.size() > max) {
    return MakeError(Error(name, fmt::format("is {} bytes, the limit is {}", value.size(), max)));
  }
  if (value.size() < min_length) {
    return MakeError(Error(name, min_length == 1
                                     ? std::string("must not be empty")
                                     : fmt::format("must be at least {} bytes", min_length)));
  }
  return value;
}

Result<std::optional<std::string_view>> MapReader::StrView(std::string_view name, Need need,
                                                           size_t min_length,
                                                           std::optional<size_t> max_length) const {
  KVT_ASSIGN_OR_RETURN(const msgpack::object* o, Get(name, need));
  if (o == nullptr) return std::optional<std::string_view>();
  KVT_ASSIGN_OR_RETURN(std::string_view value, AsStr(name, *o, min_length, max_length));
  return std::optional<std::string_view>(value);
}

Status MapReader::String(std::string_view name, Need need, std::string* out, size_t min_length,
                         std::optional<size_t> max_length) const {
  KVT_ASSIGN_OR_RETURN(std::optional<std::string_view> value,
                       StrView(name, need, min_length, max_length));
  if (value.has_value()) out->assign(*value);
  return Status::OK();
}

Status MapReader::OptionalString(std::string_view name, std::optional<std::string>* out,
                                 size_t min_length, std::optional<size_t> max_length) const {
  KVT_ASSIGN_OR_RETURN(const msgpack::object* o, Find(name));
  if (o == nullptr || o->type == msgpack::type::NIL) {
    out->reset();
    return Status::OK();
  }
  KVT_ASSIGN_OR_RETURN(std::string_view value, AsStr(name, *o, min_length, max_length));
  *out = std::string(value);
  return Status::OK();
}

Status MapReader::Text(std::string_view name, Need need, std::string* out, size_t min_length,
                       size_t max_length) const {
  KVT_ASSIGN_OR_RETURN(std::optional<std::string_view> value,
                       StrView(name, need, min_length, max_length));
  if (!value.has_value()) return Status::OK();
  if (!IsValidUtf8(*value)) return Error(name, "is not valid UTF-8");
  out->assign(*value);
  return Status::OK();
}

Status MapReader::Ident(std::string_view name, Need need, std::string* out, size_t min_length,
                        size_t max_length) const {
  KVT_ASSIGN_OR_RETURN(std::optional<std::string_view> value,
                       StrView(name, need, min_length, max_length));
  if (!value.has_value()) return Status::OK();
  for (size_t i = 0; i < value->size(); ++i) {
    const auto c = static_cast<uint8_t>((*value)[i]);
    if (c < 0x21 || c > 0x7e) {
      return Error(name, fmt::format("has byte 0x{:02x} at offset {}: only printable ASCII "
                                     "without spaces is allowed",
                                     c, i));
    }
  }
  out->assign(*value);
  return Status::OK();
}

}  // namespace kvtier::msgpack_map
