// Client stress tests, meant for TSan: many threads share one client while the fake server
// answers out of order, drops requests, or the client is closed under them.
#include <atomic>
#include <chrono>
#include <deque>
#include <latch>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include <gtest/gtest.h>

#include "kvtier/client.h"
#include "kvtier/client/testing/fake_server.h"
#include "kvtier/common/mutex.h"

namespace kvtier {
namespace {

using client_testing::FakeServer;
using protocol::Opcode;
using std::chrono::milliseconds;
using std::chrono::seconds;

constexpr Duration kLong = seconds(60);

std::unique_ptr<Client> MustConnect(const FakeServer& server, ClientOptions options = {}) {
  options.endpoint = server.endpoint();
  Result<std::unique_ptr<Client>> client = Client::Connect(options);
  KVT_CHECK_MSG(client.has_value(), "connect: {}", client.error().ToString());
  return std::move(*client);
}

// Requests held by the server's handler and answered by another thread in shuffled batches, so
// replies overtake each other. Constructed before the server whose handler calls Add (TSan
// cannot see that a request arriving through libzmq comes after the construction); started once
// the server exists, stopped before it goes.
class ShufflingReplier {
 public:
  ~ShufflingReplier() { Stop(); }
  void Start(FakeServer* server) {
    server_ = server;
    thread_ = std::thread([this] { Run(); });
  }
  void Stop() {
    {
      MutexLock lock(&mu_);
      stop_ = true;
    }
    cv_.NotifyAll();
    if (thread_.joinable()) thread_.join();
  }
  // Called on the server's thread.
  void Add(FakeServer::Received r, protocol::Reply reply) {
    {
      MutexLock lock(&mu_);
      held_.push_back({std::move(r), std::move(reply)});
    }
    cv_.NotifyAll();
  }

 private:
  struct Held {
    FakeServer::Received to;
    protocol::Reply reply;
  };
  void Run() {
    std::mt19937 rng(7);
    while (true) {
      std::vector<Held> batch;
      {
        MutexLock lock(&mu_);
        while (held_.empty() && !stop_) cv_.Wait(&mu_);
        if (held_.empty()) return;
        batch.swap(held_);
      }
      std::shuffle(batch.begin(), batch.end(), rng);
      for (Held& h : batch) server_->Reply(h.to, h.reply);
    }
  }

