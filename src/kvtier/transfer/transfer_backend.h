// TransferBackend: moves whole chunks between an engine worker's paged KV cache and chunk
// objects (plain byte buffers, e.g. L1 objects). One implementation per data path: host memory
// (HostBackend, a shared-memory segment) today, GPU memory next.
//
// Chunk object layout (see kv_layout.h): [planes, num_layers, chunk_size, num_kv_heads *
// head_dim] elements of the KV dtype; planes = 2 (K of every layer, then V of every layer), or
// 1 for MLA. Object i of a call holds the tokens of blocks
// block_ids[i * blocks_per_chunk .. (i + 1) * blocks_per_chunk), in that order.
//
// Gather and Scatter validate their arguments before copying anything (fail closed); the checks
// live here (non-virtual), so every implementation gets the same ones, and the *Impl hooks see
// only valid arguments.
//
// GPU ordering (device backends only): DeviceOrder carries the engine's interprocess event, which
// the copies wait for, and returns the backend's own event, which completes when they are done.
// A call returns only after its copies completed, so callers may publish or release the objects
// at once; the returned event lets the engine order its own GPU work without a host round trip,
// and on_enqueued lets the caller hand that event out before the copies complete.
//
// Thread safety: a backend is immutable after creation. Concurrent calls are safe as long as no
// block or object is written by one call while another reads or writes it (concurrent Gathers
// of the same blocks are fine; a Scatter into blocks another call touches is a data race on the
// engine's memory). The server runs one engine worker's transfers of one kind (STORE, RETRIEVE) on
// one thread, in order; a STORE and a RETRIEVE of one worker may run at once.
#pragma once

#include <cstdint>
#include <functional>
#include <optional>
#include <span>

#include "kvtier/common/status.h"
#include "kvtier/transfer/kv_layout.h"

namespace kvtier::transfer {

struct DeviceOrder {
  std::optional<protocol::CudaIpcHandle> wait_event;  // in: the engine's event, if any
  std::optional<protocol::CudaIpcHandle> done_event;  // out: set by device backends
  // Called by a device backend, on the calling thread, once every copy of the call is enqueued
  // and done_event is set, before it waits for them: the server answers the engine then, so the
  // reply's trip overlaps the copies. Not called when the call fails before that point.
  std::function<void()> on_enqueued;
};

class TransferBackend {
 public:
  virtual ~TransferBackend() = default;
  TransferBackend(const TransferBackend&) = delete;
  TransferBackend& operator=(const TransferBackend&) = delete;

  const KvGeometry& geometry() const { return geometry_; }
  // Bytes of one chunk object.
  uint64_t object_size() const { return geometry_.object_size; }
  uint32_t chunk_size() const { return geometry_.chunk_size; }
  uint32_t blocks_per_chunk() const { return geometry_.blocks_per_chunk; }
  // True for backends that move GPU memory and take DeviceOrder events.
  virtual bool on_device() const { return false; }

  // Copies chunks from the engine's cache into `objects` (object i <- the blocks of chunk i).
  // Needs at least objects.size() * blocks_per_chunk() block ids (the ones after are ignored),
  // every used id < num_blocks, and every object exactly object_size() bytes. On an error
  // nothing is copied. `order` (may be null) is for device backends; a wait event given to a
  // host backend is an error.
  [[nodiscard]] Status Gather(std::span<const uint32_t> block_ids,
                              std::span<const std::span<uint8_t>> objects,
                              DeviceOrder* order = nullptr);

  // The reverse: writes `objects` into the engine's blocks. The first `skip_first_n_tokens`
  // tokens of the range (of objects[0], then objects[1], ...) are not written: the engine
  // already holds them and may be reading them. skip_first_n_tokens may be at most the range's
  // objects.size() * chunk_size() tokens. Same checks as Gather, and the blocks written must be
  // distinct (backends copy chunks concurrently; blocks wholly inside the skipped prefix may
  // repeat); on an error nothing is written.
  [[nodiscard]] Status Scatter(std::span<const std::span<const uint8_t>> objects,
                               std::span<const uint32_t> block_ids, uint32_t skip_first_n_tokens,
                               DeviceOrder* order = nullptr);

 protected:
  explicit TransferBackend(const KvGeometry& geometry) : geometry_(geometry) {}

 private:
  // Arguments are valid: block_ids.size() == objects.size() * blocks_per_chunk() exactly, ids
  // in range, sizes exact, objects non-empty, skip_first_n_tokens < the range's tokens; `order`
  // is null for host backends.
  virtual Status GatherImpl(std::span<const uint32_t> block_ids,
                            std::span<const std::span<uint8_t>> objects, DeviceOrder* order) = 0;
  virtual Status ScatterImpl(std::span<const std::span<const uint8_t>> objects,
                             std::span<const uint32_t> block_ids, uint32_t skip_first_n_tokens,
                             DeviceOrder* order) = 0;
  Status CheckOrder(const char* op, DeviceOrder*& order) const;
  // kInvalidArgument when a block the scatter writes appears twice.
  Status CheckDistinctWrites(std::span<const uint32_t> block_ids,
                             uint32_t skip_first_n_tokens) const;

  template <typename Span>
  Status Validate(const char* op, std::span<const uint32_t> block_ids,
                  std::span<const Span> objects) const;

  const KvGeometry geometry_;
};

}  // namespace kvtier::transfer
