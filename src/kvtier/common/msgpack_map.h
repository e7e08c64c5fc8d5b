// Bounded msgpack documents of one map with string keys: a thin layer over msgpack-cxx shared by
// the client/server protocol (protocol/codec.cc) and the controller protocol (controller/). It
// writes with msgpack::packer, checks a document's structure against limits before msgpack-cxx
// allocates anything, and reads fields with errors that name the offending field. What differs
// between the two protocols (limits, what errors call the document, the status code) is a
// Dialect; their schemas stay in their codecs.
#pragma once

#include <array>
#include <cstdint>
#include <cstring>
#include <limits>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <type_traits>
#include <vector>

#include <fmt/format.h>
#include <msgpack.hpp>

#include "kvtier/common/check.h"
#include "kvtier/common/result.h"
#include "kvtier/common/status.h"

namespace kvtier::msgpack_map {

// ---- Text ----

bool IsValidUtf8(std::string_view text);
// `text` with every byte of an invalid UTF-8 sequence replaced by '?', cut to at most `limit`
// bytes without splitting a sequence.
std::string SanitizeText(std::string_view text, size_t limit);
// `text` cut to at most `limit` bytes without splitting a UTF-8 sequence.
std::string_view TruncateUtf8(std::string_view text, size_t limit);

// ---- Writing ----

// msgpack's output stream concept: write(const char*, size_t).
class ByteSink {
 public:
  explicit ByteSink(std::vector<uint8_t>* out) : out_(out) {}
  // NOLINTNEXTLINE(readability-identifier-naming): the name msgpack::packer calls.
  void write(const char* data, size_t size) {
    const auto* bytes = reinterpret_cast<const uint8_t*>(data);
    out_->insert(out_->end(), bytes, bytes + size);
  }

 private:
  std::vector<uint8_t>* out_;
};

// Writes msgpack; every container's size is given up front. The caller keeps sizes below 2^32.
class Writer {
 public:
  explicit Writer(std::vector<uint8_t>* out) : sink_(out), packer_(sink_) {}

  void Map(size_t entries) { packer_.pack_map(U32(entries)); }
  void Array(size_t size) { packer_.pack_array(U32(size)); }
  void Str(std::string_view s) {
    packer_.pack_str(U32(s.size()));
    packer_.pack_str_body(s.data(), U32(s.size()));
  }
  void Uint(uint64_t v) { packer_.pack_uint64(v); }  // the shortest encoding
  void Bool(bool b) {
    if (b) {
      packer_.pack_true();
    } else {
      packer_.pack_false();
    }
  }
  void Nil() { packer_.pack_nil(); }
  void Bin(const void* data, size_t size) {
    packer_.pack_bin(U32(size));
    packer_.pack_bin_body(static_cast<const char*>(data), U32(size));
  }
  template <size_t N>
  void Bin(const std::array<uint8_t, N>& bytes) {
    Bin(bytes.data(), N);
  }
  // An array of unsigned integers.
  template <typename T>
  void UintArray(const std::vector<T>& values) {
    Array(values.size());
    for (T v : values) Uint(v);
  }

  // key: value entries.
  void Field(std::string_view key, std::string_view value) {
    Str(key);
    Str(value);
  }
  void Field(std::string_view key, const char* value) { Field(key, std::string_view(value)); }
  void Field(std::string_view key, const std::string& value) {
    Field(key, std::string_view(value));
  }
  void Field(std::string_view key, bool value) {
    Str(key);
    Bool(value);
  }
  template <typename T>
  requires(std::is_unsigned_v<T> && !std::is_same_v<T, bool>) void Field(std::string_view key,
                                                                         T value) {
    Str(key);
    Uint(value);
  }
  template <size_t N>
  void Field(std::string_view key, const std::array<uint8_t, N>& bytes) {
    Str(key);
    Bin(bytes);
  }

 private:
  static uint32_t U32(size_t n) {
    KVT_DCHECK(n <= std::numeric_limits<uint32_t>::max());
    return static_cast<uint32_t>(n);
  }

  ByteSink sink_;
  msgpack::packer<ByteSink> packer_;
};

// ---- Reading ----

// What differs between the protocols that read documents.
struct Dialect {
  std::string_view document;  // what errors call the top-level map: "payload", "body"
  StatusCode error_code;      // of every error
  uint32_t max_depth;         // container nesting
  uint64_t max_elements;      // declared container elements (Parse may be given another limit)
  uint64_t max_bytes;         // of a document, and so of any str or bin in it
  size_t max_string_bytes;    // MapReader::String's default limit
};

// Where errors come from: "<subject> <kind>: <what>", e.g. "STORE request: ...".
struct Where {
  const Dialect* dialect;
  std::string_view subject;
  std::string_view kind;  // "request", "reply", "error reply", "event"

