#include "kvtier/admin/prometheus.h"

#include <cmath>
#include <limits>
#include <string>

#include <gtest/gtest.h>

namespace kvtier::admin {
namespace {

TEST(PrometheusWriterTest, WritesCounterAndGaugeWithHelpAndType) {
  PrometheusWriter w;
  w.Counter("kvtier_requests_total", "Requests served.", 42);
  w.Gauge("kvtier_used_bytes", "Bytes in use.", 1.5, {{"tier", "l1"}, {"pool", "a"}});
  EXPECT_EQ(w.Finish(),
            "# HELP kvtier_requests_total Requests served.\n"
            "# TYPE kvtier_requests_total counter\n"
            "kvtier_requests_total 42\n"
            "# HELP kvtier_used_bytes Bytes in use.\n"
            "# TYPE kvtier_used_bytes gauge\n"
            "kvtier_used_bytes{tier=\"l1\",pool=\"a\"} 1.5\n");
  EXPECT_EQ(w.rejected(), 0u);
}

TEST(PrometheusWriterTest, EmptyHelpOmitsTheHelpLine) {
  PrometheusWriter w;
  w.Gauge("g", "", 1);
  EXPECT_EQ(w.Finish(), "# TYPE g gauge\ng 1\n");
}

TEST(PrometheusWriterTest, GroupsAFamilysSamplesUnderOneHeader) {
  PrometheusWriter w;
  w.Gauge("a", "Family a.", 1, {{"x", "1"}});
  w.Counter("b_total", "Family b.", 2);
  w.Gauge("a", "Ignored: the first help wins.", 3, {{"x", "2"}});
  w.Gauge("a", "", 4, {{"x", "3"}});
  EXPECT_EQ(w.Finish(),
            "# HELP a Family a.\n"
            "# TYPE a gauge\n"
            "a{x=\"1\"} 1\n"
            "a{x=\"2\"} 3\n"
            "a{x=\"3\"} 4\n"
            "# HELP b_total Family b.\n"
            "# TYPE b_total counter\n"
            "b_total 2\n");
}

TEST(PrometheusWriterTest, EscapesLabelValuesAndHelp) {
  PrometheusWriter w;
  w.Gauge("g", "line one\nback\\slash \"quotes stay\"", 1, {{"path", "C:\\dir \"x\"\nnext"}});
  EXPECT_EQ(w.Finish(),
            "# HELP g line one\\nback\\\\slash \"quotes stay\"\n"
            "# TYPE g gauge\n"
            "g{path=\"C:\\\\dir \\\"x\\\"\\nnext\"} 1\n");
}

TEST(PrometheusWriterTest, ValidatesMetricNames) {
  for (const char* good : {"a", "_a", ":a", "kvtier_l1_used_bytes", "job:rate5m", "A9_:z"}) {
    EXPECT_TRUE(IsValidMetricName(good)) << good;
  }
  for (const char* bad : {"", "9a", "a-b", "a b", "a.b", "caf\xc3\xa9", "a{b}"}) {
    EXPECT_FALSE(IsValidMetricName(bad)) << bad;
  }
}

TEST(PrometheusWriterTest, ValidatesLabelNames) {
  for (const char* good : {"a", "_a", "name", "le", "A9_z"}) {
    EXPECT_TRUE(IsValidLabelName(good)) << good;
  }
  for (const char* bad : {"", "9a", "a:b", ":a", "a-b", "a b"}) {
    EXPECT_FALSE(IsValidLabelName(bad)) << bad;
  }
}

TEST(PrometheusWriterTest, DropsAndCountsInvalidSamples) {
  PrometheusWriter w;
  w.Gauge("ok", "", 1, {{"k", "v"}});
  w.Gauge("bad-name", "", 1);
  EXPECT_EQ(w.rejected(), 1u);
  EXPECT_EQ(w.last_error().code(), StatusCode::kInvalidArgument);
  EXPECT_NE(w.last_error().message().find("'bad-name'"), std::string_view::npos)
      << w.last_error().ToString();

  w.Gauge("ok", "", 2, {{"bad:label", "v"}});
  w.Gauge("ok", "", 2, {{"__reserved", "v"}});
  w.Gauge("ok", "", 2, {{"k", "v1"}, {"k", "v2"}});
  EXPECT_NE(w.last_error().message().find("given twice"), std::string_view::npos);
  w.Gauge("ok", "", 2, {{"k", "v"}});  // the same series again
  EXPECT_NE(w.last_error().message().find("written twice"), std::string_view::npos);
  w.Counter("ok", "", 2, {{"k", "other"}});  // a gauge family used as a counter
  EXPECT_NE(w.last_error().message().find("already a gauge"), std::string_view::npos);
  w.Counter("negative_total", "", -1);
  w.Counter("nan_total", "", std::nan(""));
  EXPECT_EQ(w.rejected(), 8u);

  // Only the valid sample is written, and no family appears for a dropped one.
  EXPECT_EQ(w.Finish(), "# TYPE ok gauge\nok{k=\"v\"} 1\n");
  EXPECT_EQ(w.rejected(), 0u);  // Finish() resets
  EXPECT_TRUE(w.last_error().ok());
}

TEST(PrometheusWriterTest, SameLabelsInAnotherOrderAreTheSameSeries) {
  PrometheusWriter w;
  w.Gauge("g", "", 1, {{"a", "1"}, {"b", "2"}});
  w.Gauge("g", "", 2, {{"b", "2"}, {"a", "1"}});
  w.Gauge("g", "", 3, {{"a", "1"}, {"b", "3"}});
  EXPECT_EQ(w.rejected(), 1u);
  EXPECT_EQ(w.Finish(), "# TYPE g gauge\ng{a=\"1\",b=\"2\"} 1\ng{a=\"1\",b=\"3\"} 3\n");
}

TEST(PrometheusWriterTest, FinishResetsForReuse) {
  PrometheusWriter w;
  EXPECT_EQ(w.Finish(), "");
  w.Gauge("g", "", 1);
  ASSERT_EQ(w.Finish(), "# TYPE g gauge\ng 1\n");
  w.Gauge("g", "", 2);  // no longer a duplicate
  EXPECT_EQ(w.Finish(), "# TYPE g gauge\ng 2\n");
}

TEST(PrometheusValueTest, FormatsNumbersAsPrometheusSpellsThem) {
  const double inf = std::numeric_limits<double>::infinity();
  const struct {
    double value;
    const char* text;
  } cases[] = {
      {0, "0"},
      {-0.0, "0"},
      {42, "42"},
      {-3, "-3"},
      {1e15, "1000000000000000"},
      {9007199254740992.0, "9007199254740992"},  // 2^53
      {4e18, "4000000000000000000"},
      {0.5, "0.5"},
      {0.1, "0.1"},
      {-2.25, "-2.25"},
      {1.0 / 3, "0.3333333333333333"},
      {1.5e-7, "1.5e-07"},
      {1e300, "1e+300"},
      {std::nan(""), "NaN"},
      {inf, "+Inf"},
      {-inf, "-Inf"},
  };
  for (const auto& c : cases) EXPECT_EQ(FormatPrometheusValue(c.value), c.text) << c.text;
}

TEST(PrometheusValueTest, NonIntegralValuesReadBackExactly) {
  for (double v : {0.1, 1.0 / 3, 123456.789, 2.5e-300, 1.7976931348623157e308, 1e19 + 2048}) {
    EXPECT_EQ(std::stod(FormatPrometheusValue(v)), v) << FormatPrometheusValue(v);
  }
}

TEST(AppendJsonAsGaugesTest, FlattensANestedTreeWithALabelledSet) {
  const nlohmann::json tree = nlohmann::json::parse(R"({
    "uptime_seconds": 12.5,
    "ready": true,
    "version": "1.2.3",
    "nothing": null,
    "tags": ["a", "b"],
    "numbers": [1, 2, 3],
    "l1": {"used_bytes": 1024, "capacity_bytes": 4096, "Hit-Rate": 0.75},
    "adapters": [
      {"name": "disk0", "reads": 3, "healthy": true, "kind": "fs", "latency": {"p99_ms": 1.5}},
      {"name": "redis \"main\"", "reads": 7, "healthy": false, "latency": {"p99_ms": 2}}
    ]
  })");
  PrometheusWriter w;
  AppendJsonAsGauges(w, "kvtier", tree);
  EXPECT_EQ(w.rejected(), 0u) << w.last_error().ToString();
  // nlohmann::json orders keys: "Hit-Rate" < "capacity_bytes" < "used_bytes".
  EXPECT_EQ(w.Finish(),
            "# HELP kvtier_adapters_healthy kvtier status field adapters[].healthy (1 = true)\n"
            "# TYPE kvtier_adapters_healthy gauge\n"
            "kvtier_adapters_healthy{name=\"disk0\"} 1\n"
            "kvtier_adapters_healthy{name=\"redis \\\"main\\\"\"} 0\n"
            "# HELP kvtier_adapters_latency_p99_ms kvtier status field adapters[].latency.p99_ms\n"
            "# TYPE kvtier_adapters_latency_p99_ms gauge\n"
            "kvtier_adapters_latency_p99_ms{name=\"disk0\"} 1.5\n"
            "kvtier_adapters_latency_p99_ms{name=\"redis \\\"main\\\"\"} 2\n"
            "# HELP kvtier_adapters_reads kvtier status field adapters[].reads\n"
            "# TYPE kvtier_adapters_reads gauge\n"
            "kvtier_adapters_reads{name=\"disk0\"} 3\n"
            "kvtier_adapters_reads{name=\"redis \\\"main\\\"\"} 7\n"
            "# HELP kvtier_l1_hit_rate kvtier status field l1.Hit-Rate\n"
            "# TYPE kvtier_l1_hit_rate gauge\n"
            "kvtier_l1_hit_rate 0.75\n"
            "# HELP kvtier_l1_capacity_bytes kvtier status field l1.capacity_bytes\n"
            "# TYPE kvtier_l1_capacity_bytes gauge\n"
            "kvtier_l1_capacity_bytes 4096\n"
            "# HELP kvtier_l1_used_bytes kvtier status field l1.used_bytes\n"
            "# TYPE kvtier_l1_used_bytes gauge\n"
            "kvtier_l1_used_bytes 1024\n"
            "# HELP kvtier_ready kvtier status field ready (1 = true)\n"
            "# TYPE kvtier_ready gauge\n"
            "kvtier_ready 1\n"
            "# HELP kvtier_uptime_seconds kvtier status field uptime_seconds\n"
            "# TYPE kvtier_uptime_seconds gauge\n"
            "kvtier_uptime_seconds 12.5\n");
}

TEST(AppendJsonAsGaugesTest, SkipsArraysThatAreNotLabelledSets) {
  const nlohmann::json tree = nlohmann::json::parse(R"({
    "empty": [],
    "unnamed": [{"reads": 1}],
    "mixed": [{"name": "a", "reads": 1}, {"reads": 2}],
    "numeric_name": [{"name": 7, "reads": 1}],
    "nested": [{"name": "outer", "count": 1, "inner": [{"name": "x", "reads": 2}]}]
  })");
  PrometheusWriter w;
  AppendJsonAsGauges(w, "p", tree);
  EXPECT_EQ(w.rejected(), 0u);
  EXPECT_EQ(w.Finish(),
            "# HELP p_nested_count kvtier status field nested[].count\n"
            "# TYPE p_nested_count gauge\n"
            "p_nested_count{name=\"outer\"} 1\n");
}

