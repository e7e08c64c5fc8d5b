// DeviceFuture<T>: a MessagingFuture whose reply also carries a CUDA IPC event handle, recorded
// by the server after the GPU work that the reply describes (LMCache's DeviceMessagingFuture).
// The result is ready when the reply arrived *and* the event completed, so the caller can read
// the GPU data the moment Result() returns.
//
// Only in builds with KVT_WITH_CUDA. The exporting process must stay alive while the event is
// in use (an IPC event handle is valid only as long as its exporter).
#pragma once

#include <array>
#include <cstdint>
#include <memory>
#include <optional>
#include <utility>

#include "kvtier/common/clock.h"
#include "kvtier/common/mutex.h"
#include "kvtier/common/result.h"
#include "kvtier/common/thread_annotations.h"
#include "kvtier/sync/messaging_future.h"

namespace kvtier::sync {

inline constexpr size_t kCudaIpcHandleSize = 64;  // CUDA_IPC_HANDLE_SIZE
using CudaIpcEventHandle = std::array<uint8_t, kCudaIpcHandleSize>;

// The wire reply of a GPU operation: the exported event (cudaIpcGetEventHandle) and the value.
// No event: the server enqueued no GPU work (nothing to copy), so the value is final as is.
template <typename T>
struct DeviceReply {
  std::optional<CudaIpcEventHandle> event_ipc_handle;
  T value{};
};

// A CUDA event imported from another process. Move-only; destroys the event.
class IpcEvent {
 public:
  // Imports `handle` on `device` (-1: the calling thread's current device).
  static Result<IpcEvent> Open(const CudaIpcEventHandle& handle, int device);

  IpcEvent(IpcEvent&& other) noexcept : event_(std::exchange(other.event_, nullptr)) {}
  IpcEvent& operator=(IpcEvent&& other) noexcept;
  IpcEvent(const IpcEvent&) = delete;
  IpcEvent& operator=(const IpcEvent&) = delete;
  ~IpcEvent();

  // True when the recorded work has completed. Never blocks.
  Result<bool> Query() const;
  // Blocks until the recorded work has completed.
  Status Synchronize() const;

 private:
  explicit IpcEvent(void* event) : event_(event) {}
  void* event_;  // cudaEvent_t
};

// A copyable handle, like MessagingFuture. A default-constructed one is invalid.
template <typename T>
class DeviceFuture {
 public:
  DeviceFuture() = default;
  // `device`: where to import the event (-1: the current device of the thread that first
  // queries or waits).
  explicit DeviceFuture(MessagingFuture<DeviceReply<T>> raw, int device = -1)
      : state_(std::make_shared<State>(std::move(raw), device)) {}

  bool valid() const { return state_ != nullptr; }

  // True when the reply arrived and its event completed (or the result is an error). Never
  // blocks.
  bool Query() const {
    if (!state_->raw.Query()) return false;
    auto event = Event();
    if (!event || *event == nullptr) return true;
    auto done = (*event)->Query();
    return !done || *done;
  }

  // `timeout` bounds the wait for the reply only; then this synchronises on the event, without
  // a bound. True when the result is available.
  bool Wait(Timeout timeout = kWaitForever) const {
    if (!state_->raw.Wait(timeout)) return false;
    auto event = Event();
    if (event && *event != nullptr) (*event)->Synchronize().IgnoreError();  // Result() reports it
    return true;
  }

  // The value; the producer's error; a CUDA error; or kTimeout when the reply did not arrive
  // within `timeout`.
  ::kvtier::Result<T> Result(Timeout timeout = kWaitForever) const {
    KVT_ASSIGN_OR_RETURN(DeviceReply<T> reply, state_->raw.Result(timeout));
    KVT_ASSIGN_OR_RETURN(const IpcEvent* event, Event());
    if (event != nullptr) KVT_RETURN_IF_ERROR(event->Synchronize());
    return std::move(reply.value);
  }

  void RetainReference(std::shared_ptr<const void> ref) const {
    state_->raw.RetainReference(std::move(ref));
  }

 private:
  struct State {
    State(MessagingFuture<DeviceReply<T>> r, int d) : raw(std::move(r)), device(d) {}
    const MessagingFuture<DeviceReply<T>> raw;
    const int device;
    Mutex mu;
    std::optional<::kvtier::Result<IpcEvent>> event KVT_GUARDED_BY(mu);
    bool no_event KVT_GUARDED_BY(mu) = false;
  };

  // The imported event, opened on first use (nullptr when the reply carries none); the raw
  // future must be ready. Stays valid while this future's state lives.
  ::kvtier::Result<const IpcEvent*> Event() const {
    MutexLock lock(&state_->mu);
    if (!state_->event.has_value()) {
      auto reply = state_->raw.Result(Duration::zero());
      if (!reply) {
        state_->event.emplace(MakeError(std::move(reply).error()));
      } else if (!reply->event_ipc_handle.has_value()) {
        state_->no_event = true;
        state_->event.emplace(MakeError(Status::NotFound("no event")));
      } else {
        state_->event.emplace(IpcEvent::Open(*reply->event_ipc_handle, state_->device));
      }
    }
    if (state_->no_event) return static_cast<const IpcEvent*>(nullptr);
    if (!*state_->event) return MakeError(state_->event->error());
    return &**state_->event;
  }

  std::shared_ptr<State> state_;
};

}  // namespace kvtier::sync
