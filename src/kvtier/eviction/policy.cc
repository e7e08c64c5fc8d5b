#include "kvtier/eviction/policy.h"

#include <string>

#include <fmt/format.h>

#include "kvtier/eviction/arc_policy.h"
#include "kvtier/eviction/lru_policy.h"
#include "kvtier/eviction/noop_policy.h"
#include "kvtier/eviction/s3fifo_policy.h"

namespace kvtier::eviction {

Result<std::unique_ptr<EvictionPolicy>> MakeEvictionPolicy(std::string_view name) {
  std::string lower(name);
  for (char& c : lower) {
    if (c >= 'A' && c <= 'Z') c = static_cast<char>(c - 'A' + 'a');
  }
  if (lower == "lru") return std::make_unique<LruPolicy>();
  if (lower == "s3fifo" || lower == "s3-fifo") return std::make_unique<S3FifoPolicy>();
  if (lower == "arc") return std::make_unique<ArcPolicy>();
  if (lower == "noop") return std::make_unique<NoopPolicy>();
  return MakeError(Status::InvalidArgument(fmt::format(
      "unknown eviction policy '{}': expected one of lru, s3fifo (or s3-fifo), arc, noop", name)));
}

}  // namespace kvtier::eviction
