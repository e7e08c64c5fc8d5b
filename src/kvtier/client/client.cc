#include "kvtier/client.h"

#include <algorithm>
#include <atomic>
#include <climits>
#include <cstring>
#include <deque>
#include <exception>
#include <limits>
#include <map>
#include <span>
#include <system_error>
#include <thread>
#include <type_traits>
#include <unordered_map>
#include <utility>
#include <vector>

#include <fmt/format.h>
#include <zmq.hpp>

#include "kvtier/common/check.h"
#include "kvtier/common/logging.h"
#include "kvtier/common/mutex.h"
#include "kvtier/common/thread_annotations.h"
#include "kvtier/common/units.h"
#include "kvtier/protocol/codec.h"
#include "kvtier/sync/event_fd.h"

namespace kvtier {
namespace {

using protocol::Opcode;
using protocol::Reply;
using protocol::Request;

// The socket refuses bigger messages (a hostile or broken peer cannot make us allocate more);
// the largest legitimate reply is an error reply with a 4 KiB message.
constexpr int64_t kMaxReplyBytes = 1 << 20;
// Replies read per wake-up before the loop sends queued requests and expires deadlines again.
constexpr int kReceiveBatch = 256;
// Frames of a reply on a DEALER (the ROUTER strips the identity): header, payload.
constexpr size_t kReplyFrames = 2;

std::span<const uint8_t> Bytes(const zmq::message_t& m) {
  return {static_cast<const uint8_t*>(m.data()), m.size()};
}

// The request id of a header that DecodeHeader refused (say, another protocol version), when
// the frame is at least shaped like one.
std::optional<uint64_t> RawRequestId(const zmq::message_t& frame) {
  const std::span<const uint8_t> b = Bytes(frame);
  if (b.size() != protocol::kHeaderSize || b[0] != protocol::kMagic0 || b[1] != protocol::kMagic1) {
    return std::nullopt;
  }
  uint64_t id = 0;
  for (int i = 0; i < 8; ++i) id |= static_cast<uint64_t>(b[8 + i]) << (8 * i);
  return id;
}

int ClampToInt(size_t v) { return static_cast<int>(std::min<size_t>(v, INT_MAX)); }

// Completes one request's future with the reply (or error) the I/O thread got for it.
class Completion {
 public:
  virtual ~Completion() = default;
  virtual void Complete(Result<Reply> result) = 0;
};

template <typename T>
class TypedCompletion final : public Completion {
 public:
  MessagingFuture<T> future() const { return promise_.GetFuture(); }

  void Complete(Result<Reply> result) override {
    if (!result) {
      promise_.SetError(std::move(result).error());
      return;
    }
    if constexpr (std::is_same_v<T, Reply>) {
      promise_.SetValue(std::move(*result));
    } else {
      // The I/O thread already checked the reply's type against the opcode; this cannot miss
      // unless a caller sent a request through the typed method of another opcode.
      T* typed = std::get_if<T>(&*result);
      if (typed == nullptr) {
        promise_.SetError(
            Status(StatusCode::kProtocolError,
                   fmt::format("reply of type #{} where another was expected", result->index())));
        return;
      }
      promise_.SetValue(std::move(*typed));
    }
  }

 private:
  sync::Promise<T> promise_;
};

}  // namespace

// Everything behind Client. Callers touch only the queue (under mu_) and the atomics; the
// socket and the in-flight table belong to the I/O thread.
class Client::Impl {
 public:
  static Result<std::unique_ptr<Impl>> Start(const ClientOptions& options);
  ~Impl() { Close(); }
  Impl(const Impl&) = delete;
  Impl& operator=(const Impl&) = delete;

  // Queues `request` for the I/O thread; the future completes with its reply, its error, or
  // at once when the client is closed or full. `timeout`: kWaitForever means the default.
  template <typename T>
  MessagingFuture<T> Submit(const Request& request, Timeout timeout) KVT_EXCLUDES(mu_);

  size_t pending() const { return pending_.load(std::memory_order_acquire); }
  void Close() KVT_EXCLUDES(mu_, join_mu_);

