// Decoding of frame bodies: strict, bounded, and naming the offending field in every error.
#include <algorithm>
#include <limits>
#include <string>
#include <utility>

#include <fmt/format.h>

#include "kvtier/controller/codec.h"
#include "kvtier/controller/msgpack_io.h"

namespace kvtier::controller {
namespace {

using internal::MapReader;
using internal::Need;
using internal::Where;

// Declared container elements a body may hold. Events and requests, which the controller reads
// from any peer, stay small (a 1024-group ADMIT needs ~14k); replies may list thousands of
// workers with their locations.
constexpr uint64_t kMaxElementsIn = 1u << 15;
constexpr uint64_t kMaxElementsReply = 1u << 20;

constexpr uint64_t kU64Max = std::numeric_limits<uint64_t>::max();
constexpr uint16_t kU16Max = std::numeric_limits<uint16_t>::max();

Status DecodeOrigin(const MapReader& m, Origin* o) {
  KVT_RETURN_IF_ERROR(m.Ident("instance_id", Need::kRequired, &o->instance_id, 1, kMaxIdLength));
  KVT_RETURN_IF_ERROR(m.Uint("worker_id", Need::kRequired, &o->worker_id));
  return m.Uint("registration_id", Need::kRequired, &o->registration_id, 1);
}

Status DecodeLocation(const MapReader& m, std::string* location) {
  return m.Ident("location", Need::kRequired, location, 1, kMaxLocationLength);
}

// model, cache_salt, world_size, rank (optional here: the caller decides), object_group.
Status DecodeSpaceBase(const MapReader& m, KeySpace* s) {
  KVT_RETURN_IF_ERROR(internal::ReadModel(m, "model", &s->model));
  KVT_RETURN_IF_ERROR(internal::ReadCacheSalt(m, "cache_salt", &s->cache_salt));
  KVT_RETURN_IF_ERROR(m.Uint("world_size", Need::kRequired, &s->world_size, 1, kU16Max));
  return m.Uint("object_group", Need::kOptional, &s->object_group);
}

Status DecodeSpace(const MapReader& m, KeySpace* s) {
  KVT_RETURN_IF_ERROR(DecodeSpaceBase(m, s));
  return m.Uint("rank", Need::kRequired, &s->rank, 0, s->world_size - 1u);
}

Status DecodeGroups(const MapReader& m, std::vector<KeyGroup>* groups) {
  KVT_ASSIGN_OR_RETURN(auto array, m.Array("groups", kMaxKeyGroups));
  size_t budget = kMaxKeysPerMessage;
  groups->resize(array.size());
  for (size_t i = 0; i < array.size(); ++i) {
    KVT_ASSIGN_OR_RETURN(MapReader g, m.Element("groups", i, array[i]));
    KVT_RETURN_IF_ERROR(DecodeSpace(g, &(*groups)[i].space));
    KVT_RETURN_IF_ERROR(internal::ReadHashes(g, "hashes", &budget, &(*groups)[i].hashes));
  }
  return Status::OK();
}

// ---- Events ----

Status DecodeFields(const MapReader& m, KvEvent* e) {
  KVT_RETURN_IF_ERROR(DecodeOrigin(m, &e->origin));
  KVT_RETURN_IF_ERROR(DecodeLocation(m, &e->location));
  KVT_RETURN_IF_ERROR(m.Uint("seq", Need::kRequired, &e->seq, 1));
  return DecodeGroups(m, &e->groups);
}

Status DecodeFields(const MapReader& m, FullSyncStart* e) {
  KVT_RETURN_IF_ERROR(DecodeOrigin(m, &e->origin));
  KVT_RETURN_IF_ERROR(DecodeLocation(m, &e->location));
  KVT_RETURN_IF_ERROR(m.Uint("sync_id", Need::kRequired, &e->sync_id, 1));
  KVT_RETURN_IF_ERROR(m.Uint("base_seq", Need::kRequired, &e->base_seq, 0, kU64Max - 1));
  KVT_RETURN_IF_ERROR(
      m.Uint("total_batches", Need::kRequired, &e->total_batches, 0, kMaxSyncBatches));
  const uint64_t max_keys = uint64_t{e->total_batches} * kMaxKeysPerMessage;
  return m.Uint("total_keys", Need::kRequired, &e->total_keys, 0, max_keys);
}

Status DecodeFields(const MapReader& m, FullSyncBatch* e) {
  KVT_RETURN_IF_ERROR(DecodeOrigin(m, &e->origin));
  KVT_RETURN_IF_ERROR(DecodeLocation(m, &e->location));
  KVT_RETURN_IF_ERROR(m.Uint("sync_id", Need::kRequired, &e->sync_id, 1));
  KVT_RETURN_IF_ERROR(
      m.Uint("batch_index", Need::kRequired, &e->batch_index, 0, kMaxSyncBatches - 1));
  return DecodeGroups(m, &e->groups);
}

Status DecodeFields(const MapReader& m, FullSyncEnd* e) {
  KVT_RETURN_IF_ERROR(DecodeOrigin(m, &e->origin));
  KVT_RETURN_IF_ERROR(DecodeLocation(m, &e->location));
  KVT_RETURN_IF_ERROR(m.Uint("sync_id", Need::kRequired, &e->sync_id, 1));
  return m.Uint("total_keys", Need::kRequired, &e->total_keys, 0,
                uint64_t{kMaxSyncBatches} * kMaxKeysPerMessage);
}

// ---- Requests ----

Status DecodeFields(const MapReader& m, RegisterRequest* r) {
  KVT_RETURN_IF_ERROR(m.Ident("instance_id", Need::kRequired, &r->instance_id, 1, kMaxIdLength));
  KVT_RETURN_IF_ERROR(m.Uint("worker_id", Need::kRequired, &r->worker_id));
  KVT_RETURN_IF_ERROR(m.Ident("address", Need::kRequired, &r->address, 0, kMaxAddressLength));
  KVT_ASSIGN_OR_RETURN(auto array, m.Array("locations", kMaxLocations));
  if (array.empty()) return m.Error("locations", "must name at least one location");
  r->locations.resize(array.size());
  for (size_t i = 0; i < array.size(); ++i) {
    const std::string name = fmt::format("locations[{}]", i);
    const msgpack::object& o = array[i];
    std::string& location = r->locations[i];
    if (o.type != msgpack::type::STR) {
      return m.Error(name, fmt::format("must be str, got {}", internal::TypeName(o)));
    }
    location.assign(o.via.str.ptr, o.via.str.size);
    if (location.empty() || location.size() > kMaxLocationLength ||
        !std::all_of(location.begin(), location.end(),
                     [](char c) { return c >= 0x21 && c <= 0x7e; })) {
      return m.Error(name, fmt::format("must be 1..{} bytes of printable ASCII without spaces",
                                       kMaxLocationLength));
    }
    for (size_t j = 0; j < i; ++j) {
      if (r->locations[j] == location) {
        return m.Error(name, fmt::format("repeats locations[{}] ('{}')", j, location));
      }
    }
  }
  KVT_RETURN_IF_ERROR(
      m.Text("software_version", Need::kOptional, &r->software_version, 0, kMaxTextLength));
  KVT_RETURN_IF_ERROR(m.Ident("hash_algorithm", Need::kRequired, &r->hash_algorithm, 1, 64));
  return m.Uint("chunk_size", Need::kRequired, &r->chunk_size, 1, kMaxChunkSize);
}

Status DecodeFields(const MapReader& m, DeregisterRequest* r) {
  return DecodeOrigin(m, &r->origin);
}

Status DecodeFields(const MapReader& m, HeartbeatRequest* r) {
  KVT_RETURN_IF_ERROR(DecodeOrigin(m, &r->origin));
  KVT_ASSIGN_OR_RETURN(auto array, m.Array("locations", kMaxLocations));
  r->locations.resize(array.size());
  for (size_t i = 0; i < array.size(); ++i) {
    LocationReport& l = r->locations[i];
    KVT_ASSIGN_OR_RETURN(MapReader e, m.Element("locations", i, array[i]));
    KVT_RETURN_IF_ERROR(DecodeLocation(e, &l.location));
    KVT_RETURN_IF_ERROR(e.Uint("last_seq", Need::kRequired, &l.last_seq));
    KVT_RETURN_IF_ERROR(e.Uint("key_count", Need::kRequired, &l.key_count));
    for (size_t j = 0; j < i; ++j) {
      if (r->locations[j].location == l.location) {
        return e.Error("location", fmt::format("repeats locations[{}] ('{}')", j, l.location));
      }
    }
  }
  return Status::OK();
}

Status DecodeFields(const MapReader& m, FullSyncStatusRequest* r) {
  KVT_RETURN_IF_ERROR(DecodeOrigin(m, &r->origin));
  KVT_RETURN_IF_ERROR(DecodeLocation(m, &r->location));
  return m.Uint("sync_id", Need::kRequired, &r->sync_id, 1);
}

Status DecodeFields(const MapReader& m, LookupRequest* r) {
  KeySpace space;
  KVT_RETURN_IF_ERROR(DecodeSpaceBase(m, &space));
  r->model = std::move(space.model);
  r->cache_salt = std::move(space.cache_salt);
  r->world_size = space.world_size;
  r->object_group = space.object_group;
  KVT_RETURN_IF_ERROR(m.OptionalUint("rank", &r->rank, 0, r->world_size - 1u));
  size_t budget = kMaxKeysPerMessage;
  KVT_RETURN_IF_ERROR(internal::ReadHashes(m, "hashes", &budget, &r->hashes));
  return m.Ident("exclude_instance", Need::kOptional, &r->exclude_instance, 0, kMaxIdLength);
}

Status DecodeFields(const MapReader& m, FindKvRequest* r) {
  KVT_RETURN_IF_ERROR(DecodeSpace(m, &r->space));
  std::vector<keys::ChunkHash> hashes;
  size_t budget = 1;
  KVT_RETURN_IF_ERROR(internal::ReadHashes(m, "hash", &budget, &hashes));
  if (hashes.size() != 1) return m.Error("hash", "must be exactly one 32-byte chunk hash");
  r->hash = hashes[0];
  return m.Ident("exclude_instance", Need::kOptional, &r->exclude_instance, 0, kMaxIdLength);
}

Status DecodeFields(const MapReader& m, WorkersRequest* r) {
  return m.Ident("instance_id", Need::kOptional, &r->instance_id, 0, kMaxIdLength);
}

Status DecodeFields(const MapReader& m, ClearRequest* r) {
  KVT_RETURN_IF_ERROR(m.Ident("instance_id", Need::kOptional, &r->instance_id, 0, kMaxIdLength));
  KVT_RETURN_IF_ERROR(m.OptionalUint("worker_id", &r->worker_id));
  if (r->worker_id.has_value() && r->instance_id.empty()) {
    return m.Error("worker_id", "needs an instance_id");
  }
  return m.Ident("location", Need::kOptional, &r->location, 0, kMaxLocationLength);
}

Status DecodeFields(const MapReader&, PingRequest*) { return Status::OK(); }

// ---- Replies ----

Status DecodeSyncState(const MapReader& m, std::string_view name, SyncState* state) {
  std::string text;
  KVT_RETURN_IF_ERROR(m.Ident(name, Need::kRequired, &text, 1, 32));
  for (SyncState s : {SyncState::kUnknown, SyncState::kReceiving, SyncState::kMissing,
                      SyncState::kComplete, SyncState::kFailed}) {
    if (text == SyncStateName(s)) {
      *state = s;
      return Status::OK();
    }
  }
  return m.Error(name, fmt::format("is '{}', expected one of: unknown, receiving, missing, "
                                   "complete, failed",
                                   text));
}

Status DecodeFields(const MapReader& m, RegisterReply* r) {
  KVT_RETURN_IF_ERROR(m.Uint("registration_id", Need::kRequired, &r->registration_id, 1));
  KVT_RETURN_IF_ERROR(m.Uint("controller_epoch", Need::kRequired, &r->controller_epoch, 1));
  KVT_RETURN_IF_ERROR(
      m.Uint("heartbeat_interval_ms", Need::kRequired, &r->heartbeat_interval_ms, 1));
  KVT_RETURN_IF_ERROR(m.Uint("worker_timeout_ms", Need::kRequired, &r->worker_timeout_ms, 1));
  KVT_RETURN_IF_ERROR(
      m.Ident("heartbeat_endpoint", Need::kRequired, &r->heartbeat_endpoint, 0, kMaxAddressLength));
  return m.Uint("max_keys_per_message", Need::kRequired, &r->max_keys_per_message, 1,
                kMaxKeysPerMessage);
}

Status DecodeFields(const MapReader& m, DeregisterReply* r) {
  return m.Bool("removed", Need::kRequired, &r->removed);
}

Status DecodeFields(const MapReader& m, HeartbeatReply* r) {
  KVT_RETURN_IF_ERROR(m.Uint("controller_epoch", Need::kRequired, &r->controller_epoch, 1));
  KVT_RETURN_IF_ERROR(
      m.Uint("heartbeat_interval_ms", Need::kRequired, &r->heartbeat_interval_ms, 1));
  KVT_ASSIGN_OR_RETURN(auto array, m.Array("commands", kMaxCommands));
  r->commands.resize(array.size());
  for (size_t i = 0; i < array.size(); ++i) {
    Command& c = r->commands[i];
    KVT_ASSIGN_OR_RETURN(MapReader e, m.Element("commands", i, array[i]));
    std::string name;
    KVT_RETURN_IF_ERROR(e.Ident("command", Need::kRequired, &name, 1, 64));
    KVT_RETURN_IF_ERROR(e.Ident("location", Need::kOptional, &c.location, 0, kMaxLocationLength));
    KVT_RETURN_IF_ERROR(e.Text("reason", Need::kOptional, &c.reason, 0, kMaxTextLength));
    if (name == CommandKindName(CommandKind::kReregister)) {
      c.kind = CommandKind::kReregister;
    } else if (name == CommandKindName(CommandKind::kFullSync)) {
      c.kind = CommandKind::kFullSync;
      if (c.location.empty()) return e.Error("location", "is required by full_sync");
    } else {
      c.kind = CommandKind::kUnknown;  // from a newer controller: the worker skips it
      c.name = std::move(name);
    }
  }
  return Status::OK();
}

Status DecodeFields(const MapReader& m, FullSyncStatusReply* r) {
  KVT_RETURN_IF_ERROR(DecodeSyncState(m, "state", &r->state));
  KVT_RETURN_IF_ERROR(
      m.Uint("total_batches", Need::kRequired, &r->total_batches, 0, kMaxSyncBatches));
  KVT_RETURN_IF_ERROR(
      m.Uint("received_batches", Need::kRequired, &r->received_batches, 0, r->total_batches));
  KVT_ASSIGN_OR_RETURN(auto array, m.Array("missing_batches", kMaxMissingListed));
  if (array.size() > r->total_batches - r->received_batches) {
    return m.Error("missing_batches",
                   fmt::format("lists {} batches, but only {} of {} are missing", array.size(),
                               r->total_batches - r->received_batches, r->total_batches));
  }
  r->missing_batches.resize(array.size());
  for (size_t i = 0; i < array.size(); ++i) {
    const msgpack::object& o = array[i];
    const std::string name = fmt::format("missing_batches[{}]", i);
    if (o.type != msgpack::type::POSITIVE_INTEGER || o.via.u64 >= r->total_batches) {
      return m.Error(
          name, fmt::format("must be a batch index below total_batches ({})", r->total_batches));
    }
    r->missing_batches[i] = static_cast<uint32_t>(o.via.u64);
    if (i > 0 && r->missing_batches[i] <= r->missing_batches[i - 1]) {
      return m.Error(name, "must be greater than the previous entry (ascending, no repeats)");
    }
  }
  return m.Text("reason", Need::kOptional, &r->reason, 0, kMaxTextLength);
}

Status DecodeFields(const MapReader& m, LookupReply* r) {
  KVT_ASSIGN_OR_RETURN(auto array, m.Array("matches", kMaxListed));
  r->matches.resize(array.size());
  for (size_t i = 0; i < array.size(); ++i) {
    LookupMatch& match = r->matches[i];
    KVT_ASSIGN_OR_RETURN(MapReader e, m.Element("matches", i, array[i]));
    KVT_RETURN_IF_ERROR(
        e.Ident("instance_id", Need::kRequired, &match.instance_id, 1, kMaxIdLength));
    KVT_RETURN_IF_ERROR(e.Ident("address", Need::kRequired, &match.address, 0, kMaxAddressLength));
    KVT_RETURN_IF_ERROR(
        e.Uint("matched_chunks", Need::kRequired, &match.matched_chunks, 1, kMaxKeysPerMessage));
  }
  return Status::OK();
}

Status DecodeFields(const MapReader& m, FindKvReply* r) {
  KVT_ASSIGN_OR_RETURN(auto array, m.Array("holders", kMaxListed));
  r->holders.resize(array.size());
  for (size_t i = 0; i < array.size(); ++i) {
    Holder& h = r->holders[i];
    KVT_ASSIGN_OR_RETURN(MapReader e, m.Element("holders", i, array[i]));
    KVT_RETURN_IF_ERROR(e.Ident("instance_id", Need::kRequired, &h.instance_id, 1, kMaxIdLength));
    KVT_RETURN_IF_ERROR(e.Uint("worker_id", Need::kRequired, &h.worker_id));
    KVT_RETURN_IF_ERROR(DecodeLocation(e, &h.location));
    KVT_RETURN_IF_ERROR(e.Ident("address", Need::kRequired, &h.address, 0, kMaxAddressLength));
  }
  return Status::OK();
}

Status DecodeFields(const MapReader& m, WorkersReply* r) {
  KVT_ASSIGN_OR_RETURN(auto array, m.Array("workers", kMaxListed));
  r->workers.resize(array.size());
  for (size_t i = 0; i < array.size(); ++i) {
    WorkerInfo& w = r->workers[i];
    KVT_ASSIGN_OR_RETURN(MapReader e, m.Element("workers", i, array[i]));
    KVT_RETURN_IF_ERROR(e.Ident("instance_id", Need::kRequired, &w.instance_id, 1, kMaxIdLength));
    KVT_RETURN_IF_ERROR(e.Uint("worker_id", Need::kRequired, &w.worker_id));
    KVT_RETURN_IF_ERROR(e.Ident("address", Need::kRequired, &w.address, 0, kMaxAddressLength));
    KVT_RETURN_IF_ERROR(
        e.Text("software_version", Need::kRequired, &w.software_version, 0, kMaxTextLength));
    KVT_RETURN_IF_ERROR(e.Uint("registered_at_ms", Need::kRequired, &w.registered_at_ms));
    KVT_RETURN_IF_ERROR(e.Uint("last_heartbeat_ms", Need::kRequired, &w.last_heartbeat_ms));
    KVT_ASSIGN_OR_RETURN(auto locations, e.Array("locations", kMaxLocations));
    w.locations.resize(locations.size());
    for (size_t j = 0; j < locations.size(); ++j) {
      LocationInfo& l = w.locations[j];
      KVT_ASSIGN_OR_RETURN(MapReader le, e.Element("locations", j, locations[j]));
      KVT_RETURN_IF_ERROR(DecodeLocation(le, &l.location));
      KVT_RETURN_IF_ERROR(le.Uint("key_count", Need::kRequired, &l.key_count));
      KVT_RETURN_IF_ERROR(le.Uint("last_seq", Need::kRequired, &l.last_seq));
      KVT_RETURN_IF_ERROR(DecodeSyncState(le, "sync_state", &l.sync_state));
    }
  }
  return m.Bool("truncated", Need::kRequired, &r->truncated);
}

Status DecodeFields(const MapReader& m, ClearReply* r) {
  return m.Uint("cleared_keys", Need::kRequired, &r->cleared_keys);
}

Status DecodeFields(const MapReader& m, PingReply* r) {
  return m.Uint("controller_epoch", Need::kRequired, &r->controller_epoch, 1);
}

Status DecodeFields(const MapReader& m, ErrorReply* r) {
  uint32_t code = 0;
  KVT_RETURN_IF_ERROR(m.Uint("code", Need::kRequired, &code, 1,
                             static_cast<uint64_t>(std::numeric_limits<int32_t>::max())));
  r->code = static_cast<StatusCode>(code);
  KVT_RETURN_IF_ERROR(m.Text("message", Need::kRequired, &r->message, 0, kMaxTextLength));
  return m.Bool("retryable", Need::kRequired, &r->retryable);
}

// ---- Dispatch ----

// Decodes `body` as T, returned as the variant V.
template <typename T, typename V>
Result<V> DecodeAs(const Where& where, std::span<const uint8_t> body, uint64_t max_elements,
                   T value = T{}) {
  KVT_ASSIGN_OR_RETURN(msgpack::object_handle handle,
                       msgpack_map::Parse(where, body, max_elements));
  KVT_ASSIGN_OR_RETURN(MapReader m, MapReader::Of(handle.get(), where, ""));
  KVT_RETURN_IF_ERROR(DecodeFields(m, &value));
  return V(std::move(value));
}

// The Request (or Reply) alternative at `index`, default-constructed, decoded from `body`.
template <typename V, size_t... I>
Result<V> DecodeIndexed(size_t index, const Where& where, std::span<const uint8_t> body,
                        uint64_t max_elements, std::index_sequence<I...>) {
  Result<V> result = MakeError(where.Error("no such message"));
  const auto decode_if = [&]<size_t J>(std::integral_constant<size_t, J>) {
    if (index != J) return false;
    result = DecodeAs<std::variant_alternative_t<J, V>, V>(where, body, max_elements);
    return true;
  };
  (decode_if(std::integral_constant<size_t, I>()) || ...);
  return result;
}

}  // namespace

Result<Framed<Event>> DecodeEvent(std::span<const uint8_t> frame) {
  KVT_ASSIGN_OR_RETURN(Header header, DecodeHeader(frame));
  const Where where = internal::WhereOf(header.type, "event");
  if ((header.flags & kFlagReply) != 0 || !IsEvent(header.type)) {
    return MakeError(where.Error(
        (header.flags & kFlagReply) != 0
            ? std::string("a reply is not an event")
            : fmt::format("{} is a request: send it on the request socket (DEALER), not the "
                          "event socket (PUSH)",
                          MessageTypeName(header.type))));
  }
  const std::span<const uint8_t> body = frame.subspan(kHeaderSize);
  Result<Event> event = MakeError(where.Error("no such event"));
  switch (header.type) {
    case MessageType::kAdmit:
    case MessageType::kEvict: {
      KvEvent kv;
      kv.op = header.type == MessageType::kAdmit ? KvOp::kAdmit : KvOp::kEvict;
      event = DecodeAs<KvEvent, Event>(where, body, kMaxElementsIn, std::move(kv));
      break;
    }
    case MessageType::kFullSyncStart:
      event = DecodeAs<FullSyncStart, Event>(where, body, kMaxElementsIn);
      break;
    case MessageType::kFullSyncBatch:
      event = DecodeAs<FullSyncBatch, Event>(where, body, kMaxElementsIn);
      break;
    case MessageType::kFullSyncEnd:
      event = DecodeAs<FullSyncEnd, Event>(where, body, kMaxElementsIn);
      break;
    default:
      break;
  }
  if (!event) return MakeError(std::move(event).error());
  return Framed<Event>{header, std::move(*event)};
}

Result<Framed<Request>> DecodeRequest(std::span<const uint8_t> frame) {
  KVT_ASSIGN_OR_RETURN(Header header, DecodeHeader(frame));
  const Where where = internal::WhereOf(header.type, "request");
  if ((header.flags & kFlagReply) != 0) {
    return MakeError(where.Error("a reply is not a request"));
  }
  if (!IsRequest(header.type)) {
    return MakeError(
        where.Error(fmt::format("{} is an event: send it on the event socket (PUSH), not the "
                                "request socket (DEALER)",
                                MessageTypeName(header.type))));
  }
  KVT_ASSIGN_OR_RETURN(
      Request request,
      DecodeIndexed<Request>(ReplyIndexFor(header.type), where, frame.subspan(kHeaderSize),
                             kMaxElementsIn,
                             std::make_index_sequence<std::variant_size_v<Request>>()));
  return Framed<Request>{header, std::move(request)};
}

Result<Framed<Reply>> DecodeReply(std::span<const uint8_t> frame) {
  KVT_ASSIGN_OR_RETURN(Header header, DecodeHeader(frame));
  if ((header.flags & kFlagReply) == 0) {
    return MakeError(
        internal::WhereOf(header.type, "reply").Error("the header lacks the reply flag"));
  }
  const std::span<const uint8_t> body = frame.subspan(kHeaderSize);
  if ((header.flags & kFlagError) != 0) {
    KVT_ASSIGN_OR_RETURN(Reply reply,
                         (DecodeAs<ErrorReply, Reply>(internal::WhereOf(header.type, "error reply"),
                                                      body, kMaxElementsIn)));
    return Framed<Reply>{header, std::move(reply)};
  }
  // DecodeHeader let only request types through (kInvalid needs the error flag, events have no
  // replies).
  const Where where = internal::WhereOf(header.type, "reply");
  KVT_ASSIGN_OR_RETURN(
      Reply reply,
      DecodeIndexed<Reply>(ReplyIndexFor(header.type), where, body, kMaxElementsReply,
                           std::make_index_sequence<std::variant_size_v<Reply> - 1>()));
  return Framed<Reply>{header, std::move(reply)};
}

Status ReplyStatus(const Framed<Reply>& reply, MessageType type) {
  if (const auto* error = std::get_if<ErrorReply>(&reply.body)) {
    if (reply.header.type != type && reply.header.type != MessageType::kInvalid) {
      return Status(StatusCode::kProtocolError,
                    fmt::format("an error reply to {} answers a {} request",
                                MessageTypeName(reply.header.type), MessageTypeName(type)));
    }
    return FromErrorReply(*error);
  }
  if (reply.header.type != type || reply.body.index() != ReplyIndexFor(type)) {
    return Status(StatusCode::kProtocolError,
                  fmt::format("a {} reply answers a {} request", MessageTypeName(reply.header.type),
                              MessageTypeName(type)));
  }
  return Status::OK();
}

}  // namespace kvtier::controller
