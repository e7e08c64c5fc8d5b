#include "kvtier/gpu/cuda_backend.h"

#include <algorithm>
#include <cstring>
#include <map>

#include <cuda_runtime.h>  // the typed cudaMalloc / cudaHostAlloc overloads
#include <fmt/format.h>

#include "kvtier/common/logging.h"

namespace kvtier::gpu {
namespace {

// The geometry fields of KvCopyParams (pointers and counts are set per call).
KvCopyParams MakeKvCopyParams(const transfer::KvGeometry& g) {
  KvCopyParams p;
  p.num_layers = g.num_layers;
  p.planes = g.planes;
  p.blocks_per_chunk = g.blocks_per_chunk;
  p.block_size = g.block_size;
  p.chunk_size = g.chunk_size;
  p.num_kv_heads = g.num_kv_heads;
  p.heads_major = g.heads_major();
  p.row_bytes = g.row_bytes;
  p.token_bytes = g.token_bytes;
  p.plane_stride = g.planes > 1 ? g.BlockOffset(1, 0) - g.BlockOffset(0, 0) : 0;
  p.block_stride = g.num_blocks > 1 ? g.BlockOffset(0, 1) - g.BlockOffset(0, 0) : g.block_bytes;
  return p;
}

}  // namespace

CudaBackend::CudaBackend(const transfer::KvGeometry& geometry, int device,
                         const CudaBackendOptions& options)
    : TransferBackend(geometry), device_(device), options_(options) {}

Result<std::unique_ptr<CudaBackend>> CudaBackend::Create(
    const protocol::RegisterKvCacheRequest& request, uint32_t chunk_size,
    const CudaBackendOptions& options) {
  KVT_ASSIGN_OR_RETURN(transfer::KvGeometry geometry,
                       transfer::KvGeometry::Create(request.layout, chunk_size));
  const auto& handles = request.cuda_ipc_handles;
  const auto& offsets = request.layout.layer_offsets;
  if (handles.size() != geometry.num_layers || offsets.size() != geometry.num_layers) {
    return MakeError(Status::InvalidArgument(
        fmt::format("cuda registration needs one IPC handle and one offset per layer ({}); got {} "
                    "and {}",
                    geometry.num_layers, handles.size(), offsets.size())));
  }
  KVT_ASSIGN_OR_RETURN(int device, DeviceOrdinalForUuid(request.device_uuid));
  std::unique_ptr<CudaBackend> backend(new CudaBackend(geometry, device, options));

  // Open each distinct allocation once; check its layers fit and do not overlap.
  std::map<protocol::CudaIpcHandle, std::vector<size_t>> layers_of;
  for (size_t i = 0; i < handles.size(); ++i) layers_of[handles[i]].push_back(i);
  if (geometry.format == protocol::KvFormat::kCrossLayer && layers_of.size() != 1) {
    return MakeError(Status::InvalidArgument(
        "cross_layer: every layer is in one tensor, so every cuda_ipc_handles entry must be the "
        "same"));
  }
  std::vector<uint64_t> addresses(geometry.num_layers);
  for (const auto& [handle, layers] : layers_of) {
    KVT_ASSIGN_OR_RETURN(std::shared_ptr<const IpcMapping> mapping,
                         IpcMapping::Open(device, handle));
    std::vector<uint64_t> group;
    for (size_t layer : layers) group.push_back(offsets[layer]);
    if (Status s = geometry.CheckExtents(group, mapping->size()); !s.ok()) {
      return MakeError(Status::InvalidArgument(
          fmt::format("layers {} in one {}-byte CUDA allocation: {}", fmt::join(layers, ", "),
                      mapping->size(), s.message())));
    }
    for (size_t layer : layers) {
      addresses[layer] = reinterpret_cast<uint64_t>(mapping->base()) + offsets[layer] +
                         geometry.LayerBase(static_cast<uint32_t>(layer));
    }
    backend->mappings_.push_back(std::move(mapping));
  }
  KVT_RETURN_IF_ERROR(backend->Init(addresses));
  KVT_LOG_INFO("cuda backend for '{}': device {} ({}), {} layers in {} allocations, object {} B",
               request.instance_id, device, UuidString(request.device_uuid), geometry.num_layers,
               backend->mappings_.size(), geometry.object_size);
  return backend;
}

Result<std::unique_ptr<CudaBackend>> CudaBackend::CreateLocal(const protocol::Layout& layout,
                                                              uint32_t chunk_size, int device,
                                                              std::span<void* const> layer_ptrs,
                                                              const CudaBackendOptions& options) {
  KVT_ASSIGN_OR_RETURN(transfer::KvGeometry geometry,
                       transfer::KvGeometry::Create(layout, chunk_size));
  if (layer_ptrs.size() != geometry.num_layers) {
    return MakeError(Status::InvalidArgument("one pointer per layer is needed"));
  }
  std::unique_ptr<CudaBackend> backend(new CudaBackend(geometry, device, options));
  std::vector<uint64_t> addresses;
  for (size_t l = 0; l < layer_ptrs.size(); ++l) {
    addresses.push_back(reinterpret_cast<uint64_t>(layer_ptrs[l]) +
                        geometry.LayerBase(static_cast<uint32_t>(l)));
  }
  KVT_RETURN_IF_ERROR(backend->Init(addresses));
  return backend;
}

Status CudaBackend::Init(std::span<const uint64_t> layer_addresses) {
  if (options_.host_base == nullptr || options_.host_size == 0) {
    return Status::FailedPrecondition("the cuda backend needs the L1 host memory range");
  }
  if (options_.max_objects_per_launch == 0 || options_.staging_objects == 0) {
    return Status::InvalidArgument("max_objects_per_launch and staging_objects must be > 0");
  }
  DeviceGuard guard(device_);
  KVT_RETURN_IF_ERROR(guard.status());
  // The kernels write L1 objects through the mapped view of the pinned pool.
  void* mapped = nullptr;
  if (cudaError_t err =
          cudaHostGetDevicePointer(&mapped, const_cast<uint8_t*>(options_.host_base), 0);
      err != cudaSuccess) {
    Status s = CudaStatus("cudaHostGetDevicePointer", err);
    return Status::FailedPrecondition(fmt::format(
        "the L1 pool is not pinned and mapped for CUDA (was the server started with a GPU "
        "visible?): {}",
        s.message()));
  }
  host_to_device_ =
      reinterpret_cast<int64_t>(mapped) - reinterpret_cast<int64_t>(options_.host_base);
  KVT_CUDA_RETURN_IF_ERROR(cudaMalloc(&dev_layers_, layer_addresses.size() * sizeof(uint64_t)));
  KVT_CUDA_RETURN_IF_ERROR(cudaMemcpy(dev_layers_, layer_addresses.data(),
                                      layer_addresses.size() * sizeof(uint64_t),
                                      cudaMemcpyHostToDevice));
  params_ = MakeKvCopyParams(geometry());
  params_.layer_base = dev_layers_;
  if (options_.staging_objects >= 2) {
    const uint64_t want = (kStagingGroupBytes + object_size() - 1) / object_size();
    group_objects_ = static_cast<uint32_t>(std::min<uint64_t>(want, options_.staging_objects / 2));
    groups_ = options_.staging_objects / group_objects_;
  }
  KVT_RETURN_IF_ERROR(InitLane(&gather_lane_));
  return InitLane(&scatter_lane_);
}

Status CudaBackend::InitLane(Lane* lane) {
  const size_t objects = options_.max_objects_per_launch;
  const size_t ids = objects * blocks_per_chunk();
  const bool staged = options_.mode == CudaCopyMode::kStagedDma;
  const uint32_t slots = staged ? group_objects_ * groups_ : 0;
  for (int i = 0; i < (staged && groups_ > 1 ? 2 : 1); ++i) {
    KVT_CUDA_RETURN_IF_ERROR(cudaStreamCreateWithFlags(&lane->streams[i], cudaStreamNonBlocking));
  }
  KVT_CUDA_RETURN_IF_ERROR(cudaEventCreateWithFlags(&lane->fork, cudaEventDisableTiming));
  KVT_CUDA_RETURN_IF_ERROR(cudaEventCreateWithFlags(&lane->join, cudaEventDisableTiming));
  KVT_CUDA_RETURN_IF_ERROR(cudaEventCreateWithFlags(
      &lane->done, cudaEventInterprocess | cudaEventDisableTiming | cudaEventBlockingSync));
  cudaIpcEventHandle_t handle;
  KVT_CUDA_RETURN_IF_ERROR(cudaIpcGetEventHandle(&handle, lane->done));
  std::memcpy(lane->done_handle.data(), handle.reserved, lane->done_handle.size());
  KVT_CUDA_RETURN_IF_ERROR(cudaHostAlloc(&lane->host_ids, ids * sizeof(uint32_t), 0));
  KVT_CUDA_RETURN_IF_ERROR(cudaHostAlloc(&lane->host_objects, objects * sizeof(uint64_t), 0));
  KVT_CUDA_RETURN_IF_ERROR(cudaMalloc(&lane->dev_ids, ids * sizeof(uint32_t)));
  // Mapped: the objects of a round; staged: the staging slots' addresses.
  KVT_CUDA_RETURN_IF_ERROR(
      cudaMalloc(&lane->dev_objects, (staged ? slots : objects) * sizeof(uint64_t)));
  if (staged) {
    KVT_CUDA_RETURN_IF_ERROR(cudaMalloc(&lane->staging, uint64_t{slots} * object_size()));
    std::vector<uint64_t> addresses(slots);
    for (uint32_t i = 0; i < slots; ++i) {
      addresses[i] = reinterpret_cast<uint64_t>(lane->staging) + uint64_t{i} * object_size();
    }
    KVT_CUDA_RETURN_IF_ERROR(cudaMemcpy(lane->dev_objects, addresses.data(),
                                        slots * sizeof(uint64_t), cudaMemcpyHostToDevice));
  }
  return Status::OK();
}

void CudaBackend::DestroyLane(Lane* lane) {
  for (cudaStream_t stream : lane->streams) {
    if (stream != nullptr) cudaStreamSynchronize(stream);
  }
  if (lane->staging != nullptr) cudaFree(lane->staging);
  if (lane->dev_objects != nullptr) cudaFree(lane->dev_objects);
  if (lane->dev_ids != nullptr) cudaFree(lane->dev_ids);
  if (lane->host_objects != nullptr) cudaFreeHost(lane->host_objects);
  if (lane->host_ids != nullptr) cudaFreeHost(lane->host_ids);
  for (cudaEvent_t event : {lane->fork, lane->join, lane->done}) {
    if (event != nullptr) cudaEventDestroy(event);
  }
  for (cudaStream_t stream : lane->streams) {
    if (stream != nullptr) cudaStreamDestroy(stream);
  }
}

CudaBackend::~CudaBackend() {
  DeviceGuard guard(device_);
  DestroyLane(&gather_lane_);
  DestroyLane(&scatter_lane_);
  if (dev_layers_ != nullptr) cudaFree(dev_layers_);
  cudaGetLastError();
  // mappings_ close with the last registration that uses them.
}

Status CudaBackend::GatherImpl(std::span<const uint32_t> block_ids,
                               std::span<const std::span<uint8_t>> objects,
                               transfer::DeviceOrder* order) {
  return Run(/*gather=*/true, &gather_lane_, block_ids, objects, 0, order);
}

Status CudaBackend::ScatterImpl(std::span<const std::span<const uint8_t>> objects,
                                std::span<const uint32_t> block_ids, uint32_t skip_first_n_tokens,
                                transfer::DeviceOrder* order) {
  return Run(/*gather=*/false, &scatter_lane_, block_ids, objects, skip_first_n_tokens, order);
}

template <typename Span>
Status CudaBackend::Run(bool gather, Lane* lane, std::span<const uint32_t> block_ids,
                        std::span<const Span> objects, uint32_t skip,
                        transfer::DeviceOrder* order) {
  const char* op = gather ? "gather" : "scatter";
  const uint64_t host_begin = reinterpret_cast<uint64_t>(options_.host_base);
  const uint64_t host_end = host_begin + options_.host_size;
  for (size_t i = 0; i < objects.size(); ++i) {
    const uint64_t p = reinterpret_cast<uint64_t>(objects[i].data());
    if (p < host_begin || p > host_end || objects[i].size() > host_end - p) {
      return Status::InvalidArgument(
          fmt::format("{}: object {} is not in the L1 host memory the GPU can reach", op, i));
    }
  }

  MutexLock lock(&lane->mu);
  DeviceGuard guard(device_);
  KVT_RETURN_IF_ERROR(guard.status());
  const bool staged = options_.mode == CudaCopyMode::kStagedDma;
  const int num_streams = lane->streams[1] != nullptr ? 2 : 1;
  // On any error return, first wait for whatever this call enqueued on either stream: the
  // caller then aborts or releases the objects, and the next call reuses the lane's buffers.
  struct Drain {
    Lane* lane;
    bool armed = true;
    ~Drain() {
      if (!armed) return;
      for (cudaStream_t stream : lane->streams) {
        if (stream != nullptr) cudaStreamSynchronize(stream);
      }
      cudaGetLastError();
    }
  } drain{lane};
  if (order != nullptr && order->wait_event.has_value()) {
    cudaIpcEventHandle_t h;
    std::memcpy(h.reserved, order->wait_event->data(), order->wait_event->size());
    cudaEvent_t engine_event = nullptr;
    if (cudaError_t err = cudaIpcOpenEventHandle(&engine_event, h); err != cudaSuccess) {
      Status s = CudaStatus("cudaIpcOpenEventHandle", err);
      return Status::InvalidArgument(fmt::format(
          "{}: the engine's event_ipc_handle could not be opened: {}", op, s.message()));
    }
    cudaError_t err = cudaSuccess;
    for (int i = 0; i < num_streams && err == cudaSuccess; ++i) {
      err = cudaStreamWaitEvent(lane->streams[i], engine_event, 0);
    }
    cudaEventDestroy(engine_event);  // the waits are enqueued; the event may go
    if (err != cudaSuccess) return CudaStatus("cudaStreamWaitEvent", err);
  }

  const uint32_t bpc = blocks_per_chunk();
  const size_t per_round = options_.max_objects_per_launch;
  const size_t step = staged ? group_objects_ : per_round;
  cudaStream_t main_stream = lane->streams[0];
  size_t group = 0;  // staged: the next staging group, used in turn across rounds
  for (size_t first = 0; first < objects.size(); first += per_round) {
    const size_t n = std::min(per_round, objects.size() - first);
    if (first > 0) {
      // The pinned id and pointer arrays are about to be rewritten: the previous round's upload
      // must have happened.
      KVT_CUDA_RETURN_IF_ERROR(cudaStreamSynchronize(main_stream));
    }
    std::memcpy(lane->host_ids, block_ids.data() + first * bpc, n * bpc * sizeof(uint32_t));
    KVT_CUDA_RETURN_IF_ERROR(cudaMemcpyAsync(lane->dev_ids, lane->host_ids,
                                             n * bpc * sizeof(uint32_t), cudaMemcpyHostToDevice,
                                             main_stream));
    if (!staged) {
      for (size_t i = 0; i < n; ++i) {
        lane->host_objects[i] =
            reinterpret_cast<uint64_t>(objects[first + i].data()) + host_to_device_;
      }
      KVT_CUDA_RETURN_IF_ERROR(cudaMemcpyAsync(lane->dev_objects, lane->host_objects,
                                               n * sizeof(uint64_t), cudaMemcpyHostToDevice,
                                               main_stream));
    }
    if (num_streams == 2) {
      // The second stream reads the ids too; it also must not overwrite them before the first
      // stream's previous round is done with them (that stream was synchronised above, and the
      // second one is joined into it below).
      KVT_CUDA_RETURN_IF_ERROR(cudaEventRecord(lane->fork, main_stream));
      KVT_CUDA_RETURN_IF_ERROR(cudaStreamWaitEvent(lane->streams[1], lane->fork, 0));
    }
    // Staged: group g uses slots [g * group_objects_, (g + 1) * group_objects_) and always
    // stream g % 2, so its next use waits for its last DMA in stream order, while the next
    // group's kernel runs beside this group's DMA on the other stream.
    for (size_t at = 0; at < n; at += step) {
      const size_t m = std::min(step, n - at);
      cudaStream_t stream = staged ? lane->streams[group % num_streams] : main_stream;
      uint8_t* slots = staged ? lane->staging + group * group_objects_ * object_size() : nullptr;
      KvCopyParams p = params_;
      p.block_ids = lane->dev_ids + at * bpc;
      p.objects = staged ? lane->dev_objects + group * group_objects_ : lane->dev_objects + at;
      p.num_objects = static_cast<uint32_t>(m);
      const uint64_t before = uint64_t{first + at} * chunk_size();
      p.skip_tokens = skip > before ? static_cast<uint32_t>(skip - before) : 0;
      if (gather) {
        KVT_CUDA_RETURN_IF_ERROR(LaunchGather(p, stream));
        for (size_t i = 0; staged && i < m; ++i) {
          KVT_CUDA_RETURN_IF_ERROR(cudaMemcpyAsync(
              const_cast<uint8_t*>(objects[first + at + i].data()), slots + i * object_size(),
              object_size(), cudaMemcpyDeviceToHost, stream));
        }
      } else {
        for (size_t i = 0; staged && i < m; ++i) {
          KVT_CUDA_RETURN_IF_ERROR(cudaMemcpyAsync(slots + i * object_size(),
                                                   objects[first + at + i].data(), object_size(),
                                                   cudaMemcpyHostToDevice, stream));
        }
        KVT_CUDA_RETURN_IF_ERROR(LaunchScatter(p, stream));
      }
      if (staged) group = (group + 1) % groups_;
    }
    if (num_streams == 2) {
      KVT_CUDA_RETURN_IF_ERROR(cudaEventRecord(lane->join, lane->streams[1]));
      KVT_CUDA_RETURN_IF_ERROR(cudaStreamWaitEvent(main_stream, lane->join, 0));
    }
  }
  KVT_CUDA_RETURN_IF_ERROR(cudaEventRecord(lane->done, main_stream));
  if (order != nullptr) {
    order->done_event = lane->done_handle;
    if (order->on_enqueued) order->on_enqueued();
  }
  // Blocking (not spinning) wait: the objects must be complete before FinishWrite publishes them,
  // and the L1 read locks of a scatter are released right after this returns.
  KVT_CUDA_RETURN_IF_ERROR(cudaEventSynchronize(lane->done));
  drain.armed = false;
  return Status::OK();
}

}  // namespace kvtier::gpu
