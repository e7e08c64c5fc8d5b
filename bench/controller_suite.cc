// `kvtier bench controller`: the cluster controller's registry and its LOOKUP RPC.
//
// - Batched Admit ingest (256 keys a batch) of 10M keys over 64 workers (8 instances x 8) into
//   an empty RegistryTree, on 1 and 2 threads, against absl::flat_hash_map inserts of the same
//   keys on one thread (no locks) measured right after each registry run (at least two of each).
// - FindKv of random present keys in the filled registry, 1 and 2 threads, against
//   flat_hash_map finds of the same probes on one thread; the two alternate until each side
//   has run at least min_seconds.
// - LOOKUP of a 64-chunk prefix through an in-process ControllerService (ipc and tcp loopback,
//   the real wire protocol on a DEALER socket; 4 registered workers hold 64, 48, 32 and 16
//   chunks of it): p50/p99 latency and lookups/s against a bare ZMQ DEALER/ROUTER echo of the
//   same request frame, in the same run.
// The workloads are those of src/kvtier/cluster/registry_workload.h (also cluster_registry_bench).
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <random>
#include <thread>

#include <fmt/format.h>
#include <unistd.h>
#include <zmq.hpp>

#include "kvtier/cluster/registry_workload.h"
#include "kvtier/common/check.h"
#include "kvtier/controller/codec.h"
#include "kvtier/controller/controller_service.h"

#include "suites.h"
#include "zmq_echo.h"

namespace kvtier::bench {
namespace {

using Clock = std::chrono::steady_clock;
using cluster::FlatMapBaseline;
using cluster::ObjectKey;
using cluster::RegistryTree;
using cluster::RunReport;
using cluster::WorkloadOptions;

double Micros(Clock::duration d) { return std::chrono::duration<double, std::micro>(d).count(); }

// ---- Registry: ingest and FindKv -----------------------------------------------------------

struct RegistryScale {
  uint64_t keys;
  WorkloadOptions workload;
  uint64_t probes;
  uint64_t lookups_per_round;  // per thread
};

RegistryScale ScaleOf(const SuiteOptions& options) {
  RegistryScale s{10'000'000, WorkloadOptions{}, 1'000'000, 2'000'000};
  if (options.quick) {
    s.keys = 200'000;
    s.workload.instances = 1;  // 8 workers
    s.probes = 100'000;
    s.lookups_per_round = 100'000;
  }
  return s;
}

Result<std::unique_ptr<RegistryTree>> NewTree(const WorkloadOptions& workload) {
  KVT_ASSIGN_OR_RETURN(auto tree, RegistryTree::Create(cluster::RegistryOptions{}));
  KVT_RETURN_IF_ERROR(cluster::RegisterWorkloadWorkers(*tree, workload));
  return tree;
}

void Accumulate(RunReport* into, const RunReport& r) {
  into->seconds += r.seconds;
  into->operations += r.operations;
  into->hits += r.hits;
}

Status Registry(const SuiteOptions& options, Reporter* reporter, Progress* progress) {
  const RegistryScale scale = ScaleOf(options);
  const std::vector<ObjectKey> keys = cluster::WorkloadKeys(scale.keys);
  std::vector<ObjectKey> probes;  // present keys in random order: lookups touch the whole table
  probes.reserve(scale.probes);
  std::mt19937_64 rng(7);
  for (uint64_t i = 0; i < scale.probes; ++i) probes.push_back(keys[rng() % keys.size()]);
  const uint32_t workers = scale.workload.instances * scale.workload.workers_per_instance;

  // Ingest: registry, then the baseline on the same keys, alternating (at least twice in a full
  // run) so that load from other processes hits both sides alike. Each tree is freed before the
  // baseline runs, except the last one, which the lookups use.
  std::unique_ptr<RegistryTree> full;
  FlatMapBaseline baseline;
  for (uint32_t threads : {1u, 2u}) {
    RunReport mine, base;
    for (int round = 0; round < (options.quick ? 1 : 2) || mine.seconds < options.min_seconds ||
                        base.seconds < options.min_seconds;
         ++round) {
      full.reset();
      KVT_ASSIGN_OR_RETURN(auto tree, NewTree(scale.workload));
      KVT_ASSIGN_OR_RETURN(RunReport r, cluster::RunIngest(*tree, keys, scale.workload, threads));
      if (tree->TotalKeyCount() != keys.size()) {
        return Status::Internal(fmt::format("ingest: registry holds {} keys of {}",
                                            tree->TotalKeyCount(), keys.size()));
      }
      full = std::move(tree);
      baseline.Clear();
      Accumulate(&mine, r);
      Accumulate(&base, baseline.Insert(keys));
    }
    reporter->Add(
        {fmt::format("ingest_{}k_keys_{}_workers_{}t", keys.size() / 1000, workers, threads),
         mine.rate(), "keys/s", "flat_hash_map_insert_1t", base.rate()});
    progress->Step();
  }

  // FindKv: registry and baseline rounds alternate, so load from other processes hits both.
  for (uint32_t threads : {1u, 2u}) {
    RunReport mine, base;
    do {
      const RunReport r = cluster::RunFindKv(*full, probes, scale.lookups_per_round, threads);
      const RunReport b = baseline.Find(probes, scale.lookups_per_round);
      if (r.hits != r.operations || b.hits != b.operations) {
        return Status::Internal(fmt::format("find_kv: {} of {} registry lookups hit, {} of {} map",
                                            r.hits, r.operations, b.hits, b.operations));
      }
      Accumulate(&mine, r);
      Accumulate(&base, b);
    } while (mine.seconds < options.min_seconds || base.seconds < options.min_seconds);
    reporter->Add({fmt::format("find_kv_{}t", threads), mine.rate(), "lookups/s",
                   "flat_hash_map_find_1t", base.rate()});
    progress->Step();
  }
  return Status::OK();
}

// ---- LOOKUP RPC ----------------------------------------------------------------------------

using controller::ControllerOptions;
using controller::ControllerService;

constexpr char kModel[] = "meta-llama/Llama-3.1-8B";
constexpr uint32_t kPrefixChunks = 64;
constexpr uint32_t kInstances = 4;

std::vector<keys::ChunkHash> PrefixHashes() {
  std::vector<keys::ChunkHash> out(kPrefixChunks);
  uint64_t x = 0x5eed;
  for (auto& h : out) {
    for (auto& b : h.bytes) {
      x = x * 6364136223846793005ULL + 1442695040888963407ULL;
      b = static_cast<uint8_t>(x >> 56);
    }
  }
  return out;
}

std::vector<uint8_t> ToBytes(const zmq::message_t& m) {
  const auto* p = static_cast<const uint8_t*>(m.data());
  return {p, p + m.size()};
}

// A client speaking the controller protocol on a DEALER (requests) and a PUSH (events).
class ProtocolClient {
 public:
  ProtocolClient(const controller::BoundEndpoints& e)
      : requests_(context_, zmq::socket_type::dealer), events_(context_, zmq::socket_type::push) {
    for (zmq::socket_t* s : {&requests_, &events_}) s->set(zmq::sockopt::linger, 0);
    requests_.set(zmq::sockopt::rcvtimeo, 10000);
    requests_.connect(e.requests);
    events_.connect(e.events);
  }

