#include "kvtier/gpu/device_client.h"

#include <cstring>
#include <memory>
#include <utility>

#include "kvtier/gpu/cuda_util.h"

namespace kvtier::gpu {

Result<protocol::RegisterKvCacheRequest> DescribeCudaKvCache(
    std::string instance_id, std::string model, uint16_t world_size, uint16_t worker_rank,
    protocol::Layout layout, std::span<void* const> layers, int device) {
  if (layers.size() != layout.num_layers) {
    return MakeError(Status::InvalidArgument("one layer pointer per layer is needed"));
  }
  protocol::RegisterKvCacheRequest r;
  r.instance_id = std::move(instance_id);
  r.model = std::move(model);
  r.world_size = world_size;
  r.worker_rank = worker_rank;
  r.backend = "cuda";
  KVT_ASSIGN_OR_RETURN(r.device_uuid, DeviceUuidOf(device));
  DeviceGuard guard(device);
  KVT_RETURN_IF_ERROR(guard.status());
  layout.layer_offsets.clear();
  for (void* layer : layers) {
    KVT_ASSIGN_OR_RETURN(ExportedMemory exported, ExportIpcMemory(layer));
    r.cuda_ipc_handles.push_back(exported.handle);
    layout.layer_offsets.push_back(exported.offset);
  }
  r.layout = std::move(layout);
  return r;
}

Result<EngineEvent> EngineEvent::Create(int device) {
  DeviceGuard guard(device);
  KVT_RETURN_IF_ERROR(guard.status());
  cudaEvent_t event = nullptr;
  if (cudaError_t err =
          cudaEventCreateWithFlags(&event, cudaEventInterprocess | cudaEventDisableTiming);
      err != cudaSuccess) {
    return MakeError(CudaStatus("cudaEventCreateWithFlags", err));
  }
  cudaIpcEventHandle_t h;
  if (cudaError_t err = cudaIpcGetEventHandle(&h, event); err != cudaSuccess) {
    cudaEventDestroy(event);
    return MakeError(CudaStatus("cudaIpcGetEventHandle", err));
  }
  protocol::CudaIpcHandle handle;
  std::memcpy(handle.data(), h.reserved, handle.size());
  return EngineEvent(event, handle);
}

EngineEvent::EngineEvent(EngineEvent&& other) noexcept
    : event_(std::exchange(other.event_, nullptr)), handle_(other.handle_) {}

EngineEvent::~EngineEvent() {
  if (event_ != nullptr) cudaEventDestroy(event_);
}

Result<protocol::CudaIpcHandle> EngineEvent::Record(cudaStream_t stream) {
  if (cudaError_t err = cudaEventRecord(event_, stream); err != cudaSuccess) {
    return MakeError(CudaStatus("cudaEventRecord", err));
  }
  return handle_;
}

namespace {

// Forwards a reply future into a DeviceFuture: the reply's event handle becomes the future's.
template <typename Reply>
sync::DeviceFuture<Reply> ToDeviceFuture(sync::MessagingFuture<Reply> raw, int device) {
  auto promise = std::make_shared<sync::Promise<sync::DeviceReply<Reply>>>();
  sync::DeviceFuture<Reply> out(promise->GetFuture(), device);
  raw.OnReady([raw, promise] {
    auto result = raw.Result(Duration::zero());
    if (!result) {
      promise->SetError(result.error());
      return;
    }
    std::optional<protocol::CudaIpcHandle> event = result->event_ipc_handle;
    promise->SetValue(sync::DeviceReply<Reply>{event, std::move(*result)});
  });
  return out;
}

}  // namespace

sync::DeviceFuture<protocol::StoreReply> StoreOnDevice(Client& client, protocol::StoreRequest r,
                                                       int device) {
  return ToDeviceFuture(client.Store(std::move(r)), device);
}

sync::DeviceFuture<protocol::RetrieveReply> RetrieveOnDevice(Client& client,
                                                             protocol::RetrieveRequest r,
                                                             int device) {
  return ToDeviceFuture(client.Retrieve(std::move(r)), device);
}

}  // namespace kvtier::gpu
