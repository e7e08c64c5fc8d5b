// `kvtier demo`: an inference engine's use of the cache, in one process.
//
// Several requests share long documents (think RAG or multi-turn chat). For each request the
// "engine" hashes its tokens into chunk keys, looks up the longest cached prefix in L1, checks
// the cached KV bit for bit, "prefills" only the rest (fills the KV bytes a real model would
// compute), stores the new chunks, and touches the whole session at its end. L1 is smaller than
// the working set, so the eviction controller works too.
#include <cstring>
#include <random>

#include <fmt/format.h>

#include "kvtier/common/units.h"
#include "kvtier/eviction/l1_eviction_controller.h"
#include "kvtier/eviction/policy.h"
#include "kvtier/keys/token_hasher.h"
#include "kvtier/l1/l1_manager.h"

#include "commands.h"

namespace kvtier::apps {
namespace {

using keys::ObjectKey;
using l1::L1Result;

// A small model's KV geometry: bytes of K and V for one token across all layers.
constexpr uint64_t kLayers = 8;
constexpr uint64_t kKvHeads = 4;
constexpr uint64_t kHeadDim = 64;
constexpr uint64_t kBytesPerToken = 2 * kLayers * kKvHeads * kHeadDim * 2;  // K+V, bf16

// The KV a model would compute for one chunk: a pure function of the chunk's key (which
// covers the whole token prefix), so a cache hit can be checked bit for bit.
void ComputeChunkKv(const keys::ChunkHash& hash, uint8_t* out, uint64_t size) {
  uint64_t x = hash.Prefix64() | 1;
  for (uint64_t i = 0; i + 8 <= size; i += 8) {
    x ^= x << 13, x ^= x >> 7, x ^= x << 17;
    std::memcpy(out + i, &x, 8);
  }
}

bool CheckChunkKv(const keys::ChunkHash& hash, const uint8_t* data, uint64_t size,
                  std::vector<uint8_t>* scratch) {
  scratch->resize(size);
  ComputeChunkKv(hash, scratch->data(), size);
  return std::memcmp(scratch->data(), data, size) == 0;
}

}  // namespace

CLI::App* AddDemoCommand(CLI::App& app, DemoArgs* args) {
  CLI::App* cmd = app.add_subcommand(
      "demo", "Run an engine-like workload against L1 on embedded defaults and show prefix hits");
  cmd->add_option("--l1-size", args->l1_size, "L1 capacity (e.g. 96MiB, 2GiB)")
      ->capture_default_str();
  cmd->add_option("--eviction", args->eviction, "lru, s3fifo, arc or noop")->capture_default_str();
  cmd->add_option("--hash", args->hash, "sha256 or xxh3_128")->capture_default_str();
  cmd->add_option("--chunk-size", args->chunk_size, "Tokens per chunk")
      ->check(CLI::Range(1u, 1u << 20))
      ->capture_default_str();
  cmd->add_option("--documents", args->documents, "Distinct shared documents")
      ->check(CLI::Range(1, 1000))
      ->capture_default_str();
  cmd->add_option("--document-tokens", args->document_tokens, "Tokens per document")
      ->check(CLI::Range(1, 1 << 22))
      ->capture_default_str();
  cmd->add_option("--question-tokens", args->question_tokens, "Unique tokens per request")
      ->check(CLI::Range(0, 1 << 22))
      ->capture_default_str();
  cmd->add_option("--requests", args->requests, "Requests to run")
      ->check(CLI::Range(1, 1000000))
      ->capture_default_str();
  cmd->add_option("--seed", args->seed, "Random seed")->capture_default_str();
  return cmd;
}

int RunDemo(const DemoArgs& args) {
  auto fail = [](const Status& s) {
    std::fprintf(stderr, "kvtier demo: %s\n", s.ToString().c_str());
    return 1;
  };
  auto l1_size = ParseSize(args.l1_size);
  if (!l1_size) return fail(l1_size.error());
  auto algorithm = keys::ParseHashAlgorithm(args.hash);
  if (!algorithm) return fail(algorithm.error());
  auto hasher = keys::TokenHasher::Create(*algorithm, args.chunk_size);
  if (!hasher) return fail(hasher.error());
  auto ns = keys::InternNamespace("demo/llama-like-8L", "");
  if (!ns) return fail(ns.error());

  l1::L1Options l1_options;
  l1_options.capacity_bytes = *l1_size;
  l1_options.allocation_wait = std::chrono::seconds(2);  // back-pressure instead of dropping
  auto l1 = l1::L1Manager::Create(l1_options);
  if (!l1) return fail(l1.error());
  auto policy = eviction::MakeEvictionPolicy(args.eviction);
  if (!policy) return fail(policy.error());
  auto controller = eviction::L1EvictionController::Create(l1->get(), std::move(*policy), {});
  if (!controller) return fail(controller.error());
  if (Status s = (*controller)->Start(); !s.ok()) return fail(s);

  const uint64_t chunk_bytes = kBytesPerToken * args.chunk_size;
  fmt::print("kvtier demo: L1 {} ({} eviction), chunk {} tokens = {} of KV, hash {}\n",
             FormatSize((*l1)->capacity_bytes()), (*controller)->policy_name(), args.chunk_size,
             FormatSize(chunk_bytes), keys::HashAlgorithmName(*algorithm));
  fmt::print("{} requests over {} documents of {} tokens, each plus {} unique tokens\n\n",
             args.requests, args.documents, args.document_tokens, args.question_tokens);

  std::mt19937_64 rng(args.seed);
  std::vector<std::vector<uint32_t>> documents(args.documents);
  for (auto& doc : documents) {
    doc.resize(args.document_tokens);
    for (auto& t : doc) t = static_cast<uint32_t>(rng() % 128000);
  }

  fmt::print("{:>7}  {:>8}  {:>7}  {:>10}  {:>8}  {:>9}\n", "request", "document", "tokens",
             "hit tokens", "hit rate", "L1 used");
  uint64_t total_tokens = 0, hit_tokens = 0, checked_chunks = 0, corrupt_chunks = 0,
           store_failures = 0;
  std::vector<uint8_t> scratch;
  std::vector<l1::ObjectView> views;
  for (int r = 0; r < args.requests; ++r) {
    // Requests revisit documents in a skewed order, so some prefixes stay hot.
    size_t doc = (r < args.documents) ? r : (rng() % 3 == 0 ? rng() % args.documents : r % 2);
    doc %= documents.size();
    std::vector<uint32_t> tokens = documents[doc];
    for (int i = 0; i < args.question_tokens; ++i)
      tokens.push_back(static_cast<uint32_t>(rng() % 128000));

    std::vector<keys::ChunkHash> hashes = hasher->HashAll(tokens);
    std::vector<ObjectKey> keys;
    for (const auto& h : hashes)
      keys.push_back(ObjectKey::Create(h, *ns, keys::KvRank{1, 0}, 0).value());

    // Lookup: the longest prefix of resident chunks, read-locked while we use it.
    auto found = (*l1)->ReserveRead(keys, 1, &views);
    size_t hit = 0;
    while (hit < found.size() && found[hit] == L1Result::kSuccess) ++hit;
    for (size_t i = 0; i < hit; ++i) {
      ++checked_chunks;
      if (!CheckChunkKv(hashes[i], views[i].data, views[i].size, &scratch)) ++corrupt_chunks;
    }
    // Release every lock we took (hits after the first miss are useless for a prefix).
    std::vector<ObjectKey> locked;
    for (size_t i = 0; i < found.size(); ++i) {
      if (found[i] == L1Result::kSuccess) locked.push_back(keys[i]);
    }
    (*l1)->FinishRead(locked, 1);

    // Prefill the rest and store its full chunks.
    std::span<const ObjectKey> fresh(keys.data() + hit, keys.size() - hit);
    auto reserved = (*l1)->ReserveWrite(fresh, chunk_bytes, false, l1::kDefaultWriter, &views);
    std::vector<ObjectKey> written;
    for (size_t i = 0; i < fresh.size(); ++i) {
      if (reserved[i] != L1Result::kSuccess) {
        store_failures += reserved[i] == L1Result::kOutOfMemory ? 1 : 0;
        continue;
      }
      ComputeChunkKv(hashes[hit + i], views[i].data, views[i].size);
      written.push_back(fresh[i]);
    }
    (*l1)->FinishWrite(written, l1::kDefaultWriter);
    // End of session: every chunk of the request becomes recently used, at once.
    (*l1)->TouchKeys(keys);

    uint64_t hit_tok = hit * args.chunk_size;
    total_tokens += tokens.size();
    hit_tokens += hit_tok;
    fmt::print("{:>7}  {:>8}  {:>7}  {:>10}  {:>7.1f}%  {:>9}\n", r, doc, tokens.size(), hit_tok,
               100.0 * hit_tok / tokens.size(), FormatSize((*l1)->used_bytes()));
  }
  (*controller)->RunOnce();
  auto ev = (*controller)->stats();
  (*controller)->Stop();

  fmt::print("\nprefix hits: {} of {} tokens ({:.1f}%) served from L1 instead of prefill\n",
             hit_tokens, total_tokens, total_tokens ? 100.0 * hit_tokens / total_tokens : 0.0);
  fmt::print("integrity:   {} cached chunks checked bit for bit, {} corrupt\n", checked_chunks,
             corrupt_chunks);
  fmt::print("eviction:    {} chunks evicted ({} policy), {} store failures\n", ev.evicted_keys,
             (*controller)->policy_name(), store_failures);
  return corrupt_chunks == 0 ? 0 : 1;
}

}  // namespace kvtier::apps
