#include "kvtier/server/worker_pool.h"

#include <exception>

#include "kvtier/common/check.h"
#include "kvtier/common/logging.h"

namespace kvtier::server {

WorkerPool::WorkerPool(std::string name, size_t threads, size_t max_queued)
    : name_(std::move(name)), max_queued_(max_queued) {
  KVT_CHECK(threads > 0);
  {
    MutexLock lock(&mu_);
    own_.resize(threads);
  }
  threads_.reserve(threads);
  for (size_t i = 0; i < threads; ++i) threads_.emplace_back([this, i] { Run(i); });
}

WorkerPool::~WorkerPool() { Stop(); }

bool WorkerPool::SubmitAny(Task task) {
  MutexLock lock(&mu_);
  if (stopping_ || queued_ >= max_queued_) {
    ++rejected_;
    return false;
  }
  shared_.push_back(std::move(task));
  ++queued_;
  cv_.NotifyOne();
  return true;
}

bool WorkerPool::SubmitTo(uint64_t key, Task task) {
  MutexLock lock(&mu_);
  if (stopping_ || queued_ >= max_queued_) {
    ++rejected_;
    return false;
  }
  own_[key % own_.size()].push_back(std::move(task));
  ++queued_;
  cv_.NotifyAll();  // the one thread that may take it must wake
  return true;
}

void WorkerPool::Run(size_t index) {
  for (;;) {
    Task task;
    {
      MutexLock lock(&mu_);
      while (own_[index].empty() && shared_.empty() && !stopping_) cv_.Wait(&mu_);
      // Affinity work first: it can only run here.
      if (!own_[index].empty()) {
        task = std::move(own_[index].front());
        own_[index].pop_front();
      } else if (!shared_.empty()) {
        task = std::move(shared_.front());
        shared_.pop_front();
      } else {
        return;  // stopping, and nothing left for this thread
      }
      --queued_;
    }
    try {
      task();
    } catch (const std::exception& e) {
      KVT_LOG_ERROR("{} pool: task failed with an exception: {}", name_, e.what());
    } catch (...) {
      KVT_LOG_ERROR("{} pool: task failed with an exception", name_);
    }
  }
}

void WorkerPool::Stop() {
  {
    MutexLock lock(&mu_);
    if (stopping_ && threads_.empty()) return;
    stopping_ = true;
    cv_.NotifyAll();
  }
  for (auto& t : threads_) {
    if (t.joinable()) t.join();
  }
  threads_.clear();
}

size_t WorkerPool::queued() const {
  MutexLock lock(&mu_);
  return queued_;
}

uint64_t WorkerPool::rejected() const {
  MutexLock lock(&mu_);
  return rejected_;
}

}  // namespace kvtier::server
