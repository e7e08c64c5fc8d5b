#include "kvtier/transfer/transfer_backend.h"

#include <algorithm>
#include <vector>

#include <fmt/format.h>

#include "kvtier/common/result.h"

namespace kvtier::transfer {

template <typename Span>
Status TransferBackend::Validate(const char* op, std::span<const uint32_t> block_ids,
                                 std::span<const Span> objects) const {
  const uint64_t bpc = geometry_.blocks_per_chunk;
  const uint64_t needed = objects.size() * bpc;
  if (block_ids.size() < needed) {
    return Status::InvalidArgument(
        fmt::format("{}: {} objects of {} blocks need {} block ids; got {}", op, objects.size(),
                    bpc, needed, block_ids.size()));
  }
  for (uint64_t j = 0; j < needed; ++j) {
    if (block_ids[j] >= geometry_.num_blocks) {
      return Status::OutOfRange(
          fmt::format("{}: block id {} (index {}, object {}) is out of range: num_blocks is {}", op,
                      block_ids[j], j, j / bpc, geometry_.num_blocks));
    }
  }
  for (size_t i = 0; i < objects.size(); ++i) {
    if (objects[i].size() != geometry_.object_size) {
      return Status::InvalidArgument(fmt::format("{}: object {} is {} bytes; object_size is {}", op,
                                                 i, objects[i].size(), geometry_.object_size));
    }
  }
  return Status::OK();
}

Status TransferBackend::CheckDistinctWrites(std::span<const uint32_t> block_ids,
                                            uint32_t skip_first_n_tokens) const {
  // Blocks wholly inside the skipped prefix are not written, so they may repeat.
  const size_t first = skip_first_n_tokens / geometry_.block_size;
  std::vector<uint32_t> sorted(block_ids.begin() + static_cast<std::ptrdiff_t>(first),
                               block_ids.end());
  std::sort(sorted.begin(), sorted.end());
  auto twice = std::adjacent_find(sorted.begin(), sorted.end());
  if (twice == sorted.end()) return Status::OK();
  std::vector<size_t> at;
  for (size_t j = first; j < block_ids.size() && at.size() < 2; ++j) {
    if (block_ids[j] == *twice) at.push_back(j);
  }
  return Status::InvalidArgument(
      fmt::format("scatter: block id {} would be written twice (indices {} and {}); the blocks "
                  "a call writes must be distinct",
                  *twice, at[0], at[1]));
}

Status TransferBackend::CheckOrder(const char* op, DeviceOrder*& order) const {
  if (order == nullptr) return Status::OK();
  order->done_event.reset();
  if (!on_device()) {
    if (order->wait_event.has_value()) {
      return Status::InvalidArgument(fmt::format(
          "{}: an event_ipc_handle was given, but this worker registered a host backend", op));
    }
    order = nullptr;  // host backends never see one
  }
  return Status::OK();
}

Status TransferBackend::Gather(std::span<const uint32_t> block_ids,
                               std::span<const std::span<uint8_t>> objects, DeviceOrder* order) {
  KVT_RETURN_IF_ERROR(CheckOrder("gather", order));
  KVT_RETURN_IF_ERROR(Validate("gather", block_ids, objects));
  if (objects.empty()) return Status::OK();
  return GatherImpl(block_ids.first(objects.size() * geometry_.blocks_per_chunk), objects, order);
}

Status TransferBackend::Scatter(std::span<const std::span<const uint8_t>> objects,
                                std::span<const uint32_t> block_ids, uint32_t skip_first_n_tokens,
                                DeviceOrder* order) {
  KVT_RETURN_IF_ERROR(CheckOrder("scatter", order));
  KVT_RETURN_IF_ERROR(Validate("scatter", block_ids, objects));
  const uint64_t tokens = uint64_t{objects.size()} * geometry_.chunk_size;
  if (skip_first_n_tokens > tokens) {
    return Status::OutOfRange(
        fmt::format("scatter: skip_first_n_tokens {} exceeds the {} tokens of {} objects",
                    skip_first_n_tokens, tokens, objects.size()));
  }
  if (skip_first_n_tokens == tokens) return Status::OK();  // nothing to write (or no objects)
  KVT_RETURN_IF_ERROR(CheckDistinctWrites(
      block_ids.first(objects.size() * geometry_.blocks_per_chunk), skip_first_n_tokens));
  return ScatterImpl(objects, block_ids.first(objects.size() * geometry_.blocks_per_chunk),
                     skip_first_n_tokens, order);
}

}  // namespace kvtier::transfer
