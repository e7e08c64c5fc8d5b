// The `kvtier bench <suite>` harness.
//
// A suite measures some rates and, in the same run, a baseline for each (memcpy, std::mutex,
// raw disk...), and reports value / baseline as the ratio: absolute times on shared machines
// are noise, ratios much less so. Human output is a table (and a progress bar on stderr for
// anything that runs more than a few seconds); with --json the last stdout line is
//   {"suite": str, "results": [{"name", "value", "unit", "baseline_name", "baseline", "ratio"}]}
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <vector>

#include "kvtier/common/status.h"

namespace kvtier::bench {

struct SuiteOptions {
  bool json = false;
  // Shorter runs and smaller sizes: a smoke run for CI and tests, not for reported numbers.
  bool quick = false;
  // Minimum wall time of each timed measurement.
  double min_seconds = 1.0;
};

struct Measurement {
  std::string name;
  double value = 0;
  std::string unit;
  std::optional<std::string> baseline_name;
  std::optional<double> baseline;
  // value / baseline when both exist and baseline != 0.
  std::optional<double> ratio() const;
};

class Reporter {
 public:
  explicit Reporter(std::string suite) : suite_(std::move(suite)) {}
  void Add(Measurement m) { results_.push_back(std::move(m)); }
  const std::vector<Measurement>& results() const { return results_; }
  const std::string& suite() const { return suite_; }
  // One JSON object on one line (the --json contract).
  std::string ToJson() const;
  // An aligned table for people.
  std::string ToTable() const;

 private:
  std::string suite_;
  std::vector<Measurement> results_;
};

// A progress bar on stderr (only when stderr is a terminal and output is not JSON).
class Progress {
 public:
  Progress(std::string label, size_t total_steps, bool enabled);
  ~Progress();
  void Step(size_t n = 1);

 private:
  void Draw();
  std::string label_;
  size_t total_;
  size_t done_ = 0;
  bool enabled_;
};

// Runs `batch` (which performs some operations and returns how many) repeatedly until at
// least `min_seconds` passed; returns operations per second.
double MeasureRate(const std::function<uint64_t()>& batch, double min_seconds);

// Runs `body(thread_index)` on `threads` threads, all released at once; each returns its
// operation count. Runs for at least `min_seconds` (each body must loop until *stop is true).
// Returns total operations per second across threads.
double MeasureRateThreads(int threads, double min_seconds,
                          const std::function<uint64_t(int, const std::atomic<bool>* stop)>& body);

using SuiteFn = std::function<Status(const SuiteOptions&, Reporter*)>;

struct Suite {
  std::string name;
  std::string description;
  SuiteFn run;
};

// Every suite, in the order `kvtier bench --list` shows them. Defined in suites.cc.
const std::vector<Suite>& AllSuites();

}  // namespace kvtier::bench
