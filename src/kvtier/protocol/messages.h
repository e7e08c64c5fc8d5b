// The kvtier wire protocol, version 1, as C++ types (docs/protocol.md is the specification).
//
// Pure data: no sockets, no server state. The codec (codec.h) turns these into the two frames
// of a message and back. Depends only on common/ and keys/.
#pragma once

#include <array>
#include <cstdint>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <variant>
#include <vector>

#include "kvtier/common/status.h"

namespace kvtier::protocol {

inline constexpr uint16_t kProtocolVersion = 1;
inline constexpr size_t kHeaderSize = 16;
inline constexpr uint8_t kMagic0 = 'K';
inline constexpr uint8_t kMagic1 = 'V';

// Stable numbers: append only.
enum class Opcode : uint16_t {
  kInvalid = 0,  // only in error replies to unreadable messages
  kHello = 1,
  kRegisterKvCache = 2,
  kUnregisterKvCache = 3,
  kGetChunkSize = 4,
  kLookup = 5,
  kQueryPrefetchStatus = 6,
  kWaitPrefetchStatus = 7,
  kQueryPrefetchLookupHits = 8,
  kStore = 9,
  kRetrieve = 10,
  kFreeLookupLocks = 11,
  kEndSession = 12,
  kPing = 13,
  kClear = 14,
  kNoop = 15,
  kReadObjects = 16,
};
inline constexpr uint16_t kMaxOpcode = 16;
// "HELLO", "STORE", ...; "INVALID" for anything unknown.
const char* OpcodeName(Opcode op);
// STORE, RETRIEVE and READ_OBJECTS run on the transfer pool; everything else on the control
// pool.
bool IsTransfer(Opcode op);

enum HeaderFlags : uint8_t {
  kFlagReply = 1u << 0,
  kFlagError = 1u << 1,
};

struct Header {
  uint8_t version = kProtocolVersion;
  uint8_t flags = 0;
  Opcode opcode = Opcode::kInvalid;
  uint64_t request_id = 0;
};

// "key": which tokens an operation is about.
struct Key {
  std::string model;
  uint16_t world_size = 1;
  std::optional<uint16_t> worker_rank;  // nil: every rank
  std::string cache_salt;
  std::string request_id;
  std::vector<uint32_t> tokens;  // wire: bin of 4-byte little-endian values
  uint32_t start = 0;
  std::optional<uint32_t> end;  // absent: the last full-chunk boundary
  uint32_t object_group = 0;

  friend bool operator==(const Key&, const Key&) = default;
};

enum class DType : uint8_t { kBf16, kFp16, kFp32, kFp8E4m3, kFp8E5m2 };
enum class KvFormat : uint8_t { kKvNhd, kNbKvNhd, kKvHnd, kNbKvHnd, kMla, kCrossLayer };
const char* DTypeName(DType t);
const char* KvFormatName(KvFormat f);
size_t DTypeSize(DType t);
// The inverse of DTypeName / KvFormatName (exact, lowercase); nullopt for anything else.
std::optional<DType> DTypeFromName(std::string_view name);
std::optional<KvFormat> KvFormatFromName(std::string_view name);
// "bf16, fp16, fp32, fp8_e4m3, fp8_e5m2" / "kv_nhd, ...": the choices, for error messages.
const char* DTypeChoices();
const char* KvFormatChoices();

// CUDA IPC handles (cudaIpcMemHandle_t / cudaIpcEventHandle_t bytes) and device UUIDs
// (cudaDeviceProp::uuid), as the GPU data path sends them.
inline constexpr size_t kCudaIpcHandleBytes = 64;
inline constexpr size_t kDeviceUuidBytes = 16;
using CudaIpcHandle = std::array<uint8_t, kCudaIpcHandleBytes>;
using DeviceUuid = std::array<uint8_t, kDeviceUuidBytes>;

// An engine worker's paged KV cache (see docs/protocol.md, REGISTER_KV_CACHE).
struct Layout {
  uint32_t num_layers = 0;
  uint32_t num_blocks = 0;
  uint32_t block_size = 0;
  uint32_t num_kv_heads = 0;
  uint32_t head_dim = 0;
  DType dtype = DType::kBf16;
  KvFormat format = KvFormat::kKvNhd;
  std::vector<uint64_t> layer_offsets;  // bytes, one per layer