TEST(AppendJsonAsGaugesTest, NamesCollidingAfterSanitisingAreDroppedNotDuplicated) {
  PrometheusWriter w;
  AppendJsonAsGauges(w, "p", nlohmann::json{{"a-b", 1}, {"a_b", 2}, {"A.B", 3}});
  EXPECT_EQ(w.rejected(), 2u);
  // "A.B" sorts first and wins; "a-b" and "a_b" would repeat its series.
  EXPECT_EQ(w.Finish(), "# HELP p_a_b kvtier status field A.B\n# TYPE p_a_b gauge\np_a_b 3\n");
}

TEST(AppendJsonAsGaugesTest, AnInvalidPrefixIsRejected) {
  PrometheusWriter w;
  AppendJsonAsGauges(w, "9bad", nlohmann::json{{"x", 1}});
  EXPECT_EQ(w.rejected(), 1u);
  EXPECT_EQ(w.Finish(), "");
}

}  // namespace
}  // namespace kvtier::admin

namespace kvtier::admin {
namespace {

TEST(PrometheusHistogramTest, WritesBucketsSumAndCountWithLabels) {
  PrometheusWriter w;
  const std::vector<double> bounds = {0.001, 0.01};
  const std::vector<uint64_t> counts = {2, 5, 7};
  w.Histogram("req_seconds", "Request latency", bounds, counts, 0.25, {{"op", "STORE"}});
  w.Histogram("req_seconds", "Request latency", bounds, std::vector<uint64_t>{0, 0, 1}, 3.0, {{"op", "NOOP"}});
  EXPECT_EQ(w.Finish(),
            "# HELP req_seconds Request latency\n"
            "# TYPE req_seconds histogram\n"
            "req_seconds_bucket{op=\"STORE\",le=\"0.001\"} 2\n"
            "req_seconds_bucket{op=\"STORE\",le=\"0.01\"} 5\n"
            "req_seconds_bucket{op=\"STORE\",le=\"+Inf\"} 7\n"
            "req_seconds_sum{op=\"STORE\"} 0.25\n"
            "req_seconds_count{op=\"STORE\"} 7\n"
            "req_seconds_bucket{op=\"NOOP\",le=\"0.001\"} 0\n"
            "req_seconds_bucket{op=\"NOOP\",le=\"0.01\"} 0\n"
            "req_seconds_bucket{op=\"NOOP\",le=\"+Inf\"} 1\n"
            "req_seconds_sum{op=\"NOOP\"} 3\n"
            "req_seconds_count{op=\"NOOP\"} 1\n");
}

TEST(PrometheusHistogramTest, RejectsInconsistentInput) {
  PrometheusWriter w;
  const std::vector<double> bounds = {0.1, 0.2};
  w.Histogram("h", "", bounds, std::vector<uint64_t>{1, 2}, 0);          // one count short
  w.Histogram("h", "", bounds, std::vector<uint64_t>{3, 2, 4}, 0);       // not cumulative
  w.Histogram("h", "", std::vector<double>{0.2, 0.1}, std::vector<uint64_t>{1, 2, 3}, 0);  // bounds decrease
  w.Histogram("h", "", bounds, std::vector<uint64_t>{1, 2, 3}, 0, {{"le", "x"}});           // reserved label
  EXPECT_EQ(w.rejected(), 4u);
  w.Gauge("g", "", 1);
  w.Histogram("g", "", bounds, std::vector<uint64_t>{1, 2, 3}, 0);  // already a gauge
  EXPECT_EQ(w.rejected(), 5u);
  EXPECT_EQ(w.Finish(), "# TYPE g gauge\ng 1\n");
}

}  // namespace
}  // namespace kvtier::admin
