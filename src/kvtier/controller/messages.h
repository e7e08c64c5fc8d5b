// The cluster controller's wire protocol, version 1, as C++ types (docs/controller.md, section
// "Wire protocol", is the specification).
//
// Pure data: no sockets, no registry state. codec.h turns these into frames and back. Depends
// only on common/ and keys/. Separate from the server protocol (protocol/): its own magic,
// version and message types.
#pragma once

#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <variant>
#include <vector>

#include "kvtier/common/result.h"
#include "kvtier/common/status.h"
#include "kvtier/keys/object_key.h"

namespace kvtier::controller {

inline constexpr uint8_t kProtocolVersion = 1;
inline constexpr size_t kHeaderSize = 16;
inline constexpr uint8_t kMagic0 = 'K';
inline constexpr uint8_t kMagic1 = 'C';

// ---- Limits (checked by the decoder; the encoder's caller keeps within them) ---------------
inline constexpr size_t kMaxFrameBytes = 8u << 20;
inline constexpr size_t kMaxKeysPerMessage = 65536;  // all key groups of a message together
inline constexpr size_t kMaxKeyGroups = 1024;        // key groups in one message
inline constexpr size_t kMaxIdLength = 256;          // instance ids
inline constexpr size_t kMaxLocationLength = 64;     // location names
inline constexpr size_t kMaxAddressLength = 512;     // peer-fetch and heartbeat endpoints
inline constexpr size_t kMaxTextLength = 4096;       // messages, reasons, versions
inline constexpr size_t kMaxLocations = 16;          // locations of one worker
inline constexpr uint32_t kMaxSyncBatches = 1u << 20;
inline constexpr size_t kMaxMissingListed = 4096;  // FULL_SYNC_STATUS missing_batches
inline constexpr size_t kMaxCommands = 64;         // commands in one heartbeat reply
inline constexpr size_t kMaxListed = 4096;         // entries of LOOKUP/FIND_KV/WORKERS replies
inline constexpr uint32_t kMaxChunkSize = 1u << 20;

// Stable numbers: append only, never reuse. 1-31 are events (PUSH), 32-63 requests (DEALER).
// A reply carries its request's type with the reply flag.
enum class MessageType : uint16_t {
  kInvalid = 0,  // only in error replies to frames whose type could not be read
  kAdmit = 1,
  kEvict = 2,
  kFullSyncStart = 3,
  kFullSyncBatch = 4,
  kFullSyncEnd = 5,
  kRegister = 32,
  kDeregister = 33,
  kHeartbeat = 34,
  kFullSyncStatus = 35,
  kLookup = 36,
  kFindKv = 37,
  kWorkers = 38,
  kClear = 39,
  kPing = 40,
};
// "ADMIT", "FULL_SYNC_START", ...; "INVALID" for anything else.
const char* MessageTypeName(MessageType type);
// The type with this number, if there is one (kInvalid is not a message type).
std::optional<MessageType> MessageTypeFromNumber(uint16_t number);
bool IsEvent(MessageType type);
bool IsRequest(MessageType type);

enum HeaderFlags : uint8_t {
  kFlagReply = 1u << 0,
  kFlagError = 1u << 1,  // replies only
};

struct Header {
  uint8_t version = kProtocolVersion;
  uint8_t flags = 0;
  MessageType type = MessageType::kInvalid;
  uint64_t request_id = 0;  // requests: chosen by the client, echoed; events: 0
  friend bool operator==(const Header&, const Header&) = default;
};

// ---- Keys --------------------------------------------------------------------------------

// The part of an ObjectKey shared by a batch: (model, cache salt) namespace, kv rank, group.
struct KeySpace {
  std::string model;       // 1..256 bytes, no '@' or NUL
  std::string cache_salt;  // at most 128 bytes, none of '@' '/' '\' NUL
  uint16_t world_size = 1;
  uint16_t rank = 0;  // < world_size
  uint32_t object_group = 0;

