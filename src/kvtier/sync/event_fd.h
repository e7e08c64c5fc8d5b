// EventFd: an owned Linux eventfd (non-blocking, close-on-exec), the wake-up signal between
// threads in kvtier: listeners Signal(), controller threads poll() the fd and Drain() it.
#pragma once

#include <cstdint>

#include "kvtier/common/clock.h"
#include "kvtier/common/result.h"

namespace kvtier::sync {

class EventFd {
 public:
  static Result<EventFd> Create();

  EventFd() = default;  // invalid (fd() == -1) until assigned from Create()
  ~EventFd();
  EventFd(EventFd&& other) noexcept;
  EventFd& operator=(EventFd&& other) noexcept;
  EventFd(const EventFd&) = delete;
  EventFd& operator=(const EventFd&) = delete;

  bool valid() const { return fd_ >= 0; }
  int fd() const { return fd_; }

  // Adds n (> 0) to the counter; wakes pollers. Safe from any thread. Never blocks: a counter
  // at its maximum already means "signalled".
  void Signal(uint64_t n = 1) const;
  // Returns the counter and resets it to 0; 0 when it was not signalled. Never blocks.
  uint64_t Drain() const;
  // Waits until signalled or the timeout passes; true when signalled. Does not drain.
  bool WaitFor(Timeout timeout) const;

 private:
  explicit EventFd(int fd) : fd_(fd) {}
  int fd_ = -1;
};

}  // namespace kvtier::sync
