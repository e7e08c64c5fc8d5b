#include "kvtier/controller/msgpack_io.h"

#include <cstring>
#include <limits>
#include <utility>

#include <fmt/format.h>

#include "kvtier/common/check.h"

namespace kvtier::controller::internal {

void Writer::Hashes(std::span<const keys::ChunkHash> hashes) {
  static_assert(sizeof(keys::ChunkHash) == keys::kChunkHashBytes);
  Bin(hashes.data(), hashes.size() * keys::kChunkHashBytes);
}

Status ReadModel(const MapReader& m, std::string_view name, std::string* out) {
  std::string model;
  KVT_RETURN_IF_ERROR(m.Text(name, Need::kRequired, &model, 1, keys::kMaxModelNameLength));
  if (model.find_first_of(std::string_view("@\0", 2)) != std::string::npos) {
    return m.Error(name, "must not contain '@' or NUL");
  }
  *out = std::move(model);
  return Status::OK();
}

Status ReadCacheSalt(const MapReader& m, std::string_view name, std::string* out) {
  std::string salt;
  KVT_RETURN_IF_ERROR(m.Text(name, Need::kOptional, &salt, 0, keys::kMaxCacheSaltLength));
  if (salt.find_first_of(std::string_view("@/\\\0", 4)) != std::string::npos) {
    return m.Error(name, "must not contain '@', '/', '\\' or NUL");
  }
  *out = std::move(salt);
  return Status::OK();
}

Status ReadHashes(const MapReader& m, std::string_view name, size_t* budget,
                  std::vector<keys::ChunkHash>* out) {
  KVT_ASSIGN_OR_RETURN(const msgpack::object* o, m.Required(name));
  if (o->type != msgpack::type::BIN) {
    return m.Error(name, fmt::format("must be bin (32-byte chunk hashes), got {}", TypeName(*o)));
  }
  const msgpack::object_bin& bin = o->via.bin;
  if (bin.size % keys::kChunkHashBytes != 0) {
    return m.Error(
        name, fmt::format("is {} bytes, not a multiple of {}", bin.size, keys::kChunkHashBytes));
  }
  const size_t count = bin.size / keys::kChunkHashBytes;
  if (count > *budget) {
    return m.Error(name, fmt::format("holds {} hashes, more than the {} left of the message's "
                                     "limit of {} keys",
                                     count, *budget, kMaxKeysPerMessage));
  }
  *budget -= count;
  out->resize(count);
  if (count > 0) std::memcpy(out->data(), bin.ptr, bin.size);
  return Status::OK();
}

}  // namespace kvtier::controller::internal
