// HostPool: the one contiguous host memory region of an L1.
//
// Anonymous mmap by default; optionally backed by 2 MiB hugepages, or by a named POSIX
// shared-memory segment (so another process can map the pool). When kvtier is built with
// CUDA and a GPU is present, the region is registered with cudaHostRegister (portable and
// mapped), which makes device copies run at full PCIe speed; otherwise it is plain memory.
#pragma once

#include <cstdint>
#include <memory>
#include <string>

#include "kvtier/common/result.h"

namespace kvtier::memory {

struct HostPoolOptions {
  uint64_t size_bytes = 0;  // > 0; rounded up to the page size (2 MiB with hugepages)
  bool use_hugepages = false;
  // Non-empty: create the POSIX shm object "/<shm_name>" (no '/' inside), replacing a stale
  // one of that name, and unlink it when the pool is destroyed. Excludes use_hugepages.
  std::string shm_name;
  // Touch every page up front (MAP_POPULATE) so first use does not page-fault.
  bool populate = false;
  // Register with CUDA when built with it and a device is visible. Failure to register is
  // logged and leaves the pool usable (plain memory), never fails Create.
  bool register_with_cuda = true;
};

class HostPool {
 public:
  // Errors: kInvalidArgument (bad options), kPoolCreateFailed (mmap/shm failures, with errno
  // text; hugepages unavailable is reported as such).
  static Result<std::unique_ptr<HostPool>> Create(const HostPoolOptions& options);
  ~HostPool();
  HostPool(const HostPool&) = delete;
  HostPool& operator=(const HostPool&) = delete;

  uint8_t* data() const { return data_; }
  uint64_t size() const { return size_; }
  bool hugepages() const { return hugepages_; }
  bool cuda_registered() const { return cuda_registered_; }
  const std::string& shm_name() const { return shm_name_; }

 private:
  HostPool() = default;
  uint8_t* data_ = nullptr;
  uint64_t size_ = 0;
  bool hugepages_ = false;
  bool cuda_registered_ = false;
  std::string shm_name_;
};

}  // namespace kvtier::memory
