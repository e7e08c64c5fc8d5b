// `kvtier bench gpu`: the GPU data path (docs/gpu.md), on the first visible GPU.
//
// Baselines, measured in the same run: cudaMemcpyAsync between device memory and pinned host
// memory, one direction at a time and both at once (two streams), in 32 MiB pieces.
//
// - Kernel paths (this process, no server): the gather/scatter kernels moving Llama-3.1-8B
//   chunks (32 layers, 8 KV heads, head dim 128, bf16, 16-token blocks, 256-token chunks:
//   32 MiB per chunk) straight to/from mapped pinned memory, against the same kernels into a
//   device staging buffer followed by a DMA copy. This is the measurement the backend's design
//   rests on.
// - The full server path: a `kvtier server` child process and this process as the engine (CUDA
//   IPC registration, STORE / RETRIEVE with interprocess events), for the Llama layout and a
//   DeepSeek-style MLA layout (61 layers, latent dim 576, bf16): STORE GB/s against D2H memcpy,
//   RETRIEVE GB/s against H2D memcpy, both at once against bidirectional memcpy, and the latency
//   of a single-chunk RETRIEVE.
#include "suites.h"

#if !defined(KVT_WITH_CUDA)

namespace kvtier::bench {
Status RunGpuSuite(const SuiteOptions&, Reporter*) {
  return Status::NotSupported(
      "kvtier bench gpu: this build has no CUDA (configure with "
      "-DKVT_WITH_CUDA=ON, e.g. the cuda preset)");
}
}  // namespace kvtier::bench

#else

#include <algorithm>
#include <chrono>
#include <csignal>
#include <cstdio>
#include <string>
#include <thread>
#include <vector>

#include <cuda_runtime.h>
#include <fmt/format.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include "kvtier/client.h"
#include "kvtier/common/check.h"
#include "kvtier/gpu/cuda_util.h"
#include "kvtier/gpu/device_client.h"
#include "kvtier/gpu/kv_copy.h"

extern char** environ;

