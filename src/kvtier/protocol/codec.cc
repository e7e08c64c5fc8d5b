#include "kvtier/protocol/codec.h"

#include <bit>
#include <cstring>
#include <limits>
#include <string_view>
#include <type_traits>
#include <utility>

#include <fmt/format.h>
#include <msgpack.hpp>

#include "kvtier/common/check.h"
#include "kvtier/common/msgpack_map.h"
#include "kvtier/keys/object_key.h"

namespace kvtier::protocol {
namespace {

// Structure limits on top of codec.h's field limits. Together they bound what decoding a
// payload may allocate, whatever its bytes declare: at most kMaxElements msgpack objects, each
// of which must actually be present in the payload.
constexpr uint32_t kMaxDepth = 16;
constexpr uint64_t kMaxElements = kMaxBlockIds + (64u << 10);

constexpr uint16_t kU16Max = std::numeric_limits<uint16_t>::max();

Status ProtocolError(std::string message) {
  return Status(StatusCode::kProtocolError, std::move(message));
}

// ---- Encoding ---------------------------------------------------------------------------

using msgpack_map::MapReader;
using msgpack_map::Need;
using msgpack_map::TruncateUtf8;
using msgpack_map::TypeName;

// Payloads: at most kMaxPayloadBytes, with codec.h's field limits and the structure limits above.
constexpr msgpack_map::Dialect kDialect{.document = "payload",
                                        .error_code = StatusCode::kProtocolError,
                                        .max_depth = kMaxDepth,
                                        .max_elements = kMaxElements,
                                        .max_bytes = kMaxPayloadBytes,
                                        .max_string_bytes = kMaxStringLength};

class Writer : public msgpack_map::Writer {
 public:
  using msgpack_map::Writer::Writer;

