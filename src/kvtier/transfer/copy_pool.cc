#include "kvtier/transfer/copy_pool.h"

#include <algorithm>

#include "kvtier/common/check.h"

namespace kvtier::transfer {

CopyPool::CopyPool(size_t num_threads) {
  KVT_CHECK(num_threads > 0);
  threads_.reserve(num_threads);
  for (size_t i = 0; i < num_threads; ++i) threads_.emplace_back([this] { WorkerLoop(); });
}

CopyPool::~CopyPool() {
  {
    MutexLock lock(&mu_);
    KVT_CHECK(queue_.empty());
    stopping_ = true;
  }
  cv_.NotifyAll();
  for (auto& t : threads_) t.join();
}

void CopyPool::RunClaimed(Job* job, size_t i) {
  const size_t n = job->n;  // `job` may be gone once our last claim is reported done
  for (;;) {
    (*job->fn)(i);
    // Claim the next index before reporting this one, so the job stays alive while we hold it.
    const size_t next = job->next.fetch_add(1);
    {
      MutexLock lock(&job->mu);
      if (++job->done == n) job->cv.NotifyAll();  // under the lock: the waiter owns `job`
    }
    if (next >= n) return;
    i = next;
  }
}

void CopyPool::WorkerLoop() {
  for (;;) {
    Job* job = nullptr;
    size_t i = 0;
    {
      MutexLock lock(&mu_);
      while (job == nullptr) {
        while (!stopping_ && queue_.empty()) cv_.Wait(&mu_);
        if (queue_.empty()) return;  // stopping, and no job left
        Job* front = queue_.front();
        i = front->next.fetch_add(1);
        // The last index (or none) is gone: nobody needs to find this job any more. A claim
        // below n holds the job alive; a failed one never touches it again.
        if (i + 1 >= front->n) queue_.pop_front();
        if (i < front->n) job = front;
      }
    }
    RunClaimed(job, i);
  }
}

void CopyPool::Run(size_t n, const std::function<void(size_t)>& fn) {
  if (n == 0) return;
  if (n == 1) {
    fn(0);
    return;
  }
  Job job(&fn, n);
  {
    MutexLock lock(&mu_);
    KVT_CHECK(!stopping_);
    queue_.push_back(&job);
  }
  cv_.NotifyAll();
  const size_t i = job.next.fetch_add(1);
  if (i < n) RunClaimed(&job, i);
  {
    // Every index is claimed: make sure no thread can find the job after we return.
    MutexLock lock(&mu_);
    auto it = std::find(queue_.begin(), queue_.end(), &job);
    if (it != queue_.end()) queue_.erase(it);
  }
  MutexLock lock(&job.mu);
  while (job.done < n) job.cv.Wait(&job.mu);
}

}  // namespace kvtier::transfer
