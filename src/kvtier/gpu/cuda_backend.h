// CudaBackend: the transfer backend for an engine whose paged KV cache lives in GPU memory
// (REGISTER_KV_CACHE with backend "cuda"). The engine shares each layer's allocation by CUDA
// IPC memory handle; the server opens the handles on the device with the engine's UUID and moves
// chunks with the gather/scatter kernels of kv_copy.h. By default (kStagedDma) the kernels move
// a few chunks at a time between the paged cache and a device staging buffer, and the copy
// engines move whole 32 MiB chunk objects between it and L1 over PCIe; kMapped has the kernels
// read and write the pinned, mapped L1 objects directly. docs/gpu.md says why staging won: both
// reach the PCIe limit in one direction, but mapped kernels occupy every SM, so a store and a
// retrieve cannot overlap, while copy engines run both directions at once and leave the SMs to
// the engine.
//
// Pipelining (kStagedDma): the staging slots form groups (of one 32 MiB chunk, or of several
// smaller ones), used in turn, and consecutive groups alternate between two streams, so the
// kernel filling (or draining) one group overlaps the copy engine's DMA of the previous one; a
// group always uses the same stream, so a slot is reused only after its last DMA.
//
// Ordering: a call makes its streams wait on the engine's interprocess event (DeviceOrder), runs
// the kernels and copies, joins the streams, records the backend's own interprocess event,
// reports it through DeviceOrder::on_enqueued (the server replies to the engine then, while the
// copies still run), and waits for it on the host, so the objects are complete (gather) or
// released (scatter) when the call returns; the engine's stream can wait on the event.
//
// Threading: one lane per direction (gathers on one, scatters on another, so a store and a
// retrieve overlap); calls in one direction run one at a time. See transfer_backend.h.
#pragma once

#include <cstdint>
#include <memory>
#include <span>
#include <vector>

#include <cuda_runtime_api.h>

#include "kvtier/common/mutex.h"
#include "kvtier/common/result.h"
#include "kvtier/common/thread_annotations.h"
#include "kvtier/gpu/cuda_util.h"
#include "kvtier/gpu/kv_copy.h"
#include "kvtier/protocol/messages.h"
#include "kvtier/transfer/transfer_backend.h"

namespace kvtier::gpu {

enum class CudaCopyMode { kStagedDma, kMapped };

// The staging group size worth a kernel launch and a stream switch (kStagedDma), where the
// staging slots allow it.
inline constexpr uint64_t kStagingGroupBytes = 8ull << 20;

struct CudaBackendOptions {
  // The host memory the objects live in (the L1 pool): registered with CUDA as mapped memory.
  // Objects outside it are refused.
  const uint8_t* host_base = nullptr;
  uint64_t host_size = 0;
  // Objects per call uploaded at once (the id and pointer arrays are sized for this many);
  // larger calls run in several rounds.
  uint32_t max_objects_per_launch = 256;
  CudaCopyMode mode = CudaCopyMode::kStagedDma;
  // kStagedDma: chunk objects of device staging memory per direction, at most (a registration
  // holds up to 2 * staging_objects * object size of GPU memory). With two or more, the slots
  // form groups of ceil(kStagingGroupBytes / object size) objects, but at most half the slots
  // (so groups of small objects may be smaller than kStagingGroupBytes), and the slots that do
  // not fill a whole group are not allocated; the groups are double-buffered. With one, a call
  // alternates kernel and DMA on one stream.
  uint32_t staging_objects = 4;
};

class CudaBackend final : public transfer::TransferBackend {
 public:
  // Validates the layout, finds the device by UUID, opens every layer's IPC handle (shared with
  // other registrations of the same allocation) and checks each layer lies inside its
  // allocation, without overlaps.
  static Result<std::unique_ptr<CudaBackend>> Create(
      const protocol::RegisterKvCacheRequest& request, uint32_t chunk_size,
      const CudaBackendOptions& options);
  // Layers already addressable in this process (tests, benchmarks): layer_ptrs[i] is where
  // layer i's layer_offsets entry points (for cross_layer, the tensor's base every time).
  static Result<std::unique_ptr<CudaBackend>> CreateLocal(const protocol::Layout& layout,
                                                          uint32_t chunk_size, int device,
                                                          std::span<void* const> layer_ptrs,
                                                          const CudaBackendOptions& options);
  ~CudaBackend() override;

  bool on_device() const override { return true; }
  int device() const { return device_; }

 private:
  struct Lane {
    Mutex mu;
    // streams[1] is used only by double-buffered staging (groups > 1).
    cudaStream_t streams[2] = {nullptr, nullptr};
    cudaEvent_t fork = nullptr;  // streams[0] -> streams[1] (the ids are uploaded)
    cudaEvent_t join = nullptr;  // streams[1] -> streams[0] (before `done`)
    cudaEvent_t done = nullptr;  // interprocess, blocking sync
    protocol::CudaIpcHandle done_handle{};
    uint32_t* host_ids = nullptr;  // pinned
    uint64_t* host_objects = nullptr;
    uint32_t* dev_ids = nullptr;
    uint64_t* dev_objects = nullptr;  // kMapped: per call; kStagedDma: the staging slots
    uint8_t* staging = nullptr;       // kStagedDma: group_objects_ * groups_ objects
  };
  // kStagedDma: objects per staging group, and groups (slots = group * groups <= staging_objects).
  uint32_t group_objects_ = 1;
  uint32_t groups_ = 1;

  CudaBackend(const transfer::KvGeometry& geometry, int device, const CudaBackendOptions& options);
  Status Init(std::span<const uint64_t> layer_addresses);
  Status InitLane(Lane* lane);
  void DestroyLane(Lane* lane);

  Status GatherImpl(std::span<const uint32_t> block_ids,
                    std::span<const std::span<uint8_t>> objects,
                    transfer::DeviceOrder* order) override;
  Status ScatterImpl(std::span<const std::span<const uint8_t>> objects,
                     std::span<const uint32_t> block_ids, uint32_t skip_first_n_tokens,
                     transfer::DeviceOrder* order) override;
  // Objects as device addresses; kInvalidArgument for one outside the host range.
  template <typename Span>
  Status Run(bool gather, Lane* lane, std::span<const uint32_t> block_ids,
             std::span<const Span> objects, uint32_t skip, transfer::DeviceOrder* order);

  const int device_;
  const CudaBackendOptions options_;
  int64_t host_to_device_ = 0;  // device address of host byte p = p + host_to_device_
  std::vector<std::shared_ptr<const IpcMapping>> mappings_;
  uint64_t* dev_layers_ = nullptr;
  KvCopyParams params_;
  Lane gather_lane_;
  Lane scatter_lane_;
};

}  // namespace kvtier::gpu
