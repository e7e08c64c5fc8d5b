#include "kvtier/common/status.h"

#include <fmt/format.h>

namespace kvtier {

std::string StatusCodeName(StatusCode code) {
  switch (code) {
#define KVT_STATUS_NAME(name) \
  case StatusCode::k##name:   \
    return #name;
    KVT_STATUS_NAME(Ok)
    KVT_STATUS_NAME(InvalidArgument)
    KVT_STATUS_NAME(NotFound)
    KVT_STATUS_NAME(AlreadyExists)
    KVT_STATUS_NAME(OutOfMemory)
    KVT_STATUS_NAME(Timeout)
    KVT_STATUS_NAME(Internal)
    KVT_STATUS_NAME(Unavailable)
    KVT_STATUS_NAME(Cancelled)
    KVT_STATUS_NAME(NotSupported)
    KVT_STATUS_NAME(FailedPrecondition)
    KVT_STATUS_NAME(ResourceExhausted)
    KVT_STATUS_NAME(IOError)
    KVT_STATUS_NAME(Corruption)
    KVT_STATUS_NAME(OutOfRange)
    KVT_STATUS_NAME(PermissionDenied)
    KVT_STATUS_NAME(LockTimeout)
    KVT_STATUS_NAME(FutureAlreadySet)
    KVT_STATUS_NAME(FutureBroken)
    KVT_STATUS_NAME(InvalidKey)
    KVT_STATUS_NAME(HashError)
    KVT_STATUS_NAME(PoolCreateFailed)
    KVT_STATUS_NAME(AllocationFailed)
    KVT_STATUS_NAME(L1KeyNotExist)
    KVT_STATUS_NAME(L1KeyNotReadable)
    KVT_STATUS_NAME(L1KeyNotWritable)
    KVT_STATUS_NAME(L1KeyInWrongState)
    KVT_STATUS_NAME(L1KeyIsLocked)
    KVT_STATUS_NAME(ProtocolError)
    KVT_STATUS_NAME(UnsupportedVersion)
    KVT_STATUS_NAME(UnknownOpcode)
#undef KVT_STATUS_NAME
  }
  return fmt::format("Unknown({})", static_cast<int32_t>(code));
}

Status::Status(StatusCode code, std::string message, bool retryable) {
  if (code != StatusCode::kOk) {
    state_ = std::make_unique<State>(State{code, retryable, std::move(message)});
  }
}

Status::Status(const Status& other)
    : state_(other.state_ ? std::make_unique<State>(*other.state_) : nullptr) {}

Status& Status::operator=(const Status& other) {
  if (this != &other) {
    state_ = other.state_ ? std::make_unique<State>(*other.state_) : nullptr;
  }
  return *this;
}

std::string_view Status::message() const noexcept {
  return state_ ? std::string_view{state_->message} : std::string_view{};
}

std::string Status::ToString() const {
  if (ok()) return "OK";
  return fmt::format("{}: {}", StatusCodeName(state_->code), state_->message);
}

Status Status::WithContext(std::string_view context) const {
  if (ok()) return Status();
  return Status(state_->code, fmt::format("{}: {}", context, state_->message), state_->retryable);
}

}  // namespace kvtier
