// The kvtier wire protocol's framing (the 16-byte header), payload encoding, and the public
// encode/decode entry points of codec.h; the payload decoders are in codec_decode.cc.
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
#include "kvtier/protocol/codec_internal.h"

namespace kvtier::protocol {
namespace {

Status ProtocolError(std::string message) {
  return Status(StatusCode::kProtocolError, std::move(message));
}

// ---- Encoding ---------------------------------------------------------------------------

using msgpack_map::TruncateUtf8;

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
    return internal::DecodeRequestPayload(header.opcode, payload);
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
    return internal::DecodeErrorReplyPayload(header.opcode, payload);
  }
  const size_t index = ReplyIndexFor(header.opcode);
  if (index == std::variant_npos) {
    return MakeError(ProtocolError("opcode 0 appears only in error replies"));
  }
  return internal::DecodeReplyPayload(header.opcode, index, payload);
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
