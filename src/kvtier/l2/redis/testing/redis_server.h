// RedisServer: a real redis-server child process for tests and benchmarks.
//
// Starts `redis-server` on a free loopback port with no persistence (--save "" --appendonly
// no) in its own temporary directory, waits until it answers PING, and stops it (SIGTERM, then
// SIGKILL after a grace period). Kill, Pause/Resume (SIGSTOP/SIGCONT) and Restart on the same
// port let tests play a server that dies, hangs or comes back.
//
// The child gets SIGKILL if the thread that started it exits (PR_SET_PDEATHSIG), so a crashed
// test leaves no server behind: start servers from a thread that outlives them (the test's).
// Not thread-safe.
#pragma once

#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include <nlohmann/json.hpp>
#include <sys/types.h>

#include "kvtier/common/clock.h"
#include "kvtier/common/result.h"

namespace kvtier::l2::testing {

struct RedisServerOptions {
  int port = 0;                         // 0: pick a free port
  std::string requirepass;              // --requirepass: the default user's password
  std::vector<std::string> acl_users;   // ACL rules, e.g. "alice on >secret ~* &* +@all"
  std::vector<std::string> extra_args;  // passed as given, e.g. {"--maxmemory", "10mb"}
  Duration startup_timeout = std::chrono::seconds(10);
};

class RedisServer {
 public:
  // The path of `name` on $PATH; empty when absent.
  static std::string FindBinary(std::string_view name);
  // Whether redis-server is installed (tests GTEST_SKIP when not).
  static bool Available() { return !FindBinary("redis-server").empty(); }

  static Result<std::unique_ptr<RedisServer>> Start(RedisServerOptions options = {});
  ~RedisServer();
  RedisServer(const RedisServer&) = delete;
  RedisServer& operator=(const RedisServer&) = delete;

  const std::string& host() const { return host_; }
  int port() const { return port_; }
  bool running() const { return pid_ > 0; }
  // {"host": ..., "port": ..., "password": ... (when requirepass is set)}: an adapter config.
  nlohmann::json AdapterConfig() const;

  // SIGTERM, then SIGKILL when it has not exited after `grace`. Idempotent.
  Status Stop(Duration grace = std::chrono::seconds(5));
  // SIGKILL now (a crash), and reap it.
  Status Kill();
  // Starts it again on the same port with the same options (after Stop or Kill).
  Status Restart();
  // SIGSTOP / SIGCONT: connections stay open, nothing is answered while paused.
  Status Pause();
  Status Resume();

  // Runs one command on a fresh connection (authenticated with requirepass, in database `db`)
  // and returns the reply as text: strings and statuses as they are, integers in decimal, nil
  // as "(nil)", arrays as their elements joined by '\n'. An error reply is kIOError.
  Result<std::string> Command(const std::vector<std::string>& args, int db = 0) const;

  // The last lines of the server's log, for failure messages.
  std::string LogTail(size_t max_bytes = 4096) const;

 private:
  explicit RedisServer(RedisServerOptions options);
  Status Launch();
  Status WaitReady();
  // Waits up to `timeout` for the child to exit and reaps it; false when it is still running.
  bool WaitExit(Duration timeout);

  RedisServerOptions options_;
  std::string binary_;
  std::string host_ = "127.0.0.1";
  int port_ = 0;
  std::string dir_;
  pid_t pid_ = -1;
  int pidfd_ = -1;
};

}  // namespace kvtier::l2::testing
