#include "kvtier/keys/object_key.h"

#include <atomic>
#include <charconv>
#include <cstring>
#include <memory>

#include <absl/container/flat_hash_map.h>
#include <fmt/format.h>

#include "kvtier/common/check.h"
#include "kvtier/common/mutex.h"

namespace kvtier::keys {
namespace {

constexpr char kHexDigits[] = "0123456789abcdef";

int HexValue(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

// The intern table. Ids index a two-level array of immutable entries, so lookups by id take
// no lock: an entry is fully built before its id is published (release), and is never moved
// or freed.
class NamespaceRegistry {
 public:
  static NamespaceRegistry& Get() {
    static NamespaceRegistry* registry = new NamespaceRegistry();  // never destroyed
    return *registry;
  }

  Result<NamespaceId> Intern(std::string_view model, std::string_view salt) {
    std::string joined = Join(model, salt);
    MutexLock lock(&mu_);
    auto it = ids_.find(joined);
    if (it != ids_.end()) return it->second;
    NamespaceId id = next_id_;
    if (id >= kBlockSize * kMaxBlocks) {
      return MakeError(Status::ResourceExhausted(
          fmt::format("too many distinct (model, cache salt) namespaces (limit {})",
                      kBlockSize * kMaxBlocks - 1)));
    }
    size_t block = id / kBlockSize;
    if (blocks_[block].load(std::memory_order_relaxed) == nullptr) {
      blocks_[block].store(new Block(), std::memory_order_release);
    }
    Entry& e = (*blocks_[block].load(std::memory_order_relaxed))[id % kBlockSize];
    e.model.assign(model);
    e.salt.assign(salt);
    e.published.store(true, std::memory_order_release);
    ids_.emplace(std::move(joined), id);
    ++next_id_;
    return id;
  }

  const std::string* Model(NamespaceId id) const { return &Lookup(id).model; }
  const std::string* Salt(NamespaceId id) const { return &Lookup(id).salt; }

 private:
  struct Entry {
    std::string model;
    std::string salt;
    std::atomic<bool> published{false};
  };
  static constexpr size_t kBlockSize = 1024;
  static constexpr size_t kMaxBlocks = 4096;  // 4M namespaces
  using Block = std::array<Entry, kBlockSize>;

  static std::string Join(std::string_view model, std::string_view salt) {
    // NUL is forbidden in both names, so it separates them unambiguously.
    std::string s;
    s.reserve(model.size() + salt.size() + 1);
    s.append(model).push_back('\0');
    s.append(salt);
    return s;
  }

  const Entry& Lookup(NamespaceId id) const {
    KVT_CHECK_MSG(id != 0 && id < kBlockSize * kMaxBlocks, "invalid namespace id {}", id);
    const Block* block = blocks_[id / kBlockSize].load(std::memory_order_acquire);
    KVT_CHECK_MSG(block != nullptr, "namespace id {} was never interned", id);
    const Entry& e = (*block)[id % kBlockSize];
    KVT_CHECK_MSG(e.published.load(std::memory_order_acquire), "namespace id {} was never interned",
                  id);
    return e;
  }

  Mutex mu_;
  absl::flat_hash_map<std::string, NamespaceId> ids_ KVT_GUARDED_BY(mu_);
  NamespaceId next_id_ KVT_GUARDED_BY(mu_) = 1;
  std::array<std::atomic<Block*>, kMaxBlocks> blocks_{};
};

Status ValidateModelName(std::string_view model) {
  if (model.empty()) return Status(StatusCode::kInvalidKey, "model name is empty");
  if (model.size() > kMaxModelNameLength) {
    return Status(StatusCode::kInvalidKey, fmt::format("model name is {} bytes, the limit is {}",
                                                       model.size(), kMaxModelNameLength));
  }
  for (char c : model) {
    if (c == '@' || c == '\0') {
      return Status(StatusCode::kInvalidKey,
                    fmt::format("model name must not contain '@' or NUL: '{}'", model));
    }
  }
  return Status::OK();
}

Status ValidateCacheSalt(std::string_view salt) {
  if (salt.size() > kMaxCacheSaltLength) {
    return Status(StatusCode::kInvalidKey, fmt::format("cache salt is {} bytes, the limit is {}",
                                                       salt.size(), kMaxCacheSaltLength));
  }
  for (char c : salt) {
    if (c == '@' || c == '/' || c == '\\' || c == '\0') {
      return Status(StatusCode::kInvalidKey, "cache salt must not contain '@', '/', '\\' or NUL");
    }
  }
  return Status::OK();
}

// Canonical decimal only: no sign, no leading zeros (so each key has one spelling).
template <typename Int>
bool ParseDecimal(std::string_view s, Int* out) {
  if (s.empty() || (s.size() > 1 && s[0] == '0')) return false;
  auto [ptr, ec] = std::from_chars(s.data(), s.data() + s.size(), *out);
  return ec == std::errc() && ptr == s.data() + s.size();
}

}  // namespace

std::string ChunkHash::ToHex() const {
  std::string out(kChunkHashBytes * 2, '0');
  for (size_t i = 0; i < kChunkHashBytes; ++i) {
    out[2 * i] = kHexDigits[bytes[i] >> 4];
    out[2 * i + 1] = kHexDigits[bytes[i] & 0xf];
  }
  return out;
}

Result<ChunkHash> ChunkHash::FromHex(std::string_view hex) {
  if (hex.size() != kChunkHashBytes * 2) {
    return MakeError(
        Status(StatusCode::kInvalidKey, fmt::format("chunk hash must be {} hex characters, got {}",
                                                    kChunkHashBytes * 2, hex.size())));
  }
  ChunkHash h;
  for (size_t i = 0; i < kChunkHashBytes; ++i) {
    int hi = HexValue(hex[2 * i]);
    int lo = HexValue(hex[2 * i + 1]);
    if (hi < 0 || lo < 0) {
      return MakeError(Status(StatusCode::kInvalidKey, "chunk hash has a non-hex character"));
    }
    h.bytes[i] = static_cast<uint8_t>(hi << 4 | lo);
  }
  return h;
}

Status KvRank::Validate() const {
  if (world_size == 0) return Status(StatusCode::kInvalidKey, "world size must be at least 1");
  if (rank >= world_size) {
    return Status(StatusCode::kInvalidKey,
                  fmt::format("rank {} is outside a world of size {}", rank, world_size));
  }
  return Status::OK();
}

Result<NamespaceId> InternNamespace(std::string_view model_name, std::string_view cache_salt) {
  KVT_RETURN_IF_ERROR(ValidateModelName(model_name));
  KVT_RETURN_IF_ERROR(ValidateCacheSalt(cache_salt));
  return NamespaceRegistry::Get().Intern(model_name, cache_salt);
}

std::string_view NamespaceModelName(NamespaceId id) { return *NamespaceRegistry::Get().Model(id); }
std::string_view NamespaceCacheSalt(NamespaceId id) { return *NamespaceRegistry::Get().Salt(id); }

Result<ObjectKey> ObjectKey::Create(const ChunkHash& hash, std::string_view model_name, KvRank rank,
                                    uint32_t object_group, std::string_view cache_salt) {
  KVT_ASSIGN_OR_RETURN(NamespaceId ns, InternNamespace(model_name, cache_salt));
  return Create(hash, ns, rank, object_group);
}

Result<ObjectKey> ObjectKey::Create(const ChunkHash& hash, NamespaceId ns, KvRank rank,
                                    uint32_t object_group) {
  KVT_RETURN_IF_ERROR(rank.Validate());
  ObjectKey key;
  key.hash_ = hash;
  key.ns_ = ns;
  key.rank_ = rank.Packed();
  key.group_ = object_group;
  return key;
}

ObjectKey ObjectKey::WithRank(KvRank rank) const {
  KVT_DCHECK_MSG(rank.Validate().ok(), "invalid rank w{}r{}", rank.world_size, rank.rank);
  ObjectKey key = *this;
  key.rank_ = rank.Packed();
  return key;
}

std::string ObjectKey::ToString() const {
  KvRank r = kv_rank();
  std::string s =
      fmt::format("{}@w{}r{}@g{}@{}", model_name(), r.world_size, r.rank, group_, hash_.ToHex());
  std::string_view salt = cache_salt();
  if (!salt.empty()) {
    s.push_back('@');
    s.append(salt);
  }
  return s;
}

Result<ObjectKey> ObjectKey::Parse(std::string_view text) {
  auto bad = [&](std::string_view why) {
    return MakeError(
        Status(StatusCode::kInvalidKey, fmt::format("cannot parse object key: {}", why)));
  };
  std::string_view parts[5];
  size_t n = 0;
  size_t start = 0;
  for (size_t i = 0; i <= text.size(); ++i) {
    if (i == text.size() || text[i] == '@') {
      if (n == 5) return bad("more than 5 '@'-separated fields");
      parts[n++] = text.substr(start, i - start);
      start = i + 1;
    }
  }
  if (n < 4) return bad("expected <model>@w<ws>r<rank>@g<group>@<hash>[@<salt>]");
  std::string_view rank_part = parts[1];
  size_t r_pos = rank_part.find('r');
  if (rank_part.size() < 4 || rank_part[0] != 'w' || r_pos == std::string_view::npos) {
    return bad("rank field must look like w<world_size>r<rank>");
  }
  KvRank rank;
  if (!ParseDecimal(rank_part.substr(1, r_pos - 1), &rank.world_size) ||
      !ParseDecimal(rank_part.substr(r_pos + 1), &rank.rank)) {
    return bad("rank field must look like w<world_size>r<rank>");
  }
  uint32_t group = 0;
  if (parts[2].size() < 2 || parts[2][0] != 'g' || !ParseDecimal(parts[2].substr(1), &group)) {
    return bad("group field must look like g<number>");
  }
  for (char c : parts[3]) {
    if (c >= 'A' && c <= 'F') return bad("chunk hash must be lowercase hex");
  }
  KVT_ASSIGN_OR_RETURN(ChunkHash hash, ChunkHash::FromHex(parts[3]));
  std::string_view salt = n == 5 ? parts[4] : std::string_view();
  if (n == 5 && salt.empty()) return bad("empty cache salt field (omit it instead)");
  return Create(hash, parts[0], rank, group, salt);
}

size_t ObjectKey::Hash() const {
  // The chunk hash is already uniform; fold in the other fields and mix (splitmix64 finaliser).
  uint64_t x = hash_.Prefix64() ^ (static_cast<uint64_t>(ns_) << 32 | rank_) ^
               (static_cast<uint64_t>(group_) * 0x9e3779b97f4a7c15ULL);
  x ^= x >> 30;
  x *= 0xbf58476d1ce4e5b9ULL;
  x ^= x >> 27;
  x *= 0x94d049bb133111ebULL;
  x ^= x >> 31;
  return static_cast<size_t>(x);
}

}  // namespace kvtier::keys
