// MessagingFuture<T> / Promise<T>: the result of an asynchronous request (LMCache's
// MessagingFuture). The transport holds the Promise and completes it once, with a value or an
// error; callers hold MessagingFuture copies and query, wait for or read the result.
//
//   Promise<Reply> promise;
//   MessagingFuture<Reply> future = promise.GetFuture();
//   ... on the I/O thread: promise.SetValue(reply);
//   ... on the caller:     KVT_ASSIGN_OR_RETURN(Reply r, future.Result(5s));
//
// Every member of both types may be called from any thread. A Promise destroyed before it was
// completed completes its future with kFutureBroken, so no waiter hangs forever.
#pragma once

#include <atomic>
#include <functional>
#include <memory>
#include <optional>
#include <type_traits>
#include <utility>
#include <variant>
#include <vector>

#include <fmt/format.h>

#include "kvtier/common/check.h"
#include "kvtier/common/clock.h"
#include "kvtier/common/mutex.h"
#include "kvtier/common/result.h"
#include "kvtier/common/status.h"
#include "kvtier/common/thread_annotations.h"
#include "kvtier/common/units.h"

namespace kvtier::sync {

namespace internal {

// State shared by a Promise and its futures; lives as long as any of them.
template <typename T>
class FutureState {
 public:
  using Value = std::conditional_t<std::is_void_v<T>, std::monostate, T>;

  // Completes the state once; false (and no change) when already complete. Runs the OnReady
  // callbacks on this thread, after the result is visible to every waiter.
  bool Complete(::kvtier::Result<T> result) KVT_EXCLUDES(mu_) {
    std::vector<std::function<void()>> callbacks;
    {
      MutexLock lock(&mu_);
      if (result_.has_value()) return false;
      result_.emplace(std::move(result));
      ready_.store(true, std::memory_order_release);
      callbacks.swap(callbacks_);
      cv_.NotifyAll();
    }
    for (auto& callback : callbacks) callback();
    return true;
  }

  bool ready() const { return ready_.load(std::memory_order_acquire); }

  bool Wait(Timeout timeout) const KVT_EXCLUDES(mu_) {
    if (ready()) return true;
    if (timeout && *timeout <= Duration::zero()) return false;
    const TimePoint deadline = DeadlineFrom(timeout);
    MutexLock lock(&mu_);
    while (!result_.has_value()) {
      if (deadline == TimePoint::max()) {
        cv_.Wait(&mu_);
      } else if (!cv_.WaitUntil(&mu_, deadline)) {
        break;
      }
    }
    return result_.has_value();
  }

  // The stored result; the state must be complete.
  ::kvtier::Result<T> Get() const KVT_EXCLUDES(mu_) {
    MutexLock lock(&mu_);
    return *result_;
  }

  void Retain(std::shared_ptr<const void> ref) KVT_EXCLUDES(mu_) {
    MutexLock lock(&mu_);
    retained_.push_back(std::move(ref));
  }

  void OnReady(std::function<void()> callback) KVT_EXCLUDES(mu_) {
    {
      MutexLock lock(&mu_);
      if (!result_.has_value()) {
        callbacks_.push_back(std::move(callback));
        return;
      }
    }
    callback();
  }

 private:
  mutable Mutex mu_;
  mutable CondVar cv_;
  // Set (release) after result_, so a true ready() means result_ is readable.
  std::atomic<bool> ready_{false};
  std::optional<::kvtier::Result<T>> result_ KVT_GUARDED_BY(mu_);
  std::vector<std::function<void()>> callbacks_ KVT_GUARDED_BY(mu_);
  std::vector<std::shared_ptr<const void>> retained_ KVT_GUARDED_BY(mu_);
};

}  // namespace internal

template <typename T>
class Promise;

// A copyable handle to the result of one request. A default-constructed future is invalid
// (valid() is false) and may only be assigned to or destroyed.
template <typename T>
class MessagingFuture {
 public:
  MessagingFuture() = default;

  bool valid() const { return state_ != nullptr; }

  // True when the result (a value or an error) is available. Never blocks.
  bool Query() const { return state_->ready(); }

  // Waits for the result until `timeout`; true when it is available.
  bool Wait(Timeout timeout = kWaitForever) const { return state_->Wait(timeout); }

  // A copy of the result: the value, the producer's error as it was set, or a kTimeout error
  // when the result was not available within `timeout`. May be called any number of times.
  ::kvtier::Result<T> Result(Timeout timeout = kWaitForever) const {
    if (!state_->Wait(timeout)) {
      return MakeError(Status::Timeout(fmt::format(
          "result was not available within the timeout ({})", FormatDuration(*timeout))));
    }
    return state_->Get();
  }

  // Keeps `ref` alive as long as this future, any copy of it, or its promise exists (e.g. an
  // exported IPC event or a buffer that the producer still writes).
  void RetainReference(std::shared_ptr<const void> ref) const { state_->Retain(std::move(ref)); }

  // Runs `callback` once the result is available: on the thread that completes the promise, or
  // right here when it already is. The callback must not block; it may read this future.
  void OnReady(std::function<void()> callback) const { state_->OnReady(std::move(callback)); }

 private:
  friend class Promise<T>;
  explicit MessagingFuture(std::shared_ptr<internal::FutureState<T>> state)
      : state_(std::move(state)) {}

  std::shared_ptr<internal::FutureState<T>> state_;
};

// The producer side: completes its futures exactly once. Move-only. SetValue/SetError may race
// from several threads (exactly one wins), but not with the promise's destruction or move.
template <typename T>
class Promise {
 public:
  using Value = typename internal::FutureState<T>::Value;

  Promise() : state_(std::make_shared<internal::FutureState<T>>()) {}
  Promise(Promise&& other) noexcept = default;
  Promise& operator=(Promise&& other) noexcept {
    if (this != &other) {
      Break();
      state_ = std::move(other.state_);
    }
    return *this;
  }
  Promise(const Promise&) = delete;
  Promise& operator=(const Promise&) = delete;
  ~Promise() { Break(); }

  // Any number of futures may be taken; all share the one result. The promise must be valid
  // (not moved from).
  MessagingFuture<T> GetFuture() const { return MessagingFuture<T>(state_); }

  // Complete with a value (or, for Promise<void>, with success). False, and nothing changes,
  // when the promise was already completed.
  bool SetValue(Value value) requires(!std::is_void_v<T>) {
    return state_->Complete(::kvtier::Result<T>(std::move(value)));
  }
  bool SetValue() requires std::is_void_v<T> { return state_->Complete(::kvtier::Result<T>()); }
  // Complete with an error (`status` must not be OK). False when already completed.
  bool SetError(Status status) {
    KVT_DCHECK_MSG(!status.ok(), "Promise::SetError with an OK status");
    return state_->Complete(MakeError(std::move(status)));
  }

  bool is_ready() const { return state_->ready(); }

 private:
  void Break() {
    if (state_ != nullptr && !state_->ready()) {
      state_->Complete(MakeError(
          Status(StatusCode::kFutureBroken, "promise destroyed without setting a result")));
    }
  }

  std::shared_ptr<internal::FutureState<T>> state_;
};

}  // namespace kvtier::sync
