// Small CUDA runtime helpers for the GPU data path: errors as Status, device lookup by UUID,
// exporting and opening IPC memory handles.
#pragma once

#include <cstdint>
#include <memory>

#include <cuda_runtime_api.h>

#include "kvtier/common/result.h"
#include "kvtier/common/status.h"
#include "kvtier/protocol/messages.h"

namespace kvtier::gpu {

// kInternal "<what>: <CUDA's text> (<code name>)". Clears the thread's last error.
Status CudaStatus(const char* what, cudaError_t err);
#define KVT_CUDA_RETURN_IF_ERROR(call)                                                        \
  do {                                                                                        \
    const cudaError_t kvt_cuda_err_ = (call);                                                 \
    if (kvt_cuda_err_ != cudaSuccess) return ::kvtier::gpu::CudaStatus(#call, kvt_cuda_err_); \
  } while (false)

// True when a CUDA device is visible (false without a driver, too).
bool DeviceAvailable();

// The ordinal, in this process, of the device with this UUID (processes may see different
// CUDA_VISIBLE_DEVICES); kNotFound naming the UUID when no visible device has it.
Result<int> DeviceOrdinalForUuid(const protocol::DeviceUuid& uuid);
Result<protocol::DeviceUuid> DeviceUuidOf(int ordinal);
// "GPU-xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx", as nvidia-smi prints it.
std::string UuidString(const protocol::DeviceUuid& uuid);

// The allocation holding a device address: [base, base + size).
struct AddressRange {
  uint64_t base = 0;
  uint64_t size = 0;
};
Result<AddressRange> AllocationOf(const void* device_ptr);

// What a client sends to share device memory: the allocation's IPC handle and the offset of
// `device_ptr` within it.
struct ExportedMemory {
  protocol::CudaIpcHandle handle{};
  uint64_t offset = 0;
  uint64_t allocation_size = 0;
};
Result<ExportedMemory> ExportIpcMemory(const void* device_ptr);

// Sets the calling thread's device for a scope, restoring the previous one.
class DeviceGuard {
 public:
  explicit DeviceGuard(int device);
  ~DeviceGuard();
  DeviceGuard(const DeviceGuard&) = delete;
  DeviceGuard& operator=(const DeviceGuard&) = delete;
  const Status& status() const { return status_; }

 private:
  int previous_ = -1;
  bool restore_ = false;
  Status status_;
};

// Another process's allocation, opened with cudaIpcOpenMemHandle. A handle can be opened only
// once per process and device, so openings are shared: every Open of the same (device, handle)
// returns the same mapping, which is closed when the last holder lets go.
class IpcMapping {
 public:
  // Opens `handle` on `device` (lazy peer access), and finds the allocation's size.
  static Result<std::shared_ptr<const IpcMapping>> Open(int device,
                                                        const protocol::CudaIpcHandle& handle);
  uint8_t* base() const { return base_; }
  uint64_t size() const { return size_; }
  int device() const { return device_; }

  // Mappings open now, process-wide (for tests and metrics).
  static size_t OpenCount();

  IpcMapping(int device, uint8_t* base, uint64_t size)
      : device_(device), base_(base), size_(size) {}

 private:
  const int device_;
  uint8_t* const base_;
  const uint64_t size_;
};

}  // namespace kvtier::gpu
