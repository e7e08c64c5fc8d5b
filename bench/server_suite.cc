// `kvtier bench server`: the whole server path (client -> socket -> server -> L1 and back),
// in-process server, real sockets.
//
// - LOOKUP + WAIT_PREFETCH_STATUS of a 64-chunk cached prefix (a new request each time, so the
//   server hashes all 16384 tokens), over ipc and tcp loopback: p50/p99 latency and pairs/s,
//   against a bare ZMQ DEALER/ROUTER echo of the same two messages measured in the same run.
// - STORE and RETRIEVE GB/s through the host shared-memory path with a Llama-3.1-8B-shaped
//   layout (32 layers, 8 KV heads, head dim 128, bf16, 16-token blocks, 256-token chunks: 32 MiB
//   per chunk) and 2 copy threads, against memcpy of the same bytes on 2 threads.
#include <algorithm>
#include <chrono>
#include <cstring>
#include <thread>

#include <fcntl.h>
#include <fmt/format.h>
#include <sys/mman.h>
#include <unistd.h>
#include <zmq.hpp>

#include "kvtier/client.h"
#include "kvtier/common/check.h"
#include "kvtier/protocol/codec.h"
#include "kvtier/service/service.h"

#include "suites.h"
#include "zmq_echo.h"

namespace kvtier::bench {
namespace {

using Clock = std::chrono::steady_clock;

double Micros(Clock::duration d) { return std::chrono::duration<double, std::micro>(d).count(); }

// A POSIX shared-memory segment (the engine's paged KV cache).
class Shm {
 public:
  explicit Shm(uint64_t size) : size_(size) {
    name_ = fmt::format("/kvt-bench-server-{}", ::getpid());
    int fd = ::shm_open(name_.c_str(), O_CREAT | O_RDWR | O_TRUNC, 0600);
    KVT_CHECK(fd >= 0);
    KVT_CHECK(::ftruncate(fd, static_cast<off_t>(size)) == 0);
    data_ = static_cast<uint8_t*>(::mmap(nullptr, size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0));
    ::close(fd);
    KVT_CHECK(data_ != MAP_FAILED);
    for (uint64_t i = 0; i < size; i += 8) {
      const uint64_t v = i * 0x9E3779B97F4A7C15ull;
      std::memcpy(data_ + i, &v, 8);
    }
  }
  ~Shm() {
    ::munmap(data_, size_);
    ::shm_unlink(name_.c_str());
  }
  const std::string& name() const { return name_; }
  uint64_t size() const { return size_; }

