// SIGINT / SIGTERM for the long-running commands (server, controller): blocked before any
// thread starts, so every thread inherits the mask, then taken synchronously by the main thread.
#pragma once

#include <csignal>

#include <pthread.h>

#include "kvtier/common/logging.h"

namespace kvtier::apps {

class ShutdownSignals {
 public:
  // Blocks SIGINT and SIGTERM in the calling thread (call before starting any thread).
  ShutdownSignals() {
    sigemptyset(&signals_);
    sigaddset(&signals_, SIGINT);
    sigaddset(&signals_, SIGTERM);
    pthread_sigmask(SIG_BLOCK, &signals_, nullptr);
  }
  // Waits for one of them and logs which.
  void Wait() const {
    int sig = 0;
    while (sigwait(&signals_, &sig) != 0) {
    }
    KVT_LOG_INFO("received {}, shutting down", sig == SIGINT ? "SIGINT" : "SIGTERM");
  }

 private:
  sigset_t signals_;
};

}  // namespace kvtier::apps