  keys::KvRank kv_rank() const { return keys::KvRank{world_size, rank}; }
  // Interns (model, cache_salt). Interned names live for the process: intern only spaces of
  // registered workers, never straight from unauthenticated input.
  Result<keys::NamespaceId> Intern() const;
  // The space of `key`.
  static KeySpace Of(const keys::ObjectKey& key);

  friend bool operator==(const KeySpace&, const KeySpace&) = default;
};

// Keys of one space. Wire: the space's fields plus "hashes", a bin of 32 * n bytes.
struct KeyGroup {
  KeySpace space;
  std::vector<keys::ChunkHash> hashes;

  // Appends one ObjectKey per hash to `out`, interning the namespace once.
  Status AppendObjectKeys(std::vector<keys::ObjectKey>* out) const;

  friend bool operator==(const KeyGroup&, const KeyGroup&) = default;
};

// Groups `keys` by space, groups in order of first appearance, keys in their order.
std::vector<KeyGroup> GroupKeys(std::span<const keys::ObjectKey> keys);
// Every key of `groups`, group by group.
Result<std::vector<keys::ObjectKey>> ToObjectKeys(std::span<const KeyGroup> groups);
size_t CountKeys(std::span<const KeyGroup> groups);

// Who sends an event or a request about a worker: one worker of one instance, under one
// registration (the id REGISTER returned; a new registration invalidates the old one's
// messages still in flight).
struct Origin {
  std::string instance_id;  // 1..256 printable ASCII bytes
  uint32_t worker_id = 0;
  uint64_t registration_id = 0;  // nonzero
  friend bool operator==(const Origin&, const Origin&) = default;
};

// ---- Events (worker -> controller, PUSH -> PULL, no reply) ------------------------------

enum class KvOp : uint8_t { kAdmit, kEvict };

// ADMIT or EVICT: keys that became present at / absent from a location, in the order they did.
struct KvEvent {
  KvOp op = KvOp::kAdmit;
  Origin origin;
  std::string location;  // 1..64 printable ASCII bytes: "L1", "fs", "redis"
  uint64_t seq = 0;      // per (instance, worker, location): previous + 1, starting after base_seq
  std::vector<KeyGroup> groups;
  friend bool operator==(const KvEvent&, const KvEvent&) = default;
};

// A full sync of one location: START, then batches 0..total_batches-1 (any order, resendable),
// then END.
struct FullSyncStart {
  Origin origin;
  std::string location;
  uint64_t sync_id = 0;   // nonzero; unique per (registration, location)
  uint64_t base_seq = 0;  // the snapshot reflects every event up to this seq, and the next
                          // ADMIT/EVICT of the location has seq base_seq + 1
  uint32_t total_batches = 0;
  uint64_t total_keys = 0;  // <= total_batches * kMaxKeysPerMessage
  friend bool operator==(const FullSyncStart&, const FullSyncStart&) = default;
};

struct FullSyncBatch {
  Origin origin;
  std::string location;
  uint64_t sync_id = 0;
  uint32_t batch_index = 0;  // < total_batches of its START
  std::vector<KeyGroup> groups;
  friend bool operator==(const FullSyncBatch&, const FullSyncBatch&) = default;
};

struct FullSyncEnd {
  Origin origin;
  std::string location;
  uint64_t sync_id = 0;
  uint64_t total_keys = 0;  // repeats START's: a sync whose counts disagree fails
  friend bool operator==(const FullSyncEnd&, const FullSyncEnd&) = default;
};

using Event = std::variant<KvEvent, FullSyncStart, FullSyncBatch, FullSyncEnd>;
MessageType TypeOf(const Event& event);

// ---- Requests (DEALER -> ROUTER; each gets exactly one reply) ----------------------------

struct RegisterRequest {
  std::string instance_id;
  uint32_t worker_id = 0;
  std::string address;                 // peer-fetch endpoint; "" = serves no peer fetches
  std::vector<std::string> locations;  // 1..kMaxLocations distinct names
  std::string software_version;        // e.g. "kvtier 0.4.0"; diagnostics only
  std::string hash_algorithm;          // the server's chunk hash, e.g. "sha256"
  uint32_t chunk_size = 0;             // tokens per chunk, 1..kMaxChunkSize
  friend bool operator==(const RegisterRequest&, const RegisterRequest&) = default;
};

struct DeregisterRequest {
  Origin origin;
  friend bool operator==(const DeregisterRequest&, const DeregisterRequest&) = default;
};

// What a worker has sent for one location.
struct LocationReport {
  std::string location;
  uint64_t last_seq = 0;   // the last ADMIT/EVICT seq sent (base_seq if none since the sync)
  uint64_t key_count = 0;  // keys at the location after that event
  friend bool operator==(const LocationReport&, const LocationReport&) = default;
};

struct HeartbeatRequest {
  Origin origin;
  std::vector<LocationReport> locations;
  friend bool operator==(const HeartbeatRequest&, const HeartbeatRequest&) = default;
};

struct FullSyncStatusRequest {
  Origin origin;
  std::string location;
  uint64_t sync_id = 0;
  friend bool operator==(const FullSyncStatusRequest&, const FullSyncStatusRequest&) = default;
};

// Prefix lookup: which instances hold the longest prefix of `hashes` (a chunk-hash chain).
struct LookupRequest {
  std::string model;
  std::string cache_salt;
  uint16_t world_size = 1;
  std::optional<uint16_t> rank;  // nil: an instance must hold every rank of a chunk
  uint32_t object_group = 0;
  std::vector<keys::ChunkHash> hashes;  // at most kMaxKeysPerMessage
  std::string exclude_instance;         // "" = none
  friend bool operator==(const LookupRequest&, const LookupRequest&) = default;
};

// Who holds one key.
struct FindKvRequest {
  KeySpace space;
  keys::ChunkHash hash;
  std::string exclude_instance;  // "" = none
  friend bool operator==(const FindKvRequest&, const FindKvRequest&) = default;
};

struct WorkersRequest {
  std::string instance_id;  // "" = every instance
  friend bool operator==(const WorkersRequest&, const WorkersRequest&) = default;
};

// Forgets the controller's index of the matching workers' locations ("" / nil = all); they are
// asked to full-sync at their next heartbeat. Never touches the servers' caches.
struct ClearRequest {
  std::string instance_id;
  std::optional<uint32_t> worker_id;  // only with an instance_id
  std::string location;
  friend bool operator==(const ClearRequest&, const ClearRequest&) = default;
};

struct PingRequest {
  friend bool operator==(const PingRequest&, const PingRequest&) = default;
};

using Request =
    std::variant<RegisterRequest, DeregisterRequest, HeartbeatRequest, FullSyncStatusRequest,
                 LookupRequest, FindKvRequest, WorkersRequest, ClearRequest, PingRequest>;
MessageType TypeOf(const Request& request);

// ---- Replies -----------------------------------------------------------------------------

struct RegisterReply {
  uint64_t registration_id = 0;   // nonzero; carried by every later message of the worker
  uint64_t controller_epoch = 0;  // nonzero, new at each controller start
  uint32_t heartbeat_interval_ms = 0;
  uint32_t worker_timeout_ms = 0;  // reaped after this long without a heartbeat
  std::string heartbeat_endpoint;  // "" = the worker's configured one
  uint32_t max_keys_per_message = kMaxKeysPerMessage;
  friend bool operator==(const RegisterReply&, const RegisterReply&) = default;
};

struct DeregisterReply {
  bool removed = false;  // false: the registration was already gone
  friend bool operator==(const DeregisterReply&, const DeregisterReply&) = default;
};

// A controller -> worker command, carried by heartbeat replies and run in order.
enum class CommandKind : uint8_t {
  kUnknown,     // from a newer controller: ignore it (the name is kept for the log)
  kReregister,  // REGISTER again (then full-sync every location)
  kFullSync,    // full-sync `location`
};
struct Command {
  CommandKind kind = CommandKind::kUnknown;
  std::string name;      // kUnknown only: the wire name (empty for known kinds)
  std::string location;  // kFullSync
  std::string reason;    // "controller_restart", "seq_gap", ...
  friend bool operator==(const Command&, const Command&) = default;
};
const char* CommandKindName(CommandKind kind);  // "reregister", "full_sync"; "" for kUnknown

struct HeartbeatReply {
  uint64_t controller_epoch = 0;
  uint32_t heartbeat_interval_ms = 0;
  std::vector<Command> commands;
  friend bool operator==(const HeartbeatReply&, const HeartbeatReply&) = default;
};

enum class SyncState : uint8_t {
  kUnknown,    // no such sync (never started, superseded, or lost): start a new one
  kReceiving,  // START seen, END not yet
  kMissing,    // END seen, batches missing: resend them
  kComplete,
  kFailed,  // abandoned by the controller (see reason): start a new one
};
const char* SyncStateName(SyncState state);  // "unknown", "receiving", ...

struct FullSyncStatusReply {
  SyncState state = SyncState::kUnknown;
  uint32_t total_batches = 0;
  uint32_t received_batches = 0;
  std::vector<uint32_t> missing_batches;  // ascending; the first kMaxMissingListed
  std::string reason;                     // kFailed: why
  friend bool operator==(const FullSyncStatusReply&, const FullSyncStatusReply&) = default;
};

struct LookupMatch {
  std::string instance_id;
  std::string address;
  uint32_t matched_chunks = 0;  // >= 1: the instance holds hashes [0, matched_chunks)
  friend bool operator==(const LookupMatch&, const LookupMatch&) = default;
};
struct LookupReply {
  std::vector<LookupMatch> matches;  // longest first, then by instance_id
  friend bool operator==(const LookupReply&, const LookupReply&) = default;
};

struct Holder {
  std::string instance_id;
  uint32_t worker_id = 0;
  std::string location;
  std::string address;
  friend bool operator==(const Holder&, const Holder&) = default;
};
struct FindKvReply {
  std::vector<Holder> holders;  // by instance_id, worker_id, location
  friend bool operator==(const FindKvReply&, const FindKvReply&) = default;
};

struct LocationInfo {
  std::string location;
  uint64_t key_count = 0;
  uint64_t last_seq = 0;
  SyncState sync_state = SyncState::kUnknown;  // of the latest sync of the location
  friend bool operator==(const LocationInfo&, const LocationInfo&) = default;
};
struct WorkerInfo {
  std::string instance_id;
  uint32_t worker_id = 0;
  std::string address;
  std::string software_version;
  uint64_t registered_at_ms = 0;  // Unix time
  uint64_t last_heartbeat_ms = 0;
  std::vector<LocationInfo> locations;
  friend bool operator==(const WorkerInfo&, const WorkerInfo&) = default;
};
struct WorkersReply {
  std::vector<WorkerInfo> workers;  // by instance_id, worker_id
  bool truncated = false;           // more than kMaxListed matched
  friend bool operator==(const WorkersReply&, const WorkersReply&) = default;
};

struct ClearReply {
  uint64_t cleared_keys = 0;
  friend bool operator==(const ClearReply&, const ClearReply&) = default;
};

struct PingReply {
  uint64_t controller_epoch = 0;
  friend bool operator==(const PingReply&, const PingReply&) = default;
};

struct ErrorReply {
  StatusCode code = StatusCode::kInternal;  // > 0
  std::string message;
  bool retryable = false;
  friend bool operator==(const ErrorReply&, const ErrorReply&) = default;
};

using Reply =
    std::variant<RegisterReply, DeregisterReply, HeartbeatReply, FullSyncStatusReply, LookupReply,
                 FindKvReply, WorkersReply, ClearReply, PingReply, ErrorReply>;
// The Reply alternative that answers a request type (ErrorReply answers any);
// std::variant_npos for events and unknown types.
size_t ReplyIndexFor(MessageType type);

// Status <-> error reply. The message is cut to kMaxTextLength bytes at a UTF-8 boundary, and
// invalid UTF-8 is replaced, so the reply always decodes.
ErrorReply ToErrorReply(const Status& status);
// Never OK, whatever the reply's code says.
Status FromErrorReply(const ErrorReply& error);

}  // namespace kvtier::controller
