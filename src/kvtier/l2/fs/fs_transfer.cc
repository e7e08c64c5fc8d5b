// The fs adapter's store and load tasks, run on its I/O threads through each thread's
// FsIoEngine: a store writes each record to a temp file and renames it into place; a load reads
// a record in chunks and verifies it. O_DIRECT goes through aligned bounce buffers where needed.
#include <algorithm>
#include <cerrno>
#include <cstring>
#include <memory>
#include <optional>

#include <fmt/format.h>

#include "kvtier/common/check.h"
#include "kvtier/common/logging.h"
#include "kvtier/l2/fs/fs_adapter.h"
#include "kvtier/l2/fs/fs_adapter_internal.h"
#include "kvtier/l2/fs/fs_format.h"

namespace kvtier::l2 {
namespace {

// Loads: read size per operation and operations in flight per object.
constexpr uint64_t kLoadChunk = 1 << 20;
constexpr size_t kLoadWindow = 4;

}  // namespace

using internal::AlignDown;
using internal::AlignedBytes;
using internal::AlignUp;
using internal::AllocAligned;
using internal::IsAligned;
using internal::RetryableErrno;

// ---- Store and load items ----------------------------------------------------------------------

struct FsAdapter::StoreItem {
  size_t key_index = 0;
  std::span<const uint8_t> source;
  std::string tmp_path, final_path;
  AlignedBytes header, bounce;
  bool padded = false;  // O_DIRECT wrote past the end: truncate to the exact size
  int fd = -1;
  int pending_writes = 0;
  bool published = false;
  Status error;
  FsIoOp open, payload, header_write, step, unlink;  // step: truncate, fsync, close, rename
};

// A load reads its record in chunks, at most kLoadWindow in flight, and checksums each chunk as
// soon as it and those before it have landed, while the bytes are still in cache.
struct FsAdapter::LoadItem {
  size_t key_index = 0;
  uint64_t size = 0, generation = 0;
  std::span<uint8_t> target;
  std::string path;
  std::string key_text;
  AlignedBytes header;
  // O_DIRECT only: the whole payload (target not aligned), or its unaligned tail block.
  AlignedBytes bounce;
  bool full_bounce = false;
  uint64_t direct_bytes = 0;  // tail bounce: payload bytes [0, direct_bytes) land in the target
  int fd = -1;
  std::vector<FsIoOp> reads;  // chunk c: payload [c * kLoadChunk, ...); reads[0] has the header
  std::vector<uint8_t> landed;
  size_t next_to_add = 0, next_to_hash = 0, in_flight = 0;
  std::unique_ptr<FsChecksummer> checksum;
  std::optional<FsRecordHeader> parsed;
  bool stop = false;  // no more reads (an error, or a bad header)
  bool ok = false;
  bool bad_record = false;  // corrupt, truncated or missing: remove it
  FsIoOp open, close;

