#include "kvtier/sync/event_fd.h"

#include <cerrno>
#include <chrono>
#include <latch>
#include <thread>

#include <fcntl.h>
#include <gtest/gtest.h>
#include <poll.h>

namespace kvtier::sync {
namespace {

using std::chrono::milliseconds;
using std::chrono::seconds;
using SteadyClock = std::chrono::steady_clock;

bool Readable(int fd) {
  pollfd p{fd, POLLIN, 0};
  return ::poll(&p, 1, 0) == 1 && (p.revents & POLLIN) != 0;
}

TEST(EventFdTest, CreateGivesAValidNonBlockingCloseOnExecFd) {
  auto efd = EventFd::Create();
  ASSERT_TRUE(efd.has_value()) << efd.error().ToString();
  EXPECT_TRUE(efd->valid());
  int flags = ::fcntl(efd->fd(), F_GETFL);
  EXPECT_NE(flags & O_NONBLOCK, 0);
  EXPECT_NE(::fcntl(efd->fd(), F_GETFD) & FD_CLOEXEC, 0);
}

TEST(EventFdTest, DefaultIsInvalid) {
  EventFd efd;
  EXPECT_FALSE(efd.valid());
  EXPECT_EQ(efd.fd(), -1);
}

TEST(EventFdTest, SignalsAccumulateUntilDrained) {
  auto efd = EventFd::Create().value();
  EXPECT_EQ(efd.Drain(), 0u);
  EXPECT_FALSE(Readable(efd.fd()));
  efd.Signal();
  efd.Signal(3);
  EXPECT_TRUE(Readable(efd.fd()));
  EXPECT_TRUE(efd.WaitFor(Duration::zero()));
  EXPECT_TRUE(efd.WaitFor(Duration::zero())) << "WaitFor must not drain";
  EXPECT_EQ(efd.Drain(), 4u);
  EXPECT_EQ(efd.Drain(), 0u);
  EXPECT_FALSE(Readable(efd.fd()));
  EXPECT_FALSE(efd.WaitFor(Duration::zero()));
}

TEST(EventFdTest, WaitForTimesOut) {
  auto efd = EventFd::Create().value();
  auto start = SteadyClock::now();
  EXPECT_FALSE(efd.WaitFor(milliseconds(30)));
  EXPECT_GE(SteadyClock::now() - start, milliseconds(30));
}

TEST(EventFdTest, SignalFromAnotherThreadWakesWaiter) {
  auto efd = EventFd::Create().value();
  std::latch waiting(1);
  std::thread signaller([&] {
    waiting.wait();
    efd.Signal(2);
  });
  waiting.count_down();
  EXPECT_TRUE(efd.WaitFor(kWaitForever));
  signaller.join();
  EXPECT_EQ(efd.Drain(), 2u);

  std::thread again([&] { efd.Signal(); });
  EXPECT_TRUE(efd.WaitFor(seconds(30)));
  again.join();
  EXPECT_EQ(efd.Drain(), 1u);
}

TEST(EventFdTest, MoveTransfersOwnership) {
  auto a = EventFd::Create().value();
  int fd = a.fd();
  EventFd b(std::move(a));
  EXPECT_FALSE(a.valid());
  EXPECT_EQ(b.fd(), fd);
  b.Signal();

  auto c = EventFd::Create().value();
  int c_fd = c.fd();
  c = std::move(b);
  EXPECT_EQ(c.fd(), fd);
  EXPECT_FALSE(b.valid());
  EXPECT_EQ(::fcntl(c_fd, F_GETFD), -1) << "the overwritten eventfd must be closed";
  EXPECT_EQ(c.Drain(), 1u);
}

TEST(EventFdTest, DestructorClosesTheFd) {
  int fd;
  {
    auto efd = EventFd::Create().value();
    fd = efd.fd();
    EXPECT_NE(::fcntl(fd, F_GETFD), -1);
  }
  errno = 0;
  EXPECT_EQ(::fcntl(fd, F_GETFD), -1);
  EXPECT_EQ(errno, EBADF);
}

}  // namespace
}  // namespace kvtier::sync
