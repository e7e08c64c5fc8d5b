#include "kvtier/l2/peer/peer_adapter.h"

#include <algorithm>
#include <cstring>
#include <map>

#include <fmt/format.h>
#include <nlohmann/json.hpp>
#include <zmq.hpp>

#include "kvtier/common/json_config.h"
#include "kvtier/common/logging.h"
#include "kvtier/controller/codec.h"
#include "kvtier/protocol/codec.h"

namespace kvtier::l2 {
namespace {

using SteadyClock = std::chrono::steady_clock;

// A DEALER that never blocks Close (linger 0) and takes replies of any size. It queues what is
// sent before the connection is up; a timeout drops the socket and what it queued.
std::unique_ptr<zmq::socket_t> Dealer(zmq::context_t& context, const std::string& endpoint) {
  auto socket = std::make_unique<zmq::socket_t>(context, zmq::socket_type::dealer);
  socket->set(zmq::sockopt::linger, 0);
  socket->set(zmq::sockopt::sndhwm, 0);
  socket->connect(endpoint);
  return socket;
}

// Receives one multipart message if one arrives before `deadline`; empty on timeout.
std::vector<zmq::message_t> ReceiveUntil(zmq::socket_t& socket, SteadyClock::time_point deadline) {
  std::vector<zmq::message_t> parts;
  const auto left = deadline - SteadyClock::now();
  if (left <= SteadyClock::duration::zero()) return parts;
  zmq::pollitem_t item{socket.handle(), 0, ZMQ_POLLIN, 0};
  const auto ms = std::chrono::ceil<std::chrono::milliseconds>(left);
  if (zmq::poll(&item, 1, ms) <= 0 || (item.revents & ZMQ_POLLIN) == 0) return parts;
  bool more = true;
  while (more) {
    zmq::message_t part;
    if (!socket.recv(part, zmq::recv_flags::dontwait)) break;
    more = part.more();
    parts.push_back(std::move(part));
  }
  return parts;
}

std::span<const uint8_t> Bytes(const zmq::message_t& m) {
  return {static_cast<const uint8_t*>(m.data()), m.size()};
}

}  // namespace

// The worker's sockets: one DEALER to the controller, one per peer (at most max_peers).
struct PeerAdapter::Sockets {
  std::unique_ptr<zmq::socket_t> controller;
  std::map<std::string, std::unique_ptr<zmq::socket_t>> peers;
};

Result<PeerAdapterOptions> PeerAdapterOptions::FromJson(const nlohmann::json& config,
                                                        const std::string& name) {
  JsonConfig cfg(config, fmt::format("peer adapter '{}'", name));
  PeerAdapterOptions o;
  KVT_ASSIGN_OR_RETURN(o.controller, cfg.String("controller"));
  KVT_ASSIGN_OR_RETURN(o.instance_id, cfg.String("instance_id"));
  KVT_ASSIGN_OR_RETURN(o.controller_timeout,
                       cfg.Seconds("controller_timeout", std::chrono::milliseconds(500)));
  KVT_ASSIGN_OR_RETURN(o.peer_timeout, cfg.Seconds("peer_timeout", std::chrono::seconds(2)));
  KVT_ASSIGN_OR_RETURN(int64_t max_peers, cfg.Int("max_peers", 16, 1, 4096));
  KVT_ASSIGN_OR_RETURN(o.max_read_bytes, cfg.Size("max_read_bytes", 256ull << 20));
  o.max_peers = static_cast<size_t>(max_peers);
  KVT_RETURN_IF_ERROR(cfg.Finish());
  if (o.controller.empty()) {
    return MakeError(Status::InvalidArgument(fmt::format(
        "{}: 'controller' must be an endpoint such as tcp://host:port", cfg.section())));
  }
  if (o.instance_id.empty()) {
    return MakeError(Status::InvalidArgument(
        fmt::format("{}: 'instance_id' (this server's) must not be empty", cfg.section())));
  }
  if (o.max_read_bytes == 0 || o.max_read_bytes > (1ull << 30)) {
    return MakeError(Status::InvalidArgument(
        fmt::format("{}: 'max_read_bytes' must be in (0, 1GiB] (a server sends at most 1 GiB per "
                    "reply)",
                    cfg.section())));
  }
  if (o.controller_timeout <= Duration::zero() || o.peer_timeout <= Duration::zero()) {
    return MakeError(Status::InvalidArgument(fmt::format(
        "{}: 'controller_timeout' and 'peer_timeout' must be positive", cfg.section())));
  }
  return o;
}

PeerAdapter::PeerAdapter(PeerAdapterOptions options, std::string name)
    : L2Adapter("peer", std::move(name), /*capacity_bytes=*/0),
      options_(std::move(options)),
      context_(std::make_unique<zmq::context_t>(1)) {}

Result<std::unique_ptr<PeerAdapter>> PeerAdapter::Create(PeerAdapterOptions options,
                                                         std::string name) {
  if (options.controller.empty() || options.instance_id.empty()) {
    return MakeError(Status::InvalidArgument(
        fmt::format("peer adapter '{}': controller and instance_id are required", name)));
  }
  std::unique_ptr<PeerAdapter> adapter(new PeerAdapter(std::move(options), std::move(name)));
  KVT_RETURN_IF_ERROR(adapter->InitEvents());
  adapter->worker_ = std::thread([a = adapter.get()] { a->WorkerLoop(); });
  return adapter;
}

PeerAdapter::~PeerAdapter() { Close(); }

PeerAdapterStats PeerAdapter::stats() const {
  return PeerAdapterStats{controller_errors_.load(), peer_errors_.load(), fetched_keys_.load(),
                          fetched_bytes_.load()};
}

// ---- Submission (caller threads) ----

void PeerAdapter::Enqueue(Task task) {
  {
    MutexLock lock(&mu_);
    if (!stopping_) {
      queue_.push_back(std::move(task));
      cv_.NotifyAll();
      return;
    }
  }
  // Submitted while Close() ran: the base class failed it already; this completion is dropped.
  if (task.kind == Kind::kLookup) {
    CompleteLookup(task.id, Bitmap(task.keys.size()));
  } else {
    CompleteLoad(task.id, Bitmap(task.keys.size()), 0);
  }
}

void PeerAdapter::DoSubmitStore(TaskId task, std::span<const ObjectKey> keys,
                                std::span<const std::span<const uint8_t>> objects) {
  CompleteStore(task,
                Status::NotSupported(fmt::format(
                    "peer adapter '{}' is read-only: it fetches from other servers", name())),
                {}, {});
}

void PeerAdapter::DoSubmitLookupAndLock(TaskId task, std::span<const ObjectKey> keys) {
  Enqueue(Task{task, Kind::kLookup, {keys.begin(), keys.end()}, {}});
}

void PeerAdapter::DoUnlock(std::span<const ObjectKey> keys) {
  MutexLock lock(&mu_);
  for (const ObjectKey& key : keys) {
    auto it = holders_.find(key);
    if (it == holders_.end()) continue;
    if (--it->second.locks == 0) holders_.erase(it);
  }
}

void PeerAdapter::DoSubmitLoad(TaskId task, std::span<const ObjectKey> keys,
                               std::span<const std::span<uint8_t>> buffers) {
  Enqueue(Task{task, Kind::kLoad, {keys.begin(), keys.end()}, {buffers.begin(), buffers.end()}});
}

bool PeerAdapter::DoCancel(TaskId task) {
  MutexLock lock(&mu_);
  if (running_ == task) return false;
  auto it = std::find_if(queue_.begin(), queue_.end(), [&](const Task& t) { return t.id == task; });
  if (it != queue_.end()) queue_.erase(it);
  return true;
}

Result<Bitmap> PeerAdapter::DoDelete(std::span<const ObjectKey> keys, bool force) {
  return Bitmap(keys.size(), true);  // nothing is stored here
}

void PeerAdapter::DoClose() {
  {
    MutexLock lock(&mu_);
    stopping_ = true;
    queue_.clear();  // the base class fails what is in flight
    cv_.NotifyAll();
  }
  if (worker_.joinable()) worker_.join();
  context_.reset();  // the worker's sockets are closed (linger 0): returns at once
}

void PeerAdapter::DoStatusJson(nlohmann::json* out) const {
  const PeerAdapterStats s = stats();
  (*out)["controller"] = options_.controller;
  (*out)["instance_id"] = options_.instance_id;
  (*out)["controller_errors"] = s.controller_errors;
  (*out)["peer_errors"] = s.peer_errors;
  (*out)["fetched_keys"] = s.fetched_keys;
  (*out)["fetched_bytes"] = s.fetched_bytes;
}

// ---- Worker ----

void PeerAdapter::WorkerLoop() {
  Sockets sockets;
  while (true) {
    Task task;
    {
      MutexLock lock(&mu_);
      cv_.Wait(&mu_, [&]() KVT_REQUIRES(mu_) { return stopping_ || !queue_.empty(); });
      if (stopping_) break;
      task = std::move(queue_.front());
      queue_.pop_front();
      running_ = task.id;
    }
    try {
      if (task.kind == Kind::kLookup) {
        RunLookup(sockets, task);
      } else {
        RunLoad(sockets, task);
      }
    } catch (const zmq::error_t& e) {
      // A socket error is a miss of the whole task (the task may already be completed).
      KVT_LOG_WARN("peer adapter {}: {}", name(), e.what());
      sockets = Sockets{};
      if (task.kind == Kind::kLookup) {
        CompleteLookup(task.id, Bitmap(task.keys.size()));
      } else {
        CompleteLoad(task.id, Bitmap(task.keys.size()), 0);
      }
    }
    MutexLock lock(&mu_);
    running_ = 0;
  }
}

std::vector<std::string> PeerAdapter::FindHolders(Sockets& sockets,
                                                  std::span<const ObjectKey> keys) {
  std::vector<std::string> out(keys.size());
  if (keys.empty()) return out;
  if (!sockets.controller) sockets.controller = Dealer(*context_, options_.controller);
  zmq::socket_t& socket = *sockets.controller;
  absl::flat_hash_map<uint64_t, size_t> pending;
  for (size_t i = 0; i < keys.size(); ++i) {
    const uint64_t id = next_request_id_.fetch_add(1);
    controller::FindKvRequest request{controller::KeySpace::Of(keys[i]), keys[i].chunk_hash(),
                                      options_.instance_id};
    const std::vector<uint8_t> frame = controller::EncodeRequest(id, request);
    if (!socket.send(zmq::buffer(frame), zmq::send_flags::dontwait)) break;
    pending.emplace(id, i);
  }
  const auto deadline = SteadyClock::now() + options_.controller_timeout;
  while (!pending.empty()) {
    std::vector<zmq::message_t> parts = ReceiveUntil(socket, deadline);
    if (parts.empty()) break;
    Result<controller::Framed<controller::Reply>> reply =
        controller::DecodeReply(Bytes(parts.back()));
    if (!reply) continue;
    auto it = pending.find(reply->header.request_id);
    if (it == pending.end()) continue;  // a late reply to an abandoned lookup
    const size_t i = it->second;
    pending.erase(it);
    if (!controller::ReplyStatus(*reply, controller::MessageType::kFindKv).ok()) continue;
    for (const controller::Holder& h : std::get<controller::FindKvReply>(reply->body).holders) {
      if (!h.address.empty() && h.instance_id != options_.instance_id) {
        out[i] = h.address;
        break;
      }
    }
  }
  if (!pending.empty()) {
    controller_errors_.fetch_add(1, std::memory_order_relaxed);
    KVT_LOG_DEBUG("peer adapter {}: the controller at {} did not answer {} of {} lookups", name(),
                  options_.controller, pending.size(), keys.size());
    sockets.controller.reset();  // drops what is queued; reconnects next time
  }
  return out;
}

void PeerAdapter::RunLookup(Sockets& sockets, const Task& task) {
  const std::vector<std::string> where = FindHolders(sockets, task.keys);
  Bitmap found(task.keys.size());
  {
    MutexLock lock(&mu_);
    for (size_t i = 0; i < where.size(); ++i) {
      if (where[i].empty()) continue;
      found.Set(i);
      Holder& h = holders_[task.keys[i]];
      h.address = where[i];
      ++h.locks;
    }
  }
  CompleteLookup(task.id, std::move(found));
}

void PeerAdapter::RunLoad(Sockets& sockets, const Task& task) {
  std::vector<std::string> where(task.keys.size());
  std::vector<ObjectKey> unknown;
  std::vector<size_t> unknown_index;
  {
    MutexLock lock(&mu_);
    for (size_t i = 0; i < task.keys.size(); ++i) {
      auto it = holders_.find(task.keys[i]);
      if (it != holders_.end()) {
        where[i] = it->second.address;
      } else {
        unknown.push_back(task.keys[i]);
        unknown_index.push_back(i);
      }
    }
  }
  if (!unknown.empty()) {
    std::vector<std::string> found = FindHolders(sockets, unknown);
    for (size_t j = 0; j < found.size(); ++j) where[unknown_index[j]] = std::move(found[j]);
  }
  std::map<std::string, std::vector<size_t>> by_peer;
  for (size_t i = 0; i < where.size(); ++i) {
    if (!where[i].empty()) by_peer[where[i]].push_back(i);
  }
  Bitmap loaded(task.keys.size());
  uint64_t bytes = 0;
  // One READ_OBJECTS per kMaxReadObjectsKeys keys or max_read_bytes bytes (at least one key).
  for (const auto& [address, indices] : by_peer) {
    size_t at = 0;
    while (at < indices.size()) {
      size_t n = 0;
      uint64_t batch_bytes = 0;
      while (at + n < indices.size() && n < protocol::kMaxReadObjectsKeys &&
             (n == 0 ||
              batch_bytes + task.buffers[indices[at + n]].size() <= options_.max_read_bytes)) {
        batch_bytes += task.buffers[indices[at + n]].size();
        ++n;
      }
      bytes += FetchFrom(sockets, address, std::span(indices).subspan(at, n), task, &loaded);
      at += n;
    }
  }
  fetched_keys_.fetch_add(loaded.PopCount(), std::memory_order_relaxed);
  fetched_bytes_.fetch_add(bytes, std::memory_order_relaxed);
  CompleteLoad(task.id, std::move(loaded), bytes);
}

uint64_t PeerAdapter::FetchFrom(Sockets& sockets, const std::string& address,
                                std::span<const size_t> indices, const Task& task, Bitmap* loaded) {
  auto it = sockets.peers.find(address);
  if (it == sockets.peers.end()) {
    if (sockets.peers.size() >= options_.max_peers) sockets.peers.erase(sockets.peers.begin());
    it = sockets.peers.emplace(address, Dealer(*context_, address)).first;
  }
  zmq::socket_t& socket = *it->second;
  auto fail = [&](std::string_view why) {
    peer_errors_.fetch_add(1, std::memory_order_relaxed);
    KVT_LOG_DEBUG("peer adapter {}: READ_OBJECTS from {} failed: {}", name(), address, why);
    sockets.peers.erase(address);  // drops what is queued; reconnects next time
    return uint64_t{0};
  };

  protocol::ReadObjectsRequest request;
  request.keys.reserve(indices.size());
  uint64_t want = 0;
  for (size_t i : indices) {
    request.keys.push_back(task.keys[i].ToString());
    want += task.buffers[i].size();
  }
  request.max_bytes = std::max<uint64_t>(want, 1);
  const uint64_t id = next_request_id_.fetch_add(1);
  const protocol::Frames frames = protocol::EncodeRequest(id, request);
  if (!socket.send(zmq::buffer(frames.header),
                   zmq::send_flags::sndmore | zmq::send_flags::dontwait))
    return fail("not connected");
  socket.send(zmq::buffer(frames.payload), zmq::send_flags::none);

  const auto deadline = SteadyClock::now() + options_.peer_timeout;
  while (true) {
    std::vector<zmq::message_t> parts = ReceiveUntil(socket, deadline);
    if (parts.empty()) return fail("timed out");
    if (parts.size() < 2) continue;
    Result<protocol::Header> header = protocol::DecodeHeader(Bytes(parts[0]));
    if (!header || header->request_id != id) continue;  // a late reply to an abandoned request
    Result<protocol::Reply> reply = protocol::DecodeReply(*header, Bytes(parts[1]));
    if (!reply) return fail(reply.error().ToString());
    if (const auto* error = std::get_if<protocol::ErrorReply>(&*reply)) {
      return fail(protocol::FromErrorReply(*error).ToString());
    }
    const auto* read = std::get_if<protocol::ReadObjectsReply>(&*reply);
    if (read == nullptr || read->found.size() != indices.size()) return fail("malformed reply");
    const size_t found =
        static_cast<size_t>(std::count(read->found.begin(), read->found.end(), true));
    if (parts.size() != 2 + found) {
      return fail(fmt::format("{} object frames for {} objects found", parts.size() - 2, found));
    }
    uint64_t bytes = 0;
    size_t frame = 2;
    for (size_t j = 0; j < indices.size(); ++j) {
      if (!read->found[j]) continue;
      const zmq::message_t& object = parts[frame++];
      const std::span<uint8_t> buffer = task.buffers[indices[j]];
      if (object.size() != buffer.size()) continue;  // not the object the buffer expects
      std::memcpy(buffer.data(), object.data(), buffer.size());
      loaded->Set(indices[j]);
      bytes += buffer.size();
    }
    return bytes;
  }
}

// ---- Factory ----

Result<std::unique_ptr<L2Adapter>> MakePeerAdapter(const nlohmann::json& config,
                                                   const std::string& name) {
  KVT_ASSIGN_OR_RETURN(PeerAdapterOptions options, PeerAdapterOptions::FromJson(config, name));
  KVT_ASSIGN_OR_RETURN(std::unique_ptr<PeerAdapter> adapter,
                       PeerAdapter::Create(std::move(options), name));
  return std::unique_ptr<L2Adapter>(std::move(adapter));
}

}  // namespace kvtier::l2