  Status Error(std::string_view what) const;
};

// Parses `document` (one msgpack map, nothing after it) into an object tree whose strings and
// bins point into `document` (which must outlive the handle). Before anything is allocated, a
// first pass that keeps no values checks the structure: at most max_bytes, at most
// `max_elements` declared container elements (never more than the document's bytes could hold),
// nested at most max_depth deep.
Result<msgpack::object_handle> Parse(const Where& where, std::span<const uint8_t> document,
                                     uint64_t max_elements);
inline Result<msgpack::object_handle> Parse(const Where& where, std::span<const uint8_t> document) {
  return Parse(where, document, where.dialect->max_elements);
}

enum class Need { kRequired, kOptional };

// "nil", "a map", "a non-negative integer"...
const char* TypeName(const msgpack::object& o);
inline std::string_view AsView(const msgpack::object_str& s) { return {s.ptr, s.size}; }

// One msgpack map with string keys, read field by field. Unknown fields are ignored; a field
// given twice is an error. Absent optional fields leave the output untouched (it holds the
// default); nil counts as absent only in the Optional* readers.
class MapReader {
 public:
  // `prefix` names the map in errors: "" for the document, "key." or "groups[2]." for a nested
  // one. `where` must outlive the reader.
  static Result<MapReader> Of(const msgpack::object& o, const Where& where, std::string prefix);

  const Where& where() const { return *where_; }
  // "field '<prefix><name>' <what>".
  Status Error(std::string_view name, std::string_view what) const;

  // The field's value; nullptr when absent.
  Result<const msgpack::object*> Find(std::string_view name) const;
  Result<const msgpack::object*> Required(std::string_view name) const;

  // The required map in field `name`, named "<prefix><name>." in errors.
  Result<MapReader> Nested(std::string_view name) const;
  // A required array of at most `max_size` elements; `what` names it when it is not an array.
  Result<std::span<const msgpack::object>> Array(std::string_view name, size_t max_size,
                                                 std::string_view what = "an array") const;
  // Element `i` of array `name`, a map, named "<prefix><name>[<i>]." in errors.
  Result<MapReader> Element(std::string_view name, size_t i, const msgpack::object& o) const;

  // An unsigned integer in [lo, hi].
  template <typename T>
  Status Uint(std::string_view name, Need need, T* out, uint64_t lo = 0,
              uint64_t hi = std::numeric_limits<T>::max()) const {
    KVT_ASSIGN_OR_RETURN(const msgpack::object* o, Get(name, need));
    if (o == nullptr) return Status::OK();
    KVT_ASSIGN_OR_RETURN(uint64_t v, ToUint(name, *o, lo, hi));
    *out = static_cast<T>(v);
    return Status::OK();
  }
  // The same, or nil; absent is nil.
  template <typename T>
  Status OptionalUint(std::string_view name, std::optional<T>* out, uint64_t lo = 0,
                      uint64_t hi = std::numeric_limits<T>::max()) const {
    KVT_ASSIGN_OR_RETURN(const msgpack::object* o, Find(name));
    if (o == nullptr || o->type == msgpack::type::NIL) {
      out->reset();
      return Status::OK();
    }
    KVT_ASSIGN_OR_RETURN(uint64_t v, ToUint(name, *o, lo, hi));
    *out = static_cast<T>(v);
    return Status::OK();
  }
  // A required array of at most `max_size` unsigned integers, each at most `hi`.
  template <typename T>
  Status UintArray(std::string_view name, size_t max_size, std::vector<T>* out,
                   uint64_t hi = std::numeric_limits<T>::max()) const {
    KVT_ASSIGN_OR_RETURN(const msgpack::object* o, Required(name));
    if (o->type != msgpack::type::ARRAY) {
      return Error(name,
                   fmt::format("must be an array of unsigned integers, got {}", TypeName(*o)));
    }
    KVT_RETURN_IF_ERROR(CheckSize(name, o->via.array.size, max_size));
    out->clear();
    out->reserve(o->via.array.size);
    for (uint32_t i = 0; i < o->via.array.size; ++i) {
      const msgpack::object& e = o->via.array.ptr[i];
      // The element's name ("block_ids[7]") is formatted only for an error: block id arrays
      // hold hundreds of entries on the STORE/RETRIEVE path.
      if (e.type == msgpack::type::POSITIVE_INTEGER && e.via.u64 <= hi) {
        out->push_back(static_cast<T>(e.via.u64));
        continue;
      }
      return ToUint(fmt::format("{}[{}]", name, i), e, 0, hi).error();
    }
    return Status::OK();
  }

