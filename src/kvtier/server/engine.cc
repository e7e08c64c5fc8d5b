#include "kvtier/server/engine.h"

#include <algorithm>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "kvtier/common/logging.h"
#include "kvtier/protocol/codec.h"

namespace kvtier::server {

using keys::Bitmap;
using protocol::Reply;

namespace {

// Every block id a request uses must exist in the worker's registered cache (kOutOfRange).
Status CheckBlockIds(const protocol::RegisterKvCacheRequest& w, std::span<const uint32_t> ids,
                     const char* op) {
  for (size_t i = 0; i < ids.size(); ++i) {
    if (ids[i] >= w.layout.num_blocks) {
      return Status::OutOfRange(fmt::format(
          "{}: block id {} (index {}) is out of range: instance '{}' registered {} blocks", op,
          ids[i], i, w.instance_id, w.layout.num_blocks));
    }
  }
  return Status::OK();
}

protocol::ErrorReply Err(const Status& s) {
  return protocol::ErrorReply{s.code(), std::string(s.message()), s.retryable()};
}

template <typename T>
bool IsError(const T& reply) {
  return std::holds_alternative<protocol::ErrorReply>(reply);
}

// A device STORE or RETRIEVE's early reply (see Engine::Handle): arms `order` so that, once the
// copies are enqueued, `early` (when given) gets the reply `make` builds; sent() says whether
// it did. Lives on the handler's stack while the backend call runs.
class EarlyReply {
 public:
  EarlyReply(const Engine::ReplyFn* early, transfer::DeviceOrder* order,
             std::function<Reply()> make) {
    if (early == nullptr) return;
    order->on_enqueued = [this, early, make = std::move(make)] {
      sent_ = true;
      (*early)(make());
    };
  }
  EarlyReply(const EarlyReply&) = delete;
  EarlyReply& operator=(const EarlyReply&) = delete;
  bool sent() const { return sent_; }

 private:
  bool sent_ = false;
};

}  // namespace

// A WAIT_PREFETCH_STATUS request waiting for its lookup: answered by the lookup's completion or
// by the timer at its deadline, whichever comes first.
struct Engine::Wait {
  std::string request_id;
  TimePoint deadline;
  ReplyFn reply;
  std::atomic<bool> answered{false};

