// Gather and scatter kernels between an engine's paged KV cache in GPU memory and chunk objects
// (docs/gpu.md). This header is C++17 and CUDA-only, so nvcc compiles it without the project's
// C++20 headers; cuda_backend.h fills the parameters from a KvGeometry. One launch moves every
// layer and plane of every object of a call; copies are byte-based (any dtype) with the widest
// aligned access (16, 8, 4 or 1 bytes) that the addresses and sizes allow.
//
// The launchers only enqueue on the given stream: they never allocate, never synchronise, and
// read the id and pointer arrays on the device, in stream order. Validation (block ids in range,
// object sizes) is the caller's job (TransferBackend does it before anything is enqueued).
#pragma once

#include <cstdint>

#include <cuda_runtime_api.h>

namespace kvtier::gpu {

struct KvCopyParams {
  // Geometry (bytes unless said otherwise).
  uint32_t num_layers = 0;
  uint32_t planes = 0;  // 2 (K, V) or 1 (MLA)
  uint32_t blocks_per_chunk = 0;
  uint32_t block_size = 0;  // tokens
  uint32_t chunk_size = 0;  // tokens
  uint32_t num_kv_heads = 0;
  bool heads_major = false;  // HND: a block region is [heads, block_size, head_dim]
  uint64_t row_bytes = 0;    // one head of one token
  uint64_t token_bytes = 0;  // all heads of one token
  // Offset of block b of plane p within a layer: p * plane_stride + b * block_stride.
  uint64_t plane_stride = 0;
  uint64_t block_stride = 0;

  // Device-readable arrays.
  const uint64_t* layer_base = nullptr;  // [num_layers] device addresses of the layers
  const uint32_t* block_ids = nullptr;   // [num_objects * blocks_per_chunk]
  const uint64_t* objects = nullptr;     // [num_objects] device-accessible object addresses
  uint32_t num_objects = 0;
  uint32_t skip_tokens = 0;  // scatter: leading tokens of the range left unwritten
};

// Engine blocks -> objects.
cudaError_t LaunchGather(const KvCopyParams& p, cudaStream_t stream);
// Objects -> engine blocks, leaving the first p.skip_tokens tokens of the range unwritten.
cudaError_t LaunchScatter(const KvCopyParams& p, cudaStream_t stream);

}  // namespace kvtier::gpu
