// kvtier C++ client: talks to a `kvtier server` over ZMQ (DEALER) with the v1 protocol
// (docs/protocol.md).
//
//   KVT_ASSIGN_OR_RETURN(auto client, kvtier::Client::Connect({.endpoint = "tcp://host:5555"}));
//   auto stored = client->Store(store_request);  // returns at once
//   KVT_ASSIGN_OR_RETURN(protocol::StoreReply r, stored.Result());
//
// Every request returns a MessagingFuture at once; one background I/O thread owns the socket,
// sends requests in submission order and completes futures as replies arrive (in any order,
// matched by request id). An error reply completes the future with the server's Status (its
// stable code and message, see FromErrorReply); a request unanswered within its timeout
// completes with kTimeout, and a late reply to it is dropped. Closing the client (or
// destroying it) completes every pending future with kCancelled.
//
// Thread-safety: every member may be called from any thread.
#pragma once

#include <chrono>
#include <cstdint>
#include <memory>
#include <string>

#include "kvtier/common/clock.h"
#include "kvtier/common/result.h"
#include "kvtier/protocol/messages.h"
#include "kvtier/sync/messaging_future.h"

namespace kvtier {

using sync::MessagingFuture;

struct ClientOptions {
  // tcp://host:port or ipc:///path.
  std::string endpoint = "tcp://127.0.0.1:5555";
  // Sent in HELLO; shows up in the server's logs.
  std::string client_name = "kvtier-cpp";
  // A request's deadline when the call gives none. Zero: no deadline.
  Duration request_timeout = std::chrono::seconds(30);
  // How long Connect waits for the HELLO reply.
  Duration connect_timeout = std::chrono::seconds(10);
  // Requests queued or in flight at most; a call beyond it completes at once with
  // kResourceExhausted instead of queueing without bound.
  size_t max_pending = 65536;
};

class Client {
 public:
  // Connects and negotiates the protocol version (HELLO). Errors: kUnavailable when no server
  // answers within connect_timeout, kUnsupportedVersion when it speaks another version,
  // kInvalidArgument for a malformed endpoint.
  static Result<std::unique_ptr<Client>> Connect(const ClientOptions& options);
  ~Client();
  Client(const Client&) = delete;
  Client& operator=(const Client&) = delete;

  // What the server said in HELLO (chunk size, hash algorithm, server id).
  const protocol::HelloReply& server_info() const;

  // Any request; the future holds the typed reply (an ErrorReply never: errors are Statuses).
  // `timeout`: this request's deadline; kWaitForever uses options.request_timeout, zero means
  // no deadline (as in ClientOptions), a negative one is kInvalidArgument.
  MessagingFuture<protocol::Reply> Send(protocol::Request request, Timeout timeout = kWaitForever);

  // Typed forms of Send.
  MessagingFuture<protocol::RegisterKvCacheReply> RegisterKvCache(
      protocol::RegisterKvCacheRequest r);
  MessagingFuture<protocol::EmptyReply> UnregisterKvCache(std::string instance_id);
  MessagingFuture<protocol::ChunkSizeReply> GetChunkSize();
  MessagingFuture<protocol::EmptyReply> Lookup(protocol::LookupRequest r);
  MessagingFuture<protocol::PrefetchStatusReply> QueryPrefetchStatus(std::string request_id);
  // The request's deadline is extended by `wait` so the server's answer can arrive.
  MessagingFuture<protocol::PrefetchStatusReply> WaitPrefetchStatus(std::string request_id,
                                                                    Duration wait);
  MessagingFuture<protocol::LookupHitsReply> QueryPrefetchLookupHits(std::string request_id);
  MessagingFuture<protocol::StoreReply> Store(protocol::StoreRequest r);
  MessagingFuture<protocol::RetrieveReply> Retrieve(protocol::RetrieveRequest r);
  MessagingFuture<protocol::FreeLookupLocksReply> FreeLookupLocks(protocol::Key key);
  MessagingFuture<protocol::EndSessionReply> EndSession(std::string request_id);
  MessagingFuture<protocol::PingReply> Ping(std::optional<std::string> instance_id = std::nullopt);
  MessagingFuture<protocol::ClearReply> Clear(bool force = false);
  MessagingFuture<protocol::EmptyReply> Noop();

  // Requests queued or awaiting a reply.
  size_t pending() const;
  // Completes every pending future with kCancelled and stops the I/O thread. Idempotent;
  // later calls complete at once with kCancelled. Future callbacks (OnReady) run on the I/O
  // thread: they must not block, nor close or destroy the client (that aborts).
  void Close();

  class Impl;

 private:
  explicit Client(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace kvtier
