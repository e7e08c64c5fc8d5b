#include "kvtier/l2/redis/testing/redis_server.h"

#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>

#include <arpa/inet.h>
#include <fcntl.h>
#include <fmt/format.h>
#include <hiredis/hiredis.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

namespace kvtier::l2::testing {
namespace {

Result<int> FreeLoopbackPort() {
  int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return MakeError(Status::IOError(fmt::format("socket: {}", std::strerror(errno))));
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  addr.sin_port = 0;
  socklen_t len = sizeof(addr);
  if (::bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0 ||
      ::getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len) != 0) {
    int err = errno;
    ::close(fd);
    return MakeError(Status::IOError(fmt::format("bind 127.0.0.1:0: {}", std::strerror(err))));
  }
  ::close(fd);
  return ntohs(addr.sin_port);
}

std::vector<std::string> SplitWords(const std::string& s) {
  std::vector<std::string> words;
  std::istringstream in(s);
  for (std::string w; in >> w;) words.push_back(w);
  return words;
}

std::string ReplyToText(const redisReply* r) {
  switch (r->type) {
    case REDIS_REPLY_INTEGER:
      return std::to_string(r->integer);
    case REDIS_REPLY_NIL:
      return "(nil)";
    case REDIS_REPLY_ARRAY: {
      std::string out;
      for (size_t i = 0; i < r->elements; ++i) {
        if (i > 0) out += '\n';
        out += ReplyToText(r->element[i]);
      }
      return out;
    }
    default:
      return std::string(r->str, r->len);
  }
}

}  // namespace

std::string RedisServer::FindBinary(std::string_view name) {
  const char* path = std::getenv("PATH");
  if (path == nullptr) return "";
  std::istringstream dirs(path);
  for (std::string dir; std::getline(dirs, dir, ':');) {
    if (dir.empty()) continue;
    std::string candidate = dir + "/" + std::string(name);
    if (::access(candidate.c_str(), X_OK) == 0) return candidate;
  }
  return "";
}

RedisServer::RedisServer(RedisServerOptions options) : options_(std::move(options)) {}

Result<std::unique_ptr<RedisServer>> RedisServer::Start(RedisServerOptions options) {
  std::unique_ptr<RedisServer> server(new RedisServer(std::move(options)));
  server->binary_ = FindBinary("redis-server");
  if (server->binary_.empty()) {
    return MakeError(Status::NotFound("redis-server is not installed (not on $PATH)"));
  }
  char dir[] = "/tmp/kvt-redis-XXXXXX";
  if (::mkdtemp(dir) == nullptr) {
    return MakeError(Status::IOError(fmt::format("mkdtemp: {}", std::strerror(errno))));
  }
  server->dir_ = dir;
  // A free port can be taken by someone else before redis-server binds it: try a few.
  const bool pick_port = server->options_.port == 0;
  Status last;
  for (int attempt = 0; attempt < (pick_port ? 5 : 1); ++attempt) {
    if (pick_port) {
      KVT_ASSIGN_OR_RETURN(server->port_, FreeLoopbackPort());
    } else {
      server->port_ = server->options_.port;
    }
    last = server->Launch();
    if (last.ok()) last = server->WaitReady();
    if (last.ok()) return server;
    server->Stop().IgnoreError();
  }
  return MakeError(last);
}

RedisServer::~RedisServer() {
  Stop().IgnoreError();
  if (!dir_.empty()) {
    std::error_code ec;
    std::filesystem::remove_all(dir_, ec);
  }
}

nlohmann::json RedisServer::AdapterConfig() const {
  nlohmann::json j = {{"host", host_}, {"port", port_}};
  if (!options_.requirepass.empty()) j["password"] = options_.requirepass;
  return j;
}

Status RedisServer::Launch() {
  std::vector<std::string> args = {binary_,
                                   "--port",
                                   std::to_string(port_),
                                   "--bind",
                                   host_,
                                   "--save",
                                   "",
                                   "--appendonly",
                                   "no",
                                   "--daemonize",
                                   "no",
                                   "--dir",
                                   dir_,
                                   "--logfile",
                                   dir_ + "/redis.log"};
  if (!options_.requirepass.empty()) {
    args.emplace_back("--requirepass");
    args.push_back(options_.requirepass);
  }
  for (const std::string& rule : options_.acl_users) {
    args.emplace_back("--user");
    for (std::string& w : SplitWords(rule)) args.push_back(std::move(w));
  }
  args.insert(args.end(), options_.extra_args.begin(), options_.extra_args.end());
  std::vector<char*> argv;
  argv.reserve(args.size() + 1);
  for (std::string& a : args) argv.push_back(a.data());
  argv.push_back(nullptr);
  std::string out_path = dir_ + "/stdout.log";

  const pid_t parent = ::getpid();
  pid_t pid = ::fork();
  if (pid < 0) return Status::IOError(fmt::format("fork: {}", std::strerror(errno)));
  if (pid == 0) {
    // Child: async-signal-safe calls only.
    ::prctl(PR_SET_PDEATHSIG, SIGKILL);
    if (::getppid() != parent) ::_exit(126);
    sigset_t none;
    ::sigemptyset(&none);
    ::sigprocmask(SIG_SETMASK, &none, nullptr);
    int out = ::open(out_path.c_str(), O_WRONLY | O_CREAT | O_APPEND, 0644);
    if (out >= 0) {
      ::dup2(out, STDOUT_FILENO);
      ::dup2(out, STDERR_FILENO);
    }
    ::execv(argv[0], argv.data());
    ::_exit(127);
  }
  pid_ = pid;
  pidfd_ = static_cast<int>(::syscall(SYS_pidfd_open, pid, 0));
  if (pidfd_ < 0) {
    int err = errno;
    ::kill(pid, SIGKILL);
    ::waitpid(pid, nullptr, 0);
    pid_ = -1;
    return Status::IOError(fmt::format("pidfd_open: {}", std::strerror(err)));
  }
  return Status::OK();
}

