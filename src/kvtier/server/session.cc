#include "kvtier/server/session.h"

#include <algorithm>

#include <fmt/format.h>

namespace kvtier::server {

std::vector<ObjectKey> ChunkKeys(const KeySpace& space, std::span<const ChunkHash> hashes,
                                 std::optional<uint16_t> rank) {
  std::vector<ObjectKey> keys;
  keys.reserve(hashes.size() * (rank ? 1 : space.world_size));
  for (const ChunkHash& h : hashes) {
    if (rank) {
      keys.push_back(
          ObjectKey::Create(h, space.ns, keys::KvRank{space.world_size, *rank}, space.object_group)
              .value());
      continue;
    }
    for (uint16_t r = 0; r < space.world_size; ++r) {
      keys.push_back(
          ObjectKey::Create(h, space.ns, keys::KvRank{space.world_size, r}, space.object_group)
              .value());
    }
  }
  return keys;
}

Session::Session(std::string request_id, const keys::TokenHasher* hasher, TimePoint now)
    : request_id_(std::move(request_id)), hasher_(hasher), last_used_(now) {}

void Session::SetTokens(std::span<const uint32_t> tokens) {
  MutexLock lock(&mu_);
  const size_t known = tokens_.size();
  const bool extends =
      tokens.size() >= known && std::equal(tokens_.begin(), tokens_.end(), tokens.begin());
  if (!extends) {
    // Keep only the hashes of chunks whose tokens are unchanged.
    size_t same = 0;
    while (same < std::min(known, tokens.size()) && tokens_[same] == tokens[same]) ++same;
    hashes_.resize(std::min(hashes_.size(), same / hasher_->chunk_size()));
  }
  tokens_.assign(tokens.begin(), tokens.end());
}

Result<std::vector<ChunkHash>> Session::Hashes(size_t first, size_t end) {
  MutexLock lock(&mu_);
  const size_t full = hasher_->NumFullChunks(tokens_.size());
  if (first > end || end > full) {
    return MakeError(Status::InvalidArgument(fmt::format(
        "chunks [{}, {}) are not covered by the request's {} tokens ({} full chunks of {}); the "
        "session may have been recreated",
        first, end, tokens_.size(), full, hasher_->chunk_size())));
  }
  if (hashes_.size() < end) {
    std::span<const uint32_t> prefix(tokens_.data(), end * hasher_->chunk_size());
    hasher_->Extend(prefix, &hashes_);
  }
  return std::vector<ChunkHash>(hashes_.begin() + static_cast<std::ptrdiff_t>(first),
                                hashes_.begin() + static_cast<std::ptrdiff_t>(end));
}

size_t Session::num_full_chunks() const {
  MutexLock lock(&mu_);
  return hasher_->NumFullChunks(tokens_.size());
}

void Session::AddKeySpace(const KeySpace& space) {
  MutexLock lock(&mu_);
  if (std::find(spaces_.begin(), spaces_.end(), space) == spaces_.end()) spaces_.push_back(space);
}

std::vector<KeySpace> Session::key_spaces() const {
  MutexLock lock(&mu_);
  return spaces_;
}

std::optional<Lookup> Session::ReplaceLookup(std::optional<Lookup> lookup) {
  MutexLock lock(&mu_);
  std::swap(lookup_, lookup);
  return lookup;
}

void Session::Touch(TimePoint now) {
  MutexLock lock(&mu_);
  last_used_ = std::max(last_used_, now);
}

TimePoint Session::last_used() const {
  MutexLock lock(&mu_);
  return last_used_;
}

SessionManager::SessionManager(const keys::TokenHasher* hasher, Clock* clock, Duration ttl)
    : hasher_(hasher), clock_(clock), ttl_(ttl) {}

std::shared_ptr<Session> SessionManager::GetOrCreate(const std::string& request_id) {
  TimePoint now = clock_->Now();
  std::shared_ptr<Session> s;
  {
    MutexLock lock(&mu_);
    auto& slot = sessions_[request_id];
    if (!slot) slot = std::make_shared<Session>(request_id, hasher_, now);
    s = slot;
  }
  s->Touch(now);
  return s;
}

std::shared_ptr<Session> SessionManager::Get(const std::string& request_id) {
  std::shared_ptr<Session> s;
  {
    MutexLock lock(&mu_);
    auto it = sessions_.find(request_id);
    if (it == sessions_.end()) return nullptr;
    s = it->second;
  }
  s->Touch(clock_->Now());
  return s;
}

std::shared_ptr<Session> SessionManager::Remove(const std::string& request_id) {
  MutexLock lock(&mu_);
  auto it = sessions_.find(request_id);
  if (it == sessions_.end()) return nullptr;
  std::shared_ptr<Session> s = std::move(it->second);
  sessions_.erase(it);
  return s;
}

std::vector<std::shared_ptr<Session>> SessionManager::RemoveExpired() {
  const TimePoint now = clock_->Now();
  std::vector<std::shared_ptr<Session>> expired;
  MutexLock lock(&mu_);
  for (auto it = sessions_.begin(); it != sessions_.end();) {
    if (now - it->second->last_used() > ttl_) {
      expired.push_back(std::move(it->second));
      sessions_.erase(it++);
    } else {
      ++it;
    }
  }
  return expired;
}

std::vector<std::shared_ptr<Session>> SessionManager::All() const {
  std::vector<std::shared_ptr<Session>> all;
  MutexLock lock(&mu_);
  for (const auto& [id, s] : sessions_) all.push_back(s);
  return all;
}

std::vector<std::shared_ptr<Session>> SessionManager::RemoveAll() {
  std::vector<std::shared_ptr<Session>> all;
  MutexLock lock(&mu_);
  for (auto& [id, s] : sessions_) all.push_back(std::move(s));
  sessions_.clear();
  return all;
}

size_t SessionManager::size() const {
  MutexLock lock(&mu_);
  return sessions_.size();
}

}  // namespace kvtier::server
