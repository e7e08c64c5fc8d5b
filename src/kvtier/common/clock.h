// Monotonic time, injectable. Everything with a TTL or an age (L1 lock TTLs, sessions, the
// liveness reaper) reads time through a Clock so tests drive it with a FakeClock instead of
// sleeping. Blocking waits with deadlines (locks, futures) use the real steady clock.
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>
#include <optional>

namespace kvtier {

using Duration = std::chrono::nanoseconds;
using TimePoint = std::chrono::steady_clock::time_point;

// A wait bound: std::nullopt waits forever, zero is a single try, anything else is relative.
using Timeout = std::optional<Duration>;
inline constexpr Timeout kWaitForever = std::nullopt;

// The absolute deadline of `timeout` measured from now; TimePoint::max() for kWaitForever.
TimePoint DeadlineFrom(Timeout timeout);

class Clock {
 public:
  virtual ~Clock() = default;
  virtual TimePoint Now() const = 0;
  // Nanoseconds since the clock's epoch: convenient for atomics and packed fields.
  int64_t NowNanos() const { return Now().time_since_epoch().count(); }

  // The process-wide real monotonic clock.
  static Clock* Real();
};

class RealClock final : public Clock {
 public:
  TimePoint Now() const override { return std::chrono::steady_clock::now(); }
};

// A clock that moves only when told to. Thread-safe.
class FakeClock final : public Clock {
 public:
  explicit FakeClock(TimePoint start = TimePoint(std::chrono::hours(1)))
      : now_(start.time_since_epoch().count()) {}
  TimePoint Now() const override {
    return TimePoint(Duration(now_.load(std::memory_order_acquire)));
  }
  void Advance(Duration d) { now_.fetch_add(d.count(), std::memory_order_acq_rel); }
  void Set(TimePoint t) { now_.store(t.time_since_epoch().count(), std::memory_order_release); }

 private:
  std::atomic<int64_t> now_;
};

}  // namespace kvtier