namespace kvtier::bench {
namespace {

using Clock = std::chrono::steady_clock;
double Seconds(Clock::duration d) { return std::chrono::duration<double>(d).count(); }

template <typename T>
T Must(sync::MessagingFuture<T> f, const char* what) {
  auto r = f.Result(std::chrono::seconds(120));
  KVT_CHECK_MSG(r.has_value(), "{}: {}", what, r.error().ToString());
  return *r;
}

struct Model {
  const char* name;
  uint32_t layers, heads, dim, block;
  protocol::KvFormat format;
  uint64_t ObjectBytes(uint32_t chunk) const {
    const uint64_t planes = format == protocol::KvFormat::kMla ? 1 : 2;
    return planes * layers * chunk * heads * dim * 2;
  }
  uint64_t LayerBytes(uint32_t blocks) const {
    const uint64_t planes = format == protocol::KvFormat::kMla ? 1 : 2;
    return planes * blocks * block * heads * dim * 2;
  }
};
constexpr Model kLlama{"llama8b", 32, 8, 128, 16, protocol::KvFormat::kKvNhd};
constexpr Model kMla{"mla", 61, 1, 576, 16, protocol::KvFormat::kMla};
constexpr uint32_t kChunk = 256;

struct Baselines {
  double d2h = 0, h2d = 0, bidir = 0;  // GB/s
  double one_chunk_h2d_us = 0;
};

// cudaMemcpyAsync of `bytes` in 32 MiB pieces, `rounds` times, on one stream per direction.
Status MeasureMemcpy(uint64_t bytes, int rounds, Baselines* out) {
  void* dev = nullptr;
  void* host = nullptr;
  void* dev2 = nullptr;
  void* host2 = nullptr;
  KVT_CUDA_RETURN_IF_ERROR(cudaMalloc(&dev, bytes));
  KVT_CUDA_RETURN_IF_ERROR(cudaMalloc(&dev2, bytes));
  KVT_CUDA_RETURN_IF_ERROR(cudaHostAlloc(&host, bytes, cudaHostAllocDefault));
  KVT_CUDA_RETURN_IF_ERROR(cudaHostAlloc(&host2, bytes, cudaHostAllocDefault));
  cudaStream_t s1, s2;
  KVT_CUDA_RETURN_IF_ERROR(cudaStreamCreateWithFlags(&s1, cudaStreamNonBlocking));
  KVT_CUDA_RETURN_IF_ERROR(cudaStreamCreateWithFlags(&s2, cudaStreamNonBlocking));
  constexpr uint64_t kPiece = 32ull << 20;
  auto copy = [&](void* dst, const void* src, cudaMemcpyKind kind, cudaStream_t s) {
    for (uint64_t off = 0; off < bytes; off += kPiece) {
      cudaMemcpyAsync(static_cast<uint8_t*>(dst) + off, static_cast<const uint8_t*>(src) + off,
                      std::min(kPiece, bytes - off), kind, s);
    }
  };
  auto run = [&](auto&& body) -> double {
    body();
    cudaDeviceSynchronize();
    const auto t0 = Clock::now();
    for (int r = 0; r < rounds; ++r) body();
    cudaDeviceSynchronize();
    return Seconds(Clock::now() - t0);
  };
  const double gb = static_cast<double>(bytes) * rounds / 1e9;
  out->d2h = gb / run([&] { copy(host, dev, cudaMemcpyDeviceToHost, s1); });
  out->h2d = gb / run([&] { copy(dev, host, cudaMemcpyHostToDevice, s1); });
  out->bidir = 2 * gb / run([&] {
                 copy(host, dev, cudaMemcpyDeviceToHost, s1);
                 copy(dev2, host2, cudaMemcpyHostToDevice, s2);
               });
  // One 32 MiB chunk H2D, latency.
  std::vector<double> us;
  for (int i = 0; i < 20; ++i) {
    const auto t0 = Clock::now();
    cudaMemcpyAsync(dev, host, kLlama.ObjectBytes(kChunk), cudaMemcpyHostToDevice, s1);
    cudaStreamSynchronize(s1);
    us.push_back(Seconds(Clock::now() - t0) * 1e6);
  }
  std::sort(us.begin(), us.end());
  out->one_chunk_h2d_us = us[us.size() / 2];
  KVT_CUDA_RETURN_IF_ERROR(cudaGetLastError());
  cudaStreamDestroy(s1);
  cudaStreamDestroy(s2);
  cudaFree(dev);
  cudaFree(dev2);
  cudaFreeHost(host);
  cudaFreeHost(host2);
  return Status::OK();
}

// The kernels alone: Llama chunks gathered to mapped pinned memory vs to device staging + DMA.
Status MeasureKernels(const SuiteOptions& options, const Baselines& base, Reporter* reporter) {
  const Model m = kLlama;
  const uint32_t chunks = options.quick ? 4 : 16;
  const uint32_t bpc = kChunk / m.block;
  const uint32_t blocks = chunks * bpc * 2;
  const uint64_t object = m.ObjectBytes(kChunk);
  const int rounds = options.quick ? 2 : 10;
  std::vector<void*> layers(m.layers);
  for (auto& l : layers) KVT_CUDA_RETURN_IF_ERROR(cudaMalloc(&l, m.LayerBytes(blocks)));
  void* host = nullptr;
  KVT_CUDA_RETURN_IF_ERROR(cudaHostAlloc(&host, object * chunks, cudaHostAllocMapped));
  void* staging = nullptr;
  constexpr uint32_t kStaged = 4;  // chunks per staging batch
  KVT_CUDA_RETURN_IF_ERROR(cudaMalloc(&staging, object * kStaged));

  std::vector<uint64_t> layer_addr, host_objs, staged_objs;
  for (void* l : layers) layer_addr.push_back(reinterpret_cast<uint64_t>(l));
  for (uint32_t i = 0; i < chunks; ++i) {
    void* dp = nullptr;
    KVT_CUDA_RETURN_IF_ERROR(
        cudaHostGetDevicePointer(&dp, static_cast<uint8_t*>(host) + i * object, 0));
    host_objs.push_back(reinterpret_cast<uint64_t>(dp));
  }
  for (uint32_t i = 0; i < kStaged; ++i)
    staged_objs.push_back(reinterpret_cast<uint64_t>(staging) + i * object);
  std::vector<uint32_t> ids(chunks * bpc);
  for (uint32_t i = 0; i < ids.size(); ++i) ids[i] = (i * 7 + 3) % blocks;

  auto upload = [](const auto& v, auto** dst) {
    cudaMalloc(dst, v.size() * sizeof(v[0]));
    cudaMemcpy(*dst, v.data(), v.size() * sizeof(v[0]), cudaMemcpyHostToDevice);
  };
  uint64_t *d_layers = nullptr, *d_host = nullptr, *d_staged = nullptr;
  uint32_t* d_ids = nullptr;
  upload(layer_addr, &d_layers);
  upload(host_objs, &d_host);
  upload(staged_objs, &d_staged);
  upload(ids, &d_ids);

  gpu::KvCopyParams p;
  p.num_layers = m.layers;
  p.planes = 2;
  p.blocks_per_chunk = bpc;
  p.block_size = m.block;
  p.chunk_size = kChunk;
  p.num_kv_heads = m.heads;
  p.row_bytes = m.dim * 2;
  p.token_bytes = uint64_t{m.heads} * m.dim * 2;
  p.plane_stride = uint64_t{blocks} * m.block * p.token_bytes;
  p.block_stride = uint64_t{m.block} * p.token_bytes;
  p.layer_base = d_layers;
  cudaStream_t s;
  KVT_CUDA_RETURN_IF_ERROR(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking));

