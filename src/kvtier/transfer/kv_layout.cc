#include "kvtier/transfer/kv_layout.h"

#include <algorithm>
#include <initializer_list>
#include <numeric>
#include <vector>

#include <fmt/format.h>

namespace kvtier::transfer {
namespace {

using protocol::DType;
using protocol::KvFormat;

// The product of `factors`, or false when it does not fit in 64 bits.
bool CheckedProduct(std::initializer_list<uint64_t> factors, uint64_t* out) {
  uint64_t product = 1;
  for (uint64_t f : factors) {
    if (__builtin_mul_overflow(product, f, &product)) return false;
  }
  *out = product;
  return true;
}

Status Invalid(std::string msg) { return Status::InvalidArgument("kv layout: " + std::move(msg)); }

}  // namespace

uint32_t DTypeBytes(DType dtype) {
  switch (dtype) {
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

const char* KvFormatString(KvFormat format) {
  switch (format) {
    case KvFormat::kKvNhd:
      return "kv_nhd";
    case KvFormat::kNbKvNhd:
      return "nb_kv_nhd";
    case KvFormat::kKvHnd:
      return "kv_hnd";
    case KvFormat::kNbKvHnd:
      return "nb_kv_hnd";
    case KvFormat::kMla:
      return "mla";
    case KvFormat::kCrossLayer:
      return "cross_layer";
  }
  return "unknown";
}

Result<KvGeometry> KvGeometry::Create(const protocol::Layout& layout, uint32_t chunk_size) {
  const std::pair<const char*, uint32_t> dims[] = {
      {"num_layers", layout.num_layers}, {"num_blocks", layout.num_blocks},
      {"block_size", layout.block_size}, {"num_kv_heads", layout.num_kv_heads},
      {"head_dim", layout.head_dim},     {"chunk_size", chunk_size},
  };
  for (const auto& [name, value] : dims) {
    if (value == 0) return MakeError(Invalid(fmt::format("{} must be positive", name)));
  }
  if (chunk_size % layout.block_size != 0) {
    return MakeError(Invalid(
        fmt::format("block_size {} does not divide chunk_size {}", layout.block_size, chunk_size)));
  }
  const uint32_t element_bytes = DTypeBytes(layout.dtype);
  if (element_bytes == 0) {
    return MakeError(Status::NotSupported(
        fmt::format("kv layout: dtype {} is not supported", static_cast<int>(layout.dtype))));
  }
  if (std::string_view(KvFormatString(layout.format)) == "unknown") {
    return MakeError(Status::NotSupported(
        fmt::format("kv layout: format {} is not supported", static_cast<int>(layout.format))));
  }
  if (layout.format == KvFormat::kMla && layout.num_kv_heads != 1) {
    return MakeError(Invalid(fmt::format("mla needs num_kv_heads 1, got {}", layout.num_kv_heads)));
  }
  if (layout.layer_offsets.size() != layout.num_layers) {
    return MakeError(Invalid(fmt::format("layer_offsets has {} entries; num_layers is {}",
                                         layout.layer_offsets.size(), layout.num_layers)));
  }

  KvGeometry g;
  g.format = layout.format;
  g.num_layers = layout.num_layers;
  g.num_blocks = layout.num_blocks;
  g.block_size = layout.block_size;
  g.num_kv_heads = layout.num_kv_heads;
  g.head_dim = layout.head_dim;
  g.chunk_size = chunk_size;
  g.blocks_per_chunk = chunk_size / layout.block_size;
  g.element_bytes = element_bytes;
  g.planes = layout.format == KvFormat::kMla ? 1 : 2;
  if (!CheckedProduct({layout.head_dim, element_bytes}, &g.row_bytes) ||
      !CheckedProduct({g.row_bytes, layout.num_kv_heads}, &g.token_bytes) ||
      !CheckedProduct({g.token_bytes, layout.block_size}, &g.block_bytes) ||
      !CheckedProduct({g.block_bytes, layout.num_blocks, g.planes,
                       layout.format == KvFormat::kCrossLayer ? layout.num_layers : 1u},
                      &g.layer_bytes) ||
      !CheckedProduct({g.token_bytes, chunk_size, layout.num_layers, g.planes}, &g.object_size)) {
    return MakeError(Status::OutOfRange("kv layout: sizes overflow 64 bits"));
  }
  return g;
}

Status KvGeometry::CheckLayerExtents(std::span<const uint64_t> layer_offsets,
                                     uint64_t region_size) const {
  if (layer_offsets.size() != num_layers) {
    return Invalid(fmt::format("layer_offsets has {} entries; num_layers is {}",
                               layer_offsets.size(), num_layers));
  }
  return CheckExtents(layer_offsets, region_size);
}

Status KvGeometry::CheckExtents(std::span<const uint64_t> layer_offsets,
                                uint64_t region_size) const {
  const auto n = static_cast<uint32_t>(layer_offsets.size());
  for (uint32_t l = 0; l < n; ++l) {
    uint64_t end = 0;
    if (__builtin_add_overflow(layer_offsets[l], layer_bytes, &end) || end > region_size) {
      return Status::OutOfRange(fmt::format(
          "kv layout: layer {} at offset {} with {} bytes ends beyond the segment size {}", l,
          layer_offsets[l], layer_bytes, region_size));
    }
  }
  if (format == KvFormat::kCrossLayer) {
    // One tensor: every layer names its base.
    for (uint32_t l = 1; l < n; ++l) {
      if (layer_offsets[l] != layer_offsets[0]) {
        return Invalid(fmt::format(
            "cross_layer: every layer_offsets entry must be the tensor's offset ({}); layer {} "
            "says {}",
            layer_offsets[0], l, layer_offsets[l]));
      }
    }
    return Status::OK();
  }
  std::vector<uint32_t> order(n);
  std::iota(order.begin(), order.end(), 0u);
  std::sort(order.begin(), order.end(),
            [&](uint32_t a, uint32_t b) { return layer_offsets[a] < layer_offsets[b]; });
  for (size_t i = 1; i < order.size(); ++i) {
    const uint32_t prev = order[i - 1];
    const uint32_t cur = order[i];
    if (layer_offsets[prev] + layer_bytes > layer_offsets[cur]) {
      return Invalid(fmt::format("layers {} (offset {}) and {} (offset {}) overlap ({} bytes each)",
                                 prev, layer_offsets[prev], cur, layer_offsets[cur], layer_bytes));
    }
  }
  return Status::OK();
}

}  // namespace kvtier::transfer
