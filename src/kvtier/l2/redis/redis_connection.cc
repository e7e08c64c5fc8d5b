#include "kvtier/l2/redis/redis_connection.h"

#include <algorithm>
#include <cerrno>
#include <climits>
#include <cstring>
#include <iterator>

#include <fmt/format.h>
#include <hiredis/sds.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <unistd.h>

#include "kvtier/common/check.h"
#include "kvtier/common/units.h"

namespace kvtier::l2 {
namespace {

timeval ToTimeval(Duration d) {
  auto us = std::chrono::duration_cast<std::chrono::microseconds>(d).count();
  us = std::max<int64_t>(us, 1);  // zero would mean "no timeout" to the kernel
  return timeval{static_cast<time_t>(us / 1'000'000), static_cast<suseconds_t>(us % 1'000'000)};
}

// Marks everything in hiredis's read buffer consumed (sdsclear, which hiredis 0.14's sds.h
// declares without C linkage: the inline parts only).
void EmptyReaderBuffer(redisReader* r) {
  sdssetlen(r->buf, 0);
  r->buf[0] = '\0';
  r->pos = 0;
  r->len = 0;
}

bool StartsWith(std::string_view s, std::string_view prefix) {
  return s.substr(0, prefix.size()) == prefix;
}

}  // namespace

std::string RedisConnectOptions::Endpoint() const { return fmt::format("{}:{}", host, port); }

void RedisReplyDeleter::operator()(redisReply* reply) const { freeReplyObject(reply); }

Result<std::unique_ptr<RedisConnection>> RedisConnection::Open(const RedisConnectOptions& options) {
  redisContext* c = redisConnectWithTimeout(options.host.c_str(), options.port,
                                            ToTimeval(options.connect_timeout));
  if (c == nullptr) {
    return MakeError(Status::ResourceExhausted(
        fmt::format("redis {}: cannot allocate a connection context", options.Endpoint())));
  }
  if (c->err != 0) {
    std::string why = c->errstr;
    redisFree(c);
    return MakeError(Status::Unavailable(fmt::format("redis {}: connect: {} (connect_timeout {})",
                                                     options.Endpoint(), why,
                                                     FormatDuration(options.connect_timeout))));
  }
  if (redisSetTimeout(c, ToTimeval(options.command_timeout)) != REDIS_OK) {
    std::string why = c->errstr;
    redisFree(c);
    return MakeError(Status::IOError(
        fmt::format("redis {}: cannot set the command timeout: {}", options.Endpoint(), why),
        /*retryable=*/true));
  }
  // Keepalive finds a peer that vanished without closing (best effort).
  redisEnableKeepAlive(c);
  return std::unique_ptr<RedisConnection>(new RedisConnection(c, options));
}

Result<std::unique_ptr<RedisConnection>> RedisConnection::Connect(
    const RedisConnectOptions& options) {
  KVT_ASSIGN_OR_RETURN(auto conn, Open(options));
  KVT_RETURN_IF_ERROR(conn->Handshake());
  return conn;
}

RedisConnection::RedisConnection(redisContext* context, const RedisConnectOptions& options)
    : context_(context), options_(options) {}

RedisConnection::~RedisConnection() { redisFree(context_); }

Status RedisConnection::Handshake() {
  const std::string endpoint = options_.Endpoint();
  if (!options_.password.empty()) {
    Result<RedisReply> reply = options_.username.empty()
                                   ? Command({"AUTH", options_.password})
                                   : Command({"AUTH", options_.username, options_.password});
    if (!reply) return reply.error();
    if ((*reply)->type == REDIS_REPLY_ERROR) {
      return Status(
          StatusCode::kPermissionDenied,
          fmt::format("redis {}: AUTH{} failed: {}", endpoint,
                      options_.username.empty() ? std::string()
                                                : fmt::format(" as user '{}'", options_.username),
                      (*reply)->str));
    }
  }
  KVT_ASSIGN_OR_RETURN(RedisReply pong, Command({"PING"}));
  if (pong->type == REDIS_REPLY_ERROR) {
    std::string_view msg(pong->str, pong->len);
    if (StartsWith(msg, "NOAUTH")) {
      return Status(StatusCode::kPermissionDenied,
                    fmt::format("redis {}: the server requires authentication ({}); set "
                                "'password' (or KVT_REDIS_PASSWORD) and, for an ACL user, "
                                "'username'",
                                endpoint, msg));
    }
    return RedisErrorReplyStatus(endpoint, "PING", msg);
  }
  if (options_.db != 0) {
    std::string db = std::to_string(options_.db);
    KVT_ASSIGN_OR_RETURN(RedisReply reply, Command({"SELECT", db}));
    if (reply->type == REDIS_REPLY_ERROR) {
      return Status::InvalidArgument(
          fmt::format("redis {}: SELECT {} failed: {}", endpoint, db, reply->str));
    }
  }
  return Status::OK();
}

Status RedisConnection::Fail(std::string_view what, int err, std::string_view detail) {
  broken_ = true;
  in_bulk_ = false;
  bulk_left_ = 0;
  buffer_.clear();
  segments_.clear();
  pending_bytes_ = 0;
  const std::string endpoint = options_.Endpoint();
  if (err == EAGAIN || err == EWOULDBLOCK) {
    return Status::Timeout(fmt::format("redis {}: {}: no progress within command_timeout {}",
                                       endpoint, what, FormatDuration(options_.command_timeout)));
  }
  return Status::Unavailable(fmt::format("redis {}: {}: {}", endpoint, what, detail));
}

void RedisConnection::AppendOwned(std::string_view bytes) {
  if (bytes.empty()) return;
  if (!segments_.empty() && segments_.back().external == nullptr) {
    segments_.back().size += bytes.size();
  } else {
    segments_.push_back(Segment{nullptr, buffer_.size(), bytes.size()});
  }
  buffer_.append(bytes);
  pending_bytes_ += bytes.size();
}

void RedisConnection::Append(std::span<const std::string_view> args) {
  std::string head = fmt::format("*{}\r\n", args.size());
  AppendOwned(head);
  for (std::string_view arg : args) {
    AppendOwned(fmt::format("${}\r\n", arg.size()));
    AppendOwned(arg);
    AppendOwned("\r\n");
  }
}

void RedisConnection::AppendSetNx(std::string_view key, std::span<const uint8_t> header,
                                  std::span<const uint8_t> payload) {
  AppendOwned(fmt::format("*4\r\n$3\r\nSET\r\n${}\r\n", key.size()));
  AppendOwned(key);
  AppendOwned(fmt::format("\r\n${}\r\n", header.size() + payload.size()));
  AppendOwned(std::string_view(reinterpret_cast<const char*>(header.data()), header.size()));
  if (!payload.empty()) {
    segments_.push_back(Segment{payload.data(), 0, payload.size()});
    pending_bytes_ += payload.size();
  }
  AppendOwned("\r\n$2\r\nNX\r\n");
}

Status RedisConnection::Flush() {
  if (broken_) return Fail("write", 0, "connection is broken");
  if (segments_.empty()) return Status::OK();
  std::vector<iovec> iov;
  iov.reserve(segments_.size());
  for (const Segment& s : segments_) {
    const uint8_t* base = s.external != nullptr
                              ? s.external
                              : reinterpret_cast<const uint8_t*>(buffer_.data()) + s.offset;
    iov.push_back(iovec{const_cast<uint8_t*>(base), s.size});
  }
  size_t next = 0;
  while (next < iov.size()) {
    msghdr msg{};
    msg.msg_iov = &iov[next];
    msg.msg_iovlen = std::min<size_t>(IOV_MAX, iov.size() - next);
    ssize_t n = ::sendmsg(context_->fd, &msg, MSG_NOSIGNAL);
    if (n < 0) {
      if (errno == EINTR) continue;
      int err = errno;
      return Fail("write", err, std::strerror(err));
    }
    size_t left = static_cast<size_t>(n);
    while (left > 0) {
      if (left >= iov[next].iov_len) {
        left -= iov[next].iov_len;
        ++next;
      } else {
        iov[next].iov_base = static_cast<uint8_t*>(iov[next].iov_base) + left;
        iov[next].iov_len -= left;
        left = 0;
      }
    }
  }
  buffer_.clear();
  segments_.clear();
  pending_bytes_ = 0;
  return Status::OK();
}

Result<RedisReply> RedisConnection::ReadReply() {
  if (broken_) return MakeError(Fail("read", 0, "connection is broken"));
  KVT_DCHECK_MSG(!in_bulk_, "ReadReply inside a streamed bulk string");
  void* reply = nullptr;
  errno = 0;
  int rc = redisGetReply(context_, &reply);
  int err = errno;
  if (rc != REDIS_OK || reply == nullptr) {
    if (reply != nullptr) freeReplyObject(reply);
    switch (context_->err) {
      case REDIS_ERR_EOF:
        return MakeError(Fail("read", 0, "the server closed the connection"));
      case REDIS_ERR_IO:
        return MakeError(Fail("read", err, context_->errstr));
      default:
        return MakeError(Fail("read", 0, context_->err != 0 ? context_->errstr : "no reply"));
    }
  }
  return RedisReply(static_cast<redisReply*>(reply));
}

Status RedisConnection::ReadMore(size_t max) {
  char buf[16 * 1024];
  for (;;) {
    ssize_t n = ::read(context_->fd, buf, std::min(max, sizeof(buf)));
    if (n > 0) {
      if (redisReaderFeed(context_->reader, buf, static_cast<size_t>(n)) != REDIS_OK) {
        return Fail("read", 0, "out of memory in the reply parser");
      }
      return Status::OK();
    }
    if (n == 0) return Fail("read", 0, "the server closed the connection");
    if (errno == EINTR) continue;
    int err = errno;
    return Fail("read", err, std::strerror(err));
  }
}

Status RedisConnection::ReadExact(uint8_t* out, size_t n) {
  redisReader* r = context_->reader;
  size_t buffered = std::min(n, r->len - r->pos);
  if (buffered > 0) {
    std::memcpy(out, r->buf + r->pos, buffered);
    r->pos += buffered;
    if (r->pos == r->len) EmptyReaderBuffer(r);
  }
  size_t done = buffered;
  while (done < n) {
    ssize_t got = ::read(context_->fd, out + done, n - done);
    if (got > 0) {
      done += static_cast<size_t>(got);
      continue;
    }
    if (got == 0) return Fail("read", 0, "the server closed the connection");
    if (errno == EINTR) continue;
    int err = errno;
    return Fail("read", err, std::strerror(err));
  }
  return Status::OK();
}

Result<std::variant<uint64_t, RedisReply>> RedisConnection::ReadBulkStart() {
  if (broken_) return MakeError(Fail("read", 0, "connection is broken"));
  KVT_DCHECK_MSG(!in_bulk_, "ReadBulkStart inside a streamed bulk string");
  redisReader* r = context_->reader;
  for (;;) {
    RespBulkHeader head = ParseRespBulkHeader(std::string_view(r->buf + r->pos, r->len - r->pos));
    switch (head.kind) {
      case RespBulkHeader::Kind::kOther: {
        KVT_ASSIGN_OR_RETURN(RedisReply reply, ReadReply());  // hiredis parses the rest
        return reply;
      }
      case RespBulkHeader::Kind::kInvalid:
        return MakeError(Fail("read", 0, "protocol error: bad bulk string length"));
      case RespBulkHeader::Kind::kBulk:
        r->pos += head.header_size;
        if (r->pos == r->len) EmptyReaderBuffer(r);
        in_bulk_ = true;
        bulk_left_ = head.length;
        return head.length;
      case RespBulkHeader::Kind::kNeedMore:
        KVT_RETURN_IF_ERROR(ReadMore(size_t{16} << 10));
        break;
    }
  }
}

Status RedisConnection::ReadBulkBody(std::span<uint8_t> out) {
  KVT_DCHECK(in_bulk_ && out.size() <= bulk_left_);
  if (broken_) return Fail("read", 0, "connection is broken");
  KVT_RETURN_IF_ERROR(ReadExact(out.data(), out.size()));
  bulk_left_ -= out.size();
  return Status::OK();
}

Status RedisConnection::SkipBulkBody(uint64_t bytes) {
  std::vector<uint8_t> scratch(std::min<uint64_t>(bytes, uint64_t{256} << 10));
  while (bytes > 0) {
    size_t n = static_cast<size_t>(std::min<uint64_t>(bytes, scratch.size()));
    KVT_RETURN_IF_ERROR(ReadBulkBody(std::span(scratch).first(n)));
    bytes -= n;
  }
  return Status::OK();
}

Status RedisConnection::FinishBulk() {
  KVT_DCHECK(in_bulk_ && bulk_left_ == 0);
  if (broken_) return Fail("read", 0, "connection is broken");
  uint8_t crlf[2];
  KVT_RETURN_IF_ERROR(ReadExact(crlf, 2));
  in_bulk_ = false;
  if (crlf[0] != '\r' || crlf[1] != '\n') {
    return Fail("read", 0, "protocol error: bulk string not terminated by CRLF");
  }
  return Status::OK();
}

Result<RedisReply> RedisConnection::Command(std::initializer_list<std::string_view> args) {
  Append(args);
  KVT_RETURN_IF_ERROR(Flush());
  return ReadReply();
}

RespBulkHeader ParseRespBulkHeader(std::string_view received) {
  using Kind = RespBulkHeader::Kind;
  // Longest valid first line: '$', 18 digits, CRLF.
  constexpr size_t kMaxLine = 21;
  if (received.empty()) return {Kind::kNeedMore};
  if (received[0] != '$') return {Kind::kOther};
  if (received.size() < 2) return {Kind::kNeedMore};
  if (received[1] == '-') return {Kind::kOther};
  size_t eol = received.substr(0, kMaxLine).find("\r\n");
  if (eol == std::string_view::npos) {
    return {received.size() >= kMaxLine ? Kind::kInvalid : Kind::kNeedMore};
  }
  std::string_view digits = received.substr(1, eol - 1);
  if (digits.empty() || digits.size() > 18) return {Kind::kInvalid};
  uint64_t length = 0;
  for (char ch : digits) {
    if (ch < '0' || ch > '9') return {Kind::kInvalid};
    length = length * 10 + static_cast<uint64_t>(ch - '0');
  }
  return {Kind::kBulk, length, eol + 2};
}

Status RedisErrorReplyStatus(std::string_view endpoint, std::string_view what,
                             std::string_view message) {
  std::string text = fmt::format("redis {}: {}: {}", endpoint, what, message);
  if (StartsWith(message, "OOM")) return Status::ResourceExhausted(std::move(text));
  if (StartsWith(message, "NOAUTH") || StartsWith(message, "NOPERM") ||
      StartsWith(message, "WRONGPASS")) {
    return Status(StatusCode::kPermissionDenied, std::move(text));
  }
  if (StartsWith(message, "LOADING") || StartsWith(message, "BUSY") ||
      StartsWith(message, "READONLY") || StartsWith(message, "MASTERDOWN") ||
      StartsWith(message, "TRYAGAIN")) {
    return Status::Unavailable(std::move(text));
  }
  return Status::IOError(std::move(text));
}

}  // namespace kvtier::l2
