// Test-only reference for the chunk copies: one byte at a time, straight from the shape
// formulas of docs/protocol.md (engine layouts) and transfer_backend.h (chunk objects). Slow and
// obviously right; the fast paths are compared against it byte for byte.
#pragma once

#include <cstddef>
#include <cstdint>
#include <new>
#include <span>
#include <string>
#include <vector>

#include "kvtier/common/check.h"
#include "kvtier/protocol/messages.h"

namespace kvtier::transfer::testing {

// Cache-line-aligned bytes, like L1 objects (which are page-aligned), so streaming stores see the
// alignment they will see in production.
template <typename T>
struct LineAlignedAllocator {
  using value_type = T;
  static constexpr std::align_val_t kAlign{64};
  LineAlignedAllocator() = default;
  template <typename U>
  LineAlignedAllocator(const LineAlignedAllocator<U>&) {}  // NOLINT(google-explicit-constructor)
  T* allocate(size_t n) { return static_cast<T*>(::operator new(n * sizeof(T), kAlign)); }
  void deallocate(T* p, size_t) { ::operator delete(p, kAlign); }
  friend bool operator==(const LineAlignedAllocator&, const LineAlignedAllocator&) { return true; }
};
using Bytes = std::vector<uint8_t, LineAlignedAllocator<uint8_t>>;

struct RefLayout {
  protocol::KvFormat format = protocol::KvFormat::kKvNhd;
  uint64_t layers = 0, blocks = 0, block_size = 0, heads = 0, dim = 0, element = 0, chunk = 0;
  std::vector<uint64_t> offsets;  // byte offset of each layer

  uint64_t planes() const { return format == protocol::KvFormat::kMla ? 1 : 2; }
  uint64_t ObjectBytes() const { return planes() * layers * chunk * heads * dim * element; }

  // Segment byte of element (plane, block, t, h, d) of `layer`, byte `e` of the element.
  uint64_t EngineByte(uint64_t layer, uint64_t plane, uint64_t block, uint64_t t, uint64_t h,
                      uint64_t d, uint64_t e) const {
    uint64_t index = 0;
    switch (format) {
      case protocol::KvFormat::kKvNhd:  // [2, NB, BS, H, D]
        index = (((plane * blocks + block) * block_size + t) * heads + h) * dim + d;
        break;
      case protocol::KvFormat::kNbKvNhd:  // [NB, 2, BS, H, D]
        index = (((block * 2 + plane) * block_size + t) * heads + h) * dim + d;
        break;
      case protocol::KvFormat::kKvHnd:  // [2, NB, H, BS, D]
        index = (((plane * blocks + block) * heads + h) * block_size + t) * dim + d;
        break;
      case protocol::KvFormat::kNbKvHnd:  // [NB, 2, H, BS, D]
        index = (((block * 2 + plane) * heads + h) * block_size + t) * dim + d;
        break;
      case protocol::KvFormat::kMla:  // [NB, BS, D]
        KVT_CHECK(plane == 0 && h == 0);
        index = (block * block_size + t) * dim + d;
        break;
      case protocol::KvFormat::kCrossLayer:  // [NB, L, 2, BS, H, D], offsets[layer] = base
        index = ((((block * layers + layer) * 2 + plane) * block_size + t) * heads + h) * dim + d;
        break;
    }
    return offsets[layer] + index * element + e;
  }
  // Object byte of element (plane, layer, token, h, d): [planes, L, T, H, D].
  uint64_t ObjectByte(uint64_t plane, uint64_t layer, uint64_t token, uint64_t h, uint64_t d,
                      uint64_t e) const {
    return ((((plane * layers + layer) * chunk + token) * heads + h) * dim + d) * element + e;
  }