  // A bin of 4-byte little-endian values.
  void Tokens(const std::vector<uint32_t>& tokens) {
    const size_t bytes = tokens.size() * sizeof(uint32_t);
    if constexpr (std::endian::native == std::endian::little) {
      Bin(tokens.data(), bytes);
    } else {
      std::vector<uint32_t> le(tokens.size());
      for (size_t i = 0; i < tokens.size(); ++i) le[i] = __builtin_bswap32(tokens[i]);
      Bin(le.data(), bytes);
    }
  }
};

void Encode(Writer& w, const Key& k) {
  w.Map(8 + (k.end.has_value() ? 1 : 0));
  w.Field("model", k.model);
  w.Field("world_size", k.world_size);
  w.Str("worker_rank");
  if (k.worker_rank.has_value()) {
    w.Uint(*k.worker_rank);
  } else {
    w.Nil();
  }
  w.Field("cache_salt", k.cache_salt);
  w.Field("request_id", k.request_id);
  w.Str("tokens");
  w.Tokens(k.tokens);
  w.Field("start", k.start);
  if (k.end.has_value()) w.Field("end", *k.end);
  w.Field("object_group", k.object_group);
}

void Encode(Writer& w, const Layout& l) {
  w.Map(8);
  w.Field("num_layers", l.num_layers);
  w.Field("num_blocks", l.num_blocks);
  w.Field("block_size", l.block_size);
  w.Field("num_kv_heads", l.num_kv_heads);
  w.Field("head_dim", l.head_dim);
  w.Field("dtype", DTypeName(l.dtype));
  w.Field("format", KvFormatName(l.format));
  w.Str("layer_offsets");
  w.UintArray(l.layer_offsets);
}

// Requests.
void Encode(Writer& w, const HelloRequest& r) {
  w.Map(2);
  w.Field("protocol_version", r.protocol_version);
  w.Field("client", r.client);
}
void Encode(Writer& w, const RegisterKvCacheRequest& r) {
  const bool cuda = r.backend == "cuda";
  w.Map(cuda ? 10 : 8);
  w.Field("instance_id", r.instance_id);
  w.Field("model", r.model);
  w.Field("world_size", r.world_size);
  w.Field("worker_rank", r.worker_rank);
  w.Field("backend", r.backend);
  w.Str("layout");
  Encode(w, r.layout);
  w.Field("shm_name", r.shm_name);
  w.Field("shm_size", r.shm_size);
  if (cuda) {
    w.Field("device_uuid", r.device_uuid);
    w.Str("cuda_ipc_handles");
    w.Array(static_cast<uint32_t>(r.cuda_ipc_handles.size()));
    for (const CudaIpcHandle& h : r.cuda_ipc_handles) w.Bin(h);
  }
}
void Encode(Writer& w, const UnregisterKvCacheRequest& r) {
  w.Map(1);
  w.Field("instance_id", r.instance_id);
}
void Encode(Writer& w, const GetChunkSizeRequest&) { w.Map(0); }
void Encode(Writer& w, const LookupRequest& r) {
  w.Map(3);
  w.Str("key");
  Encode(w, r.key);
  w.Field("read_locks", r.read_locks);
  w.Field("timeout_ms", r.timeout_ms);
}
void Encode(Writer& w, const QueryPrefetchStatusRequest& r) {
  w.Map(1);
  w.Field("request_id", r.request_id);
}
void Encode(Writer& w, const WaitPrefetchStatusRequest& r) {
  w.Map(2);
  w.Field("request_id", r.request_id);
  w.Field("timeout_ms", r.timeout_ms);
}
void Encode(Writer& w, const QueryPrefetchLookupHitsRequest& r) {
  w.Map(1);
  w.Field("request_id", r.request_id);
}
void Encode(Writer& w, const StoreRequest& r) {
  w.Map(r.event_ipc_handle ? 4 : 3);
  w.Field("instance_id", r.instance_id);
  w.Str("key");
  Encode(w, r.key);
  w.Str("block_ids");
  w.UintArray(r.block_ids);
  if (r.event_ipc_handle) w.Field("event_ipc_handle", *r.event_ipc_handle);
}
void Encode(Writer& w, const RetrieveRequest& r) {
  w.Map(r.event_ipc_handle ? 5 : 4);
  w.Field("instance_id", r.instance_id);
  w.Str("key");
  Encode(w, r.key);
  w.Str("block_ids");
  w.UintArray(r.block_ids);
  w.Field("skip_first_n_tokens", r.skip_first_n_tokens);
  if (r.event_ipc_handle) w.Field("event_ipc_handle", *r.event_ipc_handle);
}
void Encode(Writer& w, const FreeLookupLocksRequest& r) {
  w.Map(1);
  w.Str("key");
  Encode(w, r.key);
}
void Encode(Writer& w, const EndSessionRequest& r) {
  w.Map(1);
  w.Field("request_id", r.request_id);
}
void Encode(Writer& w, const PingRequest& r) {
  w.Map(1);
  w.Str("instance_id");
  if (r.instance_id.has_value()) {
    w.Str(*r.instance_id);
  } else {
    w.Nil();
  }
}
void Encode(Writer& w, const ClearRequest& r) {
  w.Map(1);
  w.Field("force", r.force);
}
void Encode(Writer& w, const NoopRequest&) { w.Map(0); }
void Encode(Writer& w, const ReadObjectsRequest& r) {
  w.Map(2);
  w.Str("keys");
  w.Array(static_cast<uint32_t>(r.keys.size()));
  for (const std::string& k : r.keys) w.Str(k);
  w.Field("max_bytes", r.max_bytes);
}

// Replies.
void Encode(Writer& w, const HelloReply& r) {
  w.Map(5);
  w.Field("protocol_version", r.protocol_version);
  w.Field("server_id", r.server_id);
  w.Field("server_version", r.server_version);
  w.Field("chunk_size", r.chunk_size);
  w.Field("hash_algorithm", r.hash_algorithm);
}
void Encode(Writer& w, const RegisterKvCacheReply& r) {
  w.Map(1);
  w.Field("object_size", r.object_size);
}
void Encode(Writer& w, const EmptyReply&) { w.Map(0); }
void Encode(Writer& w, const ChunkSizeReply& r) {
  w.Map(1);
  w.Field("chunk_size", r.chunk_size);
}
void Encode(Writer& w, const PrefetchStatusReply& r) {
  w.Map(2);
  w.Field("done", r.done);
  w.Field("hit_chunks", r.hit_chunks);
}
void Encode(Writer& w, const LookupHitsReply& r) {
  w.Map(2);
  w.Field("known", r.known);
  w.Field("hit_chunks", r.hit_chunks);
}
void Encode(Writer& w, const StoreReply& r) {
  w.Map(r.event_ipc_handle ? 4 : 3);
  w.Field("stored_chunks", r.stored_chunks);
  w.Field("present_chunks", r.present_chunks);
  w.Field("failed_chunks", r.failed_chunks);
  if (r.event_ipc_handle) w.Field("event_ipc_handle", *r.event_ipc_handle);
}
void Encode(Writer& w, const RetrieveReply& r) {
  w.Map(r.event_ipc_handle ? 2 : 1);
  w.Field("retrieved_chunks", r.retrieved_chunks);
  if (r.event_ipc_handle) w.Field("event_ipc_handle", *r.event_ipc_handle);
}
void Encode(Writer& w, const FreeLookupLocksReply& r) {
  w.Map(1);
  w.Field("released", r.released);
}
void Encode(Writer& w, const EndSessionReply& r) {
  w.Map(1);
  w.Field("touched_keys", r.touched_keys);
}
void Encode(Writer& w, const PingReply& r) {
  w.Map(1);
  w.Field("ok", r.ok);
}
void Encode(Writer& w, const ClearReply& r) {
  w.Map(1);
  w.Field("cleared", r.cleared);
}
void Encode(Writer& w, const ReadObjectsReply& r) {
  w.Map(1);
  w.Str("found");
  w.Array(static_cast<uint32_t>(r.found.size()));
  for (bool f : r.found) w.Bool(f);
}
void Encode(Writer& w, const ErrorReply& r) {
  w.Map(3);
  // Error codes are positive; anything else would not decode, so it is sent as kInternal.
  int32_t code = static_cast<int32_t>(r.code);
  if (code <= 0) code = static_cast<int32_t>(StatusCode::kInternal);
  w.Field("code", static_cast<uint32_t>(code));
  w.Field("message", TruncateUtf8(r.message, kMaxStringLength));
  w.Field("retryable", r.retryable);
}

// A generous first guess of the payload size, so that big keys are written without regrowth.
size_t SizeHint(const Key& k) {
  return 128 + k.model.size() + k.request_id.size() + 4 * k.tokens.size();
}
template <typename T>
size_t SizeHint(const T&) {
  return 128;
}
size_t SizeHint(const LookupRequest& r) { return 32 + SizeHint(r.key); }
size_t SizeHint(const FreeLookupLocksRequest& r) { return 32 + SizeHint(r.key); }
size_t SizeHint(const StoreRequest& r) { return 64 + SizeHint(r.key) + 5 * r.block_ids.size(); }
size_t SizeHint(const RetrieveRequest& r) { return 96 + SizeHint(r.key) + 5 * r.block_ids.size(); }
size_t SizeHint(const ReadObjectsRequest& r) {
  size_t n = 32;
  for (const std::string& k : r.keys) n += k.size() + 5;
  return n;
}
size_t SizeHint(const ReadObjectsReply& r) { return 16 + r.found.size(); }
size_t SizeHint(const RegisterKvCacheRequest& r) {
  return 256 + r.shm_name.size() + 9 * r.layout.layer_offsets.size() +
         (kCudaIpcHandleBytes + 2) * r.cuda_ipc_handles.size();
}

std::vector<uint8_t> EncodePayload(const auto& message) {
  std::vector<uint8_t> out;
  out.reserve(SizeHint(message));
  Writer w(&out);
  Encode(w, message);
  return out;
}

// ---- Field decoding ---------------------------------------------------------------------

// What a decoder reports errors as: "<OPCODE> request: ...".
msgpack_map::Where WhereOf(Opcode opcode, std::string_view kind) {
  return msgpack_map::Where{&kDialect, OpcodeName(opcode), kind};
}

// A bin of 4-byte little-endian values.
Status ReadTokens(const MapReader& m, std::string_view name, std::vector<uint32_t>* out) {
  KVT_ASSIGN_OR_RETURN(const msgpack::object* o, m.Required(name));
  if (o->type != msgpack::type::BIN) {
    return m.Error(
        name, fmt::format("must be bin (4-byte little-endian token ids), got {}", TypeName(*o)));
  }
  const msgpack::object_bin& bin = o->via.bin;
  if (bin.size % sizeof(uint32_t) != 0) {
    return m.Error(name, fmt::format("is {} bytes, not a multiple of 4", bin.size));
  }
  const size_t count = bin.size / sizeof(uint32_t);
  if (count > kMaxTokens) {
    return m.Error(name, fmt::format("holds {} tokens, the limit is {}", count, kMaxTokens));
  }
  out->resize(count);
  if (count > 0) std::memcpy(out->data(), bin.ptr, bin.size);
  if constexpr (std::endian::native == std::endian::big) {
    for (uint32_t& t : *out) t = __builtin_bswap32(t);
  }
  return Status::OK();
}

// Model names and cache salts follow keys/ (InternNamespace), checked here without interning.
Status CheckModel(const MapReader& m, std::string_view name, std::string_view model) {
  for (char c : model) {
    if (c == '@' || c == '\0') return m.Error(name, "must not contain '@' or NUL");
  }
  return Status::OK();
}

Status CheckCacheSalt(const MapReader& m, std::string_view salt) {
  for (char c : salt) {
    if (c == '@' || c == '/' || c == '\\' || c == '\0') {
      return m.Error("cache_salt", "must not contain '@', '/', '\\' or NUL");
    }
  }
  return Status::OK();
}

Status CheckRank(const MapReader& m, uint16_t world_size, uint16_t worker_rank) {
  if (worker_rank >= world_size) {
    return m.Error("worker_rank",
                   fmt::format("is {}, must be < world_size ({})", worker_rank, world_size));
  }
  return Status::OK();
}

// Whether a key names one worker's rank (transfers) or every rank (lookups).
enum class RankUse { kRequired, kNil };

Status DecodeKey(const MapReader& parent, RankUse rank_use, Key* k) {
  KVT_ASSIGN_OR_RETURN(MapReader m, parent.Nested("key"));
  KVT_RETURN_IF_ERROR(
      m.String("model", Need::kRequired, &k->model, /*min_length=*/1, keys::kMaxModelNameLength));
  KVT_RETURN_IF_ERROR(CheckModel(m, "model", k->model));
  KVT_RETURN_IF_ERROR(m.Uint("world_size", Need::kOptional, &k->world_size, 1, kU16Max));
  KVT_RETURN_IF_ERROR(m.OptionalUint("worker_rank", &k->worker_rank, 0, kU16Max - 1));
  if (k->worker_rank.has_value()) {
    if (rank_use == RankUse::kNil) {
      return m.Error("worker_rank", "must be nil: this operation covers every rank");
    }
    KVT_RETURN_IF_ERROR(CheckRank(m, k->world_size, *k->worker_rank));
  } else if (rank_use == RankUse::kRequired) {
    return m.Error("worker_rank", "is required: this operation is about one worker's rank");
  }
  KVT_RETURN_IF_ERROR(m.String("cache_salt", Need::kOptional, &k->cache_salt,
                               /*min_length=*/0, keys::kMaxCacheSaltLength));
  KVT_RETURN_IF_ERROR(CheckCacheSalt(m, k->cache_salt));
  KVT_RETURN_IF_ERROR(m.String("request_id", Need::kRequired, &k->request_id, /*min_length=*/1));
  KVT_RETURN_IF_ERROR(ReadTokens(m, "tokens", &k->tokens));
  KVT_RETURN_IF_ERROR(m.Uint("start", Need::kOptional, &k->start));
  KVT_RETURN_IF_ERROR(m.OptionalUint("end", &k->end));
  if (k->start > k->tokens.size()) {
    return m.Error("start", fmt::format("is {}, beyond the {} tokens", k->start, k->tokens.size()));
  }
  if (k->end.has_value()) {
    if (*k->end < k->start) {
      return m.Error("end", fmt::format("is {}, before start ({})", *k->end, k->start));
    }
    if (*k->end > k->tokens.size()) {
      return m.Error("end", fmt::format("is {}, beyond the {} tokens", *k->end, k->tokens.size()));
    }
  }
  KVT_RETURN_IF_ERROR(m.Uint("object_group", Need::kOptional, &k->object_group));
  return Status::OK();
}

Status DecodeLayout(const MapReader& parent, Layout* l) {
  KVT_ASSIGN_OR_RETURN(MapReader m, parent.Nested("layout"));
  KVT_RETURN_IF_ERROR(m.Uint("num_layers", Need::kRequired, &l->num_layers, 1, kMaxLayers));
  KVT_RETURN_IF_ERROR(m.Uint("num_blocks", Need::kRequired, &l->num_blocks, 1));
  KVT_RETURN_IF_ERROR(m.Uint("block_size", Need::kRequired, &l->block_size, 1));
  KVT_RETURN_IF_ERROR(m.Uint("num_kv_heads", Need::kRequired, &l->num_kv_heads, 1));
  KVT_RETURN_IF_ERROR(m.Uint("head_dim", Need::kRequired, &l->head_dim, 1));
  std::string name;
  KVT_RETURN_IF_ERROR(m.String("dtype", Need::kRequired, &name));
  std::optional<DType> dtype = DTypeFromName(name);
  if (!dtype) {
    return m.Error("dtype", fmt::format("is '{}', expected one of: {}", name, DTypeChoices()));
  }
  l->dtype = *dtype;
  KVT_RETURN_IF_ERROR(m.String("format", Need::kRequired, &name));
  std::optional<KvFormat> format = KvFormatFromName(name);
  if (!format) {
    return m.Error("format", fmt::format("is '{}', expected one of: {}", name, KvFormatChoices()));
  }
  l->format = *format;
  if (l->format == KvFormat::kMla && l->num_kv_heads != 1) {
    return m.Error("num_kv_heads", fmt::format("is {}, must be 1 for format mla", l->num_kv_heads));
  }
  KVT_RETURN_IF_ERROR(m.UintArray("layer_offsets", kMaxLayers, &l->layer_offsets));
  if (l->layer_offsets.size() != l->num_layers) {
    return m.Error("layer_offsets", fmt::format("has {} entries, num_layers is {}",
                                                l->layer_offsets.size(), l->num_layers));
  }
  return Status::OK();
}

// ---- Requests ----

Status DecodeFields(const MapReader& m, HelloRequest* r) {
  KVT_RETURN_IF_ERROR(m.Uint("protocol_version", Need::kRequired, &r->protocol_version));
  return m.String("client", Need::kRequired, &r->client);
}

Status DecodeFields(const MapReader& m, RegisterKvCacheRequest* r) {
  KVT_RETURN_IF_ERROR(m.String("instance_id", Need::kRequired, &r->instance_id, 1));
  KVT_RETURN_IF_ERROR(
      m.String("model", Need::kRequired, &r->model, /*min_length=*/1, keys::kMaxModelNameLength));
  KVT_RETURN_IF_ERROR(CheckModel(m, "model", r->model));
  KVT_RETURN_IF_ERROR(m.Uint("world_size", Need::kRequired, &r->world_size, 1, kU16Max));
  KVT_RETURN_IF_ERROR(m.Uint("worker_rank", Need::kRequired, &r->worker_rank, 0, kU16Max - 1));
  KVT_RETURN_IF_ERROR(CheckRank(m, r->world_size, r->worker_rank));
  KVT_RETURN_IF_ERROR(m.String("backend", Need::kOptional, &r->backend));
  const bool host = r->backend == "host";
  if (!host && r->backend != "cuda") {
    return m.Error("backend", fmt::format("is '{}', expected one of: host, cuda", r->backend));
  }
  KVT_RETURN_IF_ERROR(DecodeLayout(m, &r->layout));
  KVT_RETURN_IF_ERROR(
      m.String("shm_name", Need::kRequired, &r->shm_name, /*min_length=*/host ? 1 : 0));
  KVT_RETURN_IF_ERROR(m.Uint("shm_size", Need::kRequired, &r->shm_size));
  if (!host) {
    KVT_RETURN_IF_ERROR(m.FixedBin("device_uuid", Need::kRequired, &r->device_uuid));
    KVT_RETURN_IF_ERROR(m.FixedBinArray("cuda_ipc_handles", kMaxLayers, &r->cuda_ipc_handles));
    if (r->cuda_ipc_handles.size() != r->layout.num_layers) {
      return m.Error("cuda_ipc_handles",
                     fmt::format("has {} entries, num_layers is {}", r->cuda_ipc_handles.size(),
                                 r->layout.num_layers));
    }
  }
  if (host) {
    // Every layer's tensor must lie inside the shared-memory segment.
    std::optional<uint64_t> layer_bytes = LayerBytes(r->layout);
    if (!layer_bytes) return m.Error("layout", "describes layers larger than 2^64 bytes");
    for (size_t i = 0; i < r->layout.layer_offsets.size(); ++i) {
      const uint64_t offset = r->layout.layer_offsets[i];
      if (offset > r->shm_size || *layer_bytes > r->shm_size - offset) {
        return m.Error(fmt::format("layout.layer_offsets[{}]", i),
                       fmt::format("is {}: the layer's {} bytes end beyond shm_size ({})", offset,
                                   *layer_bytes, r->shm_size));
      }
    }
  }
  return Status::OK();
}

Status DecodeFields(const MapReader& m, UnregisterKvCacheRequest* r) {
  return m.String("instance_id", Need::kRequired, &r->instance_id, /*min_length=*/1);
}

Status DecodeFields(const MapReader&, GetChunkSizeRequest*) { return Status::OK(); }

Status DecodeFields(const MapReader& m, LookupRequest* r) {
  KVT_RETURN_IF_ERROR(DecodeKey(m, RankUse::kNil, &r->key));
  KVT_RETURN_IF_ERROR(m.Uint("read_locks", Need::kOptional, &r->read_locks, 1, 128));
  return m.Uint("timeout_ms", Need::kOptional, &r->timeout_ms);
}

Status DecodeFields(const MapReader& m, QueryPrefetchStatusRequest* r) {
  return m.String("request_id", Need::kRequired, &r->request_id, /*min_length=*/1);
}

Status DecodeFields(const MapReader& m, WaitPrefetchStatusRequest* r) {
  KVT_RETURN_IF_ERROR(m.String("request_id", Need::kRequired, &r->request_id, /*min_length=*/1));
  return m.Uint("timeout_ms", Need::kRequired, &r->timeout_ms);
}

Status DecodeFields(const MapReader& m, QueryPrefetchLookupHitsRequest* r) {
  return m.String("request_id", Need::kRequired, &r->request_id, /*min_length=*/1);
}

Status DecodeFields(const MapReader& m, StoreRequest* r) {
  KVT_RETURN_IF_ERROR(m.String("instance_id", Need::kRequired, &r->instance_id, 1));
  KVT_RETURN_IF_ERROR(DecodeKey(m, RankUse::kRequired, &r->key));
  KVT_RETURN_IF_ERROR(m.UintArray("block_ids", kMaxBlockIds, &r->block_ids));
  return m.OptionalFixedBin("event_ipc_handle", &r->event_ipc_handle);
}

Status DecodeFields(const MapReader& m, RetrieveRequest* r) {
  KVT_RETURN_IF_ERROR(m.String("instance_id", Need::kRequired, &r->instance_id, 1));
  KVT_RETURN_IF_ERROR(DecodeKey(m, RankUse::kRequired, &r->key));
  KVT_RETURN_IF_ERROR(m.UintArray("block_ids", kMaxBlockIds, &r->block_ids));
  KVT_RETURN_IF_ERROR(m.Uint("skip_first_n_tokens", Need::kOptional, &r->skip_first_n_tokens));
  KVT_RETURN_IF_ERROR(m.OptionalFixedBin("event_ipc_handle", &r->event_ipc_handle));
  const uint64_t range_end = r->key.end.value_or(static_cast<uint32_t>(r->key.tokens.size()));
  if (r->skip_first_n_tokens > range_end - r->key.start) {
    return m.Error("skip_first_n_tokens",
                   fmt::format("is {}, more than the range's {} tokens", r->skip_first_n_tokens,
                               range_end - r->key.start));
  }
  return Status::OK();
}

Status DecodeFields(const MapReader& m, FreeLookupLocksRequest* r) {
  return DecodeKey(m, RankUse::kNil, &r->key);
}

Status DecodeFields(const MapReader& m, EndSessionRequest* r) {
  return m.String("request_id", Need::kRequired, &r->request_id, /*min_length=*/1);
}

Status DecodeFields(const MapReader& m, PingRequest* r) {
  return m.OptionalString("instance_id", &r->instance_id, /*min_length=*/1);
}

Status DecodeFields(const MapReader& m, ClearRequest* r) {
  return m.Bool("force", Need::kOptional, &r->force);
}

Status DecodeFields(const MapReader&, NoopRequest*) { return Status::OK(); }

Status DecodeFields(const MapReader& m, ReadObjectsRequest* r) {
  KVT_ASSIGN_OR_RETURN(auto array, m.Array("keys", kMaxReadObjectsKeys, "an array of object keys"));
  if (array.empty()) return m.Error("keys", "must not be empty");
  r->keys.assign(array.size(), {});
  for (size_t i = 0; i < array.size(); ++i) {
    const std::string name = fmt::format("keys[{}]", i);
    KVT_ASSIGN_OR_RETURN(std::string_view text, m.AsStr(name, array[i]));
    Result<keys::ObjectKey> key = keys::ObjectKey::Parse(text);
    if (!key) {
      return m.Error(name, fmt::format("is not an object key: {}", key.error().message()));
    }
    r->keys[i].assign(text);
  }
  return m.Uint("max_bytes", Need::kRequired, &r->max_bytes, 1);
}

// ---- Replies ----

Status DecodeFields(const MapReader& m, HelloReply* r) {
  KVT_RETURN_IF_ERROR(m.Uint("protocol_version", Need::kRequired, &r->protocol_version));
  KVT_RETURN_IF_ERROR(m.String("server_id", Need::kRequired, &r->server_id));
  KVT_RETURN_IF_ERROR(m.String("server_version", Need::kRequired, &r->server_version));
  KVT_RETURN_IF_ERROR(m.Uint("chunk_size", Need::kRequired, &r->chunk_size, 1));
  return m.String("hash_algorithm", Need::kRequired, &r->hash_algorithm);
}

Status DecodeFields(const MapReader& m, RegisterKvCacheReply* r) {
  return m.Uint("object_size", Need::kRequired, &r->object_size);
}

Status DecodeFields(const MapReader&, EmptyReply*) { return Status::OK(); }

Status DecodeFields(const MapReader& m, ChunkSizeReply* r) {
  return m.Uint("chunk_size", Need::kRequired, &r->chunk_size, 1);
}

Status DecodeFields(const MapReader& m, PrefetchStatusReply* r) {
  KVT_RETURN_IF_ERROR(m.Bool("done", Need::kRequired, &r->done));
  return m.Uint("hit_chunks", Need::kRequired, &r->hit_chunks);
}

Status DecodeFields(const MapReader& m, LookupHitsReply* r) {
  KVT_RETURN_IF_ERROR(m.Bool("known", Need::kRequired, &r->known));
  return m.Uint("hit_chunks", Need::kRequired, &r->hit_chunks);
}

Status DecodeFields(const MapReader& m, StoreReply* r) {
  KVT_RETURN_IF_ERROR(m.Uint("stored_chunks", Need::kRequired, &r->stored_chunks));
  KVT_RETURN_IF_ERROR(m.Uint("present_chunks", Need::kRequired, &r->present_chunks));
  KVT_RETURN_IF_ERROR(m.Uint("failed_chunks", Need::kRequired, &r->failed_chunks));
  return m.OptionalFixedBin("event_ipc_handle", &r->event_ipc_handle);
}

Status DecodeFields(const MapReader& m, RetrieveReply* r) {
  KVT_RETURN_IF_ERROR(m.Uint("retrieved_chunks", Need::kRequired, &r->retrieved_chunks));
  return m.OptionalFixedBin("event_ipc_handle", &r->event_ipc_handle);
}

Status DecodeFields(const MapReader& m, FreeLookupLocksReply* r) {
  return m.Uint("released", Need::kRequired, &r->released);
}

Status DecodeFields(const MapReader& m, EndSessionReply* r) {
  return m.Uint("touched_keys", Need::kRequired, &r->touched_keys);
}

Status DecodeFields(const MapReader& m, PingReply* r) {
  return m.Bool("ok", Need::kRequired, &r->ok);
}

Status DecodeFields(const MapReader& m, ClearReply* r) {
  return m.Uint("cleared", Need::kRequired, &r->cleared);
}

Status DecodeFields(const MapReader& m, ReadObjectsReply* r) {
  KVT_ASSIGN_OR_RETURN(auto array, m.Array("found", kMaxReadObjectsKeys, "an array of bools"));
  r->found.assign(array.size(), false);
  for (size_t i = 0; i < array.size(); ++i) {
    KVT_ASSIGN_OR_RETURN(const bool found, m.AsBool(fmt::format("found[{}]", i), array[i]));
    r->found[i] = found;
  }
  return Status::OK();
}

Status DecodeFields(const MapReader& m, ErrorReply* r) {
  uint32_t code = 0;
  KVT_RETURN_IF_ERROR(m.Uint("code", Need::kRequired, &code, 1,
                             static_cast<uint64_t>(std::numeric_limits<int32_t>::max())));
  r->code = static_cast<StatusCode>(code);
  KVT_RETURN_IF_ERROR(m.String("message", Need::kRequired, &r->message));
  return m.Bool("retryable", Need::kRequired, &r->retryable);
}

// Decodes a payload as message type T, returned as the variant V.
template <typename T, typename V>
Result<V> DecodeAs(const msgpack_map::Where& where, std::span<const uint8_t> payload) {
  KVT_ASSIGN_OR_RETURN(msgpack::object_handle handle, msgpack_map::Parse(where, payload));
  KVT_ASSIGN_OR_RETURN(MapReader m, MapReader::Of(handle.get(), where, ""));
  V result(std::in_place_type<T>);
  KVT_RETURN_IF_ERROR(DecodeFields(m, &std::get<T>(result)));
  return result;
}

// The reply type of each opcode, as its index in Reply; opcodes outside 1..kMaxOpcode give
// std::variant_npos.
template <typename T>
constexpr size_t ReplyIndex() {
  constexpr auto kIndex = []<size_t... I>(std::index_sequence<I...>) {
    size_t index = std::variant_npos;
    ((std::is_same_v<T, std::variant_alternative_t<I, Reply>> ? index = I : index), ...);
    return index;
  }
  (std::make_index_sequence<std::variant_size_v<Reply>>());
  static_assert(kIndex != std::variant_npos);
  return kIndex;
}

// Decodes a payload as alternative `index` of V; the caller checks that it is one.
template <typename V, size_t... I>
Result<V> DecodeIndexed(size_t index, const msgpack_map::Where& where,
                        std::span<const uint8_t> payload, std::index_sequence<I...>) {
  Result<V> result = MakeError(where.Error("no such message"));
  const auto decode_if = [&]<size_t J>(std::integral_constant<size_t, J>) {
    if (index != J) return false;
    result = DecodeAs<std::variant_alternative_t<J, V>, V>(where, payload);
    return true;
  };
  (decode_if(std::integral_constant<size_t, I>()) || ...);
  return result;
}

Status CheckVersion(const Header& header) {
  if (header.version != kProtocolVersion) {
    return Status(StatusCode::kUnsupportedVersion,
                  fmt::format("protocol version {} is not supported (this side speaks version {})",
                              header.version, kProtocolVersion));
  }
  if ((header.flags & ~(kFlagReply | kFlagError)) != 0) {
    return ProtocolError(fmt::format("unknown header flags 0x{:02x}", header.flags));
  }
  return Status::OK();
}

Status UnknownOpcode(uint16_t opcode) {
  return Status(StatusCode::kUnknownOpcode,
                fmt::format("unknown opcode {} (requests use 1..{})", opcode, kMaxOpcode));
}

}  // namespace

size_t ReplyIndexFor(Opcode opcode) {
  switch (opcode) {
    case Opcode::kHello:
      return ReplyIndex<HelloReply>();
    case Opcode::kRegisterKvCache:
      return ReplyIndex<RegisterKvCacheReply>();
    case Opcode::kUnregisterKvCache:
    case Opcode::kLookup:
    case Opcode::kNoop:
      return ReplyIndex<EmptyReply>();
    case Opcode::kGetChunkSize:
      return ReplyIndex<ChunkSizeReply>();
    case Opcode::kQueryPrefetchStatus:
    case Opcode::kWaitPrefetchStatus:
      return ReplyIndex<PrefetchStatusReply>();
    case Opcode::kQueryPrefetchLookupHits:
      return ReplyIndex<LookupHitsReply>();
    case Opcode::kStore:
      return ReplyIndex<StoreReply>();
    case Opcode::kRetrieve:
      return ReplyIndex<RetrieveReply>();
    case Opcode::kFreeLookupLocks:
      return ReplyIndex<FreeLookupLocksReply>();
    case Opcode::kEndSession:
      return ReplyIndex<EndSessionReply>();
    case Opcode::kPing:
      return ReplyIndex<PingReply>();
    case Opcode::kClear:
      return ReplyIndex<ClearReply>();
    case Opcode::kReadObjects:
      return ReplyIndex<ReadObjectsReply>();
    case Opcode::kInvalid:
      break;
  }
  return std::variant_npos;
}

std::vector<uint8_t> EncodeHeader(const Header& h) {
  std::vector<uint8_t> out(kHeaderSize, 0);
  const auto opcode = static_cast<uint16_t>(h.opcode);
  out[0] = kMagic0;
  out[1] = kMagic1;
  out[2] = h.version;
  out[3] = h.flags;
  out[4] = static_cast<uint8_t>(opcode);
  out[5] = static_cast<uint8_t>(opcode >> 8);
  // out[6], out[7]: reserved, 0.
  for (int i = 0; i < 8; ++i) out[8 + i] = static_cast<uint8_t>(h.request_id >> (8 * i));
  return out;
}

Result<Header> DecodeHeader(std::span<const uint8_t> frame) {
  if (frame.size() != kHeaderSize) {
    return MakeError(ProtocolError(
        fmt::format("header frame is {} bytes, expected {}", frame.size(), kHeaderSize)));
  }
  if (frame[0] != kMagic0 || frame[1] != kMagic1) {
    return MakeError(ProtocolError(
        fmt::format("bad magic 0x{:02x} 0x{:02x} (expected 'K' 'V')", frame[0], frame[1])));
  }
  Header h;
  h.version = frame[2];
  h.flags = frame[3];
  KVT_RETURN_IF_ERROR(CheckVersion(h));
  const bool reply = (h.flags & kFlagReply) != 0;
  if ((h.flags & kFlagError) != 0 && !reply) {
    return MakeError(ProtocolError("header has the error flag without the reply flag"));
  }
  const uint16_t reserved = static_cast<uint16_t>(frame[6] | (frame[7] << 8));
  if (reserved != 0) {
    return MakeError(
        ProtocolError(fmt::format("header reserved field is {}, must be 0", reserved)));
  }
  const uint16_t opcode = static_cast<uint16_t>(frame[4] | (frame[5] << 8));
  if (opcode > kMaxOpcode || (opcode == 0 && !reply)) return MakeError(UnknownOpcode(opcode));
  if (opcode == 0 && (h.flags & kFlagError) == 0) {
    return MakeError(ProtocolError("opcode 0 appears only in error replies"));
  }
  h.opcode = static_cast<Opcode>(opcode);
  for (int i = 0; i < 8; ++i) h.request_id |= static_cast<uint64_t>(frame[8 + i]) << (8 * i);
  return h;
}

Frames EncodeRequest(uint64_t request_id, const Request& request) {
  Frames frames;
  frames.header =
      EncodeHeader(Header{.flags = 0, .opcode = OpcodeOf(request), .request_id = request_id});
  frames.payload = std::visit([](const auto& r) { return EncodePayload(r); }, request);
  return frames;
}

Result<Request> DecodeRequest(const Header& header, std::span<const uint8_t> payload) {
  KVT_RETURN_IF_ERROR(CheckVersion(header));
  if ((header.flags & (kFlagReply | kFlagError)) != 0) {
    return MakeError(ProtocolError(fmt::format(
        "a request's header has the reply or error flag (flags 0x{:02x})", header.flags)));
  }
  // Request lists the requests in opcode order, starting at 1 (OpcodeOf).
  const auto opcode = static_cast<uint16_t>(header.opcode);
  if (opcode >= 1 && opcode <= kMaxOpcode) {
    return DecodeIndexed<Request>(opcode - 1u, WhereOf(header.opcode, "request"), payload,
                                  std::make_index_sequence<std::variant_size_v<Request>>());
  }
  return MakeError(UnknownOpcode(static_cast<uint16_t>(header.opcode)));
}

Frames EncodeReply(Opcode opcode, uint64_t request_id, const Reply& reply) {
  const bool error = std::holds_alternative<ErrorReply>(reply);
  KVT_DCHECK_MSG(error || reply.index() == ReplyIndexFor(opcode),
                 "reply type #{} does not answer opcode {}", reply.index(), OpcodeName(opcode));
  Frames frames;
  frames.header =
      EncodeHeader(Header{.flags = static_cast<uint8_t>(kFlagReply | (error ? kFlagError : 0)),
                          .opcode = opcode,
                          .request_id = request_id});
  frames.payload = std::visit([](const auto& r) { return EncodePayload(r); }, reply);
  if (const auto* read = std::get_if<ReadObjectsReply>(&reply)) {
    frames.extra = read->objects;
    frames.hold = read->hold;
  }
  return frames;
}

Result<Reply> DecodeReply(const Header& header, std::span<const uint8_t> payload) {
  KVT_RETURN_IF_ERROR(CheckVersion(header));
  if ((header.flags & kFlagReply) == 0) {
    return MakeError(ProtocolError("a reply's header lacks the reply flag"));
  }
  if (static_cast<uint16_t>(header.opcode) > kMaxOpcode) {
    return MakeError(UnknownOpcode(static_cast<uint16_t>(header.opcode)));
  }
  if ((header.flags & kFlagError) != 0) {
    return DecodeAs<ErrorReply, Reply>(WhereOf(header.opcode, "error reply"), payload);
  }
  const size_t index = ReplyIndexFor(header.opcode);
  if (index == std::variant_npos) {
    return MakeError(ProtocolError("opcode 0 appears only in error replies"));
  }
  return DecodeIndexed<Reply>(index, WhereOf(header.opcode, "reply"), payload,
                              std::make_index_sequence<std::variant_size_v<Reply>>());
}

ErrorReply ToErrorReply(const Status& status) {
  KVT_DCHECK_MSG(!status.ok(), "an OK status is not an error reply");
  if (status.ok()) return ErrorReply{StatusCode::kInternal, "error reply for an OK status", false};
  ErrorReply reply;
  const auto code = static_cast<int32_t>(status.code());
  reply.code = code > 0 ? status.code() : StatusCode::kInternal;
  reply.message = std::string(TruncateUtf8(status.message(), kMaxStringLength));
  reply.retryable = status.retryable();
  return reply;
}

Status FromErrorReply(const ErrorReply& error) {
  if (error.code == StatusCode::kOk) {
    // An error reply is never success, whatever its code says.
    return Status(StatusCode::kProtocolError,
                  fmt::format("error reply with code 0: {}", error.message), error.retryable);
  }
  return Status(error.code, error.message, error.retryable);
}

}  // namespace kvtier::protocol