  FakeServer* server_ = nullptr;
  Mutex mu_;
  CondVar cv_;
  std::vector<Held> held_ KVT_GUARDED_BY(mu_);
  bool stop_ KVT_GUARDED_BY(mu_) = false;
  std::thread thread_;
};

// Echo: each reply carries the number in its request, so a future holding another request's
// reply is caught.
std::optional<protocol::Reply> EchoReply(const FakeServer::Received& r) {
  return std::visit(
      [](const auto& req) -> std::optional<protocol::Reply> {
        using T = std::decay_t<decltype(req)>;
        if constexpr (std::is_same_v<T, protocol::EndSessionRequest>) {
          return protocol::EndSessionReply{static_cast<uint32_t>(std::stoul(req.request_id))};
        } else if constexpr (std::is_same_v<T, protocol::QueryPrefetchLookupHitsRequest>) {
          return protocol::LookupHitsReply{true, static_cast<uint32_t>(std::stoul(req.request_id))};
        } else if constexpr (std::is_same_v<T, protocol::StoreRequest>) {
          return protocol::StoreReply{static_cast<uint32_t>(std::stoul(req.key.request_id)),
                                      static_cast<uint32_t>(req.block_ids.size()), 0, std::nullopt};
        } else if constexpr (std::is_same_v<T, protocol::QueryPrefetchStatusRequest>) {
          return protocol::PrefetchStatusReply{true,
                                               static_cast<uint32_t>(std::stoul(req.request_id))};
        } else {
          return std::nullopt;
        }
      },
      r.request);
}

// One request of the mix and a check of its reply.
struct Call {
  uint32_t value = 0;
  int kind = 0;
  MessagingFuture<protocol::EndSessionReply> end_session;
  MessagingFuture<protocol::LookupHitsReply> hits;
  MessagingFuture<protocol::StoreReply> store;
  MessagingFuture<protocol::Reply> any;
};

Call Issue(Client& client, uint32_t value) {
  Call c;
  c.value = value;
  c.kind = static_cast<int>(value % 4);
  const std::string id = std::to_string(value);
  switch (c.kind) {
    case 0:
      c.end_session = client.EndSession(id);
      break;
    case 1:
      c.hits = client.QueryPrefetchLookupHits(id);
      break;
    case 2: {
      protocol::StoreRequest store;
      store.instance_id = "w";
      store.key.model = "m";
      store.key.request_id = id;
      store.key.worker_rank = 0;
      store.key.tokens.assign(16, value);
      store.block_ids.assign(value % 5 + 1, 1);
      c.store = client.Store(std::move(store));
      break;
    }
    default:
      c.any = client.Send(protocol::QueryPrefetchStatusRequest{id});
      break;
  }
  return c;
}

// Empty when the reply is the request's own.
std::string Check(const Call& c) {
  switch (c.kind) {
    case 0: {
      auto r = c.end_session.Result(kLong);
      if (!r) return r.error().ToString();
      return r->touched_keys == c.value ? "" : "wrong EndSession reply";
    }
    case 1: {
      auto r = c.hits.Result(kLong);
      if (!r) return r.error().ToString();
      return r->hit_chunks == c.value && r->known ? "" : "wrong LookupHits reply";
    }
    case 2: {
      auto r = c.store.Result(kLong);
      if (!r) return r.error().ToString();
      return r->stored_chunks == c.value && r->present_chunks == c.value % 5 + 1
                 ? ""
                 : "wrong Store reply";
    }
    default: {
      auto r = c.any.Result(kLong);
      if (!r) return r.error().ToString();
      const auto* p = std::get_if<protocol::PrefetchStatusReply>(&*r);
      return p != nullptr && p->hit_chunks == c.value ? "" : "wrong PrefetchStatus reply";
    }
  }
}

// 8 threads x 2000 requests of four kinds, up to 32 outstanding per thread, answered in
// shuffled batches: every future gets exactly its own reply.
TEST(ClientStressTest, ManyThreadsEachGetTheirOwnReplies) {
  constexpr int kThreads = 8;
  constexpr int kPerThread = 2000;
  constexpr size_t kWindow = 32;
  ShufflingReplier replier;
  FakeServer server(
      [&](const FakeServer::Received& r) -> std::optional<protocol::Reply> {
        replier.Add(r, *EchoReply(r));
        return std::nullopt;
      },
      FakeServer::Options{.record = false});
  replier.Start(&server);
  auto client = MustConnect(server);

  std::atomic<int> wrong{0};
  std::atomic<int> checked{0};
  std::latch start(kThreads);
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      start.arrive_and_wait();
      std::deque<Call> window;
      auto check_oldest = [&] {
        std::string error = Check(window.front());
        if (!error.empty()) {
          if (wrong.fetch_add(1) < 5)
            ADD_FAILURE() << "request " << window.front().value << ": " << error;
        }
        checked.fetch_add(1);
        window.pop_front();
      };
      for (int i = 0; i < kPerThread; ++i) {
        window.push_back(Issue(*client, static_cast<uint32_t>(t * 1000000 + i)));
        if (window.size() >= kWindow) check_oldest();
      }
      while (!window.empty()) check_oldest();
    });
  }
  for (auto& th : threads) th.join();
  EXPECT_EQ(wrong.load(), 0);
  EXPECT_EQ(checked.load(), kThreads * kPerThread);
  EXPECT_EQ(client->pending(), 0u);
  client.reset();
  replier.Stop();
}

