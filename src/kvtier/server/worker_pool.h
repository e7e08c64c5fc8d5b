// WorkerPool: a fixed set of threads running queued tasks.
//
// SubmitAny runs a task on whichever thread is free; SubmitTo(key) always runs tasks of one key
// on the same thread, in submission order (the transfer pool: one engine worker's copies stay
// ordered without a per-client lock). Queues are bounded: a submit over the limit is refused,
// so an overloaded server answers "busy" instead of growing without bound.
#pragma once

#include <cstdint>
#include <deque>
#include <functional>
#include <string>
#include <thread>
#include <vector>

#include "kvtier/common/mutex.h"

namespace kvtier::server {

class WorkerPool {
 public:
  using Task = std::function<void()>;

  // `max_queued` bounds the tasks waiting in the whole pool (not counting running ones).
  WorkerPool(std::string name, size_t threads, size_t max_queued);
  ~WorkerPool();  // Stop()
  WorkerPool(const WorkerPool&) = delete;
  WorkerPool& operator=(const WorkerPool&) = delete;

  // False when the pool is full or stopped (the task is dropped; the caller answers for it).
  bool SubmitAny(Task task) KVT_EXCLUDES(mu_);
  bool SubmitTo(uint64_t key, Task task) KVT_EXCLUDES(mu_);

  // Runs what is queued, then joins the threads. Submits fail afterwards. Idempotent.
  void Stop() KVT_EXCLUDES(mu_);

  size_t threads() const { return threads_.size(); }
  size_t queued() const KVT_EXCLUDES(mu_);
  uint64_t rejected() const KVT_EXCLUDES(mu_);

 private:
  void Run(size_t index);

  const std::string name_;
  const size_t max_queued_;
  mutable Mutex mu_;
  CondVar cv_;
  std::deque<Task> shared_ KVT_GUARDED_BY(mu_);
  std::vector<std::deque<Task>> own_ KVT_GUARDED_BY(mu_);  // per thread (affinity)
  size_t queued_ KVT_GUARDED_BY(mu_) = 0;
  uint64_t rejected_ KVT_GUARDED_BY(mu_) = 0;
  bool stopping_ KVT_GUARDED_BY(mu_) = false;
  std::vector<std::thread> threads_;
};

}  // namespace kvtier::server