  uint64_t ChunkBegin(size_t c) const { return std::min<uint64_t>(c * kLoadChunk, size); }
  uint64_t ChunkEnd(size_t c) const { return std::min<uint64_t>((c + 1) * kLoadChunk, size); }
};
// ---- Store -----------------------------------------------------------------------------------

void FsAdapter::RunStore(FsIoEngine* engine, Task* task) {
  const size_t n = task->keys.size();
  // Claim the keys: absent ones become kWriting; present or writing ones are skipped.
  std::vector<size_t> todo;
  {
    MutexLock lock(&index_mu_);
    for (size_t i = 0; i < n; ++i) {
      // A key being removed: wait until the listeners heard of it, then store it anew.
      while (true) {
        auto e = index_.find(task->keys[i]);
        if (e == index_.end() || e->second.state != EntryState::kRemoving) break;
        index_cv_.Wait(&index_mu_);
      }
      auto [it, inserted] = index_.try_emplace(task->keys[i]);
      if (!inserted) continue;
      it->second = Entry{task->sources[i].size(), next_generation_.fetch_add(1),
                         EntryState::kWriting, false};
      todo.push_back(i);
    }
  }

  const bool direct = options_.use_odirect;
  std::vector<StoreItem> items(todo.size());
  for (size_t j = 0; j < todo.size(); ++j) {
    StoreItem& it = items[j];
    it.key_index = todo[j];
    it.source = task->sources[it.key_index];
    it.tmp_path = NextTempPath();
    it.final_path = FsRecordPath(task->keys[it.key_index]);
    // Created on first use (at most 256 mkdirs per directory's life), before the rename needs it.
    it.error = EnsureFanoutDir(task->keys[it.key_index]);
    if (!it.error.ok()) {
      NoteError(it.error, false);
      continue;
    }
    it.open = FsIoOp{.kind = FsIoOpKind::kOpen,
                     .dir_fd = dir_fd_,
                     .path = it.tmp_path.c_str(),
                     .flags = OpenFlags(true),
                     .mode = 0644,
                     .user = j};
    engine->Add(&it.open);
  }

  auto fail = [&](StoreItem& it, const FsIoOp& op, int err) {
    if (!it.error.ok()) return;
    const bool odirect_refused = ODirectRefused(op, err);
    std::string what =
        err > 0 ? strerror(err) : fmt::format("short transfer ({} bytes)", op.result);
    it.error = Status::IOError(
        fmt::format("{} {}{}: {}", FsIoOpKindName(op.kind), op.path ? op.path : it.tmp_path.c_str(),
                    odirect_refused ? " with O_DIRECT (the filesystem refuses O_DIRECT)" : "",
                    what),
        err > 0 && RetryableErrno(err));
    NoteError(it.error, odirect_refused);
  };
  auto add_step = [&](StoreItem& it, FsIoOpKind kind, size_t j) {
    it.step = FsIoOp{.kind = kind, .dir_fd = dir_fd_, .fd = it.fd, .user = j};
    if (kind == FsIoOpKind::kTruncate) it.step.offset = kFsRecordHeaderSize + it.source.size();
    if (kind == FsIoOpKind::kRename) {
      it.step.path = it.tmp_path.c_str();
      it.step.new_path = it.final_path.c_str();
    }
    engine->Add(&it.step);
  };
  auto add_unlink = [&](StoreItem& it, size_t j) {
    it.unlink = FsIoOp{
        .kind = FsIoOpKind::kUnlink, .dir_fd = dir_fd_, .path = it.tmp_path.c_str(), .user = j};
    engine->Add(&it.unlink);
  };
  // After the writes (or a failed one): truncate, fsync, close, then rename or unlink.
  auto after_writes = [&](StoreItem& it, size_t j, FsIoOpKind done) {
    if (!it.error.ok()) {
      if (it.fd >= 0) {
        add_step(it, FsIoOpKind::kClose, j);
      } else {
        add_unlink(it, j);
      }
      return;
    }
    if (done == FsIoOpKind::kWritev && it.padded) {
      add_step(it, FsIoOpKind::kTruncate, j);
    } else if ((done == FsIoOpKind::kWritev || done == FsIoOpKind::kTruncate) && options_.fsync) {
      add_step(it, FsIoOpKind::kFsync, j);
    } else {
      add_step(it, FsIoOpKind::kClose, j);
    }
  };

  while (FsIoOp* op = engine->Next()) {
    const size_t j = op->user;
    StoreItem& it = items[j];
    const int err = op->result < 0 ? static_cast<int>(-op->result) : 0;
    switch (op->kind) {
      case FsIoOpKind::kOpen: {
        if (err != 0) {
          fail(it, *op, err);
          break;  // no file was created (O_EXCL)
        }
        it.fd = static_cast<int>(op->result);
        const uint64_t size = it.source.size();
        if (size > 0) {
          it.payload = FsIoOp{.kind = FsIoOpKind::kWritev,
                              .fd = it.fd,
                              .offset = kFsRecordHeaderSize,
                              .user = j,
                              .direct = direct};
          if (!direct) {
            it.payload.iov[0] = {const_cast<uint8_t*>(it.source.data()), size};
            it.payload.iov_count = 1;
          } else if (IsAligned(it.source.data())) {
            uint64_t prefix = AlignDown(size);
            if (prefix > 0)
              it.payload.iov[it.payload.iov_count++] = {const_cast<uint8_t*>(it.source.data()),
                                                        prefix};
            if (prefix < size) {
              it.bounce = AllocAligned(kFsAlignment);
              if (it.bounce) {
                std::memcpy(it.bounce.get(), it.source.data() + prefix, size - prefix);
                it.payload.iov[it.payload.iov_count++] = {it.bounce.get(), kFsAlignment};
                it.padded = true;
              }
            }
          } else {
            it.bounce = AllocAligned(size);
            if (it.bounce) {
              std::memcpy(it.bounce.get(), it.source.data(), size);
              it.payload.iov[it.payload.iov_count++] = {it.bounce.get(), AlignUp(size)};
              it.padded = AlignUp(size) != size;
              bounced_objects_.fetch_add(1, std::memory_order_relaxed);
            }
          }
          if (direct && (it.padded || !IsAligned(it.source.data())) && !it.bounce) {
            it.error = Status::OutOfMemory("fs store: cannot allocate an O_DIRECT bounce buffer");
            after_writes(it, j, FsIoOpKind::kWritev);
            break;
          }
          engine->Add(&it.payload);
          ++it.pending_writes;
          engine->Flush();  // the kernel copies while we checksum
        }
        it.header = AllocAligned(kFsRecordHeaderSize);
        Status s = it.header ? EncodeFsRecordHeader(
                                   FsRecordHeader{task->keys[it.key_index].ToString(), size,
                                                  FsChecksum(it.source)},
                                   std::span<uint8_t>(it.header.get(), kFsRecordHeaderSize))
                             : Status::OutOfMemory("fs store: cannot allocate a header");
        if (!s.ok()) {
          if (it.error.ok()) it.error = s;
          if (it.pending_writes == 0) after_writes(it, j, FsIoOpKind::kWritev);
          break;
        }
        it.header_write = FsIoOp{.kind = FsIoOpKind::kWritev,
                                 .fd = it.fd,
                                 .offset = 0,
                                 .iov_count = 1,
                                 .user = j,
                                 .direct = direct};
        it.header_write.iov[0] = {it.header.get(), kFsRecordHeaderSize};
        engine->Add(&it.header_write);
        ++it.pending_writes;
        break;
      }
      case FsIoOpKind::kWritev:
        if (op->result != static_cast<int64_t>(op->TotalLength())) fail(it, *op, err);
        if (--it.pending_writes == 0) after_writes(it, j, FsIoOpKind::kWritev);
        break;
      case FsIoOpKind::kTruncate:
      case FsIoOpKind::kFsync:
        if (err != 0) fail(it, *op, err);
        after_writes(it, j, op->kind);
        break;
      case FsIoOpKind::kClose:
        it.fd = -1;
        if (err != 0) fail(it, *op, err);
        if (it.error.ok()) {
          add_step(it, FsIoOpKind::kRename, j);
        } else {
          add_unlink(it, j);
        }
        break;
      case FsIoOpKind::kRename:
        if (err != 0) {
          fail(it, *op, err);
          add_unlink(it, j);
        } else {
          it.published = true;
        }
        break;
      case FsIoOpKind::kUnlink:
      case FsIoOpKind::kReadv:
        break;
    }
  }

  std::vector<ObjectKey> stored;
  std::vector<uint64_t> sizes;
  Status first_error;
  size_t failed = 0;
  {
    MutexLock lock(&index_mu_);
    for (StoreItem& it : items) {
      const ObjectKey& key = task->keys[it.key_index];
      auto e = index_.find(key);
      KVT_DCHECK(e != index_.end() && e->second.state == EntryState::kWriting);
      if (it.published) {
        e->second.state = EntryState::kPresent;
        stored.push_back(key);
        sizes.push_back(it.source.size());
      } else {
        index_.erase(e);
        if (failed++ == 0) first_error = it.error.WithContext(key.ToString());
      }
    }
  }
  // A failed task still reports (and so accounts) the keys it did publish.
  Status status;
  if (failed > 0) {
    status = Status(
        first_error.code(),
        fmt::format("fs store: {} of {} keys failed; first: {}", failed, n, first_error.message()),
        first_error.retryable());
  }
  CheckEngine(engine);  // before the completion: whoever sees it sees the adapter's health
  CompleteStore(task->id, std::move(status), stored, sizes);
  MarkAccounted(stored);
}

// ---- Load ------------------------------------------------------------------------------------

void FsAdapter::RunLoad(FsIoEngine* engine, Task* task) {
  const size_t n = task->keys.size();
  const bool direct = options_.use_odirect;
  std::vector<LoadItem> items;
  items.reserve(n);
  {
    MutexLock lock(&index_mu_);
    for (size_t i = 0; i < n; ++i) {
      auto e = index_.find(task->keys[i]);
      if (e == index_.end() || e->second.state != EntryState::kPresent) continue;
      if (task->targets[i].size() != e->second.size) {  // the wrong object, for the caller
        KVT_LOG_DEBUG("fs adapter '{}': load buffer of {} bytes for a {}-byte object", name(),
                      task->targets[i].size(), e->second.size);
        continue;
      }
      LoadItem& it = items.emplace_back();
      it.key_index = i;
      it.size = e->second.size;
      it.generation = e->second.generation;
    }
  }

  for (size_t j = 0; j < items.size(); ++j) {
    LoadItem& it = items[j];
    it.target = task->targets[it.key_index];
    it.path = FsRecordPath(task->keys[it.key_index]);
    it.open = FsIoOp{.kind = FsIoOpKind::kOpen,
                     .dir_fd = dir_fd_,
                     .path = it.path.c_str(),
                     .flags = OpenFlags(false),
                     .user = j};
    engine->Add(&it.open);
  }

  auto io_fail = [&](LoadItem& it, const FsIoOp& op, int err) {
    it.stop = true;
    const bool odirect_refused = ODirectRefused(op, err);
    NoteError(
        Status::IOError(fmt::format("{} {}{}: {}", FsIoOpKindName(op.kind), it.path,
                                    odirect_refused ? " with O_DIRECT (the filesystem refuses "
                                                      "O_DIRECT)"
                                                    : "",
                                    strerror(err)),
                        RetryableErrno(err)),
        odirect_refused);
  };
  auto corrupt = [&](LoadItem& it, std::string_view why) {
    it.stop = true;
    it.bad_record = true;
    corrupt_records_.fetch_add(1, std::memory_order_relaxed);
    KVT_LOG_WARN("fs adapter '{}': corrupt record {}: {}; removing it", name(), it.path, why);
  };
  // Builds the chunk reads once the file is open.
  auto plan = [&](LoadItem& it, size_t j) -> bool {
    it.header = AllocAligned(kFsRecordHeaderSize);
    uint8_t* dst = it.target.data();
    if (direct && !IsAligned(dst) && it.size > 0) {
      it.full_bounce = true;
      it.bounce = AllocAligned(it.size);
      bounced_objects_.fetch_add(1, std::memory_order_relaxed);
    } else if (direct && it.size % kFsAlignment != 0) {
      it.direct_bytes = AlignDown(it.size);
      it.bounce = AllocAligned(kFsAlignment);
    } else {
      it.direct_bytes = it.size;
    }
    if (!it.header || (direct && it.direct_bytes < it.size && !it.bounce)) return false;
    const size_t chunks = std::max<size_t>(1, (it.size + kLoadChunk - 1) / kLoadChunk);
    it.reads.resize(chunks);
    it.landed.assign(chunks, 0);
    for (size_t c = 0; c < chunks; ++c) {
      FsIoOp& op = it.reads[c];
      uint64_t begin = it.ChunkBegin(c), end = it.ChunkEnd(c);
      op = FsIoOp{.kind = FsIoOpKind::kReadv,
                  .fd = it.fd,
                  .offset = c == 0 ? 0 : kFsRecordHeaderSize + begin,
                  .user = j,
                  .direct = direct};
      if (c == 0) op.iov[op.iov_count++] = {it.header.get(), kFsRecordHeaderSize};
      if (it.full_bounce) {
        op.iov[op.iov_count++] = {it.bounce.get() + begin, AlignUp(end - begin)};
      } else {
        uint64_t direct_end = std::min(end, it.direct_bytes);
        if (direct_end > begin) op.iov[op.iov_count++] = {dst + begin, direct_end - begin};
        if (end > it.direct_bytes) op.iov[op.iov_count++] = {it.bounce.get(), kFsAlignment};
      }
    }
    it.checksum = std::make_unique<FsChecksummer>();
    return true;
  };
  auto add_reads = [&](LoadItem& it) {
    while (!it.stop && it.next_to_add < it.reads.size() && it.in_flight < kLoadWindow) {
      engine->Add(&it.reads[it.next_to_add++]);
      ++it.in_flight;
    }
  };
  // Checksums the chunks that landed, in order, moving bounced bytes to the target first.
  auto hash_landed = [&](LoadItem& it) {
    while (it.next_to_hash < it.reads.size() && it.landed[it.next_to_hash]) {
      size_t c = it.next_to_hash++;
      uint64_t begin = it.ChunkBegin(c), end = it.ChunkEnd(c);
      if (it.full_bounce) {
        std::memcpy(it.target.data() + begin, it.bounce.get() + begin, end - begin);
      } else if (end > it.direct_bytes) {
        std::memcpy(it.target.data() + it.direct_bytes, it.bounce.get(), end - it.direct_bytes);
      }
      it.checksum->Update(it.target.subspan(begin, end - begin));
    }
  };

  uint64_t bytes = 0;
  while (FsIoOp* op = engine->Next()) {
    const size_t j = op->user;
    LoadItem& it = items[j];
    const int err = op->result < 0 ? static_cast<int>(-op->result) : 0;
    if (op == &it.open) {
      if (err == ENOENT) {
        it.bad_record = true;  // gone from under us: forget it
        missing_records_.fetch_add(1, std::memory_order_relaxed);
        continue;
      }
      if (err != 0) {
        io_fail(it, *op, err);
        continue;
      }
      it.fd = static_cast<int>(op->result);
      if (!plan(it, j)) {
        it.stop = true;
        NoteError(Status::OutOfMemory("fs load: cannot allocate buffers"), false);
      }
      add_reads(it);
    } else if (op == &it.close) {
      continue;
    } else {
      KVT_DCHECK(op->kind == FsIoOpKind::kReadv);
      const size_t c = static_cast<size_t>(op - it.reads.data());
      --it.in_flight;
      const uint64_t want = (c == 0 ? kFsRecordHeaderSize : 0) + it.ChunkEnd(c) - it.ChunkBegin(c);
      if (it.stop) {
        // Stopped already: only drain.
      } else if (err != 0) {
        io_fail(it, *op, err);
      } else if (static_cast<uint64_t>(op->result) < want) {
        corrupt(it, fmt::format("short read at {}: {} bytes of {}", op->offset, op->result, want));
      } else {
        if (c == 0) {
          // The header first: a wrong record stops the reads early.
          auto header =
              ParseFsRecordHeader(std::span<const uint8_t>(it.header.get(), kFsRecordHeaderSize));
          if (!header) {
            corrupt(it, header.error().message());
          } else if (header->key != task->keys[it.key_index].ToString()) {
            corrupt(it, "key mismatch");
          } else if (header->payload_size != it.size) {
            corrupt(it,
                    fmt::format("payload size {} != {} expected", header->payload_size, it.size));
          } else {
            it.parsed = std::move(*header);
          }
        }
        if (!it.stop) {
          it.landed[c] = 1;
          add_reads(it);
          engine->Flush();  // the next reads go on while this chunk is checksummed
          hash_landed(it);
        }
      }
    }
    if (it.fd >= 0 && it.in_flight == 0 && (it.stop || it.next_to_hash == it.reads.size())) {
      if (!it.stop) {
        KVT_DCHECK(it.parsed.has_value());
        if (it.checksum->Digest() == it.parsed->payload_checksum) {
          it.ok = true;
        } else {
          corrupt(it, "payload checksum mismatch");
        }
      }
      it.close = FsIoOp{.kind = FsIoOpKind::kClose, .fd = it.fd, .user = j};
      it.fd = -1;
      engine->Add(&it.close);
    }
  }

  Bitmap loaded(n);
  std::vector<ObjectKey> bad;
  std::vector<uint64_t> generations;
  for (const LoadItem& it : items) {
    if (it.ok) {
      loaded.Set(it.key_index);
      bytes += it.size;
    } else if (it.bad_record) {
      bad.push_back(task->keys[it.key_index]);
      generations.push_back(it.generation);
    }
  }
  // Before the completion: once the caller hears of the miss, the key is gone.
  if (!bad.empty()) RemoveBadRecords(bad, generations);
  CheckEngine(engine);
  CompleteLoad(task->id, std::move(loaded), bytes);
}
}  // namespace kvtier::l2