  Result<controller::Reply> Call(const controller::Request& request) {
    const uint64_t id = ++next_id_;
    requests_.send(zmq::buffer(controller::EncodeRequest(id, request)), zmq::send_flags::none);
    zmq::message_t m;
    if (!requests_.recv(m)) return MakeError(Status::Internal("controller: no reply in 10 s"));
    return Decode(m, id, controller::TypeOf(request));
  }
  void Send(const controller::Event& event) {
    events_.send(zmq::buffer(controller::EncodeEvent(event)), zmq::send_flags::none);
  }
  // The timed part of a LOOKUP: one pre-encoded frame out, one frame back.
  bool RoundTrip(const std::vector<uint8_t>& frame, zmq::message_t* reply) {
    requests_.send(zmq::buffer(frame), zmq::send_flags::none);
    return requests_.recv(*reply).has_value();
  }
  uint64_t NextId() { return ++next_id_; }

  static Result<controller::Reply> Decode(const zmq::message_t& m, uint64_t id,
                                          controller::MessageType type) {
    KVT_ASSIGN_OR_RETURN(auto reply, controller::DecodeReply(ToBytes(m)));
    if (reply.header.request_id != id) {
      return MakeError(Status::Internal(fmt::format("controller: reply to request {}, expected {}",
                                                    reply.header.request_id, id)));
    }
    KVT_RETURN_IF_ERROR(controller::ReplyStatus(reply, type));
    return std::move(reply.body);
  }