  auto run = [&](auto&& body) -> double {
    body();
    cudaStreamSynchronize(s);
    const auto t0 = Clock::now();
    for (int r = 0; r < rounds; ++r) body();
    cudaStreamSynchronize(s);
    return Seconds(Clock::now() - t0);
  };
  auto direct = [&](bool gather) {
    gpu::KvCopyParams q = p;
    q.block_ids = d_ids;
    q.objects = d_host;
    q.num_objects = chunks;
    gather ? gpu::LaunchGather(q, s) : gpu::LaunchScatter(q, s);
  };
  auto staged = [&](bool gather) {
    for (uint32_t first = 0; first < chunks; first += kStaged) {
      gpu::KvCopyParams q = p;
      q.block_ids = d_ids + first * bpc;
      q.objects = d_staged;
      q.num_objects = std::min(kStaged, chunks - first);
      const uint64_t bytes = object * q.num_objects;
      uint8_t* h = static_cast<uint8_t*>(host) + first * object;
      if (gather) {
        gpu::LaunchGather(q, s);
        cudaMemcpyAsync(h, staging, bytes, cudaMemcpyDeviceToHost, s);
      } else {
        cudaMemcpyAsync(staging, h, bytes, cudaMemcpyHostToDevice, s);
        gpu::LaunchScatter(q, s);
      }
    }
  };
  const double gb = static_cast<double>(object) * chunks * rounds / 1e9;
  const double gather_direct = gb / run([&] { direct(true); });
  const double gather_staged = gb / run([&] { staged(true); });
  const double scatter_direct = gb / run([&] { direct(false); });
  const double scatter_staged = gb / run([&] { staged(false); });
  KVT_CUDA_RETURN_IF_ERROR(cudaGetLastError());
  reporter->Add({"kernel_gather_mapped_llama8b_GBps", gather_direct, "GB/s",
                 "memcpy_pinned_d2h_GBps", base.d2h});
  reporter->Add({"kernel_gather_staged_dma_llama8b_GBps", gather_staged, "GB/s",
                 "memcpy_pinned_d2h_GBps", base.d2h});
  reporter->Add({"kernel_scatter_mapped_llama8b_GBps", scatter_direct, "GB/s",
                 "memcpy_pinned_h2d_GBps", base.h2d});
  reporter->Add({"kernel_scatter_staged_dma_llama8b_GBps", scatter_staged, "GB/s",
                 "memcpy_pinned_h2d_GBps", base.h2d});
  cudaStreamDestroy(s);
  for (void* l : layers) cudaFree(l);
  cudaFree(staging);
  cudaFreeHost(host);
  cudaFree(d_layers);
  cudaFree(d_host);
  cudaFree(d_staged);
  cudaFree(d_ids);
  return Status::OK();
}

// A `kvtier server` child process (this executable), stopped by the destructor.
class ServerProcess {
 public:
  static Result<std::unique_ptr<ServerProcess> > Start(const std::string& endpoint,
                                                       const std::string& l1_size) {
    int out[2];
    if (::pipe(out) != 0) return MakeError(Status::Internal("pipe failed"));
    posix_spawn_file_actions_t actions;
    posix_spawn_file_actions_init(&actions);
    posix_spawn_file_actions_adddup2(&actions, out[1], 1);
    posix_spawn_file_actions_addclose(&actions, out[0]);
    std::vector<std::string> args = {
        "kvtier", "--log-level", "warn",      "server", "--endpoint",
        endpoint, "--no-admin",  "--l1-size", l1_size,  "--transfer-threads",
        "2"};
    std::vector<char*> argv;
    for (auto& a : args) argv.push_back(a.data());
    argv.push_back(nullptr);
    pid_t pid = 0;
    const int rc = posix_spawn(&pid, "/proc/self/exe", &actions, nullptr, argv.data(), environ);
    posix_spawn_file_actions_destroy(&actions);
    ::close(out[1]);
    if (rc != 0) {
      ::close(out[0]);
      return MakeError(Status::Internal(fmt::format("posix_spawn: {}", rc)));
    }
    auto p = std::unique_ptr<ServerProcess>(new ServerProcess(pid));
    // Wait for the ready line (the server prints it once it serves).
    FILE* f = ::fdopen(out[0], "r");
    char line[256] = {};
    const bool ready = f != nullptr && std::fgets(line, sizeof(line), f) != nullptr &&
                       std::string(line).starts_with("kvtier server ready");
    if (f != nullptr) std::fclose(f);
    if (!ready) return MakeError(Status::Internal("the kvtier server child did not start"));
    return p;
  }
  ~ServerProcess() {
    ::kill(pid_, SIGTERM);
    int status = 0;
    ::waitpid(pid_, &status, 0);
  }

