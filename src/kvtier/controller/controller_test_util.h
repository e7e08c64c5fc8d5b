// Helpers of the controller process's tests: messages of a fake worker.
#pragma once

#include <cstdint>
#include <string>
#include <variant>
#include <vector>

#include <gtest/gtest.h>

#include "kvtier/controller/codec_test_util.h"
#include "kvtier/controller/messages.h"

namespace kvtier::controller::testing {

inline constexpr char kModel[] = "meta-llama/Llama-3.1-8B";

inline RegisterRequest Registration(const std::string& instance, uint32_t worker = 0,
                                    const std::string& address = "",
                                    std::vector<std::string> locations = {"L1"}) {
  return RegisterRequest{instance,      worker,   address, std::move(locations),
                         "kvtier test", "sha256", 256};
}

// Hashes [first, first + n) of one key space.
inline std::vector<KeyGroup> Keys(uint32_t first, size_t n, uint16_t world_size = 1,
                                  uint16_t rank = 0) {
  return {KeyGroup{KeySpace{kModel, "", world_size, rank, 0}, MakeHashes(first, n)}};
}

inline KvEvent Admit(const Origin& o, uint64_t seq, std::vector<KeyGroup> groups,
                     const std::string& location = "L1") {
  return KvEvent{KvOp::kAdmit, o, location, seq, std::move(groups)};
}

inline KvEvent Evict(const Origin& o, uint64_t seq, std::vector<KeyGroup> groups,
                     const std::string& location = "L1") {
  return KvEvent{KvOp::kEvict, o, location, seq, std::move(groups)};
}

inline LookupRequest Lookup(uint32_t first, size_t n, std::optional<uint16_t> rank = 0,
                            uint16_t world_size = 1, const std::string& exclude = "") {
  return LookupRequest{kModel, "", world_size, rank, 0, MakeHashes(first, n), exclude};
}

inline HeartbeatRequest Heartbeat(const Origin& o, std::vector<LocationReport> reports = {}) {
  return HeartbeatRequest{o, std::move(reports)};
}

// The reply's alternative T, failing the test (and returning T{}) when it is another.
template <typename T>
T As(const Reply& reply) {
  if (const auto* error = std::get_if<ErrorReply>(&reply)) {
    ADD_FAILURE() << "error reply " << static_cast<int>(error->code) << ": " << error->message;
    return T{};
  }
  if (!std::holds_alternative<T>(reply)) {
    ADD_FAILURE() << "reply of another type (index " << reply.index() << ")";
    return T{};
  }
  return std::get<T>(reply);
}

inline ErrorReply AsError(const Reply& reply) {
  if (!std::holds_alternative<ErrorReply>(reply)) {
    ADD_FAILURE() << "expected an error reply, got index " << reply.index();
    return ErrorReply{};
  }
  return std::get<ErrorReply>(reply);
}

// The full_sync commands of a heartbeat reply, as "location:reason".
inline std::vector<std::string> FullSyncs(const HeartbeatReply& reply) {
  std::vector<std::string> out;
  for (const Command& c : reply.commands) {
    if (c.kind == CommandKind::kFullSync) out.push_back(c.location + ":" + c.reason);
  }
  return out;
}

}  // namespace kvtier::controller::testing