 private:
  zmq::context_t context_{1};
  zmq::socket_t requests_, events_;
  uint64_t next_id_ = 0;
};

// The expected reply: instance i holds the first 64 - 16 i chunks.
bool FullMatches(const controller::LookupReply& reply) {
  if (reply.matches.size() != kInstances) return false;
  for (uint32_t i = 0; i < kInstances; ++i) {
    if (reply.matches[i].matched_chunks != kPrefixChunks - 16 * i) return false;
  }
  return true;
}

struct Latencies {
  std::vector<double> us;
  double per_second = 0;
};

Latencies Echo(const std::string& endpoint, const std::vector<uint8_t>& frame, int n) {
  EchoServer server(endpoint);
  zmq::context_t ctx(1);
  zmq::socket_t s(ctx, zmq::socket_type::dealer);
  s.set(zmq::sockopt::linger, 0);
  s.connect(server.bound);
  auto rt = [&] {
    s.send(zmq::buffer(frame), zmq::send_flags::none);
    zmq::message_t m;
    (void)s.recv(m);
  };
  for (int i = 0; i < 50; ++i) rt();  // connect and warm up
  Latencies out;
  out.us.reserve(static_cast<size_t>(n));
  const auto start = Clock::now();
  for (int i = 0; i < n; ++i) {
    const auto t0 = Clock::now();
    rt();
    out.us.push_back(Micros(Clock::now() - t0));
  }
  out.per_second = n / std::chrono::duration<double>(Clock::now() - start).count();
  return out;
}

std::string Endpoint(const std::string& transport, const char* what) {
  return transport == "ipc" ? fmt::format("ipc:///tmp/kvt-bench-ctl-{}-{}.sock", ::getpid(), what)
                            : std::string("tcp://127.0.0.1:0");
}

void UnlinkIpc(const std::string& endpoint) {
  constexpr std::string_view kIpc = "ipc://";
  if (endpoint.starts_with(kIpc)) ::unlink(endpoint.substr(kIpc.size()).c_str());
}

Status LookupRpc(const SuiteOptions& options, Reporter* reporter, const std::string& transport) {
  const int n = options.quick ? 300 : 20000;
  ControllerOptions o;
  o.request_endpoint = Endpoint(transport, "req");
  o.events_endpoint = Endpoint(transport, "ev");
  o.heartbeat_endpoint = Endpoint(transport, "hb");
  o.admin_enabled = false;
  o.reap_dead_workers = false;  // the bench sends no heartbeats
  KVT_ASSIGN_OR_RETURN(auto service, ControllerService::Start(o));
  ProtocolClient client(service->endpoints());

  const std::vector<keys::ChunkHash> prefix = PrefixHashes();
  for (uint32_t i = 0; i < kInstances; ++i) {
    const std::string instance = fmt::format("bench-node-{}", i);
    KVT_ASSIGN_OR_RETURN(auto reply, client.Call(controller::RegisterRequest{
                                         instance,
                                         0,
                                         fmt::format("tcp://10.0.0.{}:5600", i + 1),
                                         {"L1"},
                                         "kvtier bench",
                                         o.hash_algorithm,
                                         o.chunk_size}));
    const auto& registered = std::get<controller::RegisterReply>(reply);
    const controller::Origin origin{instance, 0, registered.registration_id};
    std::vector<keys::ChunkHash> held(prefix.begin(), prefix.end() - 16 * i);
    client.Send(controller::KvEvent{
        controller::KvOp::kAdmit,
        origin,
        "L1",
        1,
        {controller::KeyGroup{controller::KeySpace{kModel, "", 1, 0, 0}, std::move(held)}}});
  }
  const controller::LookupRequest lookup{kModel, "", 1, uint16_t{0}, 0, prefix, ""};
  // Events are asynchronous: wait until every admit is visible.
  const auto deadline = Clock::now() + std::chrono::seconds(10);
  while (true) {
    KVT_ASSIGN_OR_RETURN(auto reply, client.Call(lookup));
    if (FullMatches(std::get<controller::LookupReply>(reply))) break;
    if (Clock::now() > deadline) {
      return Status::Internal("controller lookup: the admitted prefix never became visible");
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(2));
  }

  std::vector<double> us;
  us.reserve(static_cast<size_t>(n));
  zmq::message_t m;
  double total_s = 0;
  for (int i = -50; i < n; ++i) {  // 50 warm-up lookups
    const uint64_t id = client.NextId();
    const std::vector<uint8_t> frame = controller::EncodeRequest(id, lookup);  // untimed
    const auto t0 = Clock::now();
    if (!client.RoundTrip(frame, &m)) return Status::Internal("controller lookup: no reply");
    const auto t1 = Clock::now();
    KVT_ASSIGN_OR_RETURN(auto reply,
                         ProtocolClient::Decode(m, id, controller::MessageType::kLookup));
    if (!FullMatches(std::get<controller::LookupReply>(reply))) {
      return Status::Internal("controller lookup: wrong matches");
    }
    if (i < 0) continue;
    us.push_back(Micros(t1 - t0));
    total_s += std::chrono::duration<double>(t1 - t0).count();
  }
  service->Stop();
  for (const std::string& e : {o.request_endpoint, o.events_endpoint, o.heartbeat_endpoint}) {
    UnlinkIpc(e);
  }

  const std::string echo_endpoint = Endpoint(transport, "echo");
  const Latencies echo = Echo(echo_endpoint, controller::EncodeRequest(1, lookup), n);
  UnlinkIpc(echo_endpoint);
  const std::string base = fmt::format("lookup64_rpc_{}", transport);
  reporter->Add(
      {base + "_p50", Percentile(us, 0.5), "us", "zmq_echo_p50", Percentile(echo.us, 0.5)});
  reporter->Add(
      {base + "_p99", Percentile(us, 0.99), "us", "zmq_echo_p99", Percentile(echo.us, 0.99)});
  reporter->Add({base + "_rate", n / total_s, "lookups/s", "zmq_echoes/s", echo.per_second});
  return Status::OK();
}

}  // namespace

Status RunControllerSuite(const SuiteOptions& options, Reporter* reporter) {
  Progress progress("controller", 6, !options.json);
  KVT_RETURN_IF_ERROR(Registry(options, reporter, &progress));
  KVT_RETURN_IF_ERROR(LookupRpc(options, reporter, "ipc"));
  progress.Step();
  KVT_RETURN_IF_ERROR(LookupRpc(options, reporter, "tcp"));
  progress.Step();
  return Status::OK();
}

}  // namespace kvtier::bench