 private:
  explicit ServerProcess(pid_t pid) : pid_(pid) {}
  pid_t pid_;
};

std::vector<uint32_t> Tokens(uint32_t n, uint32_t seed) {
  std::vector<uint32_t> t(n);
  for (uint32_t i = 0; i < n; ++i) t[i] = seed * 100003u + i * 7919u + 1;
  return t;
}

Status MeasureServer(const SuiteOptions& options, const Model& m, const Baselines& base,
                     bool report_latency, Reporter* reporter) {
  const uint32_t chunks = options.quick ? 2 : 16;  // per request
  const uint32_t bpc = kChunk / m.block;
  const uint32_t blocks = chunks * bpc * 2;  // a store set and a retrieve set
  const uint64_t object = m.ObjectBytes(kChunk);
  const int rounds = options.quick ? 2 : 8;
  const std::string endpoint = fmt::format("ipc:///tmp/kvt-bench-gpu-{}.sock", ::getpid());
  // Room for three requests' chunks (stored, being stored, being retrieved) and slack.
  const uint64_t l1 = object * chunks * 4 + (256ull << 20);
  KVT_ASSIGN_OR_RETURN(auto server, ServerProcess::Start(endpoint, fmt::format("{}", l1)));
  ClientOptions co;
  co.endpoint = endpoint;
  KVT_ASSIGN_OR_RETURN(auto client, Client::Connect(co));

  std::vector<void*> layers(m.layers);
  for (auto& l : layers) {
    KVT_CUDA_RETURN_IF_ERROR(cudaMalloc(&l, m.LayerBytes(blocks)));
    KVT_CUDA_RETURN_IF_ERROR(cudaMemset(l, 0x5a, m.LayerBytes(blocks)));
  }
  protocol::Layout layout{m.layers, blocks, m.block, m.heads, m.dim, protocol::DType::kBf16,
                          m.format, {}};
  KVT_ASSIGN_OR_RETURN(auto reg,
                       gpu::DescribeCudaKvCache("bench", m.name, 1, 0, layout, layers, 0));
  Must(client->RegisterKvCache(reg), "register");
  KVT_ASSIGN_OR_RETURN(gpu::EngineEvent event, gpu::EngineEvent::Create(0));
  cudaStream_t stream;
  KVT_CUDA_RETURN_IF_ERROR(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking));