  const ClientOptions& options() const { return options_; }
  const protocol::HelloReply& server_info() const { return server_info_; }
  void set_server_info(protocol::HelloReply info) { server_info_ = std::move(info); }

 private:
  // A request handed from a caller to the I/O thread.
  struct Queued {
    uint64_t id = 0;
    Opcode opcode = Opcode::kInvalid;
    Duration timeout{0};                    // zero: no deadline
    TimePoint deadline = TimePoint::max();  // from the call's time
    protocol::Frames frames;
    std::unique_ptr<Completion> completion;
  };
  // A request the I/O thread has taken: possibly still to be sent (frames not empty).
  using DeadlineMap = std::multimap<TimePoint, uint64_t>;
  struct InFlight {
    Opcode opcode = Opcode::kInvalid;
    Duration timeout{0};
    DeadlineMap::iterator deadline;  // deadlines_.end() when none
    protocol::Frames frames;         // emptied once sent
    std::unique_ptr<Completion> completion;
  };
  using InFlightMap = std::unordered_map<uint64_t, InFlight>;

  explicit Impl(const ClientOptions& options) : options_(options) {}

  void Enqueue(Queued q) KVT_EXCLUDES(mu_);

  // ---- I/O thread only ----
  void Loop() KVT_EXCLUDES(mu_);
  // The loop proper; returns the status every remaining request completes with.
  Status Run() KVT_EXCLUDES(mu_);
  void Register(Queued q);
  void SendOutbox();
  void ReceiveReplies();
  void OnReply(std::vector<zmq::message_t>& parts);
  void ExpireDeadlines(TimePoint now);
  int PollTimeoutMs(TimePoint now) const;
  // Completes the request and forgets it.
  void Finish(InFlightMap::iterator it, Result<Reply> result);
  // Completes every queued and in-flight request with `status`.
  void FailEverything(const Status& status) KVT_EXCLUDES(mu_);
  // Sets the status later calls get, unless one is set already.
  void Stop(Status status) KVT_EXCLUDES(mu_);

  std::string Describe(Opcode op, uint64_t id) const {
    return fmt::format("{} request {} to {}", protocol::OpcodeName(op), id, options_.endpoint);
  }

  const ClientOptions options_;
  protocol::HelloReply server_info_;  // written by Connect before the Client exists

  std::unique_ptr<zmq::context_t> context_;
  std::unique_ptr<zmq::socket_t> socket_;  // the I/O thread's once it runs
  sync::EventFd wake_;                     // callers -> I/O thread: the queue is not empty
  std::thread io_;
  std::thread::id io_id_;

  std::atomic<uint64_t> next_id_{1};  // 0 is what a server answers unreadable messages with
  std::atomic<size_t> pending_{0};    // queued + in flight

  mutable Mutex mu_;
  std::deque<Queued> queue_ KVT_GUARDED_BY(mu_);
  bool wake_signalled_ KVT_GUARDED_BY(mu_) = false;  // a Signal since the I/O thread last looked
  Status stopped_ KVT_GUARDED_BY(mu_);               // not OK: closed (or failed); refuse calls

  Mutex join_mu_;  // one closer joins the thread, the others wait for it

