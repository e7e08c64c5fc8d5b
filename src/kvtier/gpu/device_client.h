// The engine side of the GPU data path, for C++ engines (the Python package has its own torch
// helper): describe GPU layers for REGISTER_KV_CACHE, record the event STORE and RETRIEVE wait
// for, and get device futures for their replies.
#pragma once

#include <cstdint>
#include <span>
#include <string>

#include <cuda_runtime_api.h>

#include "kvtier/client.h"
#include "kvtier/common/result.h"
#include "kvtier/protocol/messages.h"
#include "kvtier/sync/device_future.h"

namespace kvtier::gpu {

// A REGISTER_KV_CACHE request (backend "cuda") for layer tensors at `layers` (layer i's first
// byte, in `layout`'s format) on `device`: exports each layer's allocation by IPC handle and sets
// layout.layer_offsets to the offsets within them.
Result<protocol::RegisterKvCacheRequest> DescribeCudaKvCache(
    std::string instance_id, std::string model, uint16_t world_size, uint16_t worker_rank,
    protocol::Layout layout, std::span<void* const> layers, int device);

// An interprocess CUDA event the engine records after writing (or last reading) the blocks a
// STORE (RETRIEVE) names; its handle goes in the request's event_ipc_handle. Move-only.
class EngineEvent {
 public:
  static Result<EngineEvent> Create(int device);
  EngineEvent(EngineEvent&& other) noexcept;
  EngineEvent& operator=(EngineEvent&&) = delete;
  EngineEvent(const EngineEvent&) = delete;
  ~EngineEvent();
  // Records the event on `stream` and returns its handle.
  Result<protocol::CudaIpcHandle> Record(cudaStream_t stream);

 private:
  EngineEvent(cudaEvent_t event, protocol::CudaIpcHandle handle) : event_(event), handle_(handle) {}
  cudaEvent_t event_ = nullptr;
  protocol::CudaIpcHandle handle_{};
};

// STORE / RETRIEVE whose result is ready once the reply arrived and the server's copies are done
// on the GPU (its event completed). `device`: where to import the server's event (-1: current).
sync::DeviceFuture<protocol::StoreReply> StoreOnDevice(Client& client, protocol::StoreRequest r,
                                                       int device = -1);
sync::DeviceFuture<protocol::RetrieveReply> RetrieveOnDevice(Client& client,
                                                             protocol::RetrieveRequest r,
                                                             int device = -1);

}  // namespace kvtier::gpu
