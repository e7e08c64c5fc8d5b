#include "harness.h"

#include <fstream>
#include <set>
#include <string>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

namespace kvtier::bench {
namespace {

TEST(ReporterTest, JsonFollowsTheContract) {
  Reporter r("demo");
  r.Add({"with baseline", 50, "ops/s", "memcpy", 200});
  r.Add({"no baseline", 3.5, "bytes", std::nullopt, std::nullopt});
  r.Add({"zero baseline", 1, "x", "b", 0});
  std::string line = r.ToJson();
  EXPECT_EQ(line.find('\n'), std::string::npos);
  auto j = nlohmann::json::parse(line);
  EXPECT_EQ(j["suite"], "demo");
  ASSERT_EQ(j["results"].size(), 3u);
  const auto& a = j["results"][0];
  EXPECT_EQ(a["name"], "with baseline");
  EXPECT_DOUBLE_EQ(a["value"].get<double>(), 50);
  EXPECT_EQ(a["unit"], "ops/s");
  EXPECT_EQ(a["baseline_name"], "memcpy");
  EXPECT_DOUBLE_EQ(a["baseline"].get<double>(), 200);
  EXPECT_DOUBLE_EQ(a["ratio"].get<double>(), 0.25);
  const auto& b = j["results"][1];
  EXPECT_TRUE(b["baseline_name"].is_null());
  EXPECT_TRUE(b["baseline"].is_null());
  EXPECT_TRUE(b["ratio"].is_null());
  EXPECT_TRUE(j["results"][2]["ratio"].is_null());
}

TEST(ReporterTest, TableListsEveryResult) {
  Reporter r("demo");
  r.Add({"alpha", 1234.5, "keys/s", "beta", 617.25});
  std::string t = r.ToTable();
  EXPECT_NE(t.find("alpha"), std::string::npos);
  EXPECT_NE(t.find("keys/s"), std::string::npos);
  EXPECT_NE(t.find("2.000"), std::string::npos);  // the ratio
}

TEST(MeasureRateTest, CountsEveryOperation) {
  uint64_t calls = 0;
  double rate = MeasureRate(
      [&] {
        ++calls;
        return uint64_t{10};
      },
      0.01);
  EXPECT_GT(calls, 1u);  // warm-up plus at least one timed batch
  EXPECT_GT(rate, 0);
}

TEST(MeasureRateThreadsTest, RunsEveryThread) {
  std::atomic<int> started{0};
  double rate = MeasureRateThreads(3, 0.01, [&](int, const std::atomic<bool>* stop) {
    started.fetch_add(1);
    uint64_t n = 0;
    while (!stop->load()) ++n;
    return n;
  });
  EXPECT_EQ(started.load(), 3);
  EXPECT_GT(rate, 0);
}

// docs/benchmarks.md has one "## `kvtier bench <suite>`" section per suite: the registry and
// the document must name the same suites, so neither drifts from the other.
TEST(SuitesTest, EveryDocumentedSuiteIsRegistered) {
  std::ifstream doc(std::string(KVT_SOURCE_DIR) + "/docs/benchmarks.md");
  ASSERT_TRUE(doc.is_open()) << "cannot read docs/benchmarks.md under " << KVT_SOURCE_DIR;
  const std::string prefix = "## `kvtier bench ";
  std::set<std::string> documented;
  for (std::string line; std::getline(doc, line);) {
    if (line.rfind(prefix, 0) != 0) continue;
    auto end = line.find('`', prefix.size());
    ASSERT_NE(end, std::string::npos) << line;
    documented.insert(line.substr(prefix.size(), end - prefix.size()));
  }
  std::set<std::string> registered;
  for (const Suite& s : AllSuites()) {
    EXPECT_TRUE(registered.insert(s.name).second) << "suite registered twice: " << s.name;
    EXPECT_FALSE(s.description.empty()) << s.name;
  }
  EXPECT_FALSE(registered.empty());
  EXPECT_EQ(documented, registered);
}

}  // namespace
}  // namespace kvtier::bench