  // I/O thread only.
  InFlightMap in_flight_;
  DeadlineMap deadlines_;
  std::deque<uint64_t> outbox_;  // ids to send, in submission order
  uint64_t dropped_replies_ = 0;
  uint64_t malformed_replies_ = 0;
};

Result<std::unique_ptr<Client::Impl>> Client::Impl::Start(const ClientOptions& options) {
  std::unique_ptr<Impl> impl(new Impl(options));
  KVT_ASSIGN_OR_RETURN(impl->wake_, sync::EventFd::Create());
  try {
    impl->context_ = std::make_unique<zmq::context_t>(1);
    impl->socket_ = std::make_unique<zmq::socket_t>(*impl->context_, zmq::socket_type::dealer);
    zmq::socket_t& s = *impl->socket_;
    s.set(zmq::sockopt::linger, 0);  // Close drops what was not sent: its futures are cancelled
    s.set(zmq::sockopt::maxmsgsize, kMaxReplyBytes);
    // max_pending bounds what can be queued, so a send never waits on the high-water mark.
    s.set(zmq::sockopt::sndhwm, ClampToInt(options.max_pending));
    s.set(zmq::sockopt::rcvhwm, ClampToInt(options.max_pending));
  } catch (const zmq::error_t& e) {
    return MakeError(
        Status::Internal(fmt::format("client: cannot create a ZMQ socket: {}", e.what())));
  }
  try {
    impl->socket_->connect(options.endpoint);
  } catch (const zmq::error_t& e) {
    return MakeError(Status::InvalidArgument(
        fmt::format("client: invalid endpoint '{}': {}", options.endpoint, e.what())));
  }
  // The socket moves to the I/O thread; starting a thread is the memory barrier ZMQ asks for.
  try {
    impl->io_ = std::thread([p = impl.get()] { p->Loop(); });
  } catch (const std::system_error& e) {
    return MakeError(Status::ResourceExhausted(
        fmt::format("client: cannot start the I/O thread: {}", e.what())));
  }
  impl->io_id_ = impl->io_.get_id();
  return impl;
}

template <typename T>
MessagingFuture<T> Client::Impl::Submit(const Request& request, Timeout timeout) {
  auto completion = std::make_unique<TypedCompletion<T>>();
  MessagingFuture<T> future = completion->future();
  const Duration t = timeout ? *timeout : options_.request_timeout;
  if (t < Duration::zero()) {
    completion->Complete(MakeError(Status::InvalidArgument(
        fmt::format("client: negative request timeout {}", FormatDuration(t)))));
    return future;
  }
  Queued q;
  q.id = next_id_.fetch_add(1, std::memory_order_relaxed);
  q.opcode = protocol::OpcodeOf(request);
  q.timeout = t;
  q.deadline = t == Duration::zero() ? TimePoint::max() : DeadlineFrom(t);
  q.frames = protocol::EncodeRequest(q.id, request);
  q.completion = std::move(completion);
  Enqueue(std::move(q));
  return future;
}

void Client::Impl::Enqueue(Queued q) {
  Status refused;
  std::unique_ptr<Completion> refused_completion;
  bool signal = false;
  {
    MutexLock lock(&mu_);
    if (!stopped_.ok()) {
      refused = stopped_;
    } else if (pending_.load(std::memory_order_relaxed) >= options_.max_pending) {
      refused = Status::ResourceExhausted(
          fmt::format("client: {} requests already pending (max_pending); retry when some complete",
                      options_.max_pending));
    }
    if (refused.ok()) {
      pending_.fetch_add(1, std::memory_order_acq_rel);
      queue_.push_back(std::move(q));
      signal = !wake_signalled_;
      wake_signalled_ = true;
    } else {
      refused_completion = std::move(q.completion);
    }
  }
  if (refused_completion) {
    refused_completion->Complete(MakeError(std::move(refused)));
    return;
  }
  if (signal) wake_.Signal();
}

void Client::Impl::Close() {
  KVT_CHECK_MSG(std::this_thread::get_id() != io_id_,
                "Client::Close (or the destructor) called from a future callback on the client's "
                "I/O thread");
  Stop(Status::Cancelled(fmt::format("client to {} is closed", options_.endpoint)));
  if (wake_.valid()) wake_.Signal();
  MutexLock lock(&join_mu_);
  if (io_.joinable()) io_.join();
}

void Client::Impl::Stop(Status status) {
  MutexLock lock(&mu_);
  if (stopped_.ok()) stopped_ = std::move(status);
}

void Client::Impl::Loop() {
  Status exit_status;
  try {
    exit_status = Run();
  } catch (const std::exception& e) {
    exit_status = Status::Internal(fmt::format("client I/O thread failed: {}", e.what()));
    KVT_LOG_ERROR("{}", exit_status.message());
  } catch (...) {
    exit_status = Status::Internal("client I/O thread failed: unknown exception");
    KVT_LOG_ERROR("{}", exit_status.message());
  }
  Stop(exit_status);
  try {
    FailEverything(exit_status);
  } catch (...) {
    KVT_LOG_ERROR("client: a future callback threw while the client shut down");
  }
  try {
    socket_->close();
  } catch (...) {
  }
}

Status Client::Impl::Run() {
  std::deque<Queued> batch;
  bool readable = false;
  while (true) {
    {
      MutexLock lock(&mu_);
      if (!stopped_.ok()) return stopped_;
      batch.swap(queue_);
      wake_signalled_ = false;
    }
    for (Queued& q : batch) Register(std::move(q));
    batch.clear();
    SendOutbox();
    if (readable) ReceiveReplies();
    ExpireDeadlines(std::chrono::steady_clock::now());

    zmq::pollitem_t items[2] = {
        {nullptr, wake_.fd(), ZMQ_POLLIN, 0},
        {socket_->handle(), 0,
         static_cast<int16_t>(ZMQ_POLLIN | (outbox_.empty() ? 0 : ZMQ_POLLOUT)), 0}};
    try {
      zmq::poll(items, 2,
                std::chrono::milliseconds(PollTimeoutMs(std::chrono::steady_clock::now())));
    } catch (const zmq::error_t& e) {
      if (e.num() == EINTR) continue;
      return Status::Unavailable(
          fmt::format("client to {}: socket poll failed: {}", options_.endpoint, e.what()));
    }
    if (items[0].revents & ZMQ_POLLIN) wake_.Drain();
    readable = (items[1].revents & ZMQ_POLLIN) != 0;
  }
}

int Client::Impl::PollTimeoutMs(TimePoint now) const {
  if (deadlines_.empty()) return -1;
  const TimePoint next = deadlines_.begin()->first;
  if (next <= now) return 0;
  // Round up so the loop does not wake just before the deadline and spin.
  const auto ms = std::chrono::ceil<std::chrono::milliseconds>(next - now).count();
  return static_cast<int>(std::min<int64_t>(ms, INT_MAX));
}

void Client::Impl::Register(Queued q) {
  InFlight f;
  f.opcode = q.opcode;
  f.timeout = q.timeout;
  f.deadline =
      q.deadline == TimePoint::max() ? deadlines_.end() : deadlines_.emplace(q.deadline, q.id);
  f.frames = std::move(q.frames);
  f.completion = std::move(q.completion);
  in_flight_.emplace(q.id, std::move(f));
  outbox_.push_back(q.id);
}

void Client::Impl::SendOutbox() {
  while (!outbox_.empty()) {
    const uint64_t id = outbox_.front();
    auto it = in_flight_.find(id);
    if (it == in_flight_.end()) {  // expired (or failed) before it could be sent
      outbox_.pop_front();
      continue;
    }
    protocol::Frames& frames = it->second.frames;
    try {
      // The high-water mark is checked on the first frame only: once it is accepted, so is
      // the rest of the message.
      if (!socket_->send(zmq::buffer(frames.header),
                         zmq::send_flags::sndmore | zmq::send_flags::dontwait)) {
        return;  // full: the loop polls for POLLOUT
      }
      if (!socket_->send(zmq::buffer(frames.payload), zmq::send_flags::dontwait)) {
        Finish(it, MakeError(Status::Internal(
                       fmt::format("{}: the socket took the header but not the payload",
                                   Describe(it->second.opcode, id)))));
      } else {
        frames = protocol::Frames{};
      }
    } catch (const zmq::error_t& e) {
      Finish(it, MakeError(Status::Unavailable(
                     fmt::format("{}: not sent: {}", Describe(it->second.opcode, id), e.what()))));
    }
    outbox_.pop_front();
  }
}

void Client::Impl::ReceiveReplies() {
  for (int i = 0; i < kReceiveBatch; ++i) {
    std::vector<zmq::message_t> parts;
    try {
      zmq::message_t first;
      if (!socket_->recv(first, zmq::recv_flags::dontwait)) return;
      bool more = first.more();
      parts.push_back(std::move(first));
      while (more) {
        zmq::message_t part;  // the rest of a message has arrived with its first frame
        (void)socket_->recv(part, zmq::recv_flags::none);
        more = part.more();
        // One frame past the expected count is enough to know the count is wrong.
        if (parts.size() <= kReplyFrames) parts.push_back(std::move(part));
      }
    } catch (const zmq::error_t& e) {
      KVT_LOG_WARN("client to {}: receive failed: {}", options_.endpoint, e.what());
      return;
    }
    OnReply(parts);
  }
}

void Client::Impl::OnReply(std::vector<zmq::message_t>& parts) {
  Result<protocol::Header> header = protocol::DecodeHeader(Bytes(parts[0]));
  if (!header) {
    // A peer speaking another protocol version still echoes our request id: fail that
    // request with the decoder's kUnsupportedVersion instead of letting it time out.
    std::optional<uint64_t> id = RawRequestId(parts[0]);
    auto it = id ? in_flight_.find(*id) : in_flight_.end();
    if (it != in_flight_.end() && header.error().code() == StatusCode::kUnsupportedVersion) {
      Finish(it, MakeError(header.error().WithContext(Describe(it->second.opcode, *id))));
      return;
    }
    ++malformed_replies_;
    KVT_LOG_WARN("client to {}: dropped an unreadable reply: {}", options_.endpoint,
                 header.error().ToString());
    return;
  }
  if ((header->flags & protocol::kFlagReply) == 0) {
    ++malformed_replies_;
    KVT_LOG_WARN("client to {}: dropped a message without the reply flag (opcode {}, id {})",
                 options_.endpoint, protocol::OpcodeName(header->opcode), header->request_id);
    return;
  }
  const uint64_t id = header->request_id;
  auto it = in_flight_.find(id);
  if (it == in_flight_.end()) {
    // Late (its request timed out) or never ours, e.g. the server's answer to a message it
    // could not read (request id 0).
    ++dropped_replies_;
    if ((header->flags & protocol::kFlagError) != 0 && parts.size() == kReplyFrames) {
      Result<Reply> r = protocol::DecodeReply(*header, Bytes(parts[1]));
      if (r && std::holds_alternative<protocol::ErrorReply>(*r)) {
        KVT_LOG_WARN("client to {}: error reply to unknown request {}: {}", options_.endpoint, id,
                     protocol::FromErrorReply(std::get<protocol::ErrorReply>(*r)).ToString());
        return;
      }
    }
    KVT_LOG_DEBUG("client to {}: dropped a reply to unknown or expired request {}",
                  options_.endpoint, id);
    return;
  }
  const Opcode op = it->second.opcode;
  const bool error = (header->flags & protocol::kFlagError) != 0;
  if (parts.size() != kReplyFrames) {
    Finish(it,
           MakeError(Status(
               StatusCode::kProtocolError,
               fmt::format("{}: reply has {}{} frames, expected {}", Describe(op, id),
                           parts.size() > kReplyFrames ? "> " : "", parts.size(), kReplyFrames))));
    return;
  }
  // Error replies to a request may carry opcode 0 (the server could not tell what it was).
  if (header->opcode != op && !(error && header->opcode == Opcode::kInvalid)) {
    Finish(it, MakeError(Status(StatusCode::kProtocolError,
                                fmt::format("{}: reply carries opcode {}", Describe(op, id),
                                            protocol::OpcodeName(header->opcode)))));
    return;
  }
  Result<Reply> reply = protocol::DecodeReply(*header, Bytes(parts[1]));
  if (!reply) {
    Finish(it, MakeError(reply.error().WithContext(Describe(op, id) + ": malformed reply")));
    return;
  }
  if (const auto* e = std::get_if<protocol::ErrorReply>(&*reply)) {
    Finish(it, MakeError(protocol::FromErrorReply(*e)));
    return;
  }
  if (reply->index() != protocol::ReplyIndexFor(op)) {
    Finish(it, MakeError(Status(StatusCode::kProtocolError,
                                fmt::format("{}: reply of the wrong type (#{})", Describe(op, id),
                                            reply->index()))));
    return;
  }
  Finish(it, std::move(reply));
}

void Client::Impl::ExpireDeadlines(TimePoint now) {
  while (!deadlines_.empty() && deadlines_.begin()->first <= now) {
    const uint64_t id = deadlines_.begin()->second;
    auto it = in_flight_.find(id);
    KVT_DCHECK(it != in_flight_.end());
    if (it == in_flight_.end()) {
      deadlines_.erase(deadlines_.begin());
      continue;
    }
    Finish(it, MakeError(Status::Timeout(fmt::format("{}: no reply within {}",
                                                     Describe(it->second.opcode, id),
                                                     FormatDuration(it->second.timeout)))));
  }
}

void Client::Impl::Finish(InFlightMap::iterator it, Result<Reply> result) {
  if (it->second.deadline != deadlines_.end()) deadlines_.erase(it->second.deadline);
  std::unique_ptr<Completion> completion = std::move(it->second.completion);
  in_flight_.erase(it);
  // Before completing: whoever sees the result also sees the slot free.
  pending_.fetch_sub(1, std::memory_order_acq_rel);
  try {
    completion->Complete(std::move(result));
  } catch (const std::exception& e) {
    KVT_LOG_ERROR("client: a future callback threw: {}", e.what());
  }
}

void Client::Impl::FailEverything(const Status& status) {
  std::deque<Queued> queued;
  {
    MutexLock lock(&mu_);
    queued.swap(queue_);
  }
  // Submission order: queued requests were submitted after everything in flight.
  std::vector<uint64_t> ids;
  ids.reserve(in_flight_.size());
  for (const auto& [id, f] : in_flight_) ids.push_back(id);
  std::sort(ids.begin(), ids.end());
  for (uint64_t id : ids) Finish(in_flight_.find(id), MakeError(status));
  outbox_.clear();
  for (Queued& q : queued) {
    pending_.fetch_sub(1, std::memory_order_acq_rel);
    q.completion->Complete(MakeError(status));
  }
}

// ---- Client -----------------------------------------------------------------------------

Result<std::unique_ptr<Client>> Client::Connect(const ClientOptions& options) {
  if (options.endpoint.empty()) {
    return MakeError(Status::InvalidArgument("client: empty endpoint"));
  }
  if (options.max_pending == 0) {
    return MakeError(Status::InvalidArgument("client: max_pending must be at least 1"));
  }
  if (options.request_timeout < Duration::zero()) {
    return MakeError(Status::InvalidArgument(fmt::format("client: negative request_timeout {}",
                                                         FormatDuration(options.request_timeout))));
  }
  if (options.connect_timeout <= Duration::zero()) {
    return MakeError(
        Status::InvalidArgument(fmt::format("client: connect_timeout must be positive (got {})",
                                            FormatDuration(options.connect_timeout))));
  }
  KVT_ASSIGN_OR_RETURN(std::unique_ptr<Impl> impl, Impl::Start(options));
  MessagingFuture<protocol::HelloReply> hello = impl->Submit<protocol::HelloReply>(
      protocol::HelloRequest{.protocol_version = protocol::kProtocolVersion,
                             .client = options.client_name},
      options.connect_timeout);
  Result<protocol::HelloReply> reply = hello.Result();
  if (!reply) {
    const Status& e = reply.error();
    if (e.code() == StatusCode::kTimeout) {
      return MakeError(Status::Unavailable(
          fmt::format("client: no kvtier server answered HELLO at {} within {}", options.endpoint,
                      FormatDuration(options.connect_timeout))));
    }
    return MakeError(e.WithContext(fmt::format("client: HELLO to {} failed", options.endpoint)));
  }
  if (reply->protocol_version != protocol::kProtocolVersion) {
    return MakeError(
        Status(StatusCode::kUnsupportedVersion,
               fmt::format("client: the server at {} speaks protocol version {}; this "
                           "client speaks {}",
                           options.endpoint, reply->protocol_version, protocol::kProtocolVersion)));
  }
  impl->set_server_info(std::move(*reply));
  return std::unique_ptr<Client>(new Client(std::move(impl)));
}

Client::Client(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}

Client::~Client() {
  if (impl_) impl_->Close();
}

const protocol::HelloReply& Client::server_info() const { return impl_->server_info(); }

MessagingFuture<protocol::Reply> Client::Send(protocol::Request request, Timeout timeout) {
  return impl_->Submit<protocol::Reply>(std::move(request), timeout);
}

MessagingFuture<protocol::RegisterKvCacheReply> Client::RegisterKvCache(
    protocol::RegisterKvCacheRequest r) {
  return impl_->Submit<protocol::RegisterKvCacheReply>(std::move(r), kWaitForever);
}

MessagingFuture<protocol::EmptyReply> Client::UnregisterKvCache(std::string instance_id) {
  return impl_->Submit<protocol::EmptyReply>(
      protocol::UnregisterKvCacheRequest{std::move(instance_id)}, kWaitForever);
}

MessagingFuture<protocol::ChunkSizeReply> Client::GetChunkSize() {
  return impl_->Submit<protocol::ChunkSizeReply>(protocol::GetChunkSizeRequest{}, kWaitForever);
}

MessagingFuture<protocol::EmptyReply> Client::Lookup(protocol::LookupRequest r) {
  return impl_->Submit<protocol::EmptyReply>(std::move(r), kWaitForever);
}

MessagingFuture<protocol::PrefetchStatusReply> Client::QueryPrefetchStatus(std::string request_id) {
  return impl_->Submit<protocol::PrefetchStatusReply>(
      protocol::QueryPrefetchStatusRequest{std::move(request_id)}, kWaitForever);
}

MessagingFuture<protocol::PrefetchStatusReply> Client::WaitPrefetchStatus(std::string request_id,
                                                                          Duration wait) {
  wait = std::max(wait, Duration::zero());
  const auto wait_ms = std::chrono::ceil<std::chrono::milliseconds>(wait).count();
  const auto timeout_ms =
      static_cast<uint32_t>(std::min<int64_t>(wait_ms, std::numeric_limits<uint32_t>::max()));
  const Duration base = impl_->options().request_timeout;
  // Zero keeps "no deadline"; otherwise the server's wait comes on top of the usual deadline.
  const Duration timeout =
      base == Duration::zero() ? base : base + std::chrono::milliseconds(timeout_ms);
  return impl_->Submit<protocol::PrefetchStatusReply>(
      protocol::WaitPrefetchStatusRequest{std::move(request_id), timeout_ms}, timeout);
}

MessagingFuture<protocol::LookupHitsReply> Client::QueryPrefetchLookupHits(std::string request_id) {
  return impl_->Submit<protocol::LookupHitsReply>(
      protocol::QueryPrefetchLookupHitsRequest{std::move(request_id)}, kWaitForever);
}

MessagingFuture<protocol::StoreReply> Client::Store(protocol::StoreRequest r) {
  return impl_->Submit<protocol::StoreReply>(std::move(r), kWaitForever);
}

MessagingFuture<protocol::RetrieveReply> Client::Retrieve(protocol::RetrieveRequest r) {
  return impl_->Submit<protocol::RetrieveReply>(std::move(r), kWaitForever);
}

MessagingFuture<protocol::FreeLookupLocksReply> Client::FreeLookupLocks(protocol::Key key) {
  return impl_->Submit<protocol::FreeLookupLocksReply>(
      protocol::FreeLookupLocksRequest{std::move(key)}, kWaitForever);
}

MessagingFuture<protocol::EndSessionReply> Client::EndSession(std::string request_id) {
  return impl_->Submit<protocol::EndSessionReply>(
      protocol::EndSessionRequest{std::move(request_id)}, kWaitForever);
}

MessagingFuture<protocol::PingReply> Client::Ping(std::optional<std::string> instance_id) {
  return impl_->Submit<protocol::PingReply>(protocol::PingRequest{std::move(instance_id)},
                                            kWaitForever);
}

MessagingFuture<protocol::ClearReply> Client::Clear(bool force) {
  return impl_->Submit<protocol::ClearReply>(protocol::ClearRequest{force}, kWaitForever);
}

MessagingFuture<protocol::EmptyReply> Client::Noop() {
  return impl_->Submit<protocol::EmptyReply>(protocol::NoopRequest{}, kWaitForever);
}

size_t Client::pending() const { return impl_->pending(); }

void Client::Close() { impl_->Close(); }

}  // namespace kvtier