  bool Answer(Reply r) {
    if (answered.exchange(true)) return false;
    reply(std::move(r));
    return true;
  }
};

Result<std::unique_ptr<Engine>> Engine::Create(const EngineOptions& options,
                                               storage::StorageManager* storage, Clock* clock,
                                               BackendFactory backends) {
  if (storage == nullptr || clock == nullptr)
    return MakeError(Status::InvalidArgument("engine needs storage and a clock"));
  if (options.session_ttl <= Duration::zero() || options.worker_timeout < Duration::zero() ||
      options.registration_grace < options.worker_timeout || options.max_wait <= Duration::zero()) {
    return MakeError(
        Status::InvalidArgument("session_ttl and max_wait must be > 0, worker_timeout >= 0, "
                                "registration_grace >= worker_timeout"));
  }
  KVT_ASSIGN_OR_RETURN(keys::TokenHasher hasher,
                       keys::TokenHasher::Create(options.hash, options.chunk_size));
  return std::unique_ptr<Engine>(new Engine(options, storage, clock, std::move(backends), hasher));
}

Engine::Engine(const EngineOptions& options, storage::StorageManager* storage, Clock* clock,
               BackendFactory backends, keys::TokenHasher hasher)
    : options_(options),
      storage_(storage),
      hasher_(hasher),
      sessions_(&hasher_, clock, options.session_ttl),
      registry_(clock, std::move(backends)),
      wait_timer_([this] { WaitTimerLoop(); }) {}

Engine::~Engine() { Shutdown(); }

void Engine::Handle(const protocol::Request& request, ReplyFn reply) {
  if (const auto* wait = std::get_if<protocol::WaitPrefetchStatusRequest>(&request)) {
    WaitPrefetchStatus(*wait, std::move(reply));
    return;
  }
  // A device STORE or RETRIEVE may answer early (once its copies are enqueued): then the reply
  // it returns is not sent again.
  bool answered = false;
  const ReplyFn early = [&](Reply r) {
    answered = true;
    reply(std::move(r));
  };
  Reply r = HandleSync(request, &early);
  if (!answered) reply(std::move(r));
}

Reply Engine::HandleSync(const protocol::Request& request, const ReplyFn* early) {
  Reply reply = std::visit(
      [this, early](const auto& r) -> Reply {
        using T = std::decay_t<decltype(r)>;
        if constexpr (std::is_same_v<T, protocol::HelloRequest>) {
          return Hello(r);
        } else if constexpr (std::is_same_v<T, protocol::RegisterKvCacheRequest>) {
          return RegisterKvCache(r);
        } else if constexpr (std::is_same_v<T, protocol::UnregisterKvCacheRequest>) {
          return UnregisterKvCache(r);
        } else if constexpr (std::is_same_v<T, protocol::GetChunkSizeRequest>) {
          return protocol::ChunkSizeReply{options_.chunk_size};
        } else if constexpr (std::is_same_v<T, protocol::LookupRequest>) {
          return Lookup(r);
        } else if constexpr (std::is_same_v<T, protocol::QueryPrefetchStatusRequest>) {
          return QueryPrefetchStatus(r.request_id);
        } else if constexpr (std::is_same_v<T, protocol::WaitPrefetchStatusRequest>) {
          // Synchronous form: a query (callers that can wait use Handle).
          return QueryPrefetchStatus(r.request_id);
        } else if constexpr (std::is_same_v<T, protocol::QueryPrefetchLookupHitsRequest>) {
          return QueryPrefetchLookupHits(r);
        } else if constexpr (std::is_same_v<T, protocol::StoreRequest>) {
          return Store(r, early);
        } else if constexpr (std::is_same_v<T, protocol::RetrieveRequest>) {
          return Retrieve(r, early);
        } else if constexpr (std::is_same_v<T, protocol::FreeLookupLocksRequest>) {
          return FreeLookupLocks(r);
        } else if constexpr (std::is_same_v<T, protocol::EndSessionRequest>) {
          return EndSession(r);
        } else if constexpr (std::is_same_v<T, protocol::PingRequest>) {
          if (r.instance_id) registry_.Ping(*r.instance_id);
          return protocol::PingReply{true};
        } else if constexpr (std::is_same_v<T, protocol::ClearRequest>) {
          return protocol::ClearReply{storage_->ClearL1(r.force)};
        } else if constexpr (std::is_same_v<T, protocol::ReadObjectsRequest>) {
          return ReadObjects(r);
        } else {
          static_assert(std::is_same_v<T, protocol::NoopRequest>);
          return protocol::EmptyReply{};
        }
      },
      request);
  if (IsError(reply)) counters_.errors.fetch_add(1, std::memory_order_relaxed);
  return reply;
}

Reply Engine::Hello(const protocol::HelloRequest& r) {
  if (r.protocol_version != protocol::kProtocolVersion) {
    return Err(Status(StatusCode::kUnsupportedVersion,
                      fmt::format("client speaks protocol version {}, this server speaks {}",
                                  r.protocol_version, protocol::kProtocolVersion)));
  }
  return protocol::HelloReply{protocol::kProtocolVersion, options_.server_id,
                              options_.server_version, options_.chunk_size,
                              std::string(keys::HashAlgorithmName(options_.hash))};
}

Reply Engine::RegisterKvCache(const protocol::RegisterKvCacheRequest& r) {
  if (r.instance_id.empty()) return Err(Status::InvalidArgument("instance_id is empty"));
  if (r.worker_rank >= r.world_size) {
    return Err(Status::InvalidArgument(
        fmt::format("worker_rank {} is outside a world of size {}", r.worker_rank, r.world_size)));
  }
  if (r.layout.block_size == 0 || options_.chunk_size % r.layout.block_size != 0) {
    return Err(Status::InvalidArgument(
        fmt::format("block_size {} does not divide the server's chunk size {}", r.layout.block_size,
                    options_.chunk_size)));
  }
  auto reg = registry_.Register(r);
  if (!reg) return Err(reg.error());
  return protocol::RegisterKvCacheReply{(*reg)->object_size()};
}

Reply Engine::UnregisterKvCache(const protocol::UnregisterKvCacheRequest& r) {
  auto reg = registry_.Use(r.instance_id);
  if (!reg) return Err(reg.error());
  Status s = registry_.Unregister(r.instance_id);
  if (!s.ok()) return Err(s);
  ReleaseRank((*reg)->request);
  return protocol::EmptyReply{};
}

Result<Engine::Range> Engine::ChunkRange(const protocol::Key& key) const {
  const uint32_t c = options_.chunk_size;
  const uint32_t tokens = static_cast<uint32_t>(key.tokens.size());
  uint32_t end = key.end.value_or(tokens / c * c);
  if (key.start % c != 0 || end % c != 0) {
    return MakeError(Status::InvalidArgument(
        fmt::format("range [{}, {}) is not aligned to the chunk size {}", key.start, end, c)));
  }
  if (key.start > end || end > tokens) {
    return MakeError(Status::InvalidArgument(
        fmt::format("range [{}, {}) is outside the key's {} tokens", key.start, end, tokens)));
  }
  return Range{key.start / c, end / c};
}

Result<KeySpace> Engine::SpaceOf(const protocol::Key& key) const {
  auto ns = keys::InternNamespace(key.model, key.cache_salt);
  if (!ns) return MakeError(Status::InvalidArgument(std::string(ns.error().message())));
  if (key.world_size == 0)
    return MakeError(Status::InvalidArgument("world_size must be at least 1"));
  return KeySpace{*ns, key.world_size, key.object_group};
}

Result<std::vector<ChunkHash>> Engine::RangeHashes(const protocol::Key& key, const Range& range,
                                                   const std::shared_ptr<Session>& session) {
  if (session) {
    session->SetTokens(key.tokens);
    return session->Hashes(range.first_chunk, range.end_chunk);
  }
  std::span<const uint32_t> prefix(key.tokens.data(),
                                   static_cast<size_t>(range.end_chunk) * options_.chunk_size);
  std::vector<ChunkHash> all = hasher_.HashAll(prefix);
  return std::vector<ChunkHash>(all.begin() + range.first_chunk, all.end());
}

Reply Engine::Lookup(const protocol::LookupRequest& r) {
  if (r.key.worker_rank) {
    return Err(Status::InvalidArgument("LOOKUP covers every rank of the world: omit worker_rank"));
  }
  if (r.key.request_id.empty()) return Err(Status::InvalidArgument("key.request_id is empty"));
  auto range = ChunkRange(r.key);
  if (!range) return Err(range.error());
  auto space = SpaceOf(r.key);
  if (!space) return Err(space.error());
  std::shared_ptr<Session> session = sessions_.GetOrCreate(r.key.request_id);
  auto hashes = RangeHashes(r.key, *range, session);
  if (!hashes) return Err(hashes.error());
  session->AddKeySpace(*space);

  server::Lookup l;
  l.space = *space;
  l.first_chunk = range->first_chunk;
  l.num_chunks = range->num_chunks();
  l.read_locks = std::clamp<uint32_t>(r.read_locks, 1, l1::kMaxReadLocksPerCall);
  l.keys = ChunkKeys(*space, *hashes, std::nullopt);
  // L2 hits are staged in L1 with the registered object size; without a registered worker of
  // this model, only L1 can answer.
  uint64_t object_size = registry_.ObjectSizeFor(r.key.model, r.key.world_size).value_or(0);
  l.handle = storage_->SubmitPrefetch(l.keys, object_size, l.read_locks,
                                      std::chrono::milliseconds(r.timeout_ms));
  counters_.lookups.fetch_add(1, std::memory_order_relaxed);
  counters_.lookup_requested_tokens.fetch_add(
      static_cast<uint64_t>(l.num_chunks) * options_.chunk_size, std::memory_order_relaxed);
  ReleaseLookup(session->ReplaceLookup(std::move(l)));
  return protocol::EmptyReply{};
}

void Engine::Conclude(server::Lookup& l, const Bitmap& found) {
  const size_t ws = l.space.world_size;
  const uint32_t hit =
      std::min<uint32_t>(static_cast<uint32_t>(found.CountLeadingOnes() / ws), l.num_chunks);
  l.hit_chunks = hit;
  l.done = true;
  l.pending_reads.assign(l.keys.size(), 0);
  for (size_t i = 0; i < hit * ws; ++i) l.pending_reads[i] = static_cast<uint8_t>(l.read_locks);
  // Found keys outside the usable chunks (a chunk missing a rank, or after a gap) are released.
  std::vector<ObjectKey> extra;
  for (size_t i = hit * ws; i < l.keys.size() && i < found.size(); ++i) {
    if (found.Test(i)) extra.push_back(l.keys[i]);
  }
  if (!extra.empty()) storage_->FinishReadPrefetched(extra, l.read_locks);
  const uint64_t c = options_.chunk_size;
  const uint32_t l1_chunks = std::min<uint32_t>(static_cast<uint32_t>(l.handle.l1_hits / ws), hit);
  counters_.lookup_hit_tokens.fetch_add(hit * c, std::memory_order_relaxed);
  counters_.lookup_hit_tokens_l1.fetch_add(l1_chunks * c, std::memory_order_relaxed);
  counters_.lookup_hit_tokens_l2.fetch_add((hit - l1_chunks) * c, std::memory_order_relaxed);
}

Reply Engine::QueryPrefetchStatus(const std::string& request_id) {
  std::shared_ptr<Session> session = sessions_.Get(request_id);
  Reply reply = Err(Status::NotFound(fmt::format("no lookup for request '{}'", request_id)));
  if (!session) return reply;
  session->WithLookup([&](server::Lookup& l) {
    if (l.done) {
      reply = Err(Status::FailedPrecondition(
          fmt::format("the lookup of request '{}' was already answered ({} chunks)", request_id,
                      l.hit_chunks)));
      return;
    }
    std::optional<Bitmap> found = storage_->QueryPrefetch(l.handle);
    if (!found) {
      reply = protocol::PrefetchStatusReply{false, 0};
      return;
    }
    Conclude(l, *found);
    reply = protocol::PrefetchStatusReply{true, l.hit_chunks};
  });
  return reply;
}

void Engine::WaitPrefetchStatus(const protocol::WaitPrefetchStatusRequest& r, ReplyFn reply) {
  std::shared_ptr<Session> session = sessions_.Get(r.request_id);
  std::optional<storage::PrefetchHandle> handle;
  if (session) {
    session->WithLookup([&](server::Lookup& l) {
      if (!l.done) handle = l.handle;
    });
  }
  if (!handle) {
    reply(QueryPrefetchStatus(r.request_id));  // no lookup, or answered already: the error
    return;
  }
  auto wait = std::make_shared<Wait>();
  wait->request_id = r.request_id;
  wait->deadline =
      DeadlineFrom(std::min<Duration>(std::chrono::milliseconds(r.timeout_ms), options_.max_wait));
  wait->reply = std::move(reply);
  {
    MutexLock lock(&waits_mu_);
    waits_.push_back(wait);
    waits_cv_.NotifyAll();
  }
  storage_->NotifyWhenPrefetchDone(*handle, [this, wait] {
    if (!wait->answered.load()) wait->Answer(QueryPrefetchStatus(wait->request_id));
  });
  // A zero timeout answers at once if the lookup is not done.
  if (r.timeout_ms == 0) wait->Answer(QueryPrefetchStatus(wait->request_id));
}

Reply Engine::QueryPrefetchLookupHits(const protocol::QueryPrefetchLookupHitsRequest& r) {
  std::shared_ptr<Session> session = sessions_.Get(r.request_id);
  Reply reply = Err(Status::NotFound(fmt::format("no lookup for request '{}'", r.request_id)));
  if (!session) return reply;
  session->WithLookup([&](server::Lookup& l) {
    if (l.done) {
      reply = protocol::LookupHitsReply{true, l.hit_chunks};
      return;
    }
    std::optional<size_t> hits = storage_->QueryPrefetchLookupHits(l.handle);
    if (!hits) {
      reply = protocol::LookupHitsReply{false, 0};
      return;
    }
    reply = protocol::LookupHitsReply{true, static_cast<uint32_t>(*hits / l.space.world_size)};
  });
  return reply;
}

Reply Engine::Store(const protocol::StoreRequest& r, const ReplyFn* early) {
  counters_.stores.fetch_add(1, std::memory_order_relaxed);
  auto reg = registry_.Use(r.instance_id);
  if (!reg) return Err(reg.error());
  const protocol::RegisterKvCacheRequest& w = (*reg)->request;
  if (!r.key.worker_rank || *r.key.worker_rank != w.worker_rank ||
      r.key.world_size != w.world_size || r.key.model != w.model) {
    return Err(Status::InvalidArgument(fmt::format(
        "STORE from instance '{}' must name its own model '{}', world size {} and worker_rank {}",
        w.instance_id, w.model, w.world_size, w.worker_rank)));
  }
  auto range = ChunkRange(r.key);
  if (!range) return Err(range.error());
  const uint32_t bpc = options_.chunk_size / w.layout.block_size;
  const size_t n = range->num_chunks();
  if (r.block_ids.size() < n * bpc) {
    return Err(Status::InvalidArgument(fmt::format(
        "{} chunks need {} block ids, got {}; nothing stored", n, n * bpc, r.block_ids.size())));
  }
  // Checked before anything else, so that a bad request fails even when every chunk is cached.
  if (Status s = CheckBlockIds(w, std::span(r.block_ids).first(n * bpc), "STORE"); !s.ok())
    return Err(s);
  auto space = SpaceOf(r.key);
  if (!space) return Err(space.error());
  std::shared_ptr<Session> session = sessions_.Get(r.key.request_id);  // never created by a store
  auto hashes = RangeHashes(r.key, *range, session);
  if (!hashes) return Err(hashes.error());
  if (session) session->AddKeySpace(*space);
  std::vector<ObjectKey> keys = ChunkKeys(*space, *hashes, *r.key.worker_rank);

  std::vector<l1::ObjectView> views;
  std::vector<l1::L1Result> reserved = storage_->ReserveWrite(keys, (*reg)->object_size(), &views);
  protocol::StoreReply out;
  std::vector<ObjectKey> mine;
  std::vector<uint32_t> blocks;
  std::vector<std::span<uint8_t>> objects;
  for (size_t i = 0; i < n; ++i) {
    switch (reserved[i]) {
      case l1::L1Result::kSuccess:
        mine.push_back(keys[i]);
        blocks.insert(blocks.end(), r.block_ids.begin() + static_cast<std::ptrdiff_t>(i * bpc),
                      r.block_ids.begin() + static_cast<std::ptrdiff_t>((i + 1) * bpc));
        objects.emplace_back(views[i].data, views[i].size);
        break;
      case l1::L1Result::kOutOfMemory:
        ++out.failed_chunks;
        break;
      default:  // resident already, or being written by another writer
        ++out.present_chunks;
    }
  }
  out.stored_chunks = static_cast<uint32_t>(mine.size());  // final: nothing refuses it later
  if (!mine.empty()) {
    transfer::DeviceOrder order;
    order.wait_event = r.event_ipc_handle;
    // The engine may learn the outcome once the copies are enqueued, and order its work after
    // them by the event.
    const EarlyReply early_reply(early, &order, [&] {
      out.event_ipc_handle = order.done_event;
      return Reply(out);
    });
    // The L1 objects become readable (and storable to L2) only after FinishWrite, which runs
    // after Gather returned, i.e. after the copies completed (device copies included).
    Status copied = (*reg)->backend->Gather(blocks, objects, &order);
    if (!copied.ok()) {
      storage_->AbortWrite(mine);
      if (early_reply.sent()) {
        counters_.device_failures_after_reply.fetch_add(1, std::memory_order_relaxed);
        KVT_LOG_ERROR(
            "STORE from '{}': the device copy failed after the reply was sent, so its {} chunks "
            "are dropped: {}",
            r.instance_id, mine.size(), copied.ToString());
      }
      return Err(copied);
    }
    storage_->FinishWrite(mine);
    out.event_ipc_handle = order.done_event;
  }
  counters_.stored_chunks.fetch_add(out.stored_chunks, std::memory_order_relaxed);
  counters_.store_present_chunks.fetch_add(out.present_chunks, std::memory_order_relaxed);
  counters_.store_failed_chunks.fetch_add(out.failed_chunks, std::memory_order_relaxed);
  return out;
}

Reply Engine::Retrieve(const protocol::RetrieveRequest& r, const ReplyFn* early) {
  counters_.retrieves.fetch_add(1, std::memory_order_relaxed);
  auto fail = [this](Status s) {
    counters_.retrieve_failures.fetch_add(1, std::memory_order_relaxed);
    return Err(s);
  };
  auto reg = registry_.Use(r.instance_id);
  if (!reg) return fail(reg.error());
  const protocol::RegisterKvCacheRequest& w = (*reg)->request;
  if (!r.key.worker_rank || *r.key.worker_rank != w.worker_rank ||
      r.key.world_size != w.world_size || r.key.model != w.model) {
    return fail(
        Status::InvalidArgument(fmt::format("RETRIEVE from instance '{}' must name its own model "
                                            "'{}', world size {} and worker_rank {}",
                                            w.instance_id, w.model, w.world_size, w.worker_rank)));
  }
  auto range = ChunkRange(r.key);
  if (!range) return fail(range.error());
  const uint32_t bpc = options_.chunk_size / w.layout.block_size;
  const size_t n = range->num_chunks();
  if (r.block_ids.size() < n * bpc) {
    return fail(Status::InvalidArgument(fmt::format(
        "{} chunks need {} block ids, got {}; nothing retrieved", n, n * bpc, r.block_ids.size())));
  }
  if (r.skip_first_n_tokens > n * options_.chunk_size) {
    return fail(Status::InvalidArgument("skip_first_n_tokens is larger than the range"));
  }
  std::shared_ptr<Session> session = sessions_.Get(r.key.request_id);
  if (!session)
    return fail(Status::NotFound(fmt::format("no lookup for request '{}'", r.key.request_id)));

  // Claim this worker's read of each chunk from the lookup.
  std::vector<ObjectKey> keys;
  Status claimed = Status::NotFound(fmt::format("no lookup for request '{}'", r.key.request_id));
  session->WithLookup([&](server::Lookup& l) {
    const uint16_t rank = w.worker_rank;
    const size_t ws = l.space.world_size;
    auto index = [&](uint32_t chunk) { return (chunk - l.first_chunk) * ws + rank; };
    bool ok = l.done && ws == w.world_size && range->first_chunk >= l.first_chunk &&
              range->end_chunk <= l.first_chunk + l.hit_chunks;
    for (uint32_t c = range->first_chunk; ok && c < range->end_chunk; ++c)
      ok = l.pending_reads[index(c)] > 0;
    if (!ok) {
      // Useless now: give back what this worker still held in the range.
      std::vector<ObjectKey> release;
      for (uint32_t c = std::max(range->first_chunk, l.first_chunk);
           l.done && c < std::min(range->end_chunk, l.first_chunk + l.num_chunks); ++c) {
        uint8_t& left = l.pending_reads[index(c)];
        if (left > 0) {
          storage_->FinishReadPrefetched(std::span(&l.keys[index(c)], 1), left);
          left = 0;
        }
      }
      claimed = Status::NotFound(
          fmt::format("chunks [{}, {}) of request '{}' are not held for rank {} (lookup {}, {} hit "
                      "chunks from {})",
                      range->first_chunk, range->end_chunk, r.key.request_id, rank,
                      l.done ? "answered" : "not answered", l.hit_chunks, l.first_chunk));
      return;
    }
    for (uint32_t c = range->first_chunk; c < range->end_chunk; ++c) {
      --l.pending_reads[index(c)];
      keys.push_back(l.keys[index(c)]);
    }
    claimed = Status::OK();
  });
  if (!claimed.ok()) return fail(claimed);

  auto views = storage_->ReadPrefetched(keys);
  if (!views) {
    storage_->FinishReadPrefetched(keys, 1);
    return fail(views.error());
  }
  std::vector<std::span<const uint8_t>> objects;
  objects.reserve(views->size());
  for (const auto& v : *views) objects.emplace_back(v.data, v.size);
  std::span<const uint32_t> blocks(r.block_ids.data(), n * bpc);
  transfer::DeviceOrder order;
  order.wait_event = r.event_ipc_handle;
  protocol::RetrieveReply done{.retrieved_chunks = static_cast<uint32_t>(n),
                               .event_ipc_handle = std::nullopt};
  const EarlyReply early_reply(early, &order, [&] {
    done.event_ipc_handle = order.done_event;
    return Reply(done);
  });
  Status copied = (*reg)->backend->Scatter(objects, blocks, r.skip_first_n_tokens, &order);
  // The read locks go only now: the copies out of the objects have completed.
  storage_->FinishReadPrefetched(keys, 1);
  if (!copied.ok()) {
    if (early_reply.sent()) {
      counters_.device_failures_after_reply.fetch_add(1, std::memory_order_relaxed);
      KVT_LOG_ERROR(
          "RETRIEVE from '{}': the device copy failed after the reply was sent; the engine's "
          "blocks for request '{}' may be incomplete: {}",
          r.instance_id, r.key.request_id, copied.ToString());
    }
    return fail(copied);
  }
  counters_.retrieved_chunks.fetch_add(n, std::memory_order_relaxed);
  done.event_ipc_handle = order.done_event;
  return done;
}

Reply Engine::FreeLookupLocks(const protocol::FreeLookupLocksRequest& r) {
  auto range = ChunkRange(r.key);
  if (!range) return Err(range.error());
  std::shared_ptr<Session> session = sessions_.Get(r.key.request_id);
  uint32_t released = 0;
  if (session) {
    session->WithLookup([&](server::Lookup& l) {
      if (!l.done) return;  // nothing is held for retrieves before the answer
      const size_t ws = l.space.world_size;
      for (uint32_t c = std::max(range->first_chunk, l.first_chunk);
           c < std::min(range->end_chunk, l.first_chunk + l.num_chunks); ++c) {
        for (size_t rank = 0; rank < ws; ++rank) {
          size_t i = (c - l.first_chunk) * ws + rank;
          if (l.pending_reads[i] == 0) continue;
          storage_->FinishReadPrefetched(std::span(&l.keys[i], 1), l.pending_reads[i]);
          l.pending_reads[i] = 0;
          ++released;
        }
      }
    });
  }
  return protocol::FreeLookupLocksReply{released};
}

Reply Engine::EndSession(const protocol::EndSessionRequest& r) {
  std::shared_ptr<Session> session = sessions_.Remove(r.request_id);
  if (!session) return protocol::EndSessionReply{0};
  ReleaseLookup(session->ReplaceLookup(std::nullopt));
  // Touch every chunk of the request, retrieved and stored alike, in one batch per key space.
  uint32_t touched = 0;
  const size_t full = session->num_full_chunks();
  auto hashes = session->Hashes(0, full);
  if (hashes) {
    for (const KeySpace& space : session->key_spaces()) {
      std::vector<ObjectKey> keys = ChunkKeys(space, *hashes, std::nullopt);
      storage_->TouchKeys(keys);
      touched += static_cast<uint32_t>(keys.size());
    }
  }
  counters_.sessions_ended.fetch_add(1, std::memory_order_relaxed);
  return protocol::EndSessionReply{touched};
}

void Engine::ReleaseLookup(std::optional<server::Lookup> lookup) {
  if (!lookup) return;
  if (lookup->done) {
    for (size_t i = 0; i < lookup->keys.size(); ++i) {
      if (lookup->pending_reads[i] > 0) {
        storage_->FinishReadPrefetched(std::span(&lookup->keys[i], 1), lookup->pending_reads[i]);
      }
    }
    return;
  }
  // Its prefetch may still be running: release what it locked once it finishes.
  auto l = std::make_shared<server::Lookup>(std::move(*lookup));
  storage_->NotifyWhenPrefetchDone(l->handle, [this, l] {
    std::optional<Bitmap> found = storage_->QueryPrefetch(l->handle);
    if (!found) return;
    std::vector<ObjectKey> held;
    for (size_t i = 0; i < found->size() && i < l->keys.size(); ++i) {
      if (found->Test(i)) held.push_back(l->keys[i]);
    }
    if (!held.empty()) storage_->FinishReadPrefetched(held, l->read_locks);
  });
}

void Engine::ReleaseRank(const protocol::RegisterKvCacheRequest& worker) {
  for (const auto& session : sessions_.All()) {
    session->WithLookup([&](server::Lookup& l) {
      if (!l.done || l.space.world_size != worker.world_size ||
          keys::NamespaceModelName(l.space.ns) != worker.model) {
        return;
      }
      for (size_t c = 0; c < l.num_chunks; ++c) {
        size_t i = c * l.space.world_size + worker.worker_rank;
        if (l.pending_reads[i] == 0) continue;
        storage_->FinishReadPrefetched(std::span(&l.keys[i], 1), l.pending_reads[i]);
        l.pending_reads[i] = 0;
      }
    });
  }
}

void Engine::Tick() {
  for (auto& session : sessions_.RemoveExpired()) {
    ReleaseLookup(session->ReplaceLookup(std::nullopt));
    counters_.sessions_expired.fetch_add(1, std::memory_order_relaxed);
  }
  if (options_.worker_timeout > Duration::zero()) {
    for (auto& reg : registry_.Reap(options_.worker_timeout, options_.registration_grace)) {
      ReleaseRank(reg->request);
      counters_.workers_reaped.fetch_add(1, std::memory_order_relaxed);
    }
  }
}

void Engine::WaitTimerLoop() {
  for (;;) {
    {
      MutexLock lock(&waits_mu_);
      if (stopping_) return;
      TimePoint next = TimePoint::max();
      for (const auto& w : waits_) {
        if (!w->answered.load()) next = std::min(next, w->deadline);
      }
      if (next > std::chrono::steady_clock::now()) {
        // Woken by a new wait (which may be due sooner), by shutdown, or at the deadline.
        waits_cv_.WaitUntil(&waits_mu_, next);
        continue;
      }
    }
    FailPendingWaits(/*all=*/false);
  }
}

void Engine::FailPendingWaits(bool all) {
  const TimePoint now = std::chrono::steady_clock::now();
  std::vector<std::shared_ptr<Wait>> due;
  {
    MutexLock lock(&waits_mu_);
    for (auto it = waits_.begin(); it != waits_.end();) {
      if ((*it)->answered.load()) {
        it = waits_.erase(it);
      } else if (all || (*it)->deadline <= now) {
        due.push_back(std::move(*it));
        it = waits_.erase(it);
      } else {
        ++it;
      }
    }
  }
  for (auto& w : due) w->Answer(protocol::PrefetchStatusReply{false, 0});
}

void Engine::Shutdown() {
  {
    MutexLock lock(&waits_mu_);
    stopping_ = true;
    waits_cv_.NotifyAll();
  }
  if (wait_timer_.joinable()) wait_timer_.join();
  FailPendingWaits(/*all=*/true);
  for (auto& session : sessions_.RemoveAll()) ReleaseLookup(session->ReplaceLookup(std::nullopt));
}

namespace {

// The L1 read locks behind a READ_OBJECTS reply's views; released when the reply's frames are
// gone (the transport drops its last reference after sending).
class ReadObjectsHold {
 public:
  ReadObjectsHold(l1::L1Manager* l1, std::vector<keys::ObjectKey> keys)
      : l1_(l1), keys_(std::move(keys)) {}
  ~ReadObjectsHold() {
    if (!keys_.empty()) l1_->FinishRead(keys_, 1);
  }
  ReadObjectsHold(const ReadObjectsHold&) = delete;
  ReadObjectsHold& operator=(const ReadObjectsHold&) = delete;

