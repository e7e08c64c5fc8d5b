// Sample messages of every type, for the codec's tests and its fuzzer seed corpus.
#pragma once

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "kvtier/controller/codec.h"

namespace kvtier::controller::testing {

// A deterministic hash: byte i = seed * 31 + i.
inline keys::ChunkHash MakeHash(uint32_t seed) {
  keys::ChunkHash h;
  for (size_t i = 0; i < h.bytes.size(); ++i)
    h.bytes[i] = static_cast<uint8_t>(size_t{seed} * 31 + i);
  return h;
}

inline std::vector<keys::ChunkHash> MakeHashes(uint32_t first, size_t n) {
  std::vector<keys::ChunkHash> out;
  for (size_t i = 0; i < n; ++i) out.push_back(MakeHash(first + static_cast<uint32_t>(i)));
  return out;
}

inline Origin SampleOrigin() { return Origin{"node-a.example:5555", 3, 0x1234567890abcdefULL}; }

inline std::vector<KeyGroup> SampleGroups() {
  return {
      KeyGroup{KeySpace{"meta-llama/Llama-3.1-8B", "", 2, 0, 0}, MakeHashes(1, 3)},
      KeyGroup{KeySpace{"meta-llama/Llama-3.1-8B", "", 2, 1, 0}, MakeHashes(1, 3)},
      KeyGroup{KeySpace{"Qwen/Qwen3-32B \xe2\x9c\x93", "tenant-7", 1, 0, 2}, MakeHashes(100, 1)},
      KeyGroup{KeySpace{"empty-group", "", 1, 0, 0}, {}},
  };
}

// One sample of every event type, named by type.
inline std::vector<std::pair<std::string, Event>> SampleEvents() {
  return {
      {"ADMIT", KvEvent{KvOp::kAdmit, SampleOrigin(), "L1", 42, SampleGroups()}},
      {"EVICT", KvEvent{KvOp::kEvict,
                        SampleOrigin(),
                        "fs",
                        7,
                        {KeyGroup{KeySpace{"m", "", 1, 0, 0}, MakeHashes(9, 2)}}}},
      {"FULL_SYNC_START", FullSyncStart{SampleOrigin(), "redis", 5, 41, 3, 130000}},
      {"FULL_SYNC_BATCH", FullSyncBatch{SampleOrigin(), "redis", 5, 2, SampleGroups()}},
      {"FULL_SYNC_END", FullSyncEnd{SampleOrigin(), "redis", 5, 130000}},
  };
}

// One sample of every request type (in type order), named by type.
inline std::vector<std::pair<std::string, Request>> SampleRequests() {
  return {
      {"REGISTER", RegisterRequest{"node-a.example:5555",
                                   3,
                                   "tcp://10.0.0.7:5600",
                                   {"L1", "fs", "redis"},
                                   "kvtier 0.4.0",
                                   "sha256",
                                   256}},
      {"DEREGISTER", DeregisterRequest{SampleOrigin()}},
      {"HEARTBEAT", HeartbeatRequest{SampleOrigin(), {{"L1", 42, 1000}, {"fs", 0, 0}}}},
      {"FULL_SYNC_STATUS", FullSyncStatusRequest{SampleOrigin(), "redis", 5}},
      {"LOOKUP", LookupRequest{"meta-llama/Llama-3.1-8B", "tenant-7", 4, std::nullopt, 1,
                               MakeHashes(1, 5), "node-b"}},
      {"FIND_KV", FindKvRequest{KeySpace{"m", "", 2, 1, 0}, MakeHash(77), ""}},
      {"WORKERS", WorkersRequest{"node-a.example:5555"}},
      {"CLEAR", ClearRequest{"node-a.example:5555", 3, "fs"}},
      {"PING", PingRequest{}},
  };
}

// One success reply per request type (in type order), named "<TYPE>_REPLY", then an error.
inline std::vector<std::pair<std::string, Reply>> SampleReplies() {
  WorkerInfo worker{"node-a.example:5555",
                    3,
                    "tcp://10.0.0.7:5600",
                    "kvtier 0.4.0",
                    1700000000123,
                    1700000042000,
                    {{"L1", 1000, 42, SyncState::kComplete}, {"fs", 0, 0, SyncState::kMissing}}};
  return {
      {"REGISTER_REPLY", RegisterReply{0xfeedULL, 0xbeefULL, 5000, 30000, "tcp://ctl:7102", 4096}},
      {"DEREGISTER_REPLY", DeregisterReply{true}},
      {"HEARTBEAT_REPLY",
       HeartbeatReply{0xbeefULL,
                      5000,
                      {Command{CommandKind::kFullSync, "", "fs", "seq_gap"},
                       Command{CommandKind::kReregister, "", "", "unknown_registration"},
                       Command{CommandKind::kUnknown, "compact", "", "from the future"}}}},
      {"FULL_SYNC_STATUS_REPLY", FullSyncStatusReply{SyncState::kMissing, 10, 7, {1, 4, 9}, ""}},
      {"LOOKUP_REPLY", LookupReply{{{"node-a", "tcp://10.0.0.7:5600", 5}, {"node-c", "", 2}}}},
      {"FIND_KV_REPLY", FindKvReply{{{"node-a", 0, "L1", "tcp://10.0.0.7:5600"},
                                     {"node-a", 1, "fs", "tcp://10.0.0.7:5600"}}}},
      {"WORKERS_REPLY", WorkersReply{{worker}, false}},
      {"CLEAR_REPLY", ClearReply{1000}},
      {"PING_REPLY", PingReply{0xbeefULL}},
      {"ERROR_REPLY",
       ErrorReply{StatusCode::kNotFound, "worker node-a/3 is not registered", false}},
  };
}

}  // namespace kvtier::controller::testing
