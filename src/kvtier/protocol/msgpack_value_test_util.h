// Test-only: a small msgpack value tree for hand-made payloads (the kind a foreign client, or
// an attacker, sends), editable by field path ("key.tokens").
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <utility>
#include <variant>
#include <vector>

#include <msgpack.hpp>

#include "kvtier/common/check.h"

namespace kvtier::protocol::testing {

class Value {
 public:
  struct Bin {
    std::string bytes;
  };
  using Array = std::vector<Value>;
  using Map = std::vector<std::pair<std::string, Value>>;  // in order; may repeat keys
  // Packed as a fixed-width msgpack int64 (0xd3), whatever the value.
  struct Int64 {
    int64_t v;
  };

  Value() = default;  // nil
  static Value Nil() { return Value(); }
  static Value Bool(bool b) { return Value(Rep(b)); }
  static Value Uint(uint64_t v) { return Value(Rep(v)); }
  static Value Int(int64_t v) { return Value(Rep(v)); }
  static Value FixedInt64(int64_t v) { return Value(Rep(Int64{v})); }
  static Value Float(double v) { return Value(Rep(v)); }
  static Value Str(std::string s) { return Value(Rep(std::move(s))); }
  static Value Binary(std::string bytes) { return Value(Rep(Bin{std::move(bytes)})); }
  static Value List(Array a) { return Value(Rep(std::move(a))); }
  static Value Object(Map m = {}) { return Value(Rep(std::move(m))); }
  // A bin of 4-byte little-endian token ids.
  static Value Tokens(const std::vector<uint32_t>& tokens) {
    std::string bytes;
    for (uint32_t t : tokens) {
      for (int i = 0; i < 4; ++i) bytes.push_back(static_cast<char>(t >> (8 * i)));
    }
    return Binary(std::move(bytes));
  }

  // The map entry at a dotted path, created (as nil) when absent. Aborts on a non-map.
  Value& At(std::string_view path) {
    const size_t dot = path.find('.');
    const std::string_view head = path.substr(0, dot);
    Map* map = std::get_if<Map>(&rep_);
    KVT_CHECK_MSG(map != nullptr, "'{}' is not inside a map", path);
    Value* child = nullptr;
    for (auto& [k, v] : *map) {
      if (k == head) child = &v;
    }
    if (child == nullptr) child = &map->emplace_back(std::string(head), Value()).second;
    return dot == std::string_view::npos ? *child : child->At(path.substr(dot + 1));
  }
  Value& Set(std::string_view path, Value v) {
    At(path) = std::move(v);
    return *this;
  }
  // Removes the entry at a dotted path (which must exist).
  Value& Erase(std::string_view path) {
    const size_t dot = path.rfind('.');
    Value& parent = dot == std::string_view::npos ? *this : At(path.substr(0, dot));
    const std::string_view name = dot == std::string_view::npos ? path : path.substr(dot + 1);
    Map& map = std::get<Map>(parent.rep_);
    const size_t before = map.size();
    std::erase_if(map, [&](const auto& kv) { return kv.first == name; });
    KVT_CHECK_MSG(map.size() < before, "no field '{}'", path);
    return *this;
  }
  // Appends an entry even if the key exists (a duplicate field).
  Value& Append(std::string name, Value v) {
    std::get<Map>(rep_).emplace_back(std::move(name), std::move(v));
    return *this;
  }

  std::vector<uint8_t> Pack() const {
    msgpack::sbuffer buffer;
    msgpack::packer<msgpack::sbuffer> packer(buffer);
    PackTo(packer);
    return std::vector<uint8_t>(buffer.data(), buffer.data() + buffer.size());
  }

  void PackTo(msgpack::packer<msgpack::sbuffer>& pk) const {
    std::visit(
        [&](const auto& x) {
          using T = std::decay_t<decltype(x)>;
          if constexpr (std::is_same_v<T, std::monostate>) {
            pk.pack_nil();
          } else if constexpr (std::is_same_v<T, bool>) {
            if (x) {
              pk.pack_true();
            } else {
              pk.pack_false();
            }
          } else if constexpr (std::is_same_v<T, uint64_t>) {
            pk.pack_uint64(x);
          } else if constexpr (std::is_same_v<T, int64_t>) {
            pk.pack_int64(x);
          } else if constexpr (std::is_same_v<T, Int64>) {
            pk.pack_fix_int64(x.v);
          } else if constexpr (std::is_same_v<T, double>) {
            pk.pack_double(x);
          } else if constexpr (std::is_same_v<T, std::string>) {
            pk.pack_str(static_cast<uint32_t>(x.size()));
            pk.pack_str_body(x.data(), static_cast<uint32_t>(x.size()));
          } else if constexpr (std::is_same_v<T, Bin>) {
            pk.pack_bin(static_cast<uint32_t>(x.bytes.size()));
            pk.pack_bin_body(x.bytes.data(), static_cast<uint32_t>(x.bytes.size()));
          } else if constexpr (std::is_same_v<T, Array>) {
            pk.pack_array(static_cast<uint32_t>(x.size()));
            for (const Value& v : x) v.PackTo(pk);
          } else {
            pk.pack_map(static_cast<uint32_t>(x.size()));
            for (const auto& [k, v] : x) {
              pk.pack_str(static_cast<uint32_t>(k.size()));
              pk.pack_str_body(k.data(), static_cast<uint32_t>(k.size()));
              v.PackTo(pk);
            }
          }
        },
        rep_);
  }

 private:
  using Rep = std::variant<std::monostate, bool, uint64_t, int64_t, Int64, double, std::string, Bin,
                           Array, Map>;
  explicit Value(Rep rep) : rep_(std::move(rep)) {}

  Rep rep_;
};

}  // namespace kvtier::protocol::testing
