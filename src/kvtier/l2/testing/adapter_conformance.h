// The L2Adapter contract as a value-parameterized GoogleTest suite, run over every adapter
// (LMCache's mock/fs adapter tests, translated), plus helpers for adapter-specific tests.
//
// Using it from an adapter's test binary (fs shown; redis alike):
//
//   # CMakeLists.txt: kvtier::l2_conformance is an OBJECT library, so the suite's objects go
//   # into the binary whole (a static library would let the linker drop its registrations).
//   kvt_test(NAME l2_fs_test
//     SRCS fs_adapter_test.cc
//     DEPS kvtier::l2_fs kvtier::l2_conformance)
//
//   // fs_adapter_test.cc
//   #include "kvtier/l2/testing/adapter_conformance.h"
//   namespace kvtier::l2::testing {
//   INSTANTIATE_TEST_SUITE_P(
//       Fs, AdapterConformanceTest,
//       ::testing::Values(AdapterCase{"fs", [] { return MakeFsForTest(/*fresh temp dir*/); }}),
//       AdapterCaseName);
//   }  // namespace kvtier::l2::testing
//
// (INSTANTIATE_TEST_SUITE_P needs the unqualified suite name: instantiate inside the namespace,
// or after `using kvtier::l2::testing::AdapterConformanceTest;`.)
//
// What `make` must return, for every call: a new, empty, open adapter that shares no stored
// data with earlier ones (a fresh directory, a flushed database), unbounded or with at least
// 64 MiB of capacity, with no listener, not shared with any thread yet. Return nullptr (or
// fail an ASSERT inside) when it cannot be built; the test then fails.
//
// Beyond adapter.h, the suite assumes: SubmitUnlock takes effect before it returns (a Delete
// right after it sees the key unlocked); a load into a buffer whose size differs from the
// stored size fails that key; Delete of an absent key clears its bit without an error; the
// span arrays passed to Submit* are borrowed for the call only (the suite passes temporaries),
// the bytes they point at until the task completes.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <ostream>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include <absl/container/flat_hash_map.h>
#include <gtest/gtest.h>

#include "kvtier/common/clock.h"
#include "kvtier/common/mutex.h"
#include "kvtier/l2/adapter.h"

namespace kvtier::l2::testing {

// How long the helpers wait for a completion before giving up (generous: sanitizers are slow).
inline constexpr Duration kCompletionWait = std::chrono::seconds(30);

struct AdapterCase {
  std::string name;  // the test name suffix: letters, digits, '_'
  std::function<std::unique_ptr<L2Adapter>()> make;
};

inline void PrintTo(const AdapterCase& c, std::ostream* os) { *os << c.name; }
inline std::string AdapterCaseName(const ::testing::TestParamInfo<AdapterCase>& info) {
  return info.param.name;
}

// Distinct keys of one (model, cache salt): chunk hash bytes spell `first + i`.
std::vector<ObjectKey> TestKeys(size_t n, uint64_t first = 0,
                                std::string_view model = "conformance/model",
                                std::string_view cache_salt = "");
// Deterministic content for a key: the same key and size always give the same bytes, and
// different keys differ.
std::vector<uint8_t> TestBytes(const ObjectKey& key, size_t size);
// Views of owned buffers, in the form Submit* takes.
std::vector<std::span<const uint8_t>> ConstSpans(const std::vector<std::vector<uint8_t>>& v);
std::vector<std::span<uint8_t>> Spans(std::vector<std::vector<uint8_t>>& v);

// Waits for task completions by polling the adapter's eventfds with a deadline. It drains the
// fds and PopCompletedStores, keeping store results of other tasks for later calls: use one
// waiter per adapter, from one thread, and no other consumer of that adapter's completions.
class CompletionWaiter {
 public:
  explicit CompletionWaiter(L2Adapter* adapter) : adapter_(adapter) {}

  // std::nullopt when the task did not complete within `timeout`.
  std::optional<StoreResult> WaitStore(TaskId task, Duration timeout = kCompletionWait);
  std::optional<Bitmap> WaitLookup(TaskId task, Duration timeout = kCompletionWait);
  std::optional<Bitmap> WaitLoad(TaskId task, Duration timeout = kCompletionWait);
  // Every store result popped so far and not yet returned by WaitStore.
  std::vector<StoreResult> TakeStores();

 private:
  void PopStores();

  L2Adapter* const adapter_;
  absl::flat_hash_map<TaskId, StoreResult> stores_;
};

// Waits until `done()` holds, re-checking whenever one of the adapter's eventfds is signalled
// (drains them: same single-consumer rule as CompletionWaiter). False on timeout.
bool WaitForCondition(L2Adapter& adapter, const std::function<bool()>& done,
                      Duration timeout = kCompletionWait);
// Waits until no task is in flight (Counters().in_flight_tasks == 0). False on timeout.
bool WaitUntilIdle(L2Adapter& adapter, Duration timeout = kCompletionWait);

// Synchronous conveniences over CompletionWaiter (they fail the current test on a timeout).
StoreResult StoreAndWait(L2Adapter& adapter, std::span<const ObjectKey> keys,
                         const std::vector<std::vector<uint8_t>>& objects);
Bitmap LookupAndWait(L2Adapter& adapter, std::span<const ObjectKey> keys);
Bitmap LoadAndWait(L2Adapter& adapter, std::span<const ObjectKey> keys,
                   std::vector<std::vector<uint8_t>>& buffers);

// Records listener calls; thread-safe. Wait* block (with a deadline) until enough keys arrived.
class RecordingL2Listener : public L2Listener {
 public:
  void OnL2KeysStored(std::span<const ObjectKey> keys, std::span<const uint64_t> sizes) override;
  void OnL2KeysAccessed(std::span<const ObjectKey> keys) override;
  void OnL2KeysDeleted(std::span<const ObjectKey> keys) override;

  // Keys stored (with sizes), accessed and deleted so far, in call order.
  std::vector<std::pair<ObjectKey, uint64_t>> stored() const;
  std::vector<ObjectKey> accessed() const;
  std::vector<ObjectKey> deleted() const;
  bool WaitStoredCount(size_t n, Duration timeout = kCompletionWait) const;
  bool WaitAccessedCount(size_t n, Duration timeout = kCompletionWait) const;
  bool WaitDeletedCount(size_t n, Duration timeout = kCompletionWait) const;

 private:
  mutable Mutex mu_;
  mutable CondVar cv_;
  std::vector<std::pair<ObjectKey, uint64_t>> stored_ KVT_GUARDED_BY(mu_);
  std::vector<ObjectKey> accessed_ KVT_GUARDED_BY(mu_);
  std::vector<ObjectKey> deleted_ KVT_GUARDED_BY(mu_);
};

// The suite. Each test gets a fresh adapter from the case's `make`, closed in TearDown.
class AdapterConformanceTest : public ::testing::TestWithParam<AdapterCase> {
 protected:
  void SetUp() override;
  void TearDown() override;

  L2Adapter& adapter() { return *adapter_; }

  std::unique_ptr<L2Adapter> adapter_;
};

}  // namespace kvtier::l2::testing
