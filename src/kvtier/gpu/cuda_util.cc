#include "kvtier/gpu/cuda_util.h"

#include <cstring>
#include <map>
#include <mutex>
#include <utility>

#include <cudaTypedefs.h>
#include <fmt/format.h>

#include "kvtier/common/logging.h"

namespace kvtier::gpu {

Status CudaStatus(const char* what, cudaError_t err) {
  cudaGetLastError();  // clear a non-sticky error so that it does not surface elsewhere
  return Status::Internal(
      fmt::format("{}: {} ({})", what, cudaGetErrorString(err), cudaGetErrorName(err)));
}

bool DeviceAvailable() {
  int n = 0;
  if (cudaGetDeviceCount(&n) != cudaSuccess) {
    cudaGetLastError();
    return false;
  }
  return n > 0;
}

Result<protocol::DeviceUuid> DeviceUuidOf(int ordinal) {
  cudaDeviceProp prop;
  if (cudaError_t err = cudaGetDeviceProperties(&prop, ordinal); err != cudaSuccess) {
    return MakeError(CudaStatus("cudaGetDeviceProperties", err));
  }
  protocol::DeviceUuid uuid;
  static_assert(sizeof(prop.uuid.bytes) == protocol::kDeviceUuidBytes);
  std::memcpy(uuid.data(), prop.uuid.bytes, uuid.size());
  return uuid;
}

std::string UuidString(const protocol::DeviceUuid& u) {
  return fmt::format(
      "GPU-{:02x}{:02x}{:02x}{:02x}-{:02x}{:02x}-{:02x}{:02x}-{:02x}{:02x}-{:02x}{:02x}{:02x}{:02x}"
      "{:02x}{:02x}",
      u[0], u[1], u[2], u[3], u[4], u[5], u[6], u[7], u[8], u[9], u[10], u[11], u[12], u[13], u[14],
      u[15]);
}

Result<int> DeviceOrdinalForUuid(const protocol::DeviceUuid& uuid) {
  int n = 0;
  if (cudaError_t err = cudaGetDeviceCount(&n); err != cudaSuccess) {
    return MakeError(CudaStatus("cudaGetDeviceCount", err));
  }
  for (int i = 0; i < n; ++i) {
    KVT_ASSIGN_OR_RETURN(protocol::DeviceUuid u, DeviceUuidOf(i));
    if (u == uuid) return i;
  }
  return MakeError(Status::NotFound(fmt::format(
      "device {} is not visible to the server ({} visible devices; check CUDA_VISIBLE_DEVICES)",
      UuidString(uuid), n)));
}

Result<AddressRange> AllocationOf(const void* device_ptr) {
  // The driver API through the runtime's entry-point query, so kvtier links no libcuda (it
  // must start on machines without a driver).
  static PFN_cuMemGetAddressRange_v3020 get_range = [] {
    void* fn = nullptr;
    cudaDriverEntryPointQueryResult found;
    if (cudaGetDriverEntryPointByVersion("cuMemGetAddressRange", &fn, 3020, cudaEnableDefault,
                                         &found) != cudaSuccess ||
        found != cudaDriverEntryPointSuccess) {
      cudaGetLastError();
      fn = nullptr;
    }
    return reinterpret_cast<PFN_cuMemGetAddressRange_v3020>(fn);
  }();
  if (get_range == nullptr) {
    return MakeError(Status::Unavailable("cuMemGetAddressRange is not available from the driver"));
  }
  CUdeviceptr base = 0;
  size_t size = 0;
  if (CUresult r = get_range(&base, &size, reinterpret_cast<CUdeviceptr>(device_ptr));
      r != CUDA_SUCCESS) {
    return MakeError(Status::InvalidArgument(
        fmt::format("address {} is not in device memory (cuMemGetAddressRange: error {})",
                    device_ptr, static_cast<int>(r))));
  }
  return AddressRange{static_cast<uint64_t>(base), static_cast<uint64_t>(size)};
}

Result<ExportedMemory> ExportIpcMemory(const void* device_ptr) {
  KVT_ASSIGN_OR_RETURN(AddressRange range, AllocationOf(device_ptr));
  cudaIpcMemHandle_t handle;
  if (cudaError_t err = cudaIpcGetMemHandle(&handle, reinterpret_cast<void*>(range.base));
      err != cudaSuccess) {
    return MakeError(CudaStatus("cudaIpcGetMemHandle", err));
  }
  ExportedMemory out;
  static_assert(sizeof(handle.reserved) == protocol::kCudaIpcHandleBytes);
  std::memcpy(out.handle.data(), handle.reserved, out.handle.size());
  out.offset = reinterpret_cast<uint64_t>(device_ptr) - range.base;
  out.allocation_size = range.size;
  return out;
}

DeviceGuard::DeviceGuard(int device) {
  if (cudaError_t err = cudaGetDevice(&previous_); err != cudaSuccess) {
    status_ = CudaStatus("cudaGetDevice", err);
    return;
  }
  if (previous_ != device) {
    if (cudaError_t err = cudaSetDevice(device); err != cudaSuccess) {
      status_ = CudaStatus("cudaSetDevice", err);
      return;
    }
    restore_ = true;
  }
}

DeviceGuard::~DeviceGuard() {
  if (restore_) cudaSetDevice(previous_);
}

namespace {

// The process-wide table of opened handles, with reference counts; opened and closed under one
// mutex, so a handle is never opened while its last close is still pending.
struct MappingTable {
  struct Entry {
    std::shared_ptr<const IpcMapping> mapping;  // kept while refs > 0
    size_t refs = 0;
  };
  std::mutex mu;
  std::map<std::pair<int, protocol::CudaIpcHandle>, Entry> entries;
};

MappingTable& Table() {
  static auto* table = new MappingTable;  // never destroyed: used from static destructors
  return *table;
}

void Release(const std::pair<int, protocol::CudaIpcHandle>& key) {
  MappingTable& t = Table();
  std::lock_guard lock(t.mu);
  auto it = t.entries.find(key);
  if (it == t.entries.end() || --it->second.refs > 0) return;
  const IpcMapping& m = *it->second.mapping;
  DeviceGuard guard(m.device());
  if (cudaError_t err = cudaIpcCloseMemHandle(m.base()); err != cudaSuccess) {
    KVT_LOG_WARN("cudaIpcCloseMemHandle on device {}: {}", m.device(), cudaGetErrorString(err));
    cudaGetLastError();
  }
  t.entries.erase(it);
}

}  // namespace

Result<std::shared_ptr<const IpcMapping>> IpcMapping::Open(int device,
                                                           const protocol::CudaIpcHandle& handle) {
  MappingTable& t = Table();
  auto key = std::make_pair(device, handle);
  std::lock_guard lock(t.mu);
  auto it = t.entries.find(key);
  if (it == t.entries.end()) {
    DeviceGuard guard(device);
    KVT_RETURN_IF_ERROR(guard.status());
    cudaIpcMemHandle_t h;
    std::memcpy(h.reserved, handle.data(), handle.size());
    void* base = nullptr;
    if (cudaError_t err = cudaIpcOpenMemHandle(&base, h, cudaIpcMemLazyEnablePeerAccess);
        err != cudaSuccess) {
      Status s = CudaStatus("cudaIpcOpenMemHandle", err);
      return MakeError(Status::InvalidArgument(
          fmt::format("a CUDA IPC memory handle could not be opened on device {} (is the "
                      "exporting process alive, and on this machine?): {}",
                      device, s.message())));
    }
    auto range = AllocationOf(base);
    if (!range) {
      cudaIpcCloseMemHandle(base);
      return MakeError(range.error());
    }
    MappingTable::Entry entry;
    entry.mapping = std::make_shared<IpcMapping>(device, static_cast<uint8_t*>(base), range->size);
    it = t.entries.emplace(key, std::move(entry)).first;
  }
  ++it->second.refs;
  // Holders share ownership through an aliasing pointer whose deleter releases one reference.
  auto holder = std::shared_ptr<const IpcMapping>(it->second.mapping.get(),
                                                  [key](const IpcMapping*) { Release(key); });
  return holder;
}

size_t IpcMapping::OpenCount() {
  MappingTable& t = Table();
  std::lock_guard lock(t.mu);
  return t.entries.size();
}

}  // namespace kvtier::gpu
