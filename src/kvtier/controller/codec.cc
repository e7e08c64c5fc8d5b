// Encoding, and the frame header. Decoding of bodies is in decode.cc.
#include "kvtier/controller/codec.h"

#include <limits>
#include <type_traits>

#include <fmt/format.h>

#include "kvtier/common/check.h"
#include "kvtier/controller/msgpack_io.h"

namespace kvtier::controller {
namespace {

using internal::Writer;

void Encode(Writer& w, const Origin& o) {
  w.Field("instance_id", o.instance_id);
  w.Field("worker_id", o.worker_id);
  w.Field("registration_id", o.registration_id);
}
constexpr size_t kOriginFields = 3;

void EncodeSpace(Writer& w, const KeySpace& s) {
  w.Field("model", s.model);
  w.Field("cache_salt", s.cache_salt);
  w.Field("world_size", s.world_size);
  w.Field("rank", s.rank);
  w.Field("object_group", s.object_group);
}

void Encode(Writer& w, const std::vector<KeyGroup>& groups) {
  w.Array(groups.size());
  for (const KeyGroup& g : groups) {
    w.Map(6);
    EncodeSpace(w, g.space);
    w.Str("hashes");
    w.Hashes(g.hashes);
  }
}

// ---- Events ----

void Encode(Writer& w, const KvEvent& e) {
  w.Map(kOriginFields + 3);
  Encode(w, e.origin);
  w.Field("location", e.location);
  w.Field("seq", e.seq);
  w.Str("groups");
  Encode(w, e.groups);
}
void Encode(Writer& w, const FullSyncStart& e) {
  w.Map(kOriginFields + 5);
  Encode(w, e.origin);
  w.Field("location", e.location);
  w.Field("sync_id", e.sync_id);
  w.Field("base_seq", e.base_seq);
  w.Field("total_batches", e.total_batches);
  w.Field("total_keys", e.total_keys);
}
void Encode(Writer& w, const FullSyncBatch& e) {
  w.Map(kOriginFields + 4);
  Encode(w, e.origin);
  w.Field("location", e.location);
  w.Field("sync_id", e.sync_id);
  w.Field("batch_index", e.batch_index);
  w.Str("groups");
  Encode(w, e.groups);
}
void Encode(Writer& w, const FullSyncEnd& e) {
  w.Map(kOriginFields + 3);
  Encode(w, e.origin);
  w.Field("location", e.location);
  w.Field("sync_id", e.sync_id);
  w.Field("total_keys", e.total_keys);
}

// ---- Requests ----

void Encode(Writer& w, const RegisterRequest& r) {
  w.Map(7);
  w.Field("instance_id", r.instance_id);
  w.Field("worker_id", r.worker_id);
  w.Field("address", r.address);
  w.Str("locations");
  w.Array(r.locations.size());
  for (const std::string& l : r.locations) w.Str(l);
  w.Field("software_version", r.software_version);
  w.Field("hash_algorithm", r.hash_algorithm);
  w.Field("chunk_size", r.chunk_size);
}
void Encode(Writer& w, const DeregisterRequest& r) {
  w.Map(kOriginFields);
  Encode(w, r.origin);
}
void Encode(Writer& w, const HeartbeatRequest& r) {
  w.Map(kOriginFields + 1);
  Encode(w, r.origin);
  w.Str("locations");
  w.Array(r.locations.size());
  for (const LocationReport& l : r.locations) {
    w.Map(3);
    w.Field("location", l.location);
    w.Field("last_seq", l.last_seq);
    w.Field("key_count", l.key_count);
  }
}
void Encode(Writer& w, const FullSyncStatusRequest& r) {
  w.Map(kOriginFields + 2);
  Encode(w, r.origin);
  w.Field("location", r.location);
  w.Field("sync_id", r.sync_id);
}
void Encode(Writer& w, const LookupRequest& r) {
  w.Map(7);
  w.Field("model", r.model);
  w.Field("cache_salt", r.cache_salt);
  w.Field("world_size", r.world_size);
  w.Str("rank");
  if (r.rank.has_value()) {
    w.Uint(*r.rank);
  } else {
    w.Nil();
  }
  w.Field("object_group", r.object_group);
  w.Str("hashes");
  w.Hashes(r.hashes);
  w.Field("exclude_instance", r.exclude_instance);
}
void Encode(Writer& w, const FindKvRequest& r) {
  w.Map(7);
  EncodeSpace(w, r.space);
  w.Str("hash");
  w.Hashes(std::span<const keys::ChunkHash>(&r.hash, 1));
  w.Field("exclude_instance", r.exclude_instance);
}
void Encode(Writer& w, const WorkersRequest& r) {
  w.Map(1);
  w.Field("instance_id", r.instance_id);
}
void Encode(Writer& w, const ClearRequest& r) {
  w.Map(3);
  w.Field("instance_id", r.instance_id);
  w.Str("worker_id");
  if (r.worker_id.has_value()) {
    w.Uint(*r.worker_id);
  } else {
    w.Nil();
  }
  w.Field("location", r.location);
}
void Encode(Writer& w, const PingRequest&) { w.Map(0); }

// ---- Replies ----

void Encode(Writer& w, const RegisterReply& r) {
  w.Map(6);
  w.Field("registration_id", r.registration_id);
  w.Field("controller_epoch", r.controller_epoch);
  w.Field("heartbeat_interval_ms", r.heartbeat_interval_ms);
  w.Field("worker_timeout_ms", r.worker_timeout_ms);
  w.Field("heartbeat_endpoint", r.heartbeat_endpoint);
  w.Field("max_keys_per_message", r.max_keys_per_message);
}
void Encode(Writer& w, const DeregisterReply& r) {
  w.Map(1);
  w.Field("removed", r.removed);
}
void Encode(Writer& w, const HeartbeatReply& r) {
  w.Map(3);
  w.Field("controller_epoch", r.controller_epoch);
  w.Field("heartbeat_interval_ms", r.heartbeat_interval_ms);
  w.Str("commands");
  w.Array(r.commands.size());
  for (const Command& c : r.commands) {
    w.Map(3);
    const bool known = c.kind != CommandKind::kUnknown;
    KVT_DCHECK_MSG(known || !c.name.empty(), "an unknown command needs its name");
    w.Field("command", known ? std::string_view(CommandKindName(c.kind)) : c.name);
    w.Field("location", c.location);
    w.Field("reason", internal::SanitizeText(c.reason, kMaxTextLength));
  }
}
void Encode(Writer& w, const FullSyncStatusReply& r) {
  w.Map(5);
  w.Field("state", SyncStateName(r.state));
  w.Field("total_batches", r.total_batches);
  w.Field("received_batches", r.received_batches);
  w.Str("missing_batches");
  w.Array(r.missing_batches.size());
  for (uint32_t b : r.missing_batches) w.Uint(b);
  w.Field("reason", internal::SanitizeText(r.reason, kMaxTextLength));
}
void Encode(Writer& w, const LookupReply& r) {
  w.Map(1);
  w.Str("matches");
  w.Array(r.matches.size());
  for (const LookupMatch& m : r.matches) {
    w.Map(3);
    w.Field("instance_id", m.instance_id);
    w.Field("address", m.address);
    w.Field("matched_chunks", m.matched_chunks);
  }
}
void Encode(Writer& w, const FindKvReply& r) {
  w.Map(1);
  w.Str("holders");
  w.Array(r.holders.size());
  for (const Holder& h : r.holders) {
    w.Map(4);
    w.Field("instance_id", h.instance_id);
    w.Field("worker_id", h.worker_id);
    w.Field("location", h.location);
    w.Field("address", h.address);
  }
}
void Encode(Writer& w, const WorkersReply& r) {
  w.Map(2);
  w.Str("workers");
  w.Array(r.workers.size());
  for (const WorkerInfo& info : r.workers) {
    w.Map(7);
    w.Field("instance_id", info.instance_id);
    w.Field("worker_id", info.worker_id);
    w.Field("address", info.address);
    w.Field("software_version", internal::SanitizeText(info.software_version, kMaxTextLength));
    w.Field("registered_at_ms", info.registered_at_ms);
    w.Field("last_heartbeat_ms", info.last_heartbeat_ms);
    w.Str("locations");
    w.Array(info.locations.size());
    for (const LocationInfo& l : info.locations) {
      w.Map(4);
      w.Field("location", l.location);
      w.Field("key_count", l.key_count);
      w.Field("last_seq", l.last_seq);
      w.Field("sync_state", SyncStateName(l.sync_state));
    }
  }
  w.Field("truncated", r.truncated);
}
void Encode(Writer& w, const ClearReply& r) {
  w.Map(1);
  w.Field("cleared_keys", r.cleared_keys);
}
void Encode(Writer& w, const PingReply& r) {
  w.Map(1);
  w.Field("controller_epoch", r.controller_epoch);
}
void Encode(Writer& w, const ErrorReply& r) {
  w.Map(3);
  // Codes are positive; anything else would not decode, so it goes out as kInternal.
  int32_t code = static_cast<int32_t>(r.code);
  if (code <= 0) code = static_cast<int32_t>(StatusCode::kInternal);
  w.Field("code", static_cast<uint32_t>(code));
  w.Field("message", internal::SanitizeText(r.message, kMaxTextLength));
  w.Field("retryable", r.retryable);
}

// A first guess of the body's size, so that key batches are written without regrowth.
size_t GroupsSize(const std::vector<KeyGroup>& groups) {
  size_t n = 16;
  for (const KeyGroup& g : groups) {
    n += 96 + g.space.model.size() + g.space.cache_salt.size() +
         keys::kChunkHashBytes * g.hashes.size();
  }
  return n;
}
template <typename T>
size_t SizeHint(const T&) {
  return 256;
}
size_t SizeHint(const KvEvent& e) {
  return 128 + e.origin.instance_id.size() + GroupsSize(e.groups);
}
size_t SizeHint(const FullSyncBatch& e) {
  return 160 + e.origin.instance_id.size() + GroupsSize(e.groups);
}
size_t SizeHint(const LookupRequest& r) {
  return 256 + r.model.size() + keys::kChunkHashBytes * r.hashes.size();
}
size_t SizeHint(const WorkersReply& r) { return 64 + 256 * r.workers.size(); }

std::vector<uint8_t> EncodeFrame(const Header& header, const auto& body) {
  std::vector<uint8_t> out = EncodeHeader(header);
  out.reserve(kHeaderSize + SizeHint(body));
  Writer w(&out);
  Encode(w, body);
  KVT_DCHECK_MSG(out.size() <= kMaxFrameBytes, "{} frame of {} bytes exceeds the limit",
                 MessageTypeName(header.type), out.size());
  return out;
}

}  // namespace

std::vector<uint8_t> EncodeHeader(const Header& h) {
  std::vector<uint8_t> out(kHeaderSize, 0);
  const auto type = static_cast<uint16_t>(h.type);
  out[0] = kMagic0;
  out[1] = kMagic1;
  out[2] = h.version;
  out[3] = h.flags;
  out[4] = static_cast<uint8_t>(type);
  out[5] = static_cast<uint8_t>(type >> 8);
  // out[6], out[7]: reserved, 0.
  for (int i = 0; i < 8; ++i) out[8 + i] = static_cast<uint8_t>(h.request_id >> (8 * i));
  return out;
}

Result<Header> DecodeHeader(std::span<const uint8_t> frame) {
  const auto error = [](std::string message) {
    return MakeError(Status(StatusCode::kProtocolError, std::move(message)));
  };
  if (frame.size() < kHeaderSize) {
    return error(fmt::format("frame is {} bytes, shorter than the {}-byte header", frame.size(),
                             kHeaderSize));
  }
  if (frame.size() > kMaxFrameBytes) {
    return error(fmt::format("frame is {} bytes, the limit is {}", frame.size(), kMaxFrameBytes));
  }
  if (frame[0] != kMagic0 || frame[1] != kMagic1) {
    return error(fmt::format("bad magic 0x{:02x} 0x{:02x} (expected 'K' 'C'){}", frame[0], frame[1],
                             frame[0] == 'K' && frame[1] == 'V'
                                 ? ": a kvtier server protocol frame sent to the controller"
                                 : ""));
  }
  Header h;
  h.version = frame[2];
  h.flags = frame[3];
  if (h.version != kProtocolVersion) {
    return MakeError(Status(
        StatusCode::kUnsupportedVersion,
        fmt::format("controller protocol version {} is not supported (this side speaks version {})",
                    h.version, kProtocolVersion)));
  }
  if ((h.flags & ~(kFlagReply | kFlagError)) != 0) {
    return error(fmt::format("unknown header flags 0x{:02x}", h.flags));
  }
  const bool reply = (h.flags & kFlagReply) != 0;
  const bool is_error = (h.flags & kFlagError) != 0;
  if (is_error && !reply) return error("header has the error flag without the reply flag");
  if (frame[6] != 0 || frame[7] != 0) {
    return error(
        fmt::format("header reserved bytes are 0x{:02x} 0x{:02x}, must be 0", frame[6], frame[7]));
  }
  const auto number = static_cast<uint16_t>(frame[4] | (frame[5] << 8));
  const std::optional<MessageType> type = MessageTypeFromNumber(number);
  if (type.has_value()) {
    h.type = *type;
  } else if (number == 0 && is_error) {
    h.type = MessageType::kInvalid;
  } else {
    return MakeError(Status(StatusCode::kUnknownOpcode,
                            fmt::format("unknown message type {}{}", number,
                                        number == 0 ? " (0 appears only in error replies)" : "")));
  }
  if (reply && IsEvent(h.type)) {
    return error(fmt::format("{} is an event: events have no replies", MessageTypeName(h.type)));
  }
  for (int i = 0; i < 8; ++i) h.request_id |= static_cast<uint64_t>(frame[8 + i]) << (8 * i);
  return h;
}

ReplyTarget ReplyTargetOf(std::span<const uint8_t> frame) {
  ReplyTarget to;
  if (frame.size() < kHeaderSize || frame[0] != kMagic0 || frame[1] != kMagic1) return to;
  const auto number = static_cast<uint16_t>(frame[4] | (frame[5] << 8));
  to.type = MessageTypeFromNumber(number).value_or(MessageType::kInvalid);
  if (IsEvent(to.type)) to.type = MessageType::kInvalid;  // events have no replies
  for (int i = 0; i < 8; ++i) to.request_id |= static_cast<uint64_t>(frame[8 + i]) << (8 * i);
  return to;
}

std::vector<uint8_t> EncodeEvent(const Event& event) {
  const Header header{.flags = 0, .type = TypeOf(event), .request_id = 0};
  return std::visit([&](const auto& e) { return EncodeFrame(header, e); }, event);
}

std::vector<uint8_t> EncodeRequest(uint64_t request_id, const Request& request) {
  const Header header{.flags = 0, .type = TypeOf(request), .request_id = request_id};
  return std::visit([&](const auto& r) { return EncodeFrame(header, r); }, request);
}

std::vector<uint8_t> EncodeReply(MessageType type, uint64_t request_id, const Reply& reply) {
  const bool error = std::holds_alternative<ErrorReply>(reply);
  KVT_DCHECK_MSG(error || reply.index() == ReplyIndexFor(type),
                 "reply alternative #{} does not answer {}", reply.index(), MessageTypeName(type));
  KVT_DCHECK_MSG(!IsEvent(type), "{} is an event: it has no reply", MessageTypeName(type));
  const Header header{.flags = static_cast<uint8_t>(kFlagReply | (error ? kFlagError : 0)),
                      .type = type,
                      .request_id = request_id};
  return std::visit([&](const auto& r) { return EncodeFrame(header, r); }, reply);
}

std::vector<uint8_t> EncodeErrorReply(const ReplyTarget& to, const Status& status) {
  return EncodeReply(to.type, to.request_id, ToErrorReply(status));
}

}  // namespace kvtier::controller