// The server never answers a third of the requests, sent with short deadlines of assorted
// lengths: those time out, the rest (default 30 s deadline) get their own replies, and nothing
// stays pending.
TEST(ClientStressTest, TimeoutsUnderLoad) {
  constexpr int kThreads = 4;
  constexpr int kPerThread = 300;
  FakeServer server(
      [](const FakeServer::Received& r) -> std::optional<protocol::Reply> {
        const auto& req = std::get<protocol::EndSessionRequest>(r.request);
        if (std::stoul(req.request_id) % 3 == 0) return std::nullopt;
        return EchoReply(r);
      },
      FakeServer::Options{.record = false});
  auto client = MustConnect(server);
  std::atomic<int> wrong{0};
  std::atomic<int> timeouts{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      std::vector<std::pair<uint32_t, MessagingFuture<protocol::Reply>>> futures;
      for (int i = 0; i < kPerThread; ++i) {
        const uint32_t v = static_cast<uint32_t>(t * 1000000 + i);
        const Timeout timeout = v % 3 == 0 ? Timeout(milliseconds(10 + v % 50)) : kWaitForever;
        futures.emplace_back(v,
                             client->Send(protocol::EndSessionRequest{std::to_string(v)}, timeout));
      }
      for (auto& [v, f] : futures) {
        Result<protocol::Reply> r = f.Result(kLong);
        if (v % 3 == 0) {
          if (!r && r.error().code() == StatusCode::kTimeout) {
            timeouts.fetch_add(1);
          } else {
            wrong.fetch_add(1);
          }
        } else if (!r || !std::holds_alternative<protocol::EndSessionReply>(*r) ||
                   std::get<protocol::EndSessionReply>(*r).touched_keys != v) {
          wrong.fetch_add(1);
        }
      }
    });
  }
  for (auto& th : threads) th.join();
  EXPECT_EQ(wrong.load(), 0);
  EXPECT_EQ(timeouts.load(), kThreads * kPerThread / 3);
  EXPECT_EQ(client->pending(), 0u);
}

// Close races with four submitting threads once 500 replies came back: every future completes,
// with its reply or kCancelled (or kResourceExhausted, when max_pending is reached first), and
// the threads see kCancelled from then on.
TEST(ClientStressTest, CloseWhileThreadsSubmit) {
  constexpr int kThreads = 4;
  constexpr int kRepliesBeforeClose = 500;
  std::atomic<uint64_t> seen{0};
  std::atomic<int> replied{0};
  sync::Promise<void> enough_replies;
  FakeServer server(
      [&](const FakeServer::Received& r) -> std::optional<protocol::Reply> {
        // Answer every other request; hold the rest until Close cancels them.
        if (seen.fetch_add(1) % 2 == 0) return FakeServer::DefaultReply(r.opcode());
        return std::nullopt;
      },
      FakeServer::Options{.record = false});
  auto client = MustConnect(server);
  std::atomic<int> bad{0};
  std::atomic<int> ok{0};
  std::atomic<int> cancelled{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&] {
      std::vector<MessagingFuture<protocol::EmptyReply>> futures;
      while (futures.size() < 300000) {  // Close never came: fails below
        MessagingFuture<protocol::EmptyReply> f = client->Noop();
        futures.push_back(f);
        f.OnReady([&, f] {
          if (f.Result(Duration::zero()).has_value() &&
              replied.fetch_add(1) + 1 == kRepliesBeforeClose) {
            enough_replies.SetValue();
          }
        });
        if (f.Query()) {
          Result<protocol::EmptyReply> r = f.Result();
          if (!r && r.error().code() == StatusCode::kCancelled) break;
        }
      }
      for (auto& f : futures) {
        Result<protocol::EmptyReply> r = f.Result(kLong);
        if (r) {
          ok.fetch_add(1);
        } else if (r.error().code() == StatusCode::kCancelled) {
          cancelled.fetch_add(1);
        } else if (r.error().code() != StatusCode::kResourceExhausted) {
          bad.fetch_add(1);
        }
      }
    });
  }
  EXPECT_TRUE(enough_replies.GetFuture().Wait(kLong));
  client->Close();
  for (auto& th : threads) th.join();
  EXPECT_EQ(bad.load(), 0);
  EXPECT_GE(ok.load(), kRepliesBeforeClose);
  EXPECT_GE(cancelled.load(), kThreads);
  EXPECT_EQ(client->pending(), 0u);
}

}  // namespace
}  // namespace kvtier
