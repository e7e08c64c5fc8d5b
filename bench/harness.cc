#include "harness.h"

#include <algorithm>
#include <cstdio>
#include <thread>

#include <fmt/format.h>
#include <nlohmann/json.hpp>
#include <unistd.h>

namespace kvtier::bench {

using Clock = std::chrono::steady_clock;

std::optional<double> Measurement::ratio() const {
  if (!baseline || *baseline == 0) return std::nullopt;
  return value / *baseline;
}

std::string Reporter::ToJson() const {
  nlohmann::json results = nlohmann::json::array();
  for (const Measurement& m : results_) {
    nlohmann::json r;
    r["name"] = m.name;
    r["value"] = m.value;
    r["unit"] = m.unit;
    r["baseline_name"] = m.baseline_name ? nlohmann::json(*m.baseline_name) : nlohmann::json();
    r["baseline"] = m.baseline ? nlohmann::json(*m.baseline) : nlohmann::json();
    auto ratio = m.ratio();
    r["ratio"] = ratio ? nlohmann::json(*ratio) : nlohmann::json();
    results.push_back(std::move(r));
  }
  nlohmann::json out;
  out["suite"] = suite_;
  out["results"] = std::move(results);
  return out.dump();
}

namespace {
std::string Num(double v) {
  if (v == 0) return "0";
  double a = std::abs(v);
  if (a >= 1e9) return fmt::format("{:.3g}", v);
  if (a >= 100) return fmt::format("{:.0f}", v);
  if (a >= 1) return fmt::format("{:.2f}", v);
  return fmt::format("{:.4f}", v);
}
}  // namespace

std::string Reporter::ToTable() const {
  std::vector<std::vector<std::string>> rows;
  rows.push_back({"benchmark", "value", "unit", "baseline", "baseline value", "ratio"});
  for (const Measurement& m : results_) {
    auto ratio = m.ratio();
    rows.push_back({m.name, Num(m.value), m.unit, m.baseline_name.value_or("-"),
                    m.baseline ? Num(*m.baseline) : "-",
                    ratio ? fmt::format("{:.3f}", *ratio) : "-"});
  }
  std::vector<size_t> width(rows[0].size(), 0);
  for (const auto& row : rows) {
    for (size_t i = 0; i < row.size(); ++i) width[i] = std::max(width[i], row[i].size());
  }
  std::string out = fmt::format("suite: {}\n", suite_);
  for (size_t r = 0; r < rows.size(); ++r) {
    for (size_t i = 0; i < rows[r].size(); ++i) {
      // Text columns left-aligned, numbers right-aligned.
      bool left = i == 0 || i == 2 || i == 3;
      out += left ? fmt::format("{:<{}}  ", rows[r][i], width[i])
                  : fmt::format("{:>{}}  ", rows[r][i], width[i]);
    }
    out.back() = '\n';
    if (r == 0) {
      size_t total = 0;
      for (size_t w : width) total += w + 2;
      out += std::string(total - 2, '-') + "\n";
    }
  }
  return out;
}

Progress::Progress(std::string label, size_t total_steps, bool enabled)
    : label_(std::move(label)),
      total_(std::max<size_t>(total_steps, 1)),
      enabled_(enabled && ::isatty(STDERR_FILENO)) {
  Draw();
}

Progress::~Progress() {
  if (enabled_) std::fprintf(stderr, "\r\033[K");
}

void Progress::Step(size_t n) {
  done_ = std::min(total_, done_ + n);
  Draw();
}

void Progress::Draw() {
  if (!enabled_) return;
  constexpr int kWidth = 30;
  int filled = static_cast<int>(kWidth * done_ / total_);
  std::fprintf(stderr, "\r\033[K%s [%s%s] %zu/%zu", label_.c_str(),
               std::string(filled, '#').c_str(), std::string(kWidth - filled, '.').c_str(), done_,
               total_);
  std::fflush(stderr);
}

double MeasureRate(const std::function<uint64_t()>& batch, double min_seconds) {
  batch();  // warm-up: caches, page faults, lazy initialisation
  uint64_t ops = 0;
  auto start = Clock::now();
  auto min = std::chrono::duration<double>(min_seconds);
  Clock::duration elapsed;
  do {
    ops += batch();
    elapsed = Clock::now() - start;
  } while (elapsed < min);
  return static_cast<double>(ops) / std::chrono::duration<double>(elapsed).count();
}

double MeasureRateThreads(int threads, double min_seconds,
                          const std::function<uint64_t(int, const std::atomic<bool>*)>& body) {
  std::atomic<bool> stop{false};
  std::atomic<int> ready{0};
  std::atomic<bool> go{false};
  std::vector<uint64_t> ops(threads, 0);
  std::vector<std::thread> pool;
  pool.reserve(threads);
  for (int t = 0; t < threads; ++t) {
    pool.emplace_back([&, t] {
      ready.fetch_add(1);
      while (!go.load(std::memory_order_acquire)) std::this_thread::yield();
      ops[t] = body(t, &stop);
    });
  }
  while (ready.load() != threads) std::this_thread::yield();
  auto start = Clock::now();
  go.store(true, std::memory_order_release);
  // The timer thread is the waiting thread: one sleep to bound a measurement window is the
  // measurement itself, not synchronisation.
  std::this_thread::sleep_for(std::chrono::duration<double>(min_seconds));
  stop.store(true, std::memory_order_release);
  for (auto& th : pool) th.join();
  double secs = std::chrono::duration<double>(Clock::now() - start).count();
  uint64_t total = 0;
  for (uint64_t o : ops) total += o;
  return static_cast<double>(total) / secs;
}

}  // namespace kvtier::bench
