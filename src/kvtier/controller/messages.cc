#include "kvtier/controller/messages.h"

#include <tuple>
#include <type_traits>
#include <utility>

#include <absl/container/flat_hash_map.h>
#include <fmt/format.h>

#include "kvtier/common/check.h"
#include "kvtier/controller/msgpack_io.h"

namespace kvtier::controller {

const char* MessageTypeName(MessageType type) {
  switch (type) {
    case MessageType::kAdmit:
      return "ADMIT";
    case MessageType::kEvict:
      return "EVICT";
    case MessageType::kFullSyncStart:
      return "FULL_SYNC_START";
    case MessageType::kFullSyncBatch:
      return "FULL_SYNC_BATCH";
    case MessageType::kFullSyncEnd:
      return "FULL_SYNC_END";
    case MessageType::kRegister:
      return "REGISTER";
    case MessageType::kDeregister:
      return "DEREGISTER";
    case MessageType::kHeartbeat:
      return "HEARTBEAT";
    case MessageType::kFullSyncStatus:
      return "FULL_SYNC_STATUS";
    case MessageType::kLookup:
      return "LOOKUP";
    case MessageType::kFindKv:
      return "FIND_KV";
    case MessageType::kWorkers:
      return "WORKERS";
    case MessageType::kClear:
      return "CLEAR";
    case MessageType::kPing:
      return "PING";
    case MessageType::kInvalid:
      break;
  }
  return "INVALID";
}

std::optional<MessageType> MessageTypeFromNumber(uint16_t number) {
  const auto type = static_cast<MessageType>(number);
  if (IsEvent(type) || IsRequest(type)) return type;
  return std::nullopt;
}

bool IsEvent(MessageType type) {
  const auto n = static_cast<uint16_t>(type);
  return n >= static_cast<uint16_t>(MessageType::kAdmit) &&
         n <= static_cast<uint16_t>(MessageType::kFullSyncEnd);
}

bool IsRequest(MessageType type) {
  const auto n = static_cast<uint16_t>(type);
  return n >= static_cast<uint16_t>(MessageType::kRegister) &&
         n <= static_cast<uint16_t>(MessageType::kPing);
}

// ---- Keys ----

Result<keys::NamespaceId> KeySpace::Intern() const {
  return keys::InternNamespace(model, cache_salt);
}

KeySpace KeySpace::Of(const keys::ObjectKey& key) {
  const keys::KvRank rank = key.kv_rank();
  return KeySpace{std::string(key.model_name()), std::string(key.cache_salt()), rank.world_size,
                  rank.rank, key.object_group()};
}

Status KeyGroup::AppendObjectKeys(std::vector<keys::ObjectKey>* out) const {
  KVT_ASSIGN_OR_RETURN(keys::NamespaceId ns, space.Intern());
  KVT_RETURN_IF_ERROR(space.kv_rank().Validate());
  out->reserve(out->size() + hashes.size());
  for (const keys::ChunkHash& hash : hashes) {
    Result<keys::ObjectKey> key =
        keys::ObjectKey::Create(hash, ns, space.kv_rank(), space.object_group);
    KVT_DCHECK(key.has_value());  // the rank was validated above
    if (!key) return key.error();
    out->push_back(*key);
  }
  return Status::OK();
}

std::vector<KeyGroup> GroupKeys(std::span<const keys::ObjectKey> keys) {
  // (namespace, packed rank, object group) -> index in `groups`.
  using SpaceId = std::tuple<keys::NamespaceId, uint32_t, uint32_t>;
  absl::flat_hash_map<SpaceId, size_t> index;
  std::vector<KeyGroup> groups;
  SpaceId last{0, 0, 0};  // namespace 0 never occurs in a real key
  size_t last_group = 0;
  for (const keys::ObjectKey& key : keys) {
    const SpaceId id{key.namespace_id(), key.kv_rank().Packed(), key.object_group()};
    if (groups.empty() || id != last) {
      auto [it, inserted] = index.try_emplace(id, groups.size());
      if (inserted) groups.push_back(KeyGroup{KeySpace::Of(key), {}});
      last = id;
      last_group = it->second;
    }
    groups[last_group].hashes.push_back(key.chunk_hash());
  }
  return groups;
}

Result<std::vector<keys::ObjectKey>> ToObjectKeys(std::span<const KeyGroup> groups) {
  std::vector<keys::ObjectKey> out;
  out.reserve(CountKeys(groups));
  for (const KeyGroup& group : groups) KVT_RETURN_IF_ERROR(group.AppendObjectKeys(&out));
  return out;
}

size_t CountKeys(std::span<const KeyGroup> groups) {
  size_t n = 0;
  for (const KeyGroup& group : groups) n += group.hashes.size();
  return n;
}

// ---- Message types ----

MessageType TypeOf(const Event& event) {
  return std::visit(
      [](const auto& e) {
        using T = std::decay_t<decltype(e)>;
        if constexpr (std::is_same_v<T, KvEvent>) {
          return e.op == KvOp::kAdmit ? MessageType::kAdmit : MessageType::kEvict;
        } else if constexpr (std::is_same_v<T, FullSyncStart>) {
          return MessageType::kFullSyncStart;
        } else if constexpr (std::is_same_v<T, FullSyncBatch>) {
          return MessageType::kFullSyncBatch;
        } else {
          static_assert(std::is_same_v<T, FullSyncEnd>);
          return MessageType::kFullSyncEnd;
        }
      },
      event);
}

// Request alternatives are in type order: REGISTER is index 0.
static_assert(std::variant_size_v<Request> == static_cast<size_t>(MessageType::kPing) -
                                                  static_cast<size_t>(MessageType::kRegister) + 1);
static_assert(std::variant_size_v<Reply> == std::variant_size_v<Request> + 1);

MessageType TypeOf(const Request& request) {
  return static_cast<MessageType>(static_cast<size_t>(MessageType::kRegister) + request.index());
}

size_t ReplyIndexFor(MessageType type) {
  if (!IsRequest(type)) return std::variant_npos;
  // Replies are in request order too.
  return static_cast<size_t>(type) - static_cast<size_t>(MessageType::kRegister);
}

const char* CommandKindName(CommandKind kind) {
  switch (kind) {
    case CommandKind::kReregister:
      return "reregister";
    case CommandKind::kFullSync:
      return "full_sync";
    case CommandKind::kUnknown:
      break;
  }
  return "";
}

const char* SyncStateName(SyncState state) {
  switch (state) {
    case SyncState::kUnknown:
      return "unknown";
    case SyncState::kReceiving:
      return "receiving";
    case SyncState::kMissing:
      return "missing";
    case SyncState::kComplete:
      return "complete";
    case SyncState::kFailed:
      return "failed";
  }
  return "unknown";
}

// ---- Errors ----

ErrorReply ToErrorReply(const Status& status) {
  KVT_DCHECK_MSG(!status.ok(), "an OK status is not an error reply");
  if (status.ok()) return ErrorReply{StatusCode::kInternal, "error reply for an OK status", false};
  ErrorReply reply;
  reply.code = static_cast<int32_t>(status.code()) > 0 ? status.code() : StatusCode::kInternal;
  reply.message = internal::SanitizeText(status.message(), kMaxTextLength);
  reply.retryable = status.retryable();
  return reply;
}

Status FromErrorReply(const ErrorReply& error) {
  if (static_cast<int32_t>(error.code) <= 0) {
    return Status(StatusCode::kProtocolError,
                  fmt::format("error reply with code {}: {}", static_cast<int32_t>(error.code),
                              error.message),
                  error.retryable);
  }
  return Status(error.code, error.message, error.retryable);
}

}  // namespace kvtier::controller
