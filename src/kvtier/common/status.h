// Status: the one error model of kvtier.
//
// An OK Status holds no allocation (a null pointer), so the success path is free. An error
// carries a stable numeric code, a message and a retryable flag. Codes are grouped by
// subsystem in ranges (Mooncake-style) and never renumbered: they travel on the wire and map
// one-to-one to Python exceptions.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>

namespace kvtier {

// Stable numbers. Append only; never reuse or renumber a value.
enum class StatusCode : int32_t {
  kOk = 0,
  // General (1-99).
  kInvalidArgument = 1,
  kNotFound = 2,
  kAlreadyExists = 3,
  kOutOfMemory = 4,
  kTimeout = 5,
  kInternal = 6,
  kUnavailable = 7,
  kCancelled = 8,
  kNotSupported = 9,
  kFailedPrecondition = 10,
  kResourceExhausted = 11,
  kIOError = 12,
  kCorruption = 13,
  kOutOfRange = 14,
  kPermissionDenied = 15,
  // sync/ (100-199).
  kLockTimeout = 100,
  kFutureAlreadySet = 101,
  kFutureBroken = 102,
  // keys/ (200-299).
  kInvalidKey = 200,
  kHashError = 201,
  // memory/ (300-399).
  kPoolCreateFailed = 300,
  kAllocationFailed = 301,
  // l1/ (400-499).
  kL1KeyNotExist = 400,
  kL1KeyNotReadable = 401,
  kL1KeyNotWritable = 402,
  kL1KeyInWrongState = 403,
  kL1KeyIsLocked = 404,
  // server/protocol (800-899).
  kProtocolError = 800,       // a malformed message
  kUnsupportedVersion = 801,  // a protocol version the peer does not speak
  kUnknownOpcode = 802,
  // l2/ (500-599), storage/ (600-699), transfer/ (700-799) and cluster/ (900-999) are
  // reserved for their modules.
};

// "kInvalidArgument" -> "InvalidArgument"; unknown values give "Unknown(<n>)".
std::string StatusCodeName(StatusCode code);

class [[nodiscard]] Status {
 public:
  Status() noexcept = default;
  Status(StatusCode code, std::string message, bool retryable = false);
  Status(const Status& other);
  Status& operator=(const Status& other);
  Status(Status&&) noexcept = default;
  Status& operator=(Status&&) noexcept = default;
  ~Status() = default;

  static Status OK() { return Status(); }
  static Status InvalidArgument(std::string msg) {
    return {StatusCode::kInvalidArgument, std::move(msg)};
  }
  static Status NotFound(std::string msg) { return {StatusCode::kNotFound, std::move(msg)}; }
  static Status AlreadyExists(std::string msg) {
    return {StatusCode::kAlreadyExists, std::move(msg)};
  }
  static Status OutOfMemory(std::string msg) {
    return {StatusCode::kOutOfMemory, std::move(msg), true};
  }
  static Status Timeout(std::string msg) { return {StatusCode::kTimeout, std::move(msg), true}; }
  static Status Internal(std::string msg) { return {StatusCode::kInternal, std::move(msg)}; }
  static Status Unavailable(std::string msg) {
    return {StatusCode::kUnavailable, std::move(msg), true};
  }
  static Status Cancelled(std::string msg) { return {StatusCode::kCancelled, std::move(msg)}; }
  static Status NotSupported(std::string msg) {
    return {StatusCode::kNotSupported, std::move(msg)};
  }
  static Status FailedPrecondition(std::string msg) {
    return {StatusCode::kFailedPrecondition, std::move(msg)};
  }
  static Status ResourceExhausted(std::string msg) {
    return {StatusCode::kResourceExhausted, std::move(msg), true};
  }
  static Status IOError(std::string msg, bool retryable = false) {
    return {StatusCode::kIOError, std::move(msg), retryable};
  }
  static Status Corruption(std::string msg) { return {StatusCode::kCorruption, std::move(msg)}; }
  static Status OutOfRange(std::string msg) { return {StatusCode::kOutOfRange, std::move(msg)}; }
  static Status LockTimeout(std::string msg) {
    return {StatusCode::kLockTimeout, std::move(msg), true};
  }

  bool ok() const noexcept { return state_ == nullptr; }
  StatusCode code() const noexcept { return state_ ? state_->code : StatusCode::kOk; }
  // Empty for OK.
  std::string_view message() const noexcept;
  // Whether trying the same operation again later may succeed.
  bool retryable() const noexcept { return state_ != nullptr && state_->retryable; }
  // "OK" or "<CodeName>: <message>".
  std::string ToString() const;

  // Returns a copy whose message is "<context>: <message>". OK stays OK.
  Status WithContext(std::string_view context) const;

  // Marks a deliberately ignored Status so the intent is greppable.
  void IgnoreError() const noexcept {}

  friend bool operator==(const Status& a, const Status& b) noexcept {
    return a.code() == b.code() && a.message() == b.message();
  }

 private:
  struct State {
    StatusCode code;
    bool retryable;
    std::string message;
  };
  std::unique_ptr<State> state_;
};

}  // namespace kvtier
