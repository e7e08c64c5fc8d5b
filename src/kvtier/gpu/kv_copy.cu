#include "kvtier/gpu/kv_copy.h"

namespace kvtier::gpu {
namespace {

constexpr unsigned kThreads = 256;

// Copies `count` words of type W from src[i] to dst[i] with the CTA's threads, four loads in
// flight per thread before the stores (memory-level parallelism over PCIe matters).
template <typename W>
__device__ __forceinline__ void CopyWords(W* __restrict__ dst, const W* __restrict__ src,
                                          uint64_t count) {
  uint64_t i = threadIdx.x;
  for (; i + 3 * kThreads < count; i += 4 * kThreads) {
    const W a = src[i];
    const W b = src[i + kThreads];
    const W c = src[i + 2 * kThreads];
    const W d = src[i + 3 * kThreads];
    dst[i] = a;
    dst[i + kThreads] = b;
    dst[i + 2 * kThreads] = c;
    dst[i + 3 * kThreads] = d;
  }
  for (; i < count; i += kThreads) dst[i] = src[i];
}

__device__ __forceinline__ void CopyContiguous(uint8_t* dst, const uint8_t* src, uint64_t bytes) {
  const uint64_t a = reinterpret_cast<uintptr_t>(dst) | reinterpret_cast<uintptr_t>(src) | bytes;
  if ((a & 15) == 0) {
    CopyWords(reinterpret_cast<uint4*>(dst), reinterpret_cast<const uint4*>(src), bytes / 16);
  } else if ((a & 7) == 0) {
    CopyWords(reinterpret_cast<uint2*>(dst), reinterpret_cast<const uint2*>(src), bytes / 8);
  } else if ((a & 3) == 0) {
    CopyWords(reinterpret_cast<uint32_t*>(dst), reinterpret_cast<const uint32_t*>(src), bytes / 4);
  } else {
    CopyWords(dst, src, bytes);
  }
}

// HND block region [heads, block_size, row] <-> object rows [block_size, heads, row], tokens
// [t0, block_size) only. Word w of row (h, t) is element ((h * n + (t - t0)) * words + w) of the
// flattened loop, n = block_size - t0.
template <typename W, bool kGather>
__device__ __forceinline__ void CopyRows(uint8_t* engine, uint8_t* object, const KvCopyParams& p,
                                         uint32_t t0) {
  const uint64_t words = p.row_bytes / sizeof(W);
  const uint32_t n = p.block_size - t0;
  const uint64_t total = uint64_t{p.num_kv_heads} * n * words;
  for (uint64_t i = threadIdx.x; i < total; i += kThreads) {
    const uint64_t w = i % words;
    const uint64_t row = i / words;
    const uint64_t h = row / n;
    const uint64_t t = t0 + row % n;
    W* e = reinterpret_cast<W*>(engine + (h * p.block_size + t) * p.row_bytes) + w;
    W* o = reinterpret_cast<W*>(object + t * p.token_bytes + h * p.row_bytes) + w;
    if constexpr (kGather) {
      *o = *e;
    } else {
      *e = *o;
    }
  }
}

template <bool kGather>
__device__ __forceinline__ void CopyHeadsMajor(uint8_t* engine, uint8_t* object,
                                               const KvCopyParams& p, uint32_t t0) {
  const uint64_t a =
      reinterpret_cast<uintptr_t>(engine) | reinterpret_cast<uintptr_t>(object) | p.row_bytes;
  if ((a & 15) == 0) {
    CopyRows<uint4, kGather>(engine, object, p, t0);
  } else if ((a & 7) == 0) {
    CopyRows<uint2, kGather>(engine, object, p, t0);
  } else if ((a & 3) == 0) {
    CopyRows<uint32_t, kGather>(engine, object, p, t0);
  } else {
    CopyRows<uint8_t, kGather>(engine, object, p, t0);
  }
}

// One CTA per (object, plane, layer, block of the chunk): blockIdx.x enumerates them with the
// block fastest, so neighbouring CTAs write neighbouring object bytes.
template <bool kGather>
__global__ void __launch_bounds__(kThreads) KvCopyKernel(KvCopyParams p) {
  uint64_t unit = blockIdx.x;
  const uint32_t j = static_cast<uint32_t>(unit % p.blocks_per_chunk);
  unit /= p.blocks_per_chunk;
  const uint32_t layer = static_cast<uint32_t>(unit % p.num_layers);
  unit /= p.num_layers;
  const uint32_t plane = static_cast<uint32_t>(unit % p.planes);
  const uint32_t obj = static_cast<uint32_t>(unit / p.planes);

  uint32_t t0 = 0;  // first token of this block that is copied
  if constexpr (!kGather) {
    const uint64_t first = uint64_t{obj} * p.chunk_size + uint64_t{j} * p.block_size;
    if (p.skip_tokens > first) {
      if (p.skip_tokens - first >= p.block_size) return;
      t0 = static_cast<uint32_t>(p.skip_tokens - first);
    }
  }
  const uint64_t block = p.block_ids[uint64_t{obj} * p.blocks_per_chunk + j];
  uint8_t* engine = reinterpret_cast<uint8_t*>(p.layer_base[layer]) + plane * p.plane_stride +
                    block * p.block_stride;
  uint8_t* object =
      reinterpret_cast<uint8_t*>(p.objects[obj]) +
      ((uint64_t{plane} * p.num_layers + layer) * p.chunk_size + uint64_t{j} * p.block_size) *
          p.token_bytes;
  if (p.heads_major) {
    CopyHeadsMajor<kGather>(engine, object, p, t0);
    return;
  }
  const uint64_t skip = t0 * p.token_bytes;
  const uint64_t bytes = p.block_size * p.token_bytes - skip;
  if constexpr (kGather) {
    CopyContiguous(object, engine, bytes);
  } else {
    CopyContiguous(engine + skip, object + skip, bytes);
  }
}

template <bool kGather>
cudaError_t Launch(const KvCopyParams& p, cudaStream_t stream) {
  const uint64_t units = uint64_t{p.num_objects} * p.planes * p.num_layers * p.blocks_per_chunk;
  if (units == 0) return cudaSuccess;
  if (units > 0x7fffffffu) return cudaErrorInvalidConfiguration;
  KvCopyKernel<kGather><<<static_cast<unsigned>(units), kThreads, 0, stream>>>(p);
  return cudaGetLastError();
}

}  // namespace

cudaError_t LaunchGather(const KvCopyParams& p, cudaStream_t stream) {
  return Launch<true>(p, stream);
}
cudaError_t LaunchScatter(const KvCopyParams& p, cudaStream_t stream) {
  return Launch<false>(p, stream);
}

}  // namespace kvtier::gpu
