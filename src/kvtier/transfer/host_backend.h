// HostBackend: the transfer backend for an engine whose paged KV cache lives in a POSIX
// shared-memory segment the engine created (REGISTER_KV_CACHE with backend "host"). The server
// maps the segment and copies with memcpy (non-temporal stores for large calls); HND formats
// copy one head_dim row at a time.
//
// Large calls split the work by layer over a CopyPool; without one (or below
// min_parallel_bytes) copies run on the caller's thread. See transfer_backend.h for the call
// contract, thread safety and the chunk object layout.
//
// The engine must keep the segment at least shm_size bytes long while it is registered: the
// mapping stays valid after the engine unlinks the name, but a segment it truncates faults
// (SIGBUS) on the next copy.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "kvtier/common/result.h"
#include "kvtier/protocol/messages.h"
#include "kvtier/transfer/copy_pool.h"
#include "kvtier/transfer/transfer_backend.h"

namespace kvtier::transfer {

struct HostBackendOptions {
  CopyPool* pool = nullptr;  // not owned; may be null (copies run on the caller's thread)
  // Calls moving fewer bytes than this stay on the caller's thread even with a pool.
  uint64_t min_parallel_bytes = 4ull << 20;
  // Calls moving at least this many bytes write with non-temporal (cache-bypassing) stores:
  // large transfers then cost one read and one write per byte instead of two reads and a
  // write, and do not flush the cache. Smaller ones use memcpy, leaving the data in cache.
  uint64_t stream_min_bytes = 1ull << 20;
};

class HostBackend final : public TransferBackend {
 public:
  // Validates request.layout against chunk_size (kv_layout.h), checks that every layer's extent
  // fits in request.shm_size and that no two layers overlap, then opens request.shm_name
  // (a leading '/' is optional), checks that the segment is at least shm_size bytes and maps
  // that much of it read-write, shared. `pool` (may be null) must outlive the backend.
  static Result<std::unique_ptr<HostBackend>> Create(
      const protocol::RegisterKvCacheRequest& request, uint32_t chunk_size, CopyPool* pool);
  static Result<std::unique_ptr<HostBackend>> Create(
      const protocol::RegisterKvCacheRequest& request, uint32_t chunk_size,
      const HostBackendOptions& options);

  ~HostBackend() override;  // unmaps the segment

  const std::string& shm_path() const { return shm_path_; }
  uint64_t mapped_size() const { return mapped_size_; }

 private:
  HostBackend(const KvGeometry& geometry, std::string shm_path, uint8_t* base, uint64_t mapped_size,
              std::span<const uint64_t> layer_offsets, const HostBackendOptions& options);

  Status GatherImpl(std::span<const uint32_t> block_ids,
                    std::span<const std::span<uint8_t>> objects, DeviceOrder* /*order*/) override;
  Status ScatterImpl(std::span<const std::span<const uint8_t>> objects,
                     std::span<const uint32_t> block_ids, uint32_t skip_first_n_tokens,
                     DeviceOrder* /*order*/) override;

  // Copies one layer of every object; ObjectSpan is std::span<uint8_t> for a gather (engine to
  // object) and std::span<const uint8_t> for a scatter (object to engine).
  template <bool kStream, typename ObjectSpan>
  void CopyLayer(uint32_t layer, std::span<const uint32_t> block_ids,
                 std::span<const ObjectSpan> objects, uint32_t skip_first_n_tokens) const;
  // Runs fn(layer) for every layer, on the pool when `bytes` is large enough.
  void ForEachLayer(uint64_t bytes, const std::function<void(size_t)>& fn) const;

  const std::string shm_path_;
  uint8_t* const base_;
  const uint64_t mapped_size_;
  std::vector<uint8_t*> layers_;  // base_ + layer_offsets[l]
  CopyPool* const pool_;
  const uint64_t min_parallel_bytes_;
  const uint64_t stream_min_bytes_;
};

}  // namespace kvtier::transfer
