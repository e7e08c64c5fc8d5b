// Decoding of the kvtier wire protocol's payloads (the schema of docs/protocol.md, read with
// the field-named errors of common/msgpack_map); codec.cc frames them and encodes. Internal to
// the protocol library: callers use codec.h.
#include <cstring>
#include <limits>
#include <string_view>
#include <type_traits>
#include <utility>

#include <fmt/format.h>
#include <msgpack.hpp>

#include "kvtier/common/msgpack_map.h"
#include "kvtier/keys/object_key.h"
#include "kvtier/protocol/codec.h"
#include "kvtier/protocol/codec_internal.h"

namespace kvtier::protocol::internal {
namespace {

// Structure limits on top of codec.h's field limits. Together they bound what decoding a
// payload may allocate, whatever its bytes declare: at most kMaxElements msgpack objects, each
// of which must actually be present in the payload.
constexpr uint32_t kMaxDepth = 16;
constexpr uint64_t kMaxElements = kMaxBlockIds + (64u << 10);

constexpr uint16_t kU16Max = std::numeric_limits<uint16_t>::max();

using msgpack_map::MapReader;
using msgpack_map::Need;
using msgpack_map::TypeName;

// Payloads: at most kMaxPayloadBytes, with codec.h's field limits and the structure limits above.
constexpr msgpack_map::Dialect kDialect{.document = "payload",
                                        .error_code = StatusCode::kProtocolError,
                                        .max_depth = kMaxDepth,
                                        .max_elements = kMaxElements,
                                        .max_bytes = kMaxPayloadBytes,
                                        .max_string_bytes = kMaxStringLength};

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

}  // namespace

Result<Request> DecodeRequestPayload(Opcode opcode, std::span<const uint8_t> payload) {
  // Request lists the requests in opcode order, starting at 1 (OpcodeOf).
  return DecodeIndexed<Request>(static_cast<uint16_t>(opcode) - 1u, WhereOf(opcode, "request"),
                                payload, std::make_index_sequence<std::variant_size_v<Request>>());
}

Result<Reply> DecodeReplyPayload(Opcode opcode, size_t index, std::span<const uint8_t> payload) {
  return DecodeIndexed<Reply>(index, WhereOf(opcode, "reply"), payload,
                              std::make_index_sequence<std::variant_size_v<Reply>>());
}

Result<Reply> DecodeErrorReplyPayload(Opcode opcode, std::span<const uint8_t> payload) {
  return DecodeAs<ErrorReply, Reply>(WhereOf(opcode, "error reply"), payload);
}

}  // namespace kvtier::protocol::internal
