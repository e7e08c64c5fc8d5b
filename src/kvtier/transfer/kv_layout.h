// KvGeometry: the sizes and offsets one engine KV layout implies, validated once at
// registration and shared by every transfer backend (host today, GPU next).
//
// Engine layouts (per layer, row-major, elements of `dtype`; H = num_kv_heads, D = head_dim,
// NB = num_blocks, BS = block_size):
//   kv_nhd     [2, NB, BS, H, D]   vLLM flash-attention
//   nb_kv_nhd  [NB, 2, BS, H, D]   vLLM FlashInfer
//   kv_hnd     [2, NB, H, BS, D]
//   nb_kv_hnd  [NB, 2, H, BS, D]
//   mla        [NB, BS, D]         (H must be 1)
//   cross_layer [NB, L, 2, BS, H, D] one tensor for every layer (vLLM's cross-layer blocks: a
//                                   block of all layers is one contiguous region); every
//                                   layer_offsets entry names that tensor's base
// In every format one (plane, block) pair is one contiguous region of BS*H*D elements: tokens
// then heads (NHD) or heads then tokens (HND).
//
// Chunk object layout (KV_2LTD): [planes, num_layers, chunk_size, H*D] elements, row-major:
// K of every layer, then V of every layer; within one (plane, layer) the chunk's tokens are
// contiguous, each token's heads in order. planes = 2, or 1 for mla ([1, L, T, D]).
#pragma once

#include <cstdint>
#include <span>

#include "kvtier/common/result.h"
#include "kvtier/protocol/messages.h"

namespace kvtier::transfer {

// Bytes of one element; 0 for a value outside the enum. (protocol::DTypeSize says the same once
// the codec library lands; this keeps transfer/ free of that dependency.)
uint32_t DTypeBytes(protocol::DType dtype);
// "kv_nhd", ...; "unknown" outside the enum.
const char* KvFormatString(protocol::KvFormat format);

struct KvGeometry {
  protocol::KvFormat format = protocol::KvFormat::kKvNhd;
  uint32_t num_layers = 0;
  uint32_t num_blocks = 0;
  uint32_t block_size = 0;
  uint32_t num_kv_heads = 0;
  uint32_t head_dim = 0;
  uint32_t chunk_size = 0;
  uint32_t blocks_per_chunk = 0;  // chunk_size / block_size
  uint32_t element_bytes = 0;
  uint32_t planes = 0;       // 2 (K, V), or 1 for mla
  uint64_t row_bytes = 0;    // one head of one token: head_dim elements
  uint64_t token_bytes = 0;  // one token of one plane and layer: H * D elements
  uint64_t block_bytes = 0;  // one (plane, block) region: block_size tokens
  uint64_t layer_bytes = 0;  // one layer's tensor (cross_layer: the tensor of all layers)
  uint64_t object_size = 0;  // one chunk object

  // Validates `layout` against `chunk_size`: positive dimensions, block_size dividing
  // chunk_size, a known dtype and format, mla with one head, one offset per layer, and no size
  // that overflows 64 bits. Layer offsets are checked by CheckLayerExtents.
  static Result<KvGeometry> Create(const protocol::Layout& layout, uint32_t chunk_size);

  // Every layer [offset, offset + layer_bytes) lies within [0, region_size), and no two layers
  // overlap.
  Status CheckLayerExtents(std::span<const uint64_t> layer_offsets, uint64_t region_size) const;
  // The same for any subset of the layers (those sharing one region, e.g. one CUDA allocation).
  Status CheckExtents(std::span<const uint64_t> layer_offsets, uint64_t region_size) const;

  bool heads_major() const {
    return format == protocol::KvFormat::kKvHnd || format == protocol::KvFormat::kNbKvHnd;
  }
  // Where layer `layer` starts, from its layer_offsets entry (non-zero for cross_layer only).
  uint64_t LayerBase(uint32_t layer) const {
    return format == protocol::KvFormat::kCrossLayer ? uint64_t{layer} * 2 * block_bytes : 0;
  }
  // Byte offset of the (plane, block) region from the layer's base.
  uint64_t BlockOffset(uint32_t plane, uint32_t block) const {
    switch (format) {
      case protocol::KvFormat::kCrossLayer:
        return (uint64_t{block} * num_layers * 2 + plane) * block_bytes;
      case protocol::KvFormat::kKvNhd:
      case protocol::KvFormat::kKvHnd:
        return (uint64_t{plane} * num_blocks + block) * block_bytes;
      case protocol::KvFormat::kNbKvNhd:
      case protocol::KvFormat::kNbKvHnd:
        return (uint64_t{block} * 2 + plane) * block_bytes;
      case protocol::KvFormat::kMla:
        return uint64_t{block} * block_bytes;
    }
    return 0;
  }
  // Byte offset of token `token` (< chunk_size) of (plane, layer) within a chunk object.
  uint64_t ObjectOffset(uint32_t plane, uint32_t layer, uint32_t token) const {
    return ((uint64_t{plane} * num_layers + layer) * chunk_size + token) * token_bytes;
  }
};

}  // namespace kvtier::transfer