  // Calls fn(range_token, engine_byte, object index, object_byte) for every byte of the range.
  template <typename Fn>
  void ForEachByte(std::span<const uint32_t> block_ids, size_t num_objects, Fn fn) const {
    const uint64_t bpc = chunk / block_size;
    for (uint64_t i = 0; i < num_objects; ++i) {
      for (uint64_t plane = 0; plane < planes(); ++plane) {
        for (uint64_t layer = 0; layer < layers; ++layer) {
          for (uint64_t token = 0; token < chunk; ++token) {
            const uint64_t block = block_ids[i * bpc + token / block_size];
            const uint64_t t = token % block_size;
            for (uint64_t h = 0; h < heads; ++h) {
              for (uint64_t d = 0; d < dim; ++d) {
                for (uint64_t e = 0; e < element; ++e) {
                  fn(i * chunk + token, EngineByte(layer, plane, block, t, h, d, e), i,
                     ObjectByte(plane, layer, token, h, d, e));
                }
              }
            }
          }
        }
      }
    }
  }
};

inline std::vector<Bytes> RefGather(const RefLayout& layout, std::span<const uint8_t> segment,
                                    std::span<const uint32_t> block_ids, size_t num_objects) {
  std::vector<Bytes> objects(num_objects, Bytes(layout.ObjectBytes(), 0));
  layout.ForEachByte(block_ids, num_objects,
                     [&](uint64_t, uint64_t engine, uint64_t i, uint64_t object) {
                       objects[i][object] = segment[engine];
                     });
  return objects;
}

inline void RefScatter(const RefLayout& layout, std::span<uint8_t> segment,
                       const std::vector<Bytes>& objects, std::span<const uint32_t> block_ids,
                       uint64_t skip_first_n_tokens) {
  layout.ForEachByte(block_ids, objects.size(),
                     [&](uint64_t range_token, uint64_t engine, uint64_t i, uint64_t object) {
                       if (range_token >= skip_first_n_tokens) segment[engine] = objects[i][object];
                     });
}

// One test layout: the engine's dimensions and the server's chunk size.
struct TestSpec {
  protocol::KvFormat format = protocol::KvFormat::kKvNhd;
  protocol::DType dtype = protocol::DType::kBf16;
  uint32_t layers = 0, blocks = 0, block_size = 0, heads = 0, dim = 0, chunk = 0;
  // Layer tensors at page-aligned offsets (as an engine allocates them), or at odd ones.
  bool aligned = false;
};

inline uint64_t TestElementBytes(protocol::DType dtype) {
  switch (dtype) {
    case protocol::DType::kFp32:
      return 4;
    case protocol::DType::kBf16:
    case protocol::DType::kFp16:
      return 2;
    default:
      return 1;
  }
}

// Layers in a scrambled order (layer l in slot (l * 5 + 2) % layers), each after a gap: a page
// (aligned), or 13 bytes (so no offset is aligned). *segment_size: bytes to cover them all.
inline RefLayout MakeRefLayout(const TestSpec& spec, uint64_t* segment_size) {
  RefLayout r;
  r.format = spec.format;
  r.layers = spec.layers;
  r.blocks = spec.blocks;
  r.block_size = spec.block_size;
  r.heads = spec.heads;
  r.dim = spec.dim;
  r.element = TestElementBytes(spec.dtype);
  r.chunk = spec.chunk;
  const uint64_t layer_bytes = r.planes() * r.blocks * r.block_size * r.heads * r.dim * r.element;
  const uint64_t gap = spec.aligned ? 4096 : 13;
  if (spec.format == protocol::KvFormat::kCrossLayer) {  // one tensor after one gap
    r.offsets.assign(r.layers, gap);
    *segment_size = gap + r.layers * layer_bytes + gap;
    return r;
  }
  const uint64_t stride =
      spec.aligned ? (layer_bytes + 2 * gap - 1) / gap * gap : layer_bytes + gap;
  for (uint64_t l = 0; l < r.layers; ++l) {
    const uint64_t slot = r.layers % 5 == 0 ? l : (l * 5 + 2) % r.layers;
    r.offsets.push_back(gap + slot * stride);
  }
  *segment_size = gap + r.layers * stride;
  return r;
}

inline protocol::RegisterKvCacheRequest MakeRequest(const TestSpec& spec, const RefLayout& ref,
                                                    const std::string& shm_name,
                                                    uint64_t shm_size) {
  protocol::RegisterKvCacheRequest request;
  request.instance_id = "engine-0";
  request.model = "test-model";
  request.backend = "host";
  request.layout.num_layers = spec.layers;
  request.layout.num_blocks = spec.blocks;
  request.layout.block_size = spec.block_size;
  request.layout.num_kv_heads = spec.heads;
  request.layout.head_dim = spec.dim;
  request.layout.dtype = spec.dtype;
  request.layout.format = spec.format;
  request.layout.layer_offsets = ref.offsets;
  request.shm_name = shm_name;
  request.shm_size = shm_size;
  return request;
}

}  // namespace kvtier::transfer::testing
