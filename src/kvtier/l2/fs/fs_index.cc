// The fs adapter's in-memory index of the keys it stores: the recovery scan that fills it at
// Start, lookups and unlocks, Delete and ListKeys, and the removal of records (Unpublish) that
// Delete and loads finding a bad record share.
#include <algorithm>
#include <cerrno>
#include <cstring>
#include <optional>
#include <queue>

#include <dirent.h>
#include <fcntl.h>
#include <fmt/format.h>
#include <sys/stat.h>
#include <unistd.h>

#include "kvtier/common/check.h"
#include "kvtier/common/logging.h"
#include "kvtier/l2/fs/fs_adapter.h"
#include "kvtier/l2/fs/fs_adapter_internal.h"
#include "kvtier/l2/fs/fs_format.h"

namespace kvtier::l2 {
namespace {

constexpr size_t kNotifyBatch = 1024;

// Order of ListKeys within one model: chunk hash, rank, group, cache salt.
bool ListOrderLess(const ObjectKey& a, const ObjectKey& b) {
  if (a.chunk_hash() != b.chunk_hash()) return a.chunk_hash() < b.chunk_hash();
  if (a.kv_rank().Packed() != b.kv_rank().Packed()) {
    return a.kv_rank().Packed() < b.kv_rank().Packed();
  }
  if (a.object_group() != b.object_group()) return a.object_group() < b.object_group();
  return a.cache_salt() < b.cache_salt();
}

}  // namespace

using internal::AlignedBytes;
using internal::AllocAligned;
using internal::ForEachEntry;
using internal::RetryableErrno;

// ---- Recovery -------------------------------------------------------------------------------

// The recovery scan: every fan-out directory, every record's header (not its payload).
Status FsAdapter::DoStart() {
  if (!options_.recover_on_start) return Status::OK();
  FsRecoveryStats stats;
  std::vector<ObjectKey> keys;
  std::vector<uint64_t> sizes;
  std::vector<std::string> fanout_dirs;
  KVT_RETURN_IF_ERROR(
      ForEachEntry(dir_fd_, ".", [&](int, const std::string& file, unsigned char type) {
        if (type == DT_DIR && IsFsFanoutDir(file)) {
          fanout_dirs.push_back(file);
          fanout_ready_[std::stoi(file, nullptr, 16)].store(true, std::memory_order_release);
        } else if (file != kFsTempDir && file != kFsLockFile) {
          ++stats.ignored_files;
        }
      }));
  AlignedBytes header = AllocAligned(kFsRecordHeaderSize);
  if (!header) return Status::OutOfMemory("fs recovery: cannot allocate a header buffer");
  for (const std::string& dir : fanout_dirs) {
    KVT_RETURN_IF_ERROR(ForEachEntry(
        dir_fd_, dir.c_str(), [&](int fd, const std::string& file, unsigned char type) {
          Result<ObjectKey> name_key = ParseFsRecordFileName(file);
          if (type != DT_REG || (!name_key && !IsFsHashedFileName(file))) {
            ++stats.ignored_files;  // not ours: leave it alone
            return;
          }
          // Magic, version, header checksum, the key against the name, the size against the
          // file's. The payload checksum is checked by the first load.
          Status bad;
          uint64_t size = 0;
          std::optional<ObjectKey> key;
          int rec = ::openat(fd, file.c_str(), O_RDONLY | O_CLOEXEC);
          struct stat st {};
          ssize_t n = -1;
          if (rec >= 0) {
            n = ::pread(rec, header.get(), kFsRecordHeaderSize, 0);
            if (n >= 0 && ::fstat(rec, &st) != 0) n = -1;
          }
          if (n < 0) {
            // Unreadable is not corrupt: leave it, unindexed.
            KVT_LOG_WARN("fs adapter '{}': cannot read {}/{}: {}; ignoring it", name(), dir, file,
                         strerror(errno));
            if (rec >= 0) ::close(rec);
            ++stats.ignored_files;
            return;
          }
          ::close(rec);
          auto parsed =
              ParseFsRecordHeader(std::span<const uint8_t>(header.get(), static_cast<size_t>(n)));
          if (!parsed) {
            bad = parsed.error();
          } else if (auto k = ObjectKey::Parse(parsed->key); !k) {
            bad = Status::Corruption("header key does not parse");
          } else if ((name_key && !(*name_key == *k)) || FsRecordFileName(*k) != file ||
                     FsFanoutDir(*k) != dir) {
            bad = Status::Corruption("header key does not match the file name");
          } else if (static_cast<uint64_t>(st.st_size) !=
                     kFsRecordHeaderSize + parsed->payload_size) {
            bad = Status::Corruption(
                fmt::format("file size {} != header + {}", st.st_size, parsed->payload_size));
          } else {
            key = *k;
            size = parsed->payload_size;
          }
          if (!key) {
            KVT_LOG_WARN("fs adapter '{}': removing {}/{}: {}", name(), dir, file, bad.ToString());
            if (::unlinkat(fd, file.c_str(), 0) == 0) ++stats.removed_corrupt_files;
            return;
          }
          keys.push_back(*key);
          sizes.push_back(size);
        }));
  }
  // Keys a store wrote before Start are in the index already (and accounted): skip them.
  std::vector<ObjectKey> fresh;
  std::vector<uint64_t> fresh_sizes;
  {
    MutexLock lock(&index_mu_);
    for (size_t i = 0; i < keys.size(); ++i) {
      auto [it, inserted] = index_.try_emplace(keys[i]);
      if (!inserted) continue;
      it->second = Entry{sizes[i], next_generation_.fetch_add(1), EntryState::kPresent,
                         /*accounted=*/false};
      fresh.push_back(keys[i]);
      fresh_sizes.push_back(sizes[i]);
      stats.bytes += sizes[i];
    }
  }
  stats.keys = fresh.size();
  for (size_t i = 0; i < fresh.size(); i += kNotifyBatch) {
    size_t m = std::min(kNotifyBatch, fresh.size() - i);
    NotifyStored(std::span(fresh).subspan(i, m), std::span(fresh_sizes).subspan(i, m));
  }
  MarkAccounted(fresh);
  {
    MutexLock lock(&status_mu_);
    stats.removed_temp_files = recovery_.removed_temp_files;
    recovery_ = stats;
  }
  KVT_LOG_INFO(
      "fs adapter '{}': recovered {} keys ({} bytes), removed {} corrupt files, ignored {} "
      "files",
      name(), stats.keys, stats.bytes, stats.removed_corrupt_files, stats.ignored_files);
  return Status::OK();
}

void FsAdapter::MarkAccounted(std::span<const ObjectKey> keys) {
  if (keys.empty()) return;
  {
    MutexLock lock(&index_mu_);
    for (const ObjectKey& key : keys) {
      auto e = index_.find(key);
      KVT_DCHECK(e != index_.end());  // nobody removes an unaccounted entry
      e->second.accounted = true;
    }
  }
  index_cv_.NotifyAll();
}

FsRecoveryStats FsAdapter::recovery_stats() const {
  MutexLock lock(&status_mu_);
  return recovery_;
}

// ---- Lookup, unlock, delete, list --------------------------------------------------------------

void FsAdapter::DoSubmitLookupAndLock(TaskId task, std::span<const ObjectKey> keys) {
  Bitmap found(keys.size());
  {
    MutexLock lock(&index_mu_);
    for (size_t i = 0; i < keys.size(); ++i) {
      auto it = index_.find(keys[i]);
      if (it == index_.end() || it->second.state != EntryState::kPresent) continue;
      locks_.Lock(keys[i]);
      found.Set(i);
    }
  }
  CompleteLookup(task, std::move(found));
}

void FsAdapter::DoUnlock(std::span<const ObjectKey> keys) {
  MutexLock lock(&index_mu_);
  for (const ObjectKey& key : keys) locks_.Unlock(key);
}

Result<Bitmap> FsAdapter::DoDelete(std::span<const ObjectKey> keys, bool force) {
  Bitmap deleted(keys.size());  // bit: not stored after the call
  std::vector<size_t> doomed_at, repeats;
  std::vector<ObjectKey> doomed;
  std::vector<uint64_t> sizes;
  {
    MutexLock lock(&index_mu_);
    WaitForSettled(keys);
    for (size_t i = 0; i < keys.size(); ++i) {
      auto it = index_.find(keys[i]);
      if (it == index_.end()) {
        deleted.Set(i);  // absent already
        continue;
      }
      switch (it->second.state) {
        case EntryState::kWriting:  // a store is writing it: it stays
          break;
        case EntryState::kRemoving:  // marked below for an earlier copy of the key in `keys`
          repeats.push_back(i);
          break;
        case EntryState::kPresent:
          KVT_DCHECK(it->second.accounted);  // settled
          if (!force && locks_.IsLocked(keys[i])) break;
          it->second.state = EntryState::kRemoving;
          doomed_at.push_back(i);
          doomed.push_back(keys[i]);
          sizes.push_back(it->second.size);
          break;
      }
    }
  }
  Status first_error;
  std::vector<bool> removed = Unpublish(doomed, sizes, &first_error);
  for (size_t j = 0; j < doomed.size(); ++j) {
    if (removed[j]) deleted.Set(doomed_at[j]);
  }
  for (size_t i : repeats) {
    for (size_t j = 0; j < doomed.size(); ++j) {
      if (doomed[j] == keys[i] && removed[j]) deleted.Set(i);
    }
  }
  if (!first_error.ok()) {
    KVT_LOG_WARN("fs adapter '{}': delete kept keys: {}", name(), first_error.ToString());
  }
  return deleted;
}

std::vector<bool> FsAdapter::Unpublish(std::span<const ObjectKey> keys,
                                       std::span<const uint64_t> sizes, Status* first_error) {
  std::vector<bool> removed(keys.size());
  std::vector<ObjectKey> gone;
  std::vector<uint64_t> gone_sizes;
  for (size_t j = 0; j < keys.size(); ++j) {
    std::string path = FsRecordPath(keys[j]);
    if (::unlinkat(dir_fd_, path.c_str(), 0) == 0 || errno == ENOENT) {
      removed[j] = true;
      gone.push_back(keys[j]);
      gone_sizes.push_back(sizes[j]);
    } else {
      Status s = Status::IOError(fmt::format("unlink {}: {}", path, strerror(errno)),
                                 RetryableErrno(errno));
      NoteError(s, false);
      if (first_error != nullptr && first_error->ok()) *first_error = s;
    }
  }
  // Listeners hear of the deletion while the entries still block a new store of the keys, so
  // a re-store's OnL2KeysStored always follows this OnL2KeysDeleted.
  NotifyDeleted(gone, gone_sizes);
  if (!keys.empty()) {
    {
      MutexLock lock(&index_mu_);
      for (size_t j = 0; j < keys.size(); ++j) {
        auto it = index_.find(keys[j]);
        KVT_DCHECK(it != index_.end() && it->second.state == EntryState::kRemoving);
        if (removed[j]) {
          index_.erase(it);
        } else {
          it->second.state = EntryState::kPresent;
        }
      }
    }
    index_cv_.NotifyAll();
  }
  return removed;
}

void FsAdapter::WaitForSettled(std::span<const ObjectKey> keys) {
  while (true) {
    bool wait = false;
    for (const ObjectKey& key : keys) {
      auto e = index_.find(key);
      if (e != index_.end() &&
          (e->second.state == EntryState::kRemoving ||
           (e->second.state == EntryState::kPresent && !e->second.accounted))) {
        wait = true;
        break;
      }
    }
    if (!wait) return;
    index_cv_.Wait(&index_mu_);
  }
}

Result<KeyPage> FsAdapter::DoListKeys(std::string_view model_name, size_t page_size,
                                      std::string_view cursor) {
  std::optional<ObjectKey> after;
  if (!cursor.empty()) {
    Result<ObjectKey> k = ObjectKey::Parse(cursor);
    if (!k || k->model_name() != model_name) {
      return MakeError(Status::InvalidArgument("ListKeys: invalid cursor"));
    }
    after = *k;
  }
  // One pass over the index keeping the page_size + 1 smallest keys after the cursor: O(n log p)
  // per page, no ordered index to maintain on the hot path.
  auto less = [](const std::pair<ObjectKey, uint64_t>& a, const std::pair<ObjectKey, uint64_t>& b) {
    return ListOrderLess(a.first, b.first);
  };
  std::priority_queue<std::pair<ObjectKey, uint64_t>, std::vector<std::pair<ObjectKey, uint64_t>>,
                      decltype(less)>
      heap(less);
  absl::flat_hash_map<keys::NamespaceId, bool> model_match;
  {
    MutexLock lock(&index_mu_);
    for (const auto& [key, entry] : index_) {
      if (entry.state != EntryState::kPresent) continue;
      auto [m, inserted] = model_match.try_emplace(key.namespace_id(), false);
      if (inserted) m->second = key.model_name() == model_name;
      if (!m->second || (after && !ListOrderLess(*after, key))) continue;
      if (heap.size() <= page_size) {
        heap.emplace(key, entry.size);
      } else if (ListOrderLess(key, heap.top().first)) {
        heap.pop();
        heap.emplace(key, entry.size);
      }
    }
  }
  KeyPage page;
  while (!heap.empty()) {
    page.keys.push_back(heap.top());
    heap.pop();
  }
  std::reverse(page.keys.begin(), page.keys.end());
  if (page.keys.size() > page_size) {
    page.keys.resize(page_size);
    page.next_cursor = page.keys.back().first.ToString();
  }
  return page;
}

std::vector<std::pair<ObjectKey, uint64_t>> FsAdapter::StoredKeys() const {
  std::vector<std::pair<ObjectKey, uint64_t>> out;
  MutexLock lock(&index_mu_);
  for (const auto& [key, entry] : index_) {
    if (entry.state == EntryState::kPresent) out.emplace_back(key, entry.size);
  }
  return out;
}

size_t FsAdapter::LockedKeyCount() const {
  MutexLock lock(&index_mu_);
  return locks_.size();
}
void FsAdapter::RemoveBadRecords(std::span<const ObjectKey> keys,
                                 std::span<const uint64_t> generations) {
  std::vector<ObjectKey> doomed;
  std::vector<uint64_t> sizes;
  {
    MutexLock lock(&index_mu_);
    WaitForSettled(keys);
    for (size_t i = 0; i < keys.size(); ++i) {
      auto e = index_.find(keys[i]);
      // Locked keys go too: their bytes are useless. A key re-created since (another
      // generation) is left alone.
      if (e == index_.end() || e->second.generation != generations[i] ||
          e->second.state != EntryState::kPresent) {
        continue;
      }
      e->second.state = EntryState::kRemoving;
      doomed.push_back(keys[i]);
      sizes.push_back(e->second.size);
    }
  }
  Unpublish(doomed, sizes, nullptr);
}
}  // namespace kvtier::l2
