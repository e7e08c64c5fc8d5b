#include "kvtier/transfer/host_backend.h"

#include <cerrno>
#include <cstdint>
#include <cstring>
#include <type_traits>
#include <utility>

#include <fcntl.h>
#include <limits.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#if defined(__SSE2__)
#include <emmintrin.h>
#endif

#include <fmt/format.h>

#include "kvtier/common/check.h"
#include "kvtier/common/logging.h"

namespace kvtier::transfer {
namespace {

std::string ErrnoText(int err) { return fmt::format("{} ({})", std::strerror(err), err); }

constexpr uint64_t kLine = 64;

// Copies whole cache lines with non-temporal stores, which bypass the cache (x86 SSE2; memcpy
// elsewhere). `dst` is line-aligned and n a multiple of kLine, so every line is written whole:
// no read-for-ownership, and nothing evicted that a later read needs. A bulk transfer's
// destination (an L1 object on its way to L2, or engine blocks) is not read again soon.
inline void StreamLines(uint8_t* dst, const uint8_t* src, uint64_t n) {
#if defined(__SSE2__)
  for (uint64_t i = 0; i < n; i += kLine) {
    const __m128i a = _mm_loadu_si128(reinterpret_cast<const __m128i*>(src + i));
    const __m128i b = _mm_loadu_si128(reinterpret_cast<const __m128i*>(src + i + 16));
    const __m128i c = _mm_loadu_si128(reinterpret_cast<const __m128i*>(src + i + 32));
    const __m128i d = _mm_loadu_si128(reinterpret_cast<const __m128i*>(src + i + 48));
    _mm_stream_si128(reinterpret_cast<__m128i*>(dst + i), a);
    _mm_stream_si128(reinterpret_cast<__m128i*>(dst + i + 16), b);
    _mm_stream_si128(reinterpret_cast<__m128i*>(dst + i + 32), c);
    _mm_stream_si128(reinterpret_cast<__m128i*>(dst + i + 48), d);
  }
#else
  std::memcpy(dst, src, n);
#endif
}

// Copies n bytes; kStream: the whole lines inside [dst, dst + n) with StreamLines, the partial
// lines at either end with memcpy.
template <bool kStream>
inline void CopyRun(uint8_t* dst, const uint8_t* src, uint64_t n) {
  if constexpr (kStream) {
    const uint64_t head = (0 - reinterpret_cast<uintptr_t>(dst)) & (kLine - 1);
    if (n >= head + kLine) {
      std::memcpy(dst, src, head);
      const uint64_t lines = (n - head) & ~(kLine - 1);
      StreamLines(dst + head, src + head, lines);
      std::memcpy(dst + head + lines, src + head + lines, n - head - lines);
      return;
    }
  }
  std::memcpy(dst, src, n);
}

// Orders this thread's streaming stores before whatever it does next (a lock release, a reply).
inline void StoreFence() {
#if defined(__SSE2__)
  _mm_sfence();
#endif
}

// A strided 2-D copy of `row` bytes per element: element (o, i) goes from
// src + o*src_outer + i*src_inner to dst + o*dst_outer + i*dst_inner. A compile-time row size
// lets the compiler unroll the row copy.
template <bool kStream, uint64_t kRow>
void CopyTileFixed(uint8_t* dst, uint64_t dst_outer, uint64_t dst_inner, const uint8_t* src,
                   uint64_t src_outer, uint64_t src_inner, uint64_t outer, uint64_t inner) {
  for (uint64_t o = 0; o < outer; ++o) {
    uint8_t* d = dst + o * dst_outer;
    const uint8_t* s = src + o * src_outer;
    for (uint64_t i = 0; i < inner; ++i) {
      if constexpr (kStream) {
        StreamLines(d + i * dst_inner, s + i * src_inner, kRow);
      } else {
        std::memcpy(d + i * dst_inner, s + i * src_inner, kRow);
      }
    }
  }
}

// kStream applies only where every destination row is whole, aligned lines; a tile that is
// not (odd offsets or row sizes) is copied with memcpy, since a streaming store into a line
// that a plain store also touches is far slower than either. Callers pass the loops in the
// destination's order (best for memcpy).
template <bool kStream>
void CopyTile(uint64_t row, uint8_t* dst, uint64_t dst_outer, uint64_t dst_inner,
              const uint8_t* src, uint64_t src_outer, uint64_t src_inner, uint64_t outer,
              uint64_t inner) {
  if constexpr (kStream) {
    if (((reinterpret_cast<uintptr_t>(dst) | dst_outer | dst_inner | row) & (kLine - 1)) != 0) {
      return CopyTile<false>(row, dst, dst_outer, dst_inner, src, src_outer, src_inner, outer,
                             inner);
    }
    // Whole-line streaming stores cost the same in any order, so read the source in order
    // (the hardware prefetcher follows it); measured 2x faster for HND scatters.
    if (src_inner > src_outer) {
      std::swap(dst_outer, dst_inner);
      std::swap(src_outer, src_inner);
      std::swap(outer, inner);
    }
  }
#define KVT_TILE(n) \
  CopyTileFixed<kStream, n>(dst, dst_outer, dst_inner, src, src_outer, src_inner, outer, inner)
  switch (row) {
    case 64:
      return KVT_TILE(64);
    case 128:
      return KVT_TILE(128);
    case 192:
      return KVT_TILE(192);
    case 256:
      return KVT_TILE(256);
    case 512:
      return KVT_TILE(512);
    default:
      for (uint64_t o = 0; o < outer; ++o) {
        for (uint64_t i = 0; i < inner; ++i) {
          uint8_t* d = dst + o * dst_outer + i * dst_inner;
          const uint8_t* s = src + o * src_outer + i * src_inner;
          if constexpr (kStream) {
            StreamLines(d, s, row);
          } else {
            std::memcpy(d, s, row);
          }
        }
      }
  }
#undef KVT_TILE
}

// "/name" for "name" or "/name"; an error for names shm_open cannot take.
Result<std::string> ShmPath(const std::string& name) {
  std::string path = name.starts_with('/') ? name : "/" + name;
  if (path.size() < 2 || path.find('/', 1) != std::string::npos || path.size() > NAME_MAX ||
      path.find('\0') != std::string::npos) {
    return MakeError(Status::InvalidArgument(fmt::format(
        "host backend: shm_name '{}' is not a shared-memory name (one non-empty component of at "
        "most {} bytes, no '/' after the first character)",
        name, NAME_MAX - 1)));
  }
  return path;
}

}  // namespace

Result<std::unique_ptr<HostBackend>> HostBackend::Create(
    const protocol::RegisterKvCacheRequest& request, uint32_t chunk_size, CopyPool* pool) {
  HostBackendOptions options;
  options.pool = pool;
  return Create(request, chunk_size, options);
}

Result<std::unique_ptr<HostBackend>> HostBackend::Create(
    const protocol::RegisterKvCacheRequest& request, uint32_t chunk_size,
    const HostBackendOptions& options) {
  KVT_ASSIGN_OR_RETURN(const KvGeometry geometry, KvGeometry::Create(request.layout, chunk_size));
  KVT_RETURN_IF_ERROR(geometry.CheckLayerExtents(request.layout.layer_offsets, request.shm_size)
                          .WithContext(fmt::format("shm_size {}", request.shm_size)));
  KVT_ASSIGN_OR_RETURN(std::string path, ShmPath(request.shm_name));

  const int fd = shm_open(path.c_str(), O_RDWR, 0);
  if (fd < 0) {
    const int err = errno;
    const std::string what = fmt::format("host backend: shm_open('{}'): {}", path, ErrnoText(err));
    if (err == ENOENT) return MakeError(Status::NotFound(what));
    if (err == EACCES) return MakeError(Status(StatusCode::kPermissionDenied, what));
    return MakeError(Status::IOError(what));
  }
  struct stat st {};
  if (fstat(fd, &st) != 0) {
    const int err = errno;
    close(fd);
    return MakeError(
        Status::IOError(fmt::format("host backend: fstat('{}'): {}", path, ErrnoText(err))));
  }
  if (static_cast<uint64_t>(st.st_size) < request.shm_size) {
    close(fd);
    return MakeError(Status::InvalidArgument(fmt::format(
        "host backend: shared-memory segment '{}' is {} bytes, smaller than shm_size {}", path,
        static_cast<uint64_t>(st.st_size), request.shm_size)));
  }
  void* base = mmap(nullptr, request.shm_size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
  const int mmap_err = errno;
  close(fd);  // the mapping keeps the segment
  if (base == MAP_FAILED) {
    return MakeError(Status::IOError(fmt::format("host backend: mmap of '{}' ({} bytes): {}", path,
                                                 request.shm_size, ErrnoText(mmap_err)),
                                     /*retryable=*/mmap_err == ENOMEM));
  }
  return std::unique_ptr<HostBackend>(new HostBackend(geometry, std::move(path),
                                                      static_cast<uint8_t*>(base), request.shm_size,
                                                      request.layout.layer_offsets, options));
}

HostBackend::HostBackend(const KvGeometry& geometry, std::string shm_path, uint8_t* base,
                         uint64_t mapped_size, std::span<const uint64_t> layer_offsets,
                         const HostBackendOptions& options)
    : TransferBackend(geometry),
      shm_path_(std::move(shm_path)),
      base_(base),
      mapped_size_(mapped_size),
      pool_(options.pool),
      min_parallel_bytes_(options.min_parallel_bytes),
      stream_min_bytes_(options.stream_min_bytes) {
  layers_.reserve(layer_offsets.size());
  for (size_t l = 0; l < layer_offsets.size(); ++l) {
    layers_.push_back(base_ + layer_offsets[l] + geometry.LayerBase(static_cast<uint32_t>(l)));
  }
}

HostBackend::~HostBackend() {
  if (munmap(base_, mapped_size_) != 0) {
    KVT_LOG_WARN("host backend: munmap of '{}' failed: {}", shm_path_, ErrnoText(errno));
  }
}

template <bool kStream, typename ObjectSpan>
void HostBackend::CopyLayer(uint32_t layer, std::span<const uint32_t> block_ids,
                            std::span<const ObjectSpan> objects,
                            uint32_t skip_first_n_tokens) const {
  constexpr bool kGather = !std::is_const_v<typename ObjectSpan::element_type>;
  const KvGeometry& g = geometry();
  const uint64_t bs = g.block_size;
  const uint64_t row = g.row_bytes;
  const uint64_t token = g.token_bytes;
  const uint64_t heads = g.num_kv_heads;
  uint8_t* const layer_base = layers_[layer];
  for (uint32_t plane = 0; plane < g.planes; ++plane) {
    for (size_t i = 0; i < objects.size(); ++i) {
      // Both directions go through uint8_t*; a scatter only reads `object`.
      uint8_t* const object = const_cast<uint8_t*>(objects[i].data());
      for (uint32_t j = 0; j < g.blocks_per_chunk; ++j) {
        const uint64_t range_token = uint64_t{i} * g.chunk_size + uint64_t{j} * bs;
        uint64_t first = 0;  // tokens of this block to leave alone
        if (skip_first_n_tokens > range_token) {
          if (skip_first_n_tokens >= range_token + bs) continue;
          first = skip_first_n_tokens - range_token;
        }
        const uint32_t block = block_ids[uint64_t{i} * g.blocks_per_chunk + j];
        uint8_t* engine = layer_base + g.BlockOffset(plane, block);
        uint8_t* rows = object + g.ObjectOffset(plane, layer, j * g.block_size) + first * token;
        const uint64_t tokens = bs - first;
        if (!g.heads_major()) {
          // NHD and MLA: the block's tokens are one contiguous run, as in the object.
          engine += first * token;
          if constexpr (kGather) {
            CopyRun<kStream>(rows, engine, tokens * token);
          } else {
            CopyRun<kStream>(engine, rows, tokens * token);
          }
          continue;
        }
        // HND: the engine holds [head][token] rows, the object [token][head]: a transpose of
        // head_dim rows, given here in the destination's order.
        engine += first * row;
        if constexpr (kGather) {
          CopyTile<kStream>(row, rows, /*dst_outer=*/token, /*dst_inner=*/row, engine,
                            /*src_outer=*/row, /*src_inner=*/bs * row, /*outer=*/tokens,
                            /*inner=*/heads);
        } else {
          CopyTile<kStream>(row, engine, /*dst_outer=*/bs * row, /*dst_inner=*/row, rows,
                            /*src_outer=*/row, /*src_inner=*/token, /*outer=*/heads,
                            /*inner=*/tokens);
        }
      }
    }
  }
}

void HostBackend::ForEachLayer(uint64_t bytes, const std::function<void(size_t)>& fn) const {
  const uint32_t layers = geometry().num_layers;
  if (pool_ != nullptr && layers > 1 && bytes >= min_parallel_bytes_) {
    pool_->Run(layers, fn);
    return;
  }
  for (uint32_t l = 0; l < layers; ++l) fn(l);
}

Status HostBackend::GatherImpl(std::span<const uint32_t> block_ids,
                               std::span<const std::span<uint8_t>> objects,
                               DeviceOrder* /*order*/) {
  const uint64_t bytes = objects.size() * object_size();
  const bool stream = bytes >= stream_min_bytes_;
  ForEachLayer(bytes, [&](size_t layer) {
    if (stream) {
      CopyLayer<true>(static_cast<uint32_t>(layer), block_ids, objects, 0);
      StoreFence();
    } else {
      CopyLayer<false>(static_cast<uint32_t>(layer), block_ids, objects, 0);
    }
  });
  return Status::OK();
}

Status HostBackend::ScatterImpl(std::span<const std::span<const uint8_t>> objects,
                                std::span<const uint32_t> block_ids, uint32_t skip_first_n_tokens,
                                DeviceOrder* /*order*/) {
  const uint64_t bytes = objects.size() * object_size();
  const bool stream = bytes >= stream_min_bytes_;
  ForEachLayer(bytes, [&](size_t layer) {
    if (stream) {
      CopyLayer<true>(static_cast<uint32_t>(layer), block_ids, objects, skip_first_n_tokens);
      StoreFence();
    } else {
      CopyLayer<false>(static_cast<uint32_t>(layer), block_ids, objects, skip_first_n_tokens);
    }
  });
  return Status::OK();
}

}  // namespace kvtier::transfer
