// `kvtier bench l2`: the fs and Redis adapters against raw I/O and redis-benchmark, and the
// StoreController's overhead per key.
#include <chrono>
#include <cstdlib>
#include <filesystem>

#include <fmt/format.h>
#include <poll.h>
#include <stdlib.h>

#include "kvtier/common/units.h"
#include "kvtier/l2/mock_adapter.h"
#include "kvtier/storage/store_controller.h"

#include "l2_fs_bench.h"
#include "l2_redis_bench.h"
#include "suites.h"

namespace kvtier::bench {
namespace {

using keys::ObjectKey;
using Clock = std::chrono::steady_clock;

std::vector<ObjectKey> Keys(size_t n, uint64_t seed) {
  auto ns = keys::InternNamespace("bench-model", "").value();
  std::vector<ObjectKey> keys;
  keys.reserve(n);
  for (size_t i = 0; i < n; ++i) {
    keys::ChunkHash h;
    uint64_t v = seed * 0x9e3779b97f4a7c15ULL + i;
    std::memcpy(h.bytes.data(), &v, sizeof(v));
    keys.push_back(ObjectKey::Create(h, ns, keys::KvRank{1, 0}, 0).value());
  }
  return keys;
}

// Waits until `a` reported every task in `tasks` (a set it empties).
void WaitStores(l2::L2Adapter* a, size_t tasks) {
  while (tasks > 0) {
    pollfd p{a->store_event_fd(), POLLIN, 0};
    ::poll(&p, 1, 1000);
    tasks -= a->PopCompletedStores().size();
  }
}

// StoreController overhead: the same stores (64-key tasks of 4 KiB objects into a mock adapter)
// submitted directly, and through the controller (L1 write-finished events in, L1 read locks
// held and released, completions out).
Status StoreControllerOverhead(const SuiteOptions& opt, Reporter* reporter) {
  const size_t n = opt.quick ? 20'000 : 200'000;
  const uint64_t obj = 4 * kKiB;
  const size_t per_task = 64;
  auto keys = Keys(n, 1);

  l2::MockAdapterOptions mo;
  mo.capacity_bytes = (n + 1) * obj;
  // Direct: the adapter alone.
  double direct_ns;
  {
    KVT_ASSIGN_OR_RETURN(auto mock, l2::MockAdapter::Create(mo, "direct"));
    std::vector<uint8_t> payload(obj, 7);
    std::vector<std::span<const uint8_t>> objects(per_task, std::span<const uint8_t>(payload));
    auto start = Clock::now();
    size_t tasks = 0;
    for (size_t i = 0; i < n; i += per_task) {
      size_t m = std::min(per_task, n - i);
      mock->SubmitStore(std::span(keys.data() + i, m), std::span(objects.data(), m));
      ++tasks;
    }
    WaitStores(mock.get(), tasks);
    direct_ns = std::chrono::duration<double, std::nano>(Clock::now() - start).count() / n;
    mock->Close();
  }
  // Through the controller.
  double controller_ns;
  {
    KVT_ASSIGN_OR_RETURN(auto mock, l2::MockAdapter::Create(mo, "via-controller"));
    l1::L1Options lo;
    lo.capacity_bytes = (n + 1) * obj;
    lo.register_with_cuda = false;
    KVT_ASSIGN_OR_RETURN(auto l1, l1::L1Manager::Create(lo));
    std::vector<l1::ObjectView> views;
    for (size_t i = 0; i < n; i += per_task) {  // filled before the controller listens
      std::span<const ObjectKey> batch(keys.data() + i, std::min(per_task, n - i));
      l1->ReserveWrite(batch, obj, false, l1::kDefaultWriter, &views);
      l1->FinishWrite(batch, l1::kDefaultWriter);
    }
    storage::StoreControllerOptions so;
    so.max_keys_per_task = per_task;
    so.max_pending_keys = n;
    KVT_ASSIGN_OR_RETURN(auto policy, storage::MakeStorePolicy("default"));
    KVT_ASSIGN_OR_RETURN(auto controller, storage::StoreController::Create(l1.get(), {mock.get()},
                                                                           std::move(policy), so));
    KVT_RETURN_IF_ERROR(controller->Start());
    auto start = Clock::now();
    for (size_t i = 0; i < n; i += per_task) {
      controller->OnL1KeysWriteFinished(std::span(keys.data() + i, std::min(per_task, n - i)));
    }
    if (!controller->Flush(std::chrono::minutes(5)))
      return Status::Internal("store controller did not drain");
    controller_ns = std::chrono::duration<double, std::nano>(Clock::now() - start).count() / n;
    if (controller->stats().keys_stored != n) return Status::Internal("store controller lost keys");
    controller->Stop();
    mock->Close();
    controller->ReleaseAfterAdaptersClosed();
  }
  reporter->Add({"store controller: L1 event -> mock adapter, per key (64-key tasks, 4 KiB)",
                 controller_ns / 1000, "us/key", "same stores submitted to the mock directly",
                 direct_ns / 1000});
  reporter->Add({"store controller overhead per key", (controller_ns - direct_ns) / 1000, "us/key",
                 std::nullopt, std::nullopt});
  return Status::OK();
}

}  // namespace

Status RunL2Suite(const SuiteOptions& options, Reporter* reporter) {
  Progress progress("bench l2", 3, !options.json);
  KVT_RETURN_IF_ERROR(StoreControllerOverhead(options, reporter));
  progress.Step();
  // The fs benchmark needs a real disk: /var/tmp (often not tmpfs, unlike /tmp) unless told.
  const char* env_dir = std::getenv("KVT_BENCH_DIR");
  std::filesystem::path base = env_dir ? env_dir : "/var/tmp";
  std::string templ = (base / "kvtier-bench-l2-XXXXXX").string();
  if (::mkdtemp(templ.data()) == nullptr) {
    return Status::IOError(
        fmt::format("cannot create a benchmark directory under {}", base.string()));
  }
  Status fs = RunL2FsBench(options, reporter, templ);
  std::error_code ec;
  std::filesystem::remove_all(templ, ec);
  KVT_RETURN_IF_ERROR(fs);
  progress.Step();
  KVT_RETURN_IF_ERROR(RunL2RedisBench(options, reporter));
  progress.Step();
  return Status::OK();
}

}  // namespace kvtier::bench
