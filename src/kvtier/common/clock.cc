#include "kvtier/common/clock.h"

namespace kvtier {

TimePoint DeadlineFrom(Timeout timeout) {
  if (!timeout) return TimePoint::max();
  auto now = std::chrono::steady_clock::now();
  // Saturate instead of overflowing on huge timeouts.
  if (*timeout > TimePoint::max() - now) return TimePoint::max();
  return now + *timeout;
}

Clock* Clock::Real() {
  static RealClock clock;
  return &clock;
}

}  // namespace kvtier
