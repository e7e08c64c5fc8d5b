// `kvtier demo`: an inference engine using a kvtier server, end to end.
//
// The "engine" keeps a paged KV cache (vLLM's flash-attention layout, bf16) in a POSIX
// shared-memory segment and registers it with the server. It replays multi-turn chats: every
// conversation starts with the same system prompt, and each turn's prompt is the whole
// conversation so far plus a new user message. For each turn it looks up the longest cached
// prefix, retrieves it into its paged cache and checks it bit for bit, "prefills" only the rest
// and "generates" an answer (writes the KV a model would compute: a pure function of the token
// prefix), stores the new chunks and ends the session. With --endpoint it talks to a running
// `kvtier server`; without, it starts one in-process on a private ipc endpoint.
#include <chrono>
#include <cstring>
#include <random>

#include <fcntl.h>
#include <fmt/format.h>
#include <nlohmann/json.hpp>
#include <sys/mman.h>
#include <unistd.h>

#include "kvtier/client.h"
#include "kvtier/common/units.h"
#include "kvtier/service/service.h"

#include "commands.h"

namespace kvtier::apps {
namespace {

// A small model: 8 layers, 4 KV heads of dim 64, bf16, blocks of 16 tokens.
constexpr uint32_t kLayers = 8;
constexpr uint32_t kKvHeads = 4;
constexpr uint32_t kHeadDim = 64;
constexpr uint32_t kBlockSize = 16;
constexpr uint64_t kRowBytes =
    uint64_t{kKvHeads} * kHeadDim * 2;  // one token, one of K/V, one layer
constexpr char kModel[] = "demo/llama-like-8L";
constexpr char kInstance[] = "demo-engine-rank0";

// The engine's paged KV cache in shared memory: per layer [2, blocks, block_size, heads, dim].
class PagedCache {
 public:
  static Result<PagedCache> Create(uint32_t num_blocks) {
    PagedCache c;
    c.name_ = fmt::format("/kvtier-demo-{}", ::getpid());
    c.num_blocks_ = num_blocks;
    c.layer_bytes_ = 2ull * num_blocks * kBlockSize * kRowBytes;
    c.size_ = c.layer_bytes_ * kLayers;
    int fd = ::shm_open(c.name_.c_str(), O_CREAT | O_EXCL | O_RDWR, 0600);
    if (fd < 0)
      return MakeError(
          Status::IOError(fmt::format("shm_open {}: {}", c.name_, std::strerror(errno))));
    if (::ftruncate(fd, static_cast<off_t>(c.size_)) != 0) {
      ::close(fd);
      ::shm_unlink(c.name_.c_str());
      return MakeError(
          Status::IOError(fmt::format("ftruncate {}: {}", c.name_, std::strerror(errno))));
    }
    void* p = ::mmap(nullptr, c.size_, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    ::close(fd);
    if (p == MAP_FAILED) {
      ::shm_unlink(c.name_.c_str());
      return MakeError(Status::IOError(fmt::format("mmap {}: {}", c.name_, std::strerror(errno))));
    }
    c.base_ = static_cast<uint8_t*>(p);
    return c;
  }
  PagedCache() = default;
  PagedCache(PagedCache&& o) noexcept { *this = std::move(o); }
  PagedCache& operator=(PagedCache&& o) noexcept {
    std::swap(name_, o.name_);
    std::swap(base_, o.base_);
    std::swap(size_, o.size_);
    std::swap(layer_bytes_, o.layer_bytes_);
    std::swap(num_blocks_, o.num_blocks_);
    return *this;
  }
  ~PagedCache() {
    if (base_ != nullptr) {
      ::munmap(base_, size_);
      ::shm_unlink(name_.c_str());
    }
  }

  protocol::RegisterKvCacheRequest Registration() const {
    protocol::RegisterKvCacheRequest r;
    r.instance_id = kInstance;
    r.model = kModel;
    r.backend = "host";
    r.layout.num_layers = kLayers;
    r.layout.num_blocks = num_blocks_;
    r.layout.block_size = kBlockSize;
    r.layout.num_kv_heads = kKvHeads;
    r.layout.head_dim = kHeadDim;
    r.layout.dtype = protocol::DType::kBf16;
    r.layout.format = protocol::KvFormat::kKvNhd;
    for (uint32_t l = 0; l < kLayers; ++l) r.layout.layer_offsets.push_back(l * layer_bytes_);
    r.shm_name = name_;
    r.shm_size = size_;
    return r;
  }

  // Token position p lives in block p / block_size (the demo maps block j to tokens
  // [j*block_size, (j+1)*block_size)).
  uint8_t* Row(uint32_t layer, uint32_t kv, uint64_t position) const {
    const uint64_t block = position / kBlockSize, offset = position % kBlockSize;
    return base_ + layer * layer_bytes_ +
           ((kv * num_blocks_ + block) * kBlockSize + offset) * kRowBytes;
  }
  void Zero() const { std::memset(base_, 0, size_); }

 private:
  std::string name_;
  uint8_t* base_ = nullptr;
  uint64_t size_ = 0, layer_bytes_ = 0;
  uint32_t num_blocks_ = 0;
};

// The KV "the model computes" for one token: a function of the whole prefix up to it.
void FillRow(uint64_t prefix_hash, uint32_t layer, uint32_t kv, uint8_t* out) {
  uint64_t x = (prefix_hash ^ (uint64_t{layer} << 40) ^ (uint64_t{kv} << 56)) | 1;
  for (uint64_t i = 0; i < kRowBytes; i += 8) {
    x ^= x << 13, x ^= x >> 7, x ^= x << 17;
    std::memcpy(out + i, &x, 8);
  }
}

std::vector<uint64_t> PrefixHashes(const std::vector<uint32_t>& tokens) {
  std::vector<uint64_t> out(tokens.size());
  uint64_t h = 1469598103934665603ull;
  for (size_t i = 0; i < tokens.size(); ++i) {
    h = (h ^ tokens[i]) * 1099511628211ull;
    out[i] = h;
  }
  return out;
}

std::vector<uint32_t> Blocks(uint64_t first_token, uint64_t end_token) {
  std::vector<uint32_t> ids;
  for (uint64_t t = first_token; t < end_token; t += kBlockSize)
    ids.push_back(static_cast<uint32_t>(t / kBlockSize));
  return ids;
}

int Fail(const Status& s) {
  std::fprintf(stderr, "kvtier demo: %s\n", s.ToString().c_str());
  return 1;
}

template <typename T>
Result<T> Get(const MessagingFuture<T>& f) {
  return f.Result(std::chrono::seconds(60));
}

}  // namespace

CLI::App* AddDemoCommand(CLI::App& app, DemoArgs* args) {
  CLI::App* cmd = app.add_subcommand(
      "demo", "Run an inference-engine workload against a kvtier server and show prefix hits");
  cmd->add_option("--endpoint", args->endpoint,
                  "Server to use (tcp://host:port or ipc:///path); empty: start one in-process")
      ->capture_default_str();
  cmd->add_option("--l1-size", args->l1_size, "L1 capacity of the in-process server (e.g. 96MiB)")
      ->capture_default_str();
  cmd->add_option("--eviction", args->eviction, "In-process server: lru, s3fifo, arc or noop")
      ->capture_default_str();
  cmd->add_option("--l2-dir", args->l2_dir,
                  "In-process server: an fs L2 tier in this directory (empty: none)")
      ->capture_default_str();
  cmd->add_option("--conversations", args->conversations, "Concurrent chat conversations")
      ->check(CLI::Range(1, 1000))
      ->capture_default_str();
  cmd->add_option("--turns", args->turns, "Turns per conversation")
      ->check(CLI::Range(1, 1000))
      ->capture_default_str();
  cmd->add_option("--system-tokens", args->system_tokens,
                  "Tokens of the system prompt every conversation shares")
      ->check(CLI::Range(0, 1 << 20))
      ->capture_default_str();
  cmd->add_option("--user-tokens", args->user_tokens, "Tokens of each user message")
      ->check(CLI::Range(1, 1 << 20))
      ->capture_default_str();
  cmd->add_option("--answer-tokens", args->answer_tokens, "Tokens of each generated answer")
      ->check(CLI::Range(0, 1 << 20))
      ->capture_default_str();
  cmd->add_option("--seed", args->seed, "Random seed")->capture_default_str();
  return cmd;
}

int RunDemo(const DemoArgs& args) {
  // The server: given, or in-process.
  std::unique_ptr<service::Service> local;
  std::string endpoint = args.endpoint;
  if (endpoint.empty()) {
    auto l1_size = ParseSize(args.l1_size);
    if (!l1_size) return Fail(l1_size.error());
    service::ServiceOptions o;
    o.transport.endpoints = {fmt::format("ipc:///tmp/kvtier-demo-{}.sock", ::getpid())};
    o.storage.l1.capacity_bytes = *l1_size;
    o.storage.l1.allocation_wait = std::chrono::seconds(2);
    o.storage.l1_eviction_policy = args.eviction;
    o.engine.server_id = "demo";
    if (!args.l2_dir.empty()) {
      o.storage.l2_adapters = {
          nlohmann::json{{"type", "fs"}, {"name", "disk"}, {"base_path", args.l2_dir}}};
    }
    o.admin_enabled = false;
    o.copy_threads = 1;
    auto s = service::Service::Start(o);
    if (!s) return Fail(s.error());
    local = std::move(*s);
    endpoint = local->endpoints()[0];
  }

  ClientOptions co;
  co.endpoint = endpoint;
  co.client_name = "kvtier-demo";
  auto client_or = Client::Connect(co);
  if (!client_or) return Fail(client_or.error());
  Client& client = **client_or;
  const uint32_t chunk = client.server_info().chunk_size;
  if (chunk == 0 || chunk % kBlockSize != 0) {
    return Fail(Status::NotSupported(
        fmt::format("server chunk size {} is not a multiple of {}", chunk, kBlockSize)));
  }

  const uint64_t max_tokens =
      uint64_t(args.system_tokens) +
      uint64_t(args.turns) * (uint64_t(args.user_tokens) + args.answer_tokens);
  auto cache =
      PagedCache::Create(static_cast<uint32_t>((max_tokens + kBlockSize - 1) / kBlockSize));
  if (!cache) return Fail(cache.error());
  auto registered = Get(client.RegisterKvCache(cache->Registration()));
  if (!registered) return Fail(registered.error());

  fmt::print("kvtier demo: server '{}' at {} ({}), chunk {} tokens = {} of KV, hash {}\n",
             client.server_info().server_id, endpoint, local ? "in-process" : "external", chunk,
             FormatSize(registered->object_size), client.server_info().hash_algorithm);
  fmt::print(
      "{} conversations x {} turns: a shared {}-token system prompt, then per turn {} user tokens "
      "and {} answer tokens\n\n",
      args.conversations, args.turns, args.system_tokens, args.user_tokens, args.answer_tokens);

  std::mt19937_64 rng(args.seed);
  auto random_tokens = [&](int n) {
    std::vector<uint32_t> t(static_cast<size_t>(n));
    for (auto& v : t) v = static_cast<uint32_t>(rng() % 128000);
    return t;
  };
  const std::vector<uint32_t> system_prompt = random_tokens(args.system_tokens);
  std::vector<std::vector<uint32_t>> history(args.conversations, system_prompt);

  fmt::print("{:>4}  {:>4}  {:>7}  {:>10}  {:>8}  {:>7}  {:>9}\n", "conv", "turn", "prompt",
             "hit tokens", "hit rate", "stored", "time");
  uint64_t total_tokens = 0, hit_tokens = 0, checked_tokens = 0, corrupt_tokens = 0,
           failed_chunks = 0;
  uint64_t retrieved_bytes = 0;
  double retrieve_seconds = 0;
  std::vector<uint8_t> expect(kRowBytes);
  auto fill = [&](const std::vector<uint64_t>& prefix, uint64_t from, uint64_t to) {
    for (uint64_t p = from; p < to; ++p) {
      for (uint32_t l = 0; l < kLayers; ++l) {
        for (uint32_t kv = 0; kv < 2; ++kv) FillRow(prefix[p], l, kv, cache->Row(l, kv, p));
      }
    }
  };
  int request = 0;
  for (int turn = 0; turn < args.turns; ++turn) {
    for (int conv = 0; conv < args.conversations; ++conv, ++request) {
      const auto t0 = std::chrono::steady_clock::now();
      // The prompt: the conversation so far plus the user's new message.
      std::vector<uint32_t> tokens = history[conv];
      const std::vector<uint32_t> user = random_tokens(args.user_tokens);
      tokens.insert(tokens.end(), user.begin(), user.end());
      const size_t prompt_tokens = tokens.size();

      protocol::Key key;
      key.model = kModel;
      key.request_id = fmt::format("conv{}-turn{}", conv, turn);
      key.tokens = tokens;

      // Look up the longest cached prefix (L1, then L2), and wait for it.
      protocol::LookupRequest lookup;
      lookup.key = key;
      if (auto s = Get(client.Lookup(lookup)); !s) return Fail(s.error());
      auto status = Get(client.WaitPrefetchStatus(key.request_id, std::chrono::seconds(10)));
      if (!status) return Fail(status.error());
      const uint64_t hit = status->done ? status->hit_chunks : 0;

      // Retrieve it into the paged cache (wiped first, so only the server can have written it).
      cache->Zero();
      key.worker_rank = 0;
      if (hit > 0) {
        protocol::RetrieveRequest retrieve;
        retrieve.instance_id = kInstance;
        retrieve.key = key;
        retrieve.key.end = static_cast<uint32_t>(hit * chunk);
        retrieve.block_ids = Blocks(0, hit * chunk);
        const auto r0 = std::chrono::steady_clock::now();
        auto got = Get(client.Retrieve(retrieve));
        if (!got) return Fail(got.error());
        retrieve_seconds +=
            std::chrono::duration<double>(std::chrono::steady_clock::now() - r0).count();
        retrieved_bytes += got->retrieved_chunks * registered->object_size;
        const std::vector<uint64_t> prefix = PrefixHashes(tokens);
        for (uint64_t p = 0; p < hit * chunk; ++p) {
          ++checked_tokens;
          bool same = true;
          for (uint32_t l = 0; l < kLayers && same; ++l) {
            for (uint32_t kv = 0; kv < 2 && same; ++kv) {
              FillRow(prefix[p], l, kv, expect.data());
              same = std::memcmp(cache->Row(l, kv, p), expect.data(), kRowBytes) == 0;
            }
          }
          if (!same) ++corrupt_tokens;
        }
      }
      // "Prefill" the rest of the prompt, "generate" the answer, then store the new full chunks
      // of the whole exchange: the next turn's prompt starts with all of it.
      const std::vector<uint32_t> answer = random_tokens(args.answer_tokens);
      tokens.insert(tokens.end(), answer.begin(), answer.end());
      const std::vector<uint64_t> prefix = PrefixHashes(tokens);
      fill(prefix, hit * chunk, tokens.size());
      const uint64_t full_chunks = tokens.size() / chunk;
      uint64_t stored = 0;
      if (full_chunks > hit) {
        protocol::StoreRequest store;
        store.instance_id = kInstance;
        store.key = key;
        store.key.tokens = tokens;
        store.key.start = static_cast<uint32_t>(hit * chunk);
        store.key.end = static_cast<uint32_t>(full_chunks * chunk);
        store.block_ids = Blocks(hit * chunk, full_chunks * chunk);
        auto s = Get(client.Store(store));
        if (!s) return Fail(s.error());
        stored = s->stored_chunks;
        failed_chunks += s->failed_chunks;
      }
      if (auto s = Get(client.EndSession(key.request_id)); !s) return Fail(s.error());
      history[conv] = std::move(tokens);

      const uint64_t hit_tok = hit * chunk;
      total_tokens += prompt_tokens;
      hit_tokens += hit_tok;
      const double ms =
          std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
      fmt::print("{:>4}  {:>4}  {:>7}  {:>10}  {:>7.1f}%  {:>7}  {:>7.1f}ms\n", conv, turn,
                 prompt_tokens, hit_tok, 100.0 * hit_tok / prompt_tokens, stored, ms);
    }
  }
  (void)Get(client.UnregisterKvCache(kInstance));

  fmt::print(
      "\nprefix hits: {} of {} prompt tokens ({:.1f}%) served from kvtier instead of prefill\n",
      hit_tokens, total_tokens, total_tokens ? 100.0 * hit_tokens / total_tokens : 0.0);
  fmt::print(
      "retrieve:    {} of KV copied into the engine's paged cache at {:.2f} GB/s\n",
      FormatSize(retrieved_bytes),
      retrieve_seconds > 0 ? static_cast<double>(retrieved_bytes) / retrieve_seconds / 1e9 : 0.0);
  fmt::print("integrity:   {} retrieved tokens checked bit for bit in every layer, {} corrupt\n",
             checked_tokens, corrupt_tokens);
  fmt::print("stores:      {} chunks found no memory (recomputed next time)\n", failed_chunks);
  client.Close();
  if (local) local->Shutdown();
  // Every turn after the first extends a cached conversation: a run without a hit is broken.
  const bool hits_expected = args.turns > 1;
  return corrupt_tokens == 0 && (hit_tokens > 0 || !hits_expected) ? 0 : 1;
}

}  // namespace kvtier::apps