  std::vector<uint32_t> store_blocks(chunks * bpc), load_blocks(chunks * bpc);
  for (uint32_t i = 0; i < chunks * bpc; ++i) {
    store_blocks[i] = i;
    load_blocks[i] = chunks * bpc + i;
  }
  auto store = [&](uint32_t seed, const std::string& rid) -> Status {
    protocol::StoreRequest s;
    s.instance_id = "bench";
    s.key.model = m.name;
    s.key.worker_rank = 0;
    s.key.request_id = rid;
    s.key.tokens = Tokens(chunks * kChunk, seed);
    s.block_ids = store_blocks;
    KVT_ASSIGN_OR_RETURN(s.event_ipc_handle, event.Record(stream));
    KVT_ASSIGN_OR_RETURN(auto r, gpu::StoreOnDevice(*client, std::move(s), 0).Result());
    if (r.stored_chunks != chunks) return Status::Internal("bench gpu: a store missed chunks");
    return Status::OK();
  };
  // A STORE's event completes a moment before the server publishes its chunks (docs/gpu.md,
  // Ordering): a lookup right after one may miss, so it is repeated (bounded).
  auto lookup = [&](uint32_t seed, const std::string& rid, uint32_t n) -> Status {
    protocol::LookupRequest l;
    l.key.model = m.name;
    l.key.request_id = rid;
    l.key.tokens = Tokens(n * kChunk, seed);
    const auto deadline = Clock::now() + std::chrono::seconds(10);
    while (true) {
      Must(client->Lookup(l), "lookup");
      auto st = Must(client->WaitPrefetchStatus(rid, std::chrono::seconds(30)), "wait");
      if (st.hit_chunks == n) return Status::OK();
      if (Clock::now() > deadline) return Status::Internal("bench gpu: lookup missed");
      Must(client->EndSession(rid), "end");
    }
  };
  auto retrieve = [&](uint32_t seed, const std::string& rid, uint32_t n) -> Status {
    protocol::RetrieveRequest r;
    r.instance_id = "bench";
    r.key.model = m.name;
    r.key.worker_rank = 0;
    r.key.request_id = rid;
    r.key.tokens = Tokens(n * kChunk, seed);
    r.block_ids.assign(load_blocks.begin(), load_blocks.begin() + n * bpc);
    KVT_ASSIGN_OR_RETURN(auto got, gpu::RetrieveOnDevice(*client, std::move(r), 0).Result());
    if (got.retrieved_chunks != n) return Status::Internal("bench gpu: a retrieve missed chunks");
    return Status::OK();
  };

  // STORE alone, then RETRIEVE alone.
  double store_s = 0, retrieve_s = 0;
  for (int round = 0; round <= rounds; ++round) {  // round 0 warms up
    const std::string rid = fmt::format("s{}", round);
    auto t0 = Clock::now();
    KVT_RETURN_IF_ERROR(store(1000 + round, rid));
    if (round > 0) store_s += Seconds(Clock::now() - t0);
    KVT_RETURN_IF_ERROR(lookup(1000 + round, rid + "l", chunks));
    t0 = Clock::now();
    KVT_RETURN_IF_ERROR(retrieve(1000 + round, rid + "l", chunks));
    if (round > 0) retrieve_s += Seconds(Clock::now() - t0);
    Must(client->EndSession(rid), "end");
    Must(client->EndSession(rid + "l"), "end");
    Must(client->Clear(true), "clear");
  }
  const double gb = static_cast<double>(object) * chunks * rounds / 1e9;
  reporter->Add({fmt::format("server_store_{}_GBps", m.name), gb / store_s, "GB/s",
                 "memcpy_pinned_d2h_GBps", base.d2h});
  reporter->Add({fmt::format("server_retrieve_{}_GBps", m.name), gb / retrieve_s, "GB/s",
                 "memcpy_pinned_h2d_GBps", base.h2d});

