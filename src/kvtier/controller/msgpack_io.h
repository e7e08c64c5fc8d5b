// Internal to the controller protocol's codec: msgpack writing, bounded parsing, and field
// readers that name the offending field in every error. Not a public API.
#pragma once

#include <cstdint>
#include <limits>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <type_traits>
#include <vector>

#include <msgpack.hpp>

#include "kvtier/common/result.h"
#include "kvtier/controller/messages.h"
#include "kvtier/keys/object_key.h"

namespace kvtier::controller::internal {

// ---- Text ----

bool IsValidUtf8(std::string_view text);
// `text` with every byte of an invalid UTF-8 sequence replaced by '?', cut to at most `limit`
// bytes without splitting a sequence.
std::string SanitizeText(std::string_view text, size_t limit);

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

// Writes msgpack; every container's size is given up front. The caller keeps within the
// protocol's limits (sizes below 2^32).
class Writer {
 public:
  explicit Writer(std::vector<uint8_t>* out) : sink_(out), packer_(sink_) {}

  void Map(size_t entries) { packer_.pack_map(static_cast<uint32_t>(entries)); }
  void Array(size_t size) { packer_.pack_array(static_cast<uint32_t>(size)); }
  void Str(std::string_view s);
  void Uint(uint64_t v) { packer_.pack_uint64(v); }  // the shortest encoding
  void Bool(bool b);
  void Nil() { packer_.pack_nil(); }
  // A bin of 32 * hashes.size() bytes.
  void Hashes(std::span<const keys::ChunkHash> hashes);

  // key: value entries.
  void Field(std::string_view key, std::string_view value) {
    Str(key);
    Str(value);
  }
  void Field(std::string_view key, const char* value) { Field(key, std::string_view{value}); }
  void Field(std::string_view key, const std::string& value) {
    Field(key, std::string_view{value});
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

 private:
  ByteSink sink_;
  msgpack::packer<ByteSink> packer_;
};

// ---- Reading ----

// What a decoder reports errors as: "<TYPE> <kind>: <what>".
struct Where {
  MessageType type;
  const char* kind;  // "event", "request", "reply", "error reply"

  Status Error(std::string_view what) const;
};

// Parses `body` (one msgpack map, nothing after it) into an object tree whose strings and bins
// point into `body`. Before anything is allocated, a first pass checks the structure: at most
// `max_elements` declared container elements, never more than the body's bytes could hold,
// nested at most 8 deep.
Result<msgpack::object_handle> ParseBody(const Where& where, std::span<const uint8_t> body,
                                         uint64_t max_elements);

enum class Need { kRequired, kOptional };

const char* TypeName(const msgpack::object& o);

// One msgpack map with string keys, read field by field. Unknown fields are ignored; a field
// given twice is an error. Absent optional fields leave the output untouched (its default).
class MapReader {
 public:
  // `prefix` names the map in errors: "" for the body, "groups[2]." for a nested one.
  static Result<MapReader> Of(const msgpack::object& o, const Where& where, std::string prefix);

  const Where& where() const { return *where_; }
  // "field '<prefix><name>' <what>".
  Status Error(std::string_view name, std::string_view what) const;

  // The field's value; nullptr when absent.
  Result<const msgpack::object*> Find(std::string_view name) const;
  Result<const msgpack::object*> Required(std::string_view name) const;

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
  Status Bool(std::string_view name, Need need, bool* out) const;

  // Valid UTF-8 of [min_length, max_length] bytes.
  Status Text(std::string_view name, Need need, std::string* out, size_t min_length,
              size_t max_length) const;
  // Printable ASCII (0x21..0x7e: no spaces, no control characters) of [min_length, max_length]
  // bytes: ids, locations, endpoints.
  Status Ident(std::string_view name, Need need, std::string* out, size_t min_length,
               size_t max_length) const;
  // A model name and cache salt under keys/' rules (checked without interning).
  Status Model(std::string_view name, std::string* out) const;
  Status CacheSalt(std::string_view name, std::string* out) const;

  // A bin of 32 * n bytes, n <= *budget; n is taken from the budget.
  Status Hashes(std::string_view name, size_t* budget, std::vector<keys::ChunkHash>* out) const;
  // A required array of at most `max_size` elements.
  Result<std::span<const msgpack::object>> Array(std::string_view name, size_t max_size) const;
  // The element's map, named "<name>[<i>]." in errors.
  Result<MapReader> Element(std::string_view name, size_t i, const msgpack::object& o) const;

 private:
  MapReader(const msgpack::object_map& map, const Where& where, std::string prefix)
      : map_(&map), where_(&where), prefix_(std::move(prefix)) {}

  Result<const msgpack::object*> Get(std::string_view name, Need need) const {
    return need == Need::kRequired ? Required(name) : Find(name);
  }
  Result<uint64_t> ToUint(std::string_view name, const msgpack::object& o, uint64_t lo,
                          uint64_t hi) const;
  Result<std::string_view> Str(std::string_view name, Need need, size_t min_length,
                               size_t max_length, bool* present) const;

  const msgpack::object_map* map_;
  const Where* where_;
  std::string prefix_;
};

}  // namespace kvtier::controller::internal
