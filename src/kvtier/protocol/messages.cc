#include "kvtier/protocol/messages.h"

#include <algorithm>
#include <array>
#include <utility>

namespace kvtier::protocol {
namespace {

constexpr std::array<std::pair<DType, const char*>, 5> kDTypeNames = {{
    {DType::kBf16, "bf16"},
    {DType::kFp16, "fp16"},
    {DType::kFp32, "fp32"},
    {DType::kFp8E4m3, "fp8_e4m3"},
    {DType::kFp8E5m2, "fp8_e5m2"},
}};

constexpr std::array<std::pair<KvFormat, const char*>, 6> kKvFormatNames = {{
    {KvFormat::kKvNhd, "kv_nhd"},
    {KvFormat::kNbKvNhd, "nb_kv_nhd"},
    {KvFormat::kKvHnd, "kv_hnd"},
    {KvFormat::kNbKvHnd, "nb_kv_hnd"},
    {KvFormat::kMla, "mla"},
    {KvFormat::kCrossLayer, "cross_layer"},
}};

}  // namespace

const char* OpcodeName(Opcode op) {
  switch (op) {
    case Opcode::kHello:
      return "HELLO";
    case Opcode::kRegisterKvCache:
      return "REGISTER_KV_CACHE";
    case Opcode::kUnregisterKvCache:
      return "UNREGISTER_KV_CACHE";
    case Opcode::kGetChunkSize:
      return "GET_CHUNK_SIZE";
    case Opcode::kLookup:
      return "LOOKUP";
    case Opcode::kQueryPrefetchStatus:
      return "QUERY_PREFETCH_STATUS";
    case Opcode::kWaitPrefetchStatus:
      return "WAIT_PREFETCH_STATUS";
    case Opcode::kQueryPrefetchLookupHits:
      return "QUERY_PREFETCH_LOOKUP_HITS";
    case Opcode::kStore:
      return "STORE";
    case Opcode::kRetrieve:
      return "RETRIEVE";
    case Opcode::kFreeLookupLocks:
      return "FREE_LOOKUP_LOCKS";
    case Opcode::kEndSession:
      return "END_SESSION";
    case Opcode::kPing:
      return "PING";
    case Opcode::kClear:
      return "CLEAR";
    case Opcode::kNoop:
      return "NOOP";
    case Opcode::kReadObjects:
      return "READ_OBJECTS";
    case Opcode::kInvalid:
      break;
  }
  return "INVALID";
}

bool IsTransfer(Opcode op) {
  return op == Opcode::kStore || op == Opcode::kRetrieve || op == Opcode::kReadObjects;
}

bool operator==(const ReadObjectsReply& a, const ReadObjectsReply& b) {
  return a.found == b.found &&
         std::equal(a.objects.begin(), a.objects.end(), b.objects.begin(), b.objects.end(),
                    [](std::span<const uint8_t> x, std::span<const uint8_t> y) {
                      return std::equal(x.begin(), x.end(), y.begin(), y.end());
                    });
}

Opcode OpcodeOf(const Request& r) {
  // The variant lists the requests in opcode order, starting at 1.
  static_assert(std::variant_size_v<Request> == kMaxOpcode);
  static_assert(std::is_same_v<std::variant_alternative_t<0, Request>, HelloRequest>);
  static_assert(std::is_same_v<std::variant_alternative_t<8, Request>, StoreRequest>);
  static_assert(std::is_same_v<std::variant_alternative_t<14, Request>, NoopRequest>);
  static_assert(std::is_same_v<std::variant_alternative_t<15, Request>, ReadObjectsRequest>);
  return static_cast<Opcode>(r.index() + 1);
}

const char* DTypeName(DType t) {
  for (const auto& [value, name] : kDTypeNames) {
    if (value == t) return name;
  }
  return "unknown";
}

const char* KvFormatName(KvFormat f) {
  for (const auto& [value, name] : kKvFormatNames) {
    if (value == f) return name;
  }
  return "unknown";
}

size_t DTypeSize(DType t) {
  switch (t) {
    case DType::kBf16:
    case DType::kFp16:
      return 2;
    case DType::kFp32:
      return 4;
    case DType::kFp8E4m3:
    case DType::kFp8E5m2:
      return 1;
  }
  return 0;
}

std::optional<DType> DTypeFromName(std::string_view name) {
  for (const auto& [value, text] : kDTypeNames) {
    if (name == text) return value;
  }
  return std::nullopt;
}

std::optional<KvFormat> KvFormatFromName(std::string_view name) {
  for (const auto& [value, text] : kKvFormatNames) {
    if (name == text) return value;
  }
  return std::nullopt;
}

const char* DTypeChoices() { return "bf16, fp16, fp32, fp8_e4m3, fp8_e5m2"; }
const char* KvFormatChoices() { return "kv_nhd, nb_kv_nhd, kv_hnd, nb_kv_hnd, mla, cross_layer"; }

std::optional<uint64_t> LayerBytes(const Layout& layout) {
  const size_t dtype_size = DTypeSize(layout.dtype);
  if (dtype_size == 0) return std::nullopt;
  uint64_t bytes = layout.format == KvFormat::kMla ? 1 : 2;
  const uint64_t factors[] = {layout.num_blocks, layout.block_size,
                              layout.format == KvFormat::kMla ? 1u : layout.num_kv_heads,
                              layout.head_dim, dtype_size};
  for (uint64_t f : factors) {
    if (__builtin_mul_overflow(bytes, f, &bytes)) return std::nullopt;
  }
  if (layout.format == KvFormat::kCrossLayer &&
      __builtin_mul_overflow(bytes, uint64_t{layout.num_layers}, &bytes)) {
    return std::nullopt;
  }
  return bytes;
}

}  // namespace kvtier::protocol
