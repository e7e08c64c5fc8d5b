#include "kvtier/sync/lock_internal.h"

#include <algorithm>
#include <utility>
#include <vector>

#include <fmt/format.h>

#include "kvtier/common/check.h"
#include "kvtier/common/units.h"

namespace kvtier::sync::internal {
namespace {

struct HeldLock {
  const void* lock;
  HoldMode mode;
};

std::vector<HeldLock>& HeldByThisThread() {
  thread_local std::vector<HeldLock> held;
  return held;
}

std::string_view ModeName(HoldMode mode) { return mode == HoldMode::kShared ? "read" : "write"; }

}  // namespace

void CheckNotHeld(const void* lock, std::string_view kind) {
  for (const HeldLock& h : HeldByThisThread()) {
    KVT_CHECK_MSG(h.lock != lock,
                  "{} {} is not reentrant: this thread already holds it ({} mode) and tried to "
                  "acquire it again",
                  kind, lock, ModeName(h.mode));
  }
}

void NoteAcquired(const void* lock, HoldMode mode) { HeldByThisThread().push_back({lock, mode}); }

void NoteReleased(const void* lock, HoldMode mode, std::string_view kind) {
  std::vector<HeldLock>& held = HeldByThisThread();
  auto it = std::find_if(held.rbegin(), held.rend(),
                         [&](const HeldLock& h) { return h.lock == lock && h.mode == mode; });
  KVT_CHECK_MSG(it != held.rend(), "{} {}: {} release by a thread that does not hold it", kind,
                lock, ModeName(mode));
  held.erase(std::next(it).base());
}

Status LockTimeoutError(std::string_view kind, std::string_view mode, std::string_view what,
                        Timeout timeout) {
  KVT_DCHECK(timeout.has_value());  // kWaitForever never times out
  std::string_view name = what.empty() ? kind : what;
  if (!timeout || *timeout <= Duration::zero()) {
    return Status::LockTimeout(fmt::format("{}: {} lock is busy (non-blocking try)", name, mode));
  }
  return Status::LockTimeout(fmt::format("{}: could not acquire the {} lock within {}", name, mode,
                                         FormatDuration(*timeout)));
}

}  // namespace kvtier::sync::internal