  friend bool operator==(const Layout&, const Layout&) = default;
};
// Bytes of one layer's tensor: 2 * num_blocks * block_size * num_kv_heads * head_dim * dtype
// size (mla: num_blocks * block_size * head_dim * dtype size; cross_layer: the one tensor all
// layers share, num_layers times the kv_nhd size). nullopt when it overflows 64 bits.
std::optional<uint64_t> LayerBytes(const Layout& layout);

// ---- Requests --------------------------------------------------------------------------
struct HelloRequest {
  uint16_t protocol_version = kProtocolVersion;
  std::string client;
  friend bool operator==(const HelloRequest&, const HelloRequest&) = default;
};
struct RegisterKvCacheRequest {
  std::string instance_id;
  std::string model;
  uint16_t world_size = 1;
  uint16_t worker_rank = 0;
  std::string backend = "host";
  Layout layout;
  std::string shm_name;  // host backend
  uint64_t shm_size = 0;
  // cuda backend: the GPU holding the cache, and one memory handle per layer (layers sharing
  // one allocation repeat its handle); layout.layer_offsets are then offsets from the base of
  // each layer's allocation.
  DeviceUuid device_uuid{};
  std::vector<CudaIpcHandle> cuda_ipc_handles;
  friend bool operator==(const RegisterKvCacheRequest&, const RegisterKvCacheRequest&) = default;
};
struct UnregisterKvCacheRequest {
  std::string instance_id;
  friend bool operator==(const UnregisterKvCacheRequest&,
                         const UnregisterKvCacheRequest&) = default;
};
struct GetChunkSizeRequest {
  friend bool operator==(const GetChunkSizeRequest&, const GetChunkSizeRequest&) = default;
};
struct LookupRequest {
  Key key;
  uint32_t read_locks = 1;
  uint32_t timeout_ms = 0;
  friend bool operator==(const LookupRequest&, const LookupRequest&) = default;
};
struct QueryPrefetchStatusRequest {
  std::string request_id;
  friend bool operator==(const QueryPrefetchStatusRequest&,
                         const QueryPrefetchStatusRequest&) = default;
};
struct WaitPrefetchStatusRequest {
  std::string request_id;
  uint32_t timeout_ms = 0;
  friend bool operator==(const WaitPrefetchStatusRequest&,
                         const WaitPrefetchStatusRequest&) = default;
};
struct QueryPrefetchLookupHitsRequest {
  std::string request_id;
  friend bool operator==(const QueryPrefetchLookupHitsRequest&,
                         const QueryPrefetchLookupHitsRequest&) = default;
};
struct StoreRequest {
  std::string instance_id;
  Key key;
  std::vector<uint32_t> block_ids;
  // cuda backend: an interprocess event the engine recorded after writing the blocks; the
  // server's copies wait for it. Absent: the blocks are ready now.
  std::optional<CudaIpcHandle> event_ipc_handle;
  friend bool operator==(const StoreRequest&, const StoreRequest&) = default;
};
struct RetrieveRequest {
  std::string instance_id;
  Key key;
  std::vector<uint32_t> block_ids;
  uint32_t skip_first_n_tokens = 0;
  // cuda backend: an interprocess event recorded after the engine's last use of the blocks.
  std::optional<CudaIpcHandle> event_ipc_handle;
  friend bool operator==(const RetrieveRequest&, const RetrieveRequest&) = default;
};
struct FreeLookupLocksRequest {
  Key key;
  friend bool operator==(const FreeLookupLocksRequest&, const FreeLookupLocksRequest&) = default;
};
struct EndSessionRequest {
  std::string request_id;
  friend bool operator==(const EndSessionRequest&, const EndSessionRequest&) = default;
};
struct PingRequest {
  std::optional<std::string> instance_id;
  friend bool operator==(const PingRequest&, const PingRequest&) = default;
};
struct ClearRequest {
  bool force = false;
  friend bool operator==(const ClearRequest&, const ClearRequest&) = default;
};
struct NoopRequest {
  friend bool operator==(const NoopRequest&, const NoopRequest&) = default;
};
// A peer server (the `peer` L2 adapter) reads whole objects out of this server's L1.
struct ReadObjectsRequest {
  std::vector<std::string> keys;  // keys::ObjectKey::ToString() text, each parses back
  uint64_t max_bytes = 0;         // the reply carries at most this many object bytes
  friend bool operator==(const ReadObjectsRequest&, const ReadObjectsRequest&) = default;
};

// In opcode order: the variant index + 1 is the opcode.
using Request =
    std::variant<HelloRequest, RegisterKvCacheRequest, UnregisterKvCacheRequest,
                 GetChunkSizeRequest, LookupRequest, QueryPrefetchStatusRequest,
                 WaitPrefetchStatusRequest, QueryPrefetchLookupHitsRequest, StoreRequest,
                 RetrieveRequest, FreeLookupLocksRequest, EndSessionRequest, PingRequest,
                 ClearRequest, NoopRequest, ReadObjectsRequest>;
Opcode OpcodeOf(const Request& r);

// ---- Replies ---------------------------------------------------------------------------
struct HelloReply {
  uint16_t protocol_version = kProtocolVersion;
  std::string server_id;
  std::string server_version;
  uint32_t chunk_size = 0;
  std::string hash_algorithm;
  friend bool operator==(const HelloReply&, const HelloReply&) = default;
};
struct RegisterKvCacheReply {
  uint64_t object_size = 0;
  friend bool operator==(const RegisterKvCacheReply&, const RegisterKvCacheReply&) = default;
};
struct EmptyReply {  // UNREGISTER_KV_CACHE, LOOKUP, NOOP
  friend bool operator==(const EmptyReply&, const EmptyReply&) = default;
};
struct ChunkSizeReply {
  uint32_t chunk_size = 0;
  friend bool operator==(const ChunkSizeReply&, const ChunkSizeReply&) = default;
};
struct PrefetchStatusReply {  // QUERY_ and WAIT_PREFETCH_STATUS
  bool done = false;
  uint32_t hit_chunks = 0;
  friend bool operator==(const PrefetchStatusReply&, const PrefetchStatusReply&) = default;
};
struct LookupHitsReply {
  bool known = false;
  uint32_t hit_chunks = 0;
  friend bool operator==(const LookupHitsReply&, const LookupHitsReply&) = default;
};
struct StoreReply {
  uint32_t stored_chunks = 0;
  uint32_t present_chunks = 0;
  uint32_t failed_chunks = 0;
  // cuda backend: an interprocess event that completes when the server's copies are done.
  std::optional<CudaIpcHandle> event_ipc_handle;
  friend bool operator==(const StoreReply&, const StoreReply&) = default;
};
struct RetrieveReply {
  uint32_t retrieved_chunks = 0;
  // cuda backend: completes when the retrieved KV is in the engine's blocks.
  std::optional<CudaIpcHandle> event_ipc_handle;
  friend bool operator==(const RetrieveReply&, const RetrieveReply&) = default;
};
struct FreeLookupLocksReply {
  uint32_t released = 0;
  friend bool operator==(const FreeLookupLocksReply&, const FreeLookupLocksReply&) = default;
};
struct EndSessionReply {
  uint32_t touched_keys = 0;
  friend bool operator==(const EndSessionReply&, const EndSessionReply&) = default;
};
struct PingReply {
  bool ok = true;
  friend bool operator==(const PingReply&, const PingReply&) = default;
};
struct ClearReply {
  uint64_t cleared = 0;
  friend bool operator==(const ClearReply&, const ClearReply&) = default;
};
// READ_OBJECTS. The payload carries `found`; the bytes of each found object follow the payload
// as one extra frame each, in key order (they are not msgpack).
struct ReadObjectsReply {
  std::vector<bool> found;  // one per requested key
  // The found objects' bytes, in key order (the payload does not carry them: the codec puts
  // them in Frames::extra). On the server they point into L1, valid while `hold` lives (it
  // holds the read locks); on a client they point into the received frames, held by `hold`.
  std::vector<std::span<const uint8_t>> objects;
  std::shared_ptr<const void> hold;
  // Equal when `found` and every object's bytes are equal (`hold` is not compared).
  friend bool operator==(const ReadObjectsReply& a, const ReadObjectsReply& b);
};
struct ErrorReply {
  StatusCode code = StatusCode::kInternal;
  std::string message;
  bool retryable = false;
  friend bool operator==(const ErrorReply&, const ErrorReply&) = default;
};

using Reply =
    std::variant<HelloReply, RegisterKvCacheReply, EmptyReply, ChunkSizeReply, PrefetchStatusReply,
                 LookupHitsReply, StoreReply, RetrieveReply, FreeLookupLocksReply, EndSessionReply,
                 PingReply, ClearReply, ErrorReply, ReadObjectsReply>;

}  // namespace kvtier::protocol
