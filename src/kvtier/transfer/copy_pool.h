// CopyPool: a fixed set of threads that split one bulk copy among themselves.
//
// Run(n, fn) runs fn(0) .. fn(n - 1), each exactly once, on the pool's threads and on the
// caller's, and returns once all have finished (fork-join; no futures, no per-task allocation).
// Several threads may call Run at once (e.g. several transfer workers sharing one pool): jobs
// are served in arrival order, and each caller always works on its own job too, so a job
// finishes even when every pool thread is busy elsewhere.
#pragma once

#include <atomic>
#include <cstddef>
#include <deque>
#include <functional>
#include <thread>
#include <vector>

#include "kvtier/common/mutex.h"

namespace kvtier::transfer {

class CopyPool {
 public:
  // num_threads >= 1 threads of its own; a Run uses up to num_threads + 1 (the caller helps).
  explicit CopyPool(size_t num_threads);
  ~CopyPool();  // joins the threads; no Run may be in progress
  CopyPool(const CopyPool&) = delete;
  CopyPool& operator=(const CopyPool&) = delete;

  size_t num_threads() const { return threads_.size(); }

  // fn must not throw. It may run on any of the pool's threads, concurrently with itself.
  void Run(size_t n, const std::function<void(size_t)>& fn) KVT_EXCLUDES(mu_);

 private:
  // One Run call, on its caller's stack. Indices are claimed through `next`; whoever holds an
  // unfinished claim keeps the job alive (Run returns only once `done` reaches n).
  struct Job {
    Job(const std::function<void(size_t)>* f, size_t count) : fn(f), n(count) {}
    const std::function<void(size_t)>* const fn;
    const size_t n;
    std::atomic<size_t> next{0};
    Mutex mu;
    CondVar cv;
    size_t done KVT_GUARDED_BY(mu) = 0;
  };

  void WorkerLoop() KVT_EXCLUDES(mu_);
  // Runs claimed index i, then keeps claiming from the same job until it runs dry.
  static void RunClaimed(Job* job, size_t i);

  Mutex mu_;
  CondVar cv_;
  std::deque<Job*> queue_ KVT_GUARDED_BY(mu_);  // jobs that may still have unclaimed indices
  bool stopping_ KVT_GUARDED_BY(mu_) = false;
  std::vector<std::thread> threads_;
};

}  // namespace kvtier::transfer