  Status Bool(std::string_view name, Need need, bool* out) const;

  // Value `o` (an array element), named `name` in errors, as a bool or as a str of
  // [min_length, max_length] bytes (max_length defaults to the dialect's max_string_bytes).
  Result<bool> AsBool(std::string_view name, const msgpack::object& o) const;
  Result<std::string_view> AsStr(std::string_view name, const msgpack::object& o,
                                 size_t min_length = 0,
                                 std::optional<size_t> max_length = std::nullopt) const;

  // A str of [min_length, max_length] bytes (max_length defaults to the dialect's
  // max_string_bytes); nullopt when absent.
  Result<std::optional<std::string_view>> StrView(
      std::string_view name, Need need, size_t min_length = 0,
      std::optional<size_t> max_length = std::nullopt) const;
  // The same, copied.
  Status String(std::string_view name, Need need, std::string* out, size_t min_length = 0,
                std::optional<size_t> max_length = std::nullopt) const;
  // The same, or nil; absent is nil.
  Status OptionalString(std::string_view name, std::optional<std::string>* out,
                        size_t min_length = 0,
                        std::optional<size_t> max_length = std::nullopt) const;
  // The same, valid UTF-8.
  Status Text(std::string_view name, Need need, std::string* out, size_t min_length,
              size_t max_length) const;
  // The same, printable ASCII (0x21..0x7e: no spaces, no control characters): ids, locations,
  // endpoints.
  Status Ident(std::string_view name, Need need, std::string* out, size_t min_length,
               size_t max_length) const;

  // A bin of exactly N bytes.
  template <size_t N>
  Status FixedBin(std::string_view name, Need need, std::array<uint8_t, N>* out) const {
    KVT_ASSIGN_OR_RETURN(const msgpack::object* o, Get(name, need));
    if (o == nullptr) return Status::OK();
    return ToFixedBin(name, *o, N, out->data());
  }
  // The same, or nil; absent is nil.
  template <size_t N>
  Status OptionalFixedBin(std::string_view name, std::optional<std::array<uint8_t, N>>* out) const {
    KVT_ASSIGN_OR_RETURN(const msgpack::object* o, Find(name));
    if (o == nullptr || o->type == msgpack::type::NIL) {
      out->reset();
      return Status::OK();
    }
    std::array<uint8_t, N> value;
    KVT_RETURN_IF_ERROR(ToFixedBin(name, *o, N, value.data()));
    *out = value;
    return Status::OK();
  }
  // A required array of at most `max_size` bins of exactly N bytes each.
  template <size_t N>
  Status FixedBinArray(std::string_view name, size_t max_size,
                       std::vector<std::array<uint8_t, N>>* out) const {
    KVT_ASSIGN_OR_RETURN(const msgpack::object* o, Required(name));
    if (o->type != msgpack::type::ARRAY) {
      return Error(name, fmt::format("must be an array of {}-byte bins, got {}", N, TypeName(*o)));
    }
    KVT_RETURN_IF_ERROR(CheckSize(name, o->via.array.size, max_size));
    out->assign(o->via.array.size, {});
    for (uint32_t i = 0; i < o->via.array.size; ++i) {
      KVT_RETURN_IF_ERROR(
          ToFixedBin(fmt::format("{}[{}]", name, i), o->via.array.ptr[i], N, (*out)[i].data()));
    }
    return Status::OK();
  }

 private:
  MapReader(const msgpack::object_map& map, const Where& where, std::string prefix)
      : map_(&map), where_(&where), prefix_(std::move(prefix)) {}

  Result<const msgpack::object*> Get(std::string_view name, Need need) const {
    return need == Need::kRequired ? Required(name) : Find(name);
  }
  Result<uint64_t> ToUint(std::string_view name, const msgpack::object& o, uint64_t lo,
                          uint64_t hi) const;
  Status ToFixedBin(std::string_view name, const msgpack::object& o, size_t size,
                    uint8_t* out) const;
  Status CheckSize(std::string_view name, size_t size, size_t max_size) const;
  Result<std::string_view> ToStr(std::string_view name, const msgpack::object& o, size_t min_length,
                                 std::optional<size_t> max_length) const;

  const msgpack::object_map* map_;
  const Where* where_;
  std::string prefix_;
};

}  // namespace kvtier::msgpack_map
