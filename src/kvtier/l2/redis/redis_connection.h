// RedisConnection: one blocking connection to a Redis or Valkey server, built on hiredis.
//
// hiredis connects (with a timeout, keepalive) and parses replies; commands are formatted and
// written here with sendmsg, so a SET's value is written straight from the caller's buffer
// (no copy into hiredis's output buffer), and a large bulk reply can be read straight from the
// socket into its destination (ReadBulkStart / ReadBulkBody) instead of through hiredis's read
// buffer and a reply object. Every socket operation is bounded by the command timeout
// (SO_SNDTIMEO / SO_RCVTIMEO): a server that stops answering fails the call after at most that
// long without any progress.
//
// The streaming reads take what hiredis has already buffered from its reader's public fields
// (buf, pos, len: the same in hiredis 0.14 and 1.x) and leave the reader idle between replies.
//
// Not thread-safe: one thread uses a connection at a time. After an I/O error, a timeout or a
// protocol error the stream is in an unknown state: the connection is broken() and must be
// dropped. Error replies from the server ("-ERR ...") are replies, not broken connections.
#pragma once

#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <variant>
#include <vector>

#include <hiredis/hiredis.h>

#include "kvtier/common/clock.h"
#include "kvtier/common/result.h"

namespace kvtier::l2 {

struct RedisConnectOptions {
  std::string host = "127.0.0.1";
  int port = 6379;
  std::string username;  // ACL user (Redis 6+); empty: the default user
  std::string password;  // empty: no AUTH
  int db = 0;
  Duration connect_timeout = std::chrono::seconds(2);
  Duration command_timeout = std::chrono::seconds(5);

  // "host:port" for messages.
  std::string Endpoint() const;
};

struct RedisReplyDeleter {
  void operator()(redisReply* reply) const;
};
using RedisReply = std::unique_ptr<redisReply, RedisReplyDeleter>;

class RedisConnection {
 public:
  // Opens the TCP connection only (bounded by connect_timeout). kUnavailable (retryable).
  static Result<std::unique_ptr<RedisConnection>> Open(const RedisConnectOptions& options);
  // Open + Handshake.
  static Result<std::unique_ptr<RedisConnection>> Connect(const RedisConnectOptions& options);

  ~RedisConnection();
  RedisConnection(const RedisConnection&) = delete;
  RedisConnection& operator=(const RedisConnection&) = delete;

  // AUTH (when a password is set), PING, then SELECT (db != 0): PING first, so that a server
  // that wants a password says NOAUTH to it rather than to SELECT. kPermissionDenied when the
  // server refuses the credentials or needs some; kInvalidArgument for a db it does not have;
  // kTimeout / kUnavailable / kIOError (retryable) when the connection fails.
  Status Handshake();

  int fd() const { return context_->fd; }
  bool broken() const { return broken_; }
  const RedisConnectOptions& options() const { return options_; }

  // Queues one command; its arguments are copied.
  void Append(std::span<const std::string_view> args);
  void Append(std::initializer_list<std::string_view> args) {
    Append(std::span<const std::string_view>(args.begin(), args.size()));
  }
  // Queues `SET key <header><payload> NX`. `header` is copied; `payload` is not: it must stay
  // valid and unchanged until the next Flush returns.
  void AppendSetNx(std::string_view key, std::span<const uint8_t> header,
                   std::span<const uint8_t> payload);
  // Bytes queued and not yet written.
  size_t pending_bytes() const { return pending_bytes_; }
  // Writes everything queued. Afterwards no payload passed to AppendSetNx is referenced.
  Status Flush();

  // Reads the next reply.
  Result<RedisReply> ReadReply();

  // Reads the next reply's first line. For a bulk string, returns its length: the caller then
  // takes exactly that many bytes with ReadBulkBody / SkipBulkBody, then calls FinishBulk,
  // before reading anything else. Any other reply (nil, error, ...) is returned whole.
  Result<std::variant<uint64_t, RedisReply>> ReadBulkStart();
  // The next out.size() bytes of the bulk string, read straight into `out` (only what hiredis
  // had already buffered is copied).
  Status ReadBulkBody(std::span<uint8_t> out);
  Status SkipBulkBody(uint64_t bytes);
  // Consumes the bulk string's terminating CRLF.
  Status FinishBulk();

  // Append + Flush + ReadReply. An error reply is returned as a reply.
  Result<RedisReply> Command(std::initializer_list<std::string_view> args);

 private:
  RedisConnection(redisContext* context, const RedisConnectOptions& options);
  // Marks the connection broken and describes the failure of `what`.
  Status Fail(std::string_view what, int err, std::string_view detail);
  // Fills out[0, n): first from hiredis's read buffer, then from the socket.
  Status ReadExact(uint8_t* out, size_t n);
  // Reads what the socket has (up to `max`) into hiredis's read buffer.
  Status ReadMore(size_t max);

  // Queued bytes: spans into `buffer_` (by offset) or external payloads.
  struct Segment {
    const uint8_t* external;  // nullptr: `offset` into buffer_
    size_t offset;
    size_t size;
  };
  void AppendOwned(std::string_view bytes);

  redisContext* context_;
  RedisConnectOptions options_;
  bool broken_ = false;
  uint64_t bulk_left_ = 0;  // body bytes of the current streamed bulk string not yet taken
  bool in_bulk_ = false;
  std::string buffer_;
  std::vector<Segment> segments_;
  size_t pending_bytes_ = 0;
};

// The start of a reply, as ReadBulkStart sees it in what has been received so far.
struct RespBulkHeader {
  enum class Kind : uint8_t {
    kNeedMore,  // no complete first line yet
    kBulk,      // "$<length>\r\n": a bulk string follows
    kOther,     // any other reply, a nil bulk ("$-1") included: for hiredis to parse
    kInvalid,   // a malformed bulk length: a protocol error
  };
  Kind kind = Kind::kNeedMore;
  uint64_t length = 0;     // kBulk
  size_t header_size = 0;  // kBulk: bytes of "$<length>\r\n"
};
RespBulkHeader ParseRespBulkHeader(std::string_view received);

// A Status for an error reply of the server to `what`: kResourceExhausted (retryable) for OOM,
// kPermissionDenied for NOAUTH / NOPERM / WRONGPASS, kUnavailable (retryable) for LOADING,
// BUSY, READONLY, MASTERDOWN, TRYAGAIN, kIOError otherwise.
Status RedisErrorReplyStatus(std::string_view endpoint, std::string_view what,
                             std::string_view message);

}  // namespace kvtier::l2
