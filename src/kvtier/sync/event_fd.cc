#include "kvtier/sync/event_fd.h"

#include <cerrno>
#include <cstring>
#include <utility>

#include <fmt/format.h>
#include <poll.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include "kvtier/common/check.h"

namespace kvtier::sync {

Result<EventFd> EventFd::Create() {
  int fd = ::eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
  if (fd < 0) {
    return MakeError(Status::ResourceExhausted(fmt::format("eventfd: {}", std::strerror(errno))));
  }
  return EventFd(fd);
}

EventFd::~EventFd() {
  if (fd_ >= 0) ::close(fd_);
}

EventFd::EventFd(EventFd&& other) noexcept : fd_(std::exchange(other.fd_, -1)) {}

EventFd& EventFd::operator=(EventFd&& other) noexcept {
  if (this != &other) {
    if (fd_ >= 0) ::close(fd_);
    fd_ = std::exchange(other.fd_, -1);
  }
  return *this;
}

void EventFd::Signal(uint64_t n) const {
  KVT_DCHECK(valid() && n > 0);
  while (::write(fd_, &n, sizeof(n)) < 0) {
    if (errno == EINTR) continue;
    // EAGAIN: the counter is at its maximum, so the fd is already readable.
    KVT_CHECK_MSG(errno == EAGAIN, "eventfd write: {}", std::strerror(errno));
    return;
  }
}

uint64_t EventFd::Drain() const {
  KVT_DCHECK(valid());
  uint64_t value = 0;
  while (::read(fd_, &value, sizeof(value)) < 0) {
    if (errno == EINTR) continue;
    KVT_CHECK_MSG(errno == EAGAIN, "eventfd read: {}", std::strerror(errno));
    return 0;
  }
  return value;
}

bool EventFd::WaitFor(Timeout timeout) const {
  KVT_DCHECK(valid());
  TimePoint deadline = DeadlineFrom(timeout);
  for (;;) {
    int ms = -1;
    if (deadline != TimePoint::max()) {
      auto left = deadline - std::chrono::steady_clock::now();
      // Round up so a short positive remainder still waits instead of spinning.
      ms = left <= Duration::zero()
               ? 0
               : static_cast<int>(std::min<int64_t>(
                     (std::chrono::duration_cast<std::chrono::microseconds>(left).count() + 999) /
                         1000,
                     INT32_MAX));
    }
    pollfd p{fd_, POLLIN, 0};
    int rc = ::poll(&p, 1, ms);
    if (rc > 0) return true;
    if (rc == 0) {
      if (ms == 0 || std::chrono::steady_clock::now() >= deadline) return false;
      continue;
    }
    KVT_CHECK_MSG(errno == EINTR, "poll(eventfd): {}", std::strerror(errno));
  }
}

}  // namespace kvtier::sync