Status RedisServer::WaitReady() {
  TimePoint deadline = std::chrono::steady_clock::now() + options_.startup_timeout;
  for (;;) {
    if (WaitExit(Duration::zero())) {
      return Status::Unavailable(
          fmt::format("redis-server on port {} exited during startup:\n{}", port_, LogTail()));
    }
    timeval tv{0, 200'000};
    redisContext* c = redisConnectWithTimeout(host_.c_str(), port_, tv);
    if (c != nullptr && c->err == 0) {
      redisSetTimeout(c, tv);
      auto* reply = static_cast<redisReply*>(redisCommand(c, "PING"));
      if (reply != nullptr) {  // PONG, or NOAUTH when a password is required: it is up
        freeReplyObject(reply);
        redisFree(c);
        return Status::OK();
      }
    }
    if (c != nullptr) redisFree(c);
    if (std::chrono::steady_clock::now() >= deadline) {
      return Status::Timeout(
          fmt::format("redis-server on port {} did not answer PING within {} s:\n{}", port_,
                      std::chrono::duration<double>(options_.startup_timeout).count(), LogTail()));
    }
    // Waiting for an external process to come up: a short bounded pause between PING attempts
    // (on the child's pidfd, so an early exit ends it at once). The only such wait here.
    WaitExit(std::chrono::milliseconds(10));
  }
}

bool RedisServer::WaitExit(Duration timeout) {
  if (pid_ <= 0) return true;
  int ms = static_cast<int>(std::chrono::duration_cast<std::chrono::milliseconds>(timeout).count());
  pollfd p{pidfd_, POLLIN, 0};
  int rc;
  do {
    rc = ::poll(&p, 1, ms);
  } while (rc < 0 && errno == EINTR);
  if (rc <= 0) return false;
  int status = 0;
  ::waitpid(pid_, &status, 0);
  ::close(pidfd_);
  pidfd_ = -1;
  pid_ = -1;
  return true;
}

Status RedisServer::Stop(Duration grace) {
  if (pid_ <= 0) return Status::OK();
  ::kill(pid_, SIGTERM);
  ::kill(pid_, SIGCONT);  // a paused server handles SIGTERM only once resumed
  if (WaitExit(grace)) return Status::OK();
  return Kill();
}

Status RedisServer::Kill() {
  if (pid_ <= 0) return Status::OK();
  ::kill(pid_, SIGKILL);
  if (!WaitExit(std::chrono::seconds(30))) {
    return Status::Internal(fmt::format("redis-server pid {} survived SIGKILL", pid_));
  }
  return Status::OK();
}

Status RedisServer::Restart() {
  KVT_RETURN_IF_ERROR(Stop());
  KVT_RETURN_IF_ERROR(Launch());
  return WaitReady();
}

Status RedisServer::Pause() {
  if (pid_ <= 0 || ::kill(pid_, SIGSTOP) != 0) return Status::FailedPrecondition("not running");
  return Status::OK();
}

Status RedisServer::Resume() {
  if (pid_ <= 0 || ::kill(pid_, SIGCONT) != 0) return Status::FailedPrecondition("not running");
  return Status::OK();
}

Result<std::string> RedisServer::Command(const std::vector<std::string>& args, int db) const {
  timeval tv{5, 0};
  redisContext* c = redisConnectWithTimeout(host_.c_str(), port_, tv);
  if (c == nullptr || c->err != 0) {
    std::string why = c != nullptr ? c->errstr : "out of memory";
    if (c != nullptr) redisFree(c);
    return MakeError(Status::Unavailable(fmt::format("connect to port {}: {}", port_, why)));
  }
  redisSetTimeout(c, tv);
  auto run = [c](const std::vector<std::string>& a) -> Result<std::string> {
    std::vector<const char*> argv;
    std::vector<size_t> lens;
    for (const std::string& s : a) {
      argv.push_back(s.data());
      lens.push_back(s.size());
    }
    auto* reply = static_cast<redisReply*>(
        redisCommandArgv(c, static_cast<int>(a.size()), argv.data(), lens.data()));
    if (reply == nullptr) return MakeError(Status::IOError(c->errstr, true));
    std::string text = ReplyToText(reply);
    bool error = reply->type == REDIS_REPLY_ERROR;
    freeReplyObject(reply);
    if (error) return MakeError(Status::IOError(text));
    return text;
  };
  Result<std::string> result = std::string();
  if (!options_.requirepass.empty()) result = run({"AUTH", options_.requirepass});
  if (result && db != 0) result = run({"SELECT", std::to_string(db)});
  if (result) result = run(args);
  redisFree(c);
  return result;
}

std::string RedisServer::LogTail(size_t max_bytes) const {
  std::string all;
  for (const char* name : {"/stdout.log", "/redis.log"}) {
    std::ifstream in(dir_ + name);
    std::stringstream ss;
    ss << in.rdbuf();
    all += ss.str();
  }
  return all.size() > max_bytes ? all.substr(all.size() - max_bytes) : all;
}

}  // namespace kvtier::l2::testing
