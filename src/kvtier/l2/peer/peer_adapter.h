// PeerAdapter: a read-only L2 tier made of the other kvtier servers of a cluster (peer fetch).
//
// A lookup asks the cluster controller (FIND_KV, one per key, pipelined over one DEALER to its
// request ROUTER, leaving this server's own instance out) which peer holds each key and
// remembers the peer's address; a load fetches the keys from that peer's server endpoint with
// READ_OBJECTS (the peer answers from its L1 only) and copies them into the buffers. Nothing is
// stored: a store fails with kNotSupported (the data stays in L1), Delete reports every key as
// absent, ListKeys is kNotSupported.
//
// Lookup "locks" cannot pin a peer's object: a key found at lookup may be gone at load time,
// which fails that key (never garbage: an object whose size differs from its buffer fails).
// A dead or slow controller or peer is a miss after its timeout, never an error of the server;
// each is counted (controller_errors, peer_errors).
//
// One worker thread runs tasks in submission order and owns every socket. Cancel returns true
// for a task it has not started.
//
// Config (JsonConfig section "peer adapter '<name>'"; unknown keys are errors):
//   {"type": "peer", "controller": "tcp://10.0.0.2:9100", "instance_id": "server-a",
//    "controller_timeout": "500ms", "peer_timeout": "2s"}
//   controller          required: the controller's request endpoint
//   instance_id         required: this server's instance id (excluded from the answers)
//   controller_timeout  one lookup's round trip; default 500ms
//   peer_timeout        one READ_OBJECTS round trip; default 2s
//   max_peers           peer connections kept open; default 16
//   max_read_bytes      object bytes per READ_OBJECTS; default 256MiB, at most 1GiB
#pragma once

#include <atomic>
#include <cstdint>
#include <deque>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include <absl/container/flat_hash_map.h>
#include <nlohmann/json_fwd.hpp>

#include "kvtier/common/clock.h"
#include "kvtier/common/mutex.h"
#include "kvtier/common/result.h"
#include "kvtier/l2/adapter.h"

namespace zmq {
class context_t;
}

namespace kvtier::l2 {

struct PeerAdapterOptions {
  std::string controller;   // the controller's request endpoint
  std::string instance_id;  // this server's, excluded from lookups
  Duration controller_timeout = std::chrono::milliseconds(500);
  Duration peer_timeout = std::chrono::seconds(2);
  size_t max_peers = 16;
  // Object bytes asked of a peer in one READ_OBJECTS (a server sends at most 1 GiB per reply);
  // also what this side holds in received frames at once.
  uint64_t max_read_bytes = 256ull << 20;

  static Result<PeerAdapterOptions> FromJson(const nlohmann::json& config, const std::string& name);
};

struct PeerAdapterStats {
  uint64_t controller_errors = 0;  // lookups the controller did not answer (in time, or at all)
  uint64_t peer_errors = 0;        // READ_OBJECTS a peer did not answer, or answered wrongly
  uint64_t fetched_keys = 0, fetched_bytes = 0;
};

class PeerAdapter final : public L2Adapter {
 public:
  static Result<std::unique_ptr<PeerAdapter>> Create(PeerAdapterOptions options, std::string name);
  ~PeerAdapter() override;

  PeerAdapterStats stats() const;

 protected:
  void DoSubmitStore(TaskId task, std::span<const ObjectKey> keys,
                     std::span<const std::span<const uint8_t>> objects) override;
  void DoSubmitLookupAndLock(TaskId task, std::span<const ObjectKey> keys) override;
  void DoUnlock(std::span<const ObjectKey> keys) override;
  void DoSubmitLoad(TaskId task, std::span<const ObjectKey> keys,
                    std::span<const std::span<uint8_t>> buffers) override;
  bool DoCancel(TaskId task) override;
  Result<Bitmap> DoDelete(std::span<const ObjectKey> keys, bool force) override;
  void DoClose() override;
  bool DoHealthy() const override { return true; }  // a missing peer is a miss, not ill health
  void DoStatusJson(nlohmann::json* out) const override;

 private:
  enum class Kind : uint8_t { kLookup, kLoad };
  struct Task {
    TaskId id = 0;
    Kind kind = Kind::kLookup;
    std::vector<ObjectKey> keys;
    std::vector<std::span<uint8_t>> buffers;  // loads
  };
  struct Sockets;  // the worker's ZMQ sockets (worker thread only)

  PeerAdapter(PeerAdapterOptions options, std::string name);
  void Enqueue(Task task);
  void WorkerLoop();
  void RunLookup(Sockets& sockets, const Task& task);
  void RunLoad(Sockets& sockets, const Task& task);
  // The peer address holding each key ("" = none), from the controller.
  std::vector<std::string> FindHolders(Sockets& sockets, std::span<const ObjectKey> keys);
  // Fetches keys[i] into buffers[i] from the peer at `address`; sets `loaded` bits (indices
  // into the task) of the keys copied. Returns the bytes copied.
  uint64_t FetchFrom(Sockets& sockets, const std::string& address, std::span<const size_t> indices,
                     const Task& task, Bitmap* loaded);

  const PeerAdapterOptions options_;
  std::unique_ptr<zmq::context_t> context_;

  // Lock order: mu_, then the base class's lock (never held across a hook).
  mutable Mutex mu_;
  CondVar cv_;
  std::deque<Task> queue_ KVT_GUARDED_BY(mu_);
  TaskId running_ KVT_GUARDED_BY(mu_) = 0;
  bool stopping_ KVT_GUARDED_BY(mu_) = false;
  // Where each looked-up key was found, with its lookup count (released by Unlock).
  struct Holder {
    std::string address;
    uint32_t locks = 0;
  };
  absl::flat_hash_map<ObjectKey, Holder, keys::ObjectKeyHash> holders_ KVT_GUARDED_BY(mu_);

  std::atomic<uint64_t> controller_errors_{0}, peer_errors_{0};
  std::atomic<uint64_t> fetched_keys_{0}, fetched_bytes_{0};
  std::atomic<uint64_t> next_request_id_{1};
  std::thread worker_;
};

// The factory's maker for "peer".
Result<std::unique_ptr<L2Adapter>> MakePeerAdapter(const nlohmann::json& config,
                                                   const std::string& name);

}  // namespace kvtier::l2
