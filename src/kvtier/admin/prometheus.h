// A Prometheus text-format (0.0.4) writer, written by hand because Debian 12 packages no
// prometheus-cpp. See https://prometheus.io/docs/instrumenting/exposition_formats/.
//
// The writer groups samples by family: `# HELP` and `# TYPE` appear once per family and all of
// a family's samples are contiguous, whatever order the calls came in. Families keep the order
// of their first sample.
//
// A sample that would make the output invalid is dropped, never emitted: an invalid metric or
// label name, a reserved label name ("__..."), the same label twice, a series already written,
// a family used as both counter and gauge, a negative counter. Dropping keeps one bad metric
// from failing a whole scrape; `rejected()` counts the drops and `last_error()` says why, so a
// caller can log or test them.
#pragma once

#include <cstddef>
#include <map>
#include <set>
#include <span>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

#include "kvtier/common/status.h"

namespace kvtier::admin {

// Label name/value pairs of one sample, written in the given order.
using PrometheusLabels = std::vector<std::pair<std::string, std::string>>;

// [a-zA-Z_:][a-zA-Z0-9_:]*
bool IsValidMetricName(std::string_view name);
// [a-zA-Z_][a-zA-Z0-9_]* (no colons, unlike metric names). Names starting with "__" match but
// are reserved for Prometheus itself; the writer rejects them.
bool IsValidLabelName(std::string_view name);
// A sample value as the text format spells it: integral values without exponent or fraction
// ("42", "-3", "1000000000000000"), others in the shortest form that reads back exactly
// ("0.1", "1.5e-07"), and "NaN", "+Inf", "-Inf".
std::string FormatPrometheusValue(double value);

// Not thread-safe: one writer per scrape.
class PrometheusWriter {
 public:
  // A monotonically increasing total (by convention named "..._total"); `value` >= 0.
  void Counter(std::string_view name, std::string_view help, double value,
               const PrometheusLabels& labels = {});
  // A value that goes up and down.
  void Gauge(std::string_view name, std::string_view help, double value,
             const PrometheusLabels& labels = {});

  // A histogram: `cumulative[i]` observations <= upper_bounds[i], the last entry (one past the
  // bounds) all of them (+Inf); `sum` of the observed values. Writes name_bucket{le=...},
  // name_sum and name_count. Bounds must increase, counts must not decrease.
  void Histogram(std::string_view name, std::string_view help, std::span<const double> upper_bounds,
                 std::span<const uint64_t> cumulative, double sum,
                 const PrometheusLabels& labels = {});

  // The exposition text (empty, or ending in a newline); resets the writer for reuse,
  // rejected() and last_error() included.
  std::string Finish();

  // Samples dropped so far, and the reason for the latest drop (OK when none).
  size_t rejected() const { return rejected_; }
  const Status& last_error() const { return last_error_; }

 private:
  enum class Type { kCounter, kGauge, kHistogram };
  struct Family {
    Type type;
    std::string help;                  // escaped; the first call's help wins
    std::vector<std::string> samples;  // rendered "name{labels} value" lines
    std::set<std::string> series;      // canonical (sorted) label sets, to refuse duplicates
  };

  void Add(Type type, std::string_view name, std::string_view help, double value,
           const PrometheusLabels& labels);
  void Reject(Status why);
  static const char* TypeName(Type type);
  // Validates and renders labels ("{a=\"x\"}" or ""); false (and rejected) when invalid.
  bool RenderLabels(std::string_view name, const PrometheusLabels& labels, std::string* rendered,
                    std::string* series_key);
  // The family for a new series, or null (rejected) on a type clash or a duplicate series.
  Family* FamilyFor(Type type, std::string_view name, std::string_view help,
                    const std::string& series_key, const std::string& rendered);

  std::vector<std::string> order_;  // family names in first-seen order
  std::map<std::string, Family, std::less<>> families_;
  size_t rejected_ = 0;
  Status last_error_;
};

// Writes the numeric leaves of a status JSON tree as gauges.
//
// - A number becomes a gauge named `<prefix>_<key>_<key>...` along its path; a boolean becomes
//   0 or 1. Keys are sanitised: lower-cased, and every character outside [a-z0-9_] (colons
//   included, which Prometheus reserves for recording rules) becomes '_'.
// - An array whose elements are all objects with a string "name" field is a labelled set: each
//   numeric field `f` of the elements (nested objects flattened the same way) becomes one
//   family `<prefix>_<path>_<f>` with a sample per element, labelled name="<that name>". E.g.
//   {"adapters": [{"name": "disk0", "reads": 3}]} -> kvtier_adapters_reads{name="disk0"} 3.
// - Strings, nulls, other arrays, and labelled sets nested inside a labelled set are skipped.
// The HELP text names the JSON path. `prefix` must be a valid metric name; names that collide
// after sanitising are dropped by the writer like any duplicate series.
void AppendJsonAsGauges(PrometheusWriter& writer, std::string_view prefix,
                        const nlohmann::json& tree);

}  // namespace kvtier::admin