  // Both at once: a thread stores new chunks while this one retrieves stored ones.
  double both_s = 0;
  for (int round = 0; round < rounds; ++round) {
    const std::string rid = fmt::format("b{}", round);
    KVT_RETURN_IF_ERROR(store(5000 + round, rid));
    KVT_RETURN_IF_ERROR(lookup(5000 + round, rid + "l", chunks));
    Status stored;
    const auto t0 = Clock::now();
    std::thread storer([&] { stored = store(9000 + round, rid + "n"); });
    Status loaded = retrieve(5000 + round, rid + "l", chunks);
    storer.join();
    both_s += Seconds(Clock::now() - t0);
    KVT_RETURN_IF_ERROR(stored);
    KVT_RETURN_IF_ERROR(loaded);
    for (const char* suffix : {"", "l", "n"}) Must(client->EndSession(rid + suffix), "end");
    Must(client->Clear(true), "clear");
  }
  reporter->Add({fmt::format("server_store_and_retrieve_{}_GBps", m.name), 2 * gb / both_s, "GB/s",
                 "memcpy_pinned_bidirectional_GBps", base.bidir});

  if (report_latency) {
    KVT_RETURN_IF_ERROR(store(777, "lat-s"));
    std::vector<double> us;
    for (int i = 0; i < (options.quick ? 5 : 50); ++i) {
      const std::string rid = fmt::format("lat{}", i);
      KVT_RETURN_IF_ERROR(lookup(777, rid, 1));
      const auto t0 = Clock::now();
      KVT_RETURN_IF_ERROR(retrieve(777, rid, 1));
      us.push_back(Seconds(Clock::now() - t0) * 1e6);
      Must(client->EndSession(rid), "end");
    }
    std::sort(us.begin(), us.end());
    reporter->Add({fmt::format("server_retrieve_1chunk_{}_p50_us", m.name), us[us.size() / 2], "us",
                   "memcpy_pinned_h2d_1chunk_us", base.one_chunk_h2d_us});
  }
  Must(client->UnregisterKvCache("bench"), "unregister");
  client->Close();
  cudaStreamDestroy(stream);
  for (void* l : layers) cudaFree(l);
  return Status::OK();
}

}  // namespace

Status RunGpuSuite(const SuiteOptions& options, Reporter* reporter) {
  if (!gpu::DeviceAvailable()) {
    return Status::Unavailable("kvtier bench gpu: no CUDA device is visible");
  }
  cudaDeviceProp prop;
  KVT_CUDA_RETURN_IF_ERROR(cudaGetDeviceProperties(&prop, 0));
  fmt::print(stderr, "bench gpu: {} ({} SMs)\n", prop.name, prop.multiProcessorCount);
  Baselines base;
  KVT_RETURN_IF_ERROR(MeasureMemcpy(kLlama.ObjectBytes(kChunk) * (options.quick ? 4 : 16),
                                    options.quick ? 2 : 10, &base));
  reporter->Add({"memcpy_pinned_d2h_GBps", base.d2h, "GB/s", std::nullopt, std::nullopt});
  reporter->Add({"memcpy_pinned_h2d_GBps", base.h2d, "GB/s", std::nullopt, std::nullopt});
  reporter->Add(
      {"memcpy_pinned_bidirectional_GBps", base.bidir, "GB/s", std::nullopt, std::nullopt});
  KVT_RETURN_IF_ERROR(MeasureKernels(options, base, reporter));
  KVT_RETURN_IF_ERROR(MeasureServer(options, kLlama, base, /*report_latency=*/true, reporter));
  KVT_RETURN_IF_ERROR(MeasureServer(options, kMla, base, /*report_latency=*/false, reporter));
  return Status::OK();
}

}  // namespace kvtier::bench

#endif  // KVT_WITH_CUDA