 private:
  std::string name_;
  uint64_t size_;
  uint8_t* data_;
};

std::vector<uint32_t> Tokens(size_t n, uint64_t seed) {
  std::vector<uint32_t> t(n);
  uint64_t x = seed * 0x9E3779B97F4A7C15ull + 1;
  for (auto& v : t) {
    x ^= x << 13, x ^= x >> 7, x ^= x << 17;
    v = static_cast<uint32_t>(x % 128000);
  }
  return t;
}

template <typename T>
T Must(const MessagingFuture<T>& f, const char* what) {
  auto r = f.Result(std::chrono::seconds(60));
  KVT_CHECK_MSG(r.has_value(), "{}: {}", what, r.error().ToString());
  return *r;
}

// ---- LOOKUP round trips ------------------------------------------------------------------

struct Latencies {
  std::vector<double> us;
  double per_second = 0;
};

// The bare baseline: the same two messages (LOOKUP's and WAIT's) echoed, one at a time.
Latencies EchoPairs(const std::string& endpoint, const protocol::Frames& a,
                    const protocol::Frames& b, int n) {
  EchoServer server(endpoint);
  zmq::context_t ctx(1);
  zmq::socket_t s(ctx, zmq::socket_type::dealer);
  s.set(zmq::sockopt::linger, 0);
  s.connect(server.bound);
  auto rt = [&](const protocol::Frames& f) {
    s.send(zmq::buffer(f.header), zmq::send_flags::sndmore);
    s.send(zmq::buffer(f.payload), zmq::send_flags::none);
    zmq::message_t h, p;
    (void)s.recv(h);
    (void)s.recv(p);
  };
  for (int i = 0; i < 20; ++i) rt(a), rt(b);  // connect and warm up
  Latencies out;
  const auto start = Clock::now();
  for (int i = 0; i < n; ++i) {
    const auto t0 = Clock::now();
    rt(a);
    rt(b);
    out.us.push_back(Micros(Clock::now() - t0));
  }
  out.per_second = n / std::chrono::duration<double>(Clock::now() - start).count();
  return out;
}

Status LookupRoundTrips(const SuiteOptions& options, Reporter* reporter,
                        const std::string& transport) {
  constexpr uint32_t kChunks = 64, kChunk = 256;
  const int n = options.quick ? 200 : 3000;
  service::ServiceOptions so;
  so.transport.endpoints = {transport == "ipc"
                                ? fmt::format("ipc:///tmp/kvt-bench-server-{}.sock", ::getpid())
                                : std::string("tcp://127.0.0.1:0")};
  so.storage.l1.capacity_bytes = 256ull << 20;
  so.admin_enabled = false;
  so.copy_threads = 0;
  KVT_ASSIGN_OR_RETURN(auto service, service::Service::Start(so));
  ClientOptions co;
  co.endpoint = service->endpoints()[0];
  KVT_ASSIGN_OR_RETURN(auto client, Client::Connect(co));

  // A small registration is enough to store the 64 chunks once.
  Shm shm(uint64_t{kChunks} * kChunk * 2 * 64 /*bytes per token row*/ + 4096);
  protocol::RegisterKvCacheRequest reg;
  reg.instance_id = "bench";
  reg.model = "bench-model";
  reg.layout = {
      1, kChunks * kChunk / 16, 16, 1, 32, protocol::DType::kBf16, protocol::KvFormat::kKvNhd, {0}};
  reg.shm_name = shm.name();
  reg.shm_size = shm.size();
  Must(client->RegisterKvCache(reg), "register");
  const std::vector<uint32_t> prefix = Tokens(kChunks * kChunk, 7);
  protocol::StoreRequest store;
  store.instance_id = "bench";
  store.key.model = "bench-model";
  store.key.worker_rank = 0;
  store.key.request_id = "fill";
  store.key.tokens = prefix;
  for (uint32_t b = 0; b < kChunks * kChunk / 16; ++b) store.block_ids.push_back(b);
  Must(client->Store(store), "store");

  auto lookup_of = [&](int i) {
    protocol::LookupRequest l;
    l.key.model = "bench-model";
    l.key.request_id = fmt::format("r{}", i);
    l.key.tokens = prefix;
    return l;
  };
  std::vector<double> us;
  uint64_t hits = 0;
  for (int i = -20; i < n; ++i) {  // 20 warm-up pairs
    protocol::LookupRequest l = lookup_of(i);
    const auto t0 = Clock::now();
    Must(client->Lookup(l), "lookup");
    auto st = Must(client->WaitPrefetchStatus(l.key.request_id, std::chrono::seconds(5)), "wait");
    const auto t1 = Clock::now();
    Must(client->EndSession(l.key.request_id), "end session");  // releases the locks; untimed
    if (i < 0) continue;
    us.push_back(Micros(t1 - t0));
    hits += st.hit_chunks;
  }
  if (hits != uint64_t{kChunks} * n) {
    return Status::Internal(
        fmt::format("lookup bench: expected {} hit chunks, got {}", uint64_t{kChunks} * n, hits));
  }
  double total_s = 0;
  for (double u : us) total_s += u / 1e6;
  const Latencies echo =
      EchoPairs(transport == "ipc" ? fmt::format("ipc:///tmp/kvt-bench-echo-{}.sock", ::getpid())
                                   : std::string("tcp://127.0.0.1:0"),
                protocol::EncodeRequest(1, lookup_of(0)),
                protocol::EncodeRequest(2, protocol::WaitPrefetchStatusRequest{"r0", 5000}), n);
  const std::string base = fmt::format("lookup64_{}", transport);
  reporter->Add(
      {base + "_p50", Percentile(us, 0.5), "us", "zmq_echo_pair_p50", Percentile(echo.us, 0.5)});
  reporter->Add(
      {base + "_p99", Percentile(us, 0.99), "us", "zmq_echo_pair_p99", Percentile(echo.us, 0.99)});
  reporter->Add({base + "_rate", n / total_s, "lookups/s", "zmq_echo_pairs/s", echo.per_second});
  service->Shutdown();
  return Status::OK();
}

// ---- STORE / RETRIEVE bandwidth ----------------------------------------------------------

Status Bandwidth(const SuiteOptions& options, Reporter* reporter) {
  constexpr uint32_t kLayers = 32, kHeads = 8, kDim = 128, kBlock = 16, kChunk = 256;
  const uint32_t chunks = options.quick ? 2 : 8;  // per request
  const uint32_t blocks = chunks * kChunk / kBlock;
  const uint64_t layer_bytes = 2ull * blocks * kBlock * kHeads * kDim * 2;
  const uint64_t object_bytes = uint64_t{kChunk} * kLayers * 2 * kHeads * kDim * 2;  // 32 MiB
  const uint64_t request_bytes = object_bytes * chunks;
  const int rounds = options.quick ? 2 : 6;

  service::ServiceOptions so;
  so.transport.endpoints = {fmt::format("ipc:///tmp/kvt-bench-bw-{}.sock", ::getpid())};
  so.transport.transfer_threads = 1;
  so.copy_threads = 1;  // plus the transfer thread itself: 2 threads copy
  so.host_transfer.min_parallel_bytes = 1;
  so.storage.l1.capacity_bytes = request_bytes * 2 + (64ull << 20);
  so.storage.l1.populate =
      true;  // steady state: L1 pages are faulted in at start (as in production)
  so.admin_enabled = false;
  KVT_ASSIGN_OR_RETURN(auto service, service::Service::Start(so));
  ClientOptions co;
  co.endpoint = service->endpoints()[0];
  KVT_ASSIGN_OR_RETURN(auto client, Client::Connect(co));
  Shm shm(layer_bytes * kLayers);
  protocol::RegisterKvCacheRequest reg;
  reg.instance_id = "bench";
  reg.model = "llama-3.1-8b";
  reg.layout = {
      kLayers, blocks, kBlock, kHeads, kDim, protocol::DType::kBf16, protocol::KvFormat::kKvNhd,
      {}};
  for (uint32_t l = 0; l < kLayers; ++l) reg.layout.layer_offsets.push_back(l * layer_bytes);
  reg.shm_name = shm.name();
  reg.shm_size = shm.size();
  Must(client->RegisterKvCache(reg), "register");
  std::vector<uint32_t> block_ids(blocks);
  for (uint32_t b = 0; b < blocks; ++b) block_ids[b] = b;

  double store_s = 0, retrieve_s = 0;
  for (int round = 0; round < rounds; ++round) {
    protocol::StoreRequest s;
    s.instance_id = "bench";
    s.key.model = "llama-3.1-8b";
    s.key.worker_rank = 0;
    s.key.request_id = fmt::format("bw{}", round);
    s.key.tokens = Tokens(chunks * kChunk, 1000 + round);  // new chunks every round
    s.block_ids = block_ids;
    auto t0 = Clock::now();
    auto stored = Must(client->Store(s), "store");
    store_s += std::chrono::duration<double>(Clock::now() - t0).count();
    if (stored.stored_chunks != chunks) {
      return Status::Internal(
          fmt::format("bandwidth bench: stored {} of {} chunks", stored.stored_chunks, chunks));
    }
    protocol::LookupRequest l;
    l.key = s.key;
    l.key.worker_rank.reset();
    Must(client->Lookup(l), "lookup");
    auto st = Must(client->WaitPrefetchStatus(l.key.request_id, std::chrono::seconds(10)), "wait");
    if (st.hit_chunks != chunks) return Status::Internal("bandwidth bench: lookup missed");
    protocol::RetrieveRequest r;
    r.instance_id = "bench";
    r.key = s.key;
    r.block_ids = block_ids;
    t0 = Clock::now();
    Must(client->Retrieve(r), "retrieve");
    retrieve_s += std::chrono::duration<double>(Clock::now() - t0).count();
    Must(client->EndSession(s.key.request_id), "end session");
    Must(client->Clear(true), "clear");
  }
  service->Shutdown();

  // Baseline: memcpy of the same bytes, split over 2 threads, same number of rounds.
  std::vector<uint8_t> src(request_bytes, 1), dst(request_bytes, 0);
  auto copy = [&] {
    std::thread helper([&] { std::memcpy(dst.data(), src.data(), request_bytes / 2); });
    std::memcpy(dst.data() + request_bytes / 2, src.data() + request_bytes / 2,
                request_bytes - request_bytes / 2);
    helper.join();
  };
  copy();  // fault the pages in
  const auto t0 = Clock::now();
  for (int round = 0; round < rounds; ++round) copy();
  const double memcpy_s = std::chrono::duration<double>(Clock::now() - t0).count();
  const double gb = static_cast<double>(request_bytes) * rounds / 1e9;
  reporter->Add(
      {"store_llama8b_GBps", gb / store_s, "GB/s", "memcpy_2threads_GBps", gb / memcpy_s});
  reporter->Add(
      {"retrieve_llama8b_GBps", gb / retrieve_s, "GB/s", "memcpy_2threads_GBps", gb / memcpy_s});
  return Status::OK();
}

}  // namespace

Status RunServerSuite(const SuiteOptions& options, Reporter* reporter) {
  KVT_RETURN_IF_ERROR(LookupRoundTrips(options, reporter, "ipc"));
  KVT_RETURN_IF_ERROR(LookupRoundTrips(options, reporter, "tcp"));
  KVT_RETURN_IF_ERROR(Bandwidth(options, reporter));
  return Status::OK();
}

}  // namespace kvtier::bench
