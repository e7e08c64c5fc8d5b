// LatencyHistogram: request latencies in fixed buckets, recorded lock-free from any thread and
// read as a Prometheus-style cumulative histogram (bucket upper bounds in seconds).
#pragma once

#include <array>
#include <atomic>
#include <cstdint>

#include "kvtier/common/clock.h"

namespace kvtier::server {

class LatencyHistogram {
 public:
  // Upper bounds of the finite buckets, in microseconds; the last bucket is +Inf.
  static constexpr std::array<uint64_t, 14> kBoundsUs = {
      50, 100, 250, 500, 1000, 2500, 5000, 10000, 25000, 50000, 100000, 250000, 1000000, 5000000};

  void Record(Duration d) {
    const int64_t us = std::chrono::duration_cast<std::chrono::microseconds>(d).count();
    const uint64_t u = us < 0 ? 0 : static_cast<uint64_t>(us);
    size_t i = 0;
    while (i < kBoundsUs.size() && u > kBoundsUs[i]) ++i;
    buckets_[i].fetch_add(1, std::memory_order_relaxed);
    sum_us_.fetch_add(u, std::memory_order_relaxed);
  }

  struct Snapshot {
    std::array<uint64_t, kBoundsUs.size() + 1> cumulative{};  // count <= bound; last: all
    uint64_t count = 0;
    double sum_seconds = 0;
  };
  Snapshot Read() const {
    Snapshot s;
    uint64_t running = 0;
    for (size_t i = 0; i < buckets_.size(); ++i) {
      running += buckets_[i].load(std::memory_order_relaxed);
      s.cumulative[i] = running;
    }
    s.count = running;
    s.sum_seconds = static_cast<double>(sum_us_.load(std::memory_order_relaxed)) / 1e6;
    return s;
  }

 private:
  std::array<std::atomic<uint64_t>, kBoundsUs.size() + 1> buckets_{};
  std::atomic<uint64_t> sum_us_{0};
};

}  // namespace kvtier::server
