#include "kvtier/controller/controller_options.h"

#include <algorithm>
#include <limits>

#include <fmt/chrono.h>
#include <fmt/format.h>

#include "kvtier/keys/token_hasher.h"

namespace kvtier::controller {
namespace {

using std::chrono::milliseconds;

constexpr Duration kMinTick = milliseconds(10);
constexpr Duration kMaxTick = milliseconds(1000);
// Intervals travel as uint32 milliseconds.
constexpr Duration kMaxWireDuration = milliseconds(std::numeric_limits<uint32_t>::max() - 1);

Status Bad(std::string what) { return Status::InvalidArgument("controller: " + std::move(what)); }

}  // namespace

Duration ControllerOptions::EffectiveTickInterval() const {
  if (tick_interval > Duration::zero()) return tick_interval;
  return std::clamp<Duration>(heartbeat_interval / 4, kMinTick, kMaxTick);
}

Status ValidateControllerOptions(const ControllerOptions& o) {
  for (const auto& [name, endpoint] :
       {std::pair<const char*, const std::string&>{"request endpoint", o.request_endpoint},
        {"events endpoint", o.events_endpoint},
        {"heartbeat endpoint", o.heartbeat_endpoint}}) {
    if (endpoint.empty()) return Bad(fmt::format("the {} is empty", name));
  }
  if (o.advertised_heartbeat_endpoint.size() > kMaxAddressLength) {
    return Bad(
        fmt::format("the advertised heartbeat endpoint has more than {} bytes", kMaxAddressLength));
  }
  for (char c : o.advertised_heartbeat_endpoint) {
    if (c < 0x21 || c > 0x7e) {
      return Bad("the advertised heartbeat endpoint must be printable ASCII without spaces");
    }
  }
  if (o.heartbeat_interval < milliseconds(1) || o.heartbeat_interval > kMaxWireDuration) {
    return Bad(fmt::format("heartbeat interval must be in [1ms, {}], got {}",
                           std::chrono::duration_cast<milliseconds>(kMaxWireDuration),
                           std::chrono::duration_cast<milliseconds>(o.heartbeat_interval)));
  }
  if (o.worker_timeout <= o.heartbeat_interval || o.worker_timeout > kMaxWireDuration) {
    return Bad(fmt::format(
        "worker timeout ({}) must exceed the heartbeat interval ({}); 3 intervals or more is usual",
        std::chrono::duration_cast<milliseconds>(o.worker_timeout),
        std::chrono::duration_cast<milliseconds>(o.heartbeat_interval)));
  }
  if (o.sync_timeout < milliseconds(1)) return Bad("sync timeout must be at least 1ms");
  if (o.tick_interval < Duration::zero()) return Bad("tick interval must not be negative");
  if (!keys::ParseHashAlgorithm(o.hash_algorithm)) {
    return Bad(fmt::format("unknown hash algorithm '{}' (sha256 or xxh3_128)", o.hash_algorithm));
  }
  if (o.chunk_size == 0 || o.chunk_size > kMaxChunkSize) {
    return Bad(fmt::format("chunk size must be in [1, {}], got {}", kMaxChunkSize, o.chunk_size));
  }
  if (o.max_workers == 0) return Bad("max workers must be at least 1");
  if (o.max_keys_per_message == 0 || o.max_keys_per_message > kMaxKeysPerMessage) {
    return Bad(fmt::format("max keys per message must be in [1, {}], got {}", kMaxKeysPerMessage,
                           o.max_keys_per_message));
  }
  if (o.admin_enabled && o.admin_threads == 0) return Bad("admin threads must be at least 1");
  if (o.clock == nullptr) return Bad("clock is null");
  return Status::OK();
}

}  // namespace kvtier::controller