 private:
  l1::L1Manager* const l1_;
  const std::vector<keys::ObjectKey> keys_;
};

}  // namespace

// Only L1: a key being prefetched from L2, or only in L2, is not found (a peer never waits on
// this server's disks). Objects are returned in key order while they fit in the byte budget;
// one that does not fit is not found (the caller asks again for what it still needs).
Reply Engine::ReadObjects(const protocol::ReadObjectsRequest& r) {
  counters_.read_objects.fetch_add(1, std::memory_order_relaxed);
  counters_.read_objects_keys.fetch_add(r.keys.size(), std::memory_order_relaxed);
  if (r.keys.empty() || r.keys.size() > protocol::kMaxReadObjectsKeys) {
    return Err(Status::InvalidArgument(fmt::format("READ_OBJECTS: {} keys (allowed: 1..{})",
                                                   r.keys.size(), protocol::kMaxReadObjectsKeys)));
  }
  std::vector<keys::ObjectKey> object_keys;
  object_keys.reserve(r.keys.size());
  for (size_t i = 0; i < r.keys.size(); ++i) {
    Result<keys::ObjectKey> key = keys::ObjectKey::Parse(r.keys[i]);
    if (!key) {
      return Err(Status::InvalidArgument(fmt::format(
          "READ_OBJECTS: keys[{}] is not an object key: {}", i, key.error().message())));
    }
    object_keys.push_back(*key);
  }
  std::vector<l1::ObjectView> views;
  const std::vector<l1::L1Result> results = storage_->l1().ReserveRead(object_keys, 1, &views);
  const uint64_t budget = std::min(r.max_bytes, options_.max_read_objects_bytes);
  uint64_t total = 0;
  protocol::ReadObjectsReply out;
  out.found.assign(object_keys.size(), false);
  std::vector<keys::ObjectKey> held, unused;
  for (size_t i = 0; i < object_keys.size(); ++i) {
    if (results[i] != l1::L1Result::kSuccess) continue;
    if (views[i].size > budget - total) {
      unused.push_back(object_keys[i]);
      continue;
    }
    total += views[i].size;
    out.found[i] = true;
    out.objects.emplace_back(views[i].data, views[i].size);
    held.push_back(object_keys[i]);
  }
  if (!unused.empty()) storage_->l1().FinishRead(unused, 1);
  counters_.read_objects_found.fetch_add(held.size(), std::memory_order_relaxed);
  counters_.read_objects_bytes.fetch_add(total, std::memory_order_relaxed);
  if (!held.empty()) {
    out.hold = std::make_shared<const ReadObjectsHold>(&storage_->l1(), std::move(held));
  }
  return out;
}

nlohmann::json Engine::StatusJson() const {
  size_t waits;
  {
    MutexLock lock(&waits_mu_);
    waits = waits_.size();
  }
  const EngineCounters& c = counters_;
  return {{"sessions", sessions_.size()},
          {"workers", registry_.StatusJson()},
          {"pending_waits", waits},
          {"counters",
           {{"lookups", c.lookups.load()},
            {"lookup_requested_tokens", c.lookup_requested_tokens.load()},
            {"lookup_hit_tokens", c.lookup_hit_tokens.load()},
            {"lookup_hit_tokens_l1", c.lookup_hit_tokens_l1.load()},
            {"lookup_hit_tokens_l2", c.lookup_hit_tokens_l2.load()},
            {"stores", c.stores.load()},
            {"stored_chunks", c.stored_chunks.load()},
            {"store_present_chunks", c.store_present_chunks.load()},
            {"store_failed_chunks", c.store_failed_chunks.load()},
            {"retrieves", c.retrieves.load()},
            {"retrieved_chunks", c.retrieved_chunks.load()},
            {"retrieve_failures", c.retrieve_failures.load()},
            {"read_objects", c.read_objects.load()},
            {"read_objects_keys", c.read_objects_keys.load()},
            {"read_objects_found", c.read_objects_found.load()},
            {"read_objects_bytes", c.read_objects_bytes.load()},
            {"sessions_ended", c.sessions_ended.load()},
            {"sessions_expired", c.sessions_expired.load()},
            {"workers_reaped", c.workers_reaped.load()},
            {"errors", c.errors.load()},
            {"device_failures_after_reply", c.device_failures_after_reply.load()}}}};
}

}  // namespace kvtier::server
