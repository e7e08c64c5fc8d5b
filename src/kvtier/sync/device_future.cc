#include "kvtier/sync/device_future.h"

#include <cstring>

#include <cuda_runtime_api.h>
#include <fmt/format.h>

namespace kvtier::sync {
namespace {

static_assert(kCudaIpcHandleSize == CUDA_IPC_HANDLE_SIZE);

Status CudaError(const char* call, cudaError_t err) {
  return Status::Internal(fmt::format("{}: {}", call, cudaGetErrorString(err)));
}

cudaEvent_t AsEvent(void* event) { return static_cast<cudaEvent_t>(event); }

}  // namespace

Result<IpcEvent> IpcEvent::Open(const CudaIpcEventHandle& handle, int device) {
  cudaIpcEventHandle_t ipc_handle;
  std::memcpy(ipc_handle.reserved, handle.data(), kCudaIpcHandleSize);
  int previous = -1;
  if (device >= 0) {
    if (cudaError_t err = cudaGetDevice(&previous); err != cudaSuccess) {
      return MakeError(CudaError("cudaGetDevice", err));
    }
    if (previous != device) {
      if (cudaError_t err = cudaSetDevice(device); err != cudaSuccess) {
        return MakeError(CudaError("cudaSetDevice", err));
      }
    }
  }
  cudaEvent_t event = nullptr;
  cudaError_t err = cudaIpcOpenEventHandle(&event, ipc_handle);
  if (device >= 0 && previous != device) cudaSetDevice(previous);
  if (err != cudaSuccess) return MakeError(CudaError("cudaIpcOpenEventHandle", err));
  return IpcEvent(event);
}

IpcEvent& IpcEvent::operator=(IpcEvent&& other) noexcept {
  if (this != &other) {
    if (event_ != nullptr) cudaEventDestroy(AsEvent(event_));
    event_ = std::exchange(other.event_, nullptr);
  }
  return *this;
}

IpcEvent::~IpcEvent() {
  if (event_ != nullptr) cudaEventDestroy(AsEvent(event_));
}

Result<bool> IpcEvent::Query() const {
  cudaError_t err = cudaEventQuery(AsEvent(event_));
  if (err == cudaSuccess) return true;
  if (err == cudaErrorNotReady) return false;
  return MakeError(CudaError("cudaEventQuery", err));
}

Status IpcEvent::Synchronize() const {
  cudaError_t err = cudaEventSynchronize(AsEvent(event_));
  return err == cudaSuccess ? Status() : CudaError("cudaEventSynchronize", err);
}

}  // namespace kvtier::sync
