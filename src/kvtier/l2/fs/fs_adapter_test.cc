#include "kvtier/l2/fs/fs_adapter.h"

#include <atomic>
#include <filesystem>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include <fcntl.h>
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>
#include <unistd.h>

#include "kvtier/l2/fs/fs_format.h"
#include "kvtier/l2/fs/fs_test_util.h"
#include "kvtier/l2/testing/adapter_conformance.h"

namespace kvtier::l2 {
namespace {

using fs_testing::AlignedBuffer;
using fs_testing::Gate;
using fs_testing::InstallHook;
using fs_testing::LoadSync;
using fs_testing::LookupSync;
using fs_testing::MakeKey;
using fs_testing::MakePayload;
using fs_testing::RecordingListener;
using fs_testing::StoreSync;
using fs_testing::TempDir;
using fs_testing::Waiter;

// ---- Config ------------------------------------------------------------------------------------

TEST(FsAdapterConfigTest, DefaultsAndErrors) {
  auto o = ParseFsAdapterConfig({{"base_path", "/x"}}, "d0");
  ASSERT_TRUE(o.has_value()) << o.error().ToString();
  EXPECT_EQ(o->base_path, "/x");
  EXPECT_EQ(o->max_capacity, 0u);
  EXPECT_FALSE(o->use_odirect);
  EXPECT_EQ(o->io_engine, FsIoEngineKind::kIoUring);
  EXPECT_EQ(o->io_threads, 2);
  EXPECT_EQ(o->queue_depth, 32);
  EXPECT_TRUE(o->recover_on_start);
  EXPECT_FALSE(o->fsync);

  o = ParseFsAdapterConfig({{"base_path", "/x"},
                            {"max_capacity", "20GiB"},
                            {"use_odirect", true},
                            {"io_engine", "pread"},
                            {"io_threads", 4},
                            {"queue_depth", 8},
                            {"recover_on_start", false},
                            {"fsync", true}},
                           "d0");
  ASSERT_TRUE(o.has_value()) << o.error().ToString();
  EXPECT_EQ(o->max_capacity, 20ull << 30);
  EXPECT_TRUE(o->use_odirect);
  EXPECT_EQ(o->io_engine, FsIoEngineKind::kPread);
  EXPECT_EQ(o->io_threads, 4);
  EXPECT_EQ(o->queue_depth, 8);
  EXPECT_FALSE(o->recover_on_start);
  EXPECT_TRUE(o->fsync);

  auto missing = ParseFsAdapterConfig(nlohmann::json::object(), "d0");
  ASSERT_FALSE(missing.has_value());
  EXPECT_NE(missing.error().message().find("base_path"), std::string::npos);
  auto unknown = ParseFsAdapterConfig({{"base_path", "/x"}, {"bas_path", "/y"}}, "d0");
  ASSERT_FALSE(unknown.has_value());
  EXPECT_NE(unknown.error().message().find("bas_path"), std::string::npos);
  EXPECT_NE(unknown.error().message().find("fs adapter 'd0'"), std::string::npos);
  EXPECT_FALSE(ParseFsAdapterConfig({{"base_path", "/x"}, {"io_engine", "aio"}}, "d0"));
  EXPECT_FALSE(ParseFsAdapterConfig({{"base_path", "/x"}, {"io_threads", 0}}, "d0"));
  EXPECT_FALSE(ParseFsAdapterConfig({{"base_path", ""}}, "d0"));
}

TEST(FsAdapterConfigTest, FactoryFunctionBuildsAWorkingAdapter) {
  TempDir dir;
  std::string base = dir.path() + "/made/by/factory";
  auto a = MakeFsAdapter({{"base_path", base}, {"max_capacity", "1MiB"}}, "disk0");
  ASSERT_TRUE(a.has_value()) << a.error().ToString();
  EXPECT_EQ((*a)->type(), "fs");
  EXPECT_EQ((*a)->name(), "disk0");
  EXPECT_EQ((*a)->Usage().capacity_bytes, 1u << 20);
  EXPECT_TRUE(std::filesystem::is_directory(base + "/tmp"));
  (*a)->Close();
}

// ---- Parameterised over engines and O_DIRECT ---------------------------------------------------

struct Variant {
  FsIoEngineKind engine;
  bool odirect;
};

std::string VariantName(const ::testing::TestParamInfo<Variant>& info) {
  return std::string(info.param.engine == FsIoEngineKind::kPread ? "pread" : "io_uring") +
         (info.param.odirect ? "_odirect" : "");
}

class FsAdapterTest : public ::testing::TestWithParam<Variant> {
 protected:
  void SetUp() override {
    std::string parent;
    if (GetParam().odirect) {
      parent = fs_testing::ODirectCapableParent();
      if (parent.empty()) GTEST_SKIP() << "no filesystem supporting O_DIRECT here";
    }
    dir_ = std::make_unique<TempDir>(parent);
    base_ = dir_->path() + "/l2";
  }

  FsAdapterOptions Options() const {
    FsAdapterOptions o;
    o.base_path = base_;
    o.io_engine = GetParam().engine;
    o.use_odirect = GetParam().odirect;
    o.io_threads = 2;
    o.queue_depth = 8;
    return o;
  }

  // Created, `listener` attached (when given), started (the recovery scan runs).
  std::unique_ptr<FsAdapter> Make(FsAdapterOptions o, L2Listener* listener = nullptr) {
    auto a = FsAdapter::Create(std::move(o), "fs-test");
    KVT_CHECK_MSG(a.has_value(), "{}", a.error().ToString());
    if (GetParam().engine == FsIoEngineKind::kPread) {
      EXPECT_EQ((*a)->io_engine_name(), "pread");
    }
    if (listener != nullptr) (*a)->AddListener(listener);
    Status started = (*a)->Start();
    KVT_CHECK_MSG(started.ok(), "{}", started.ToString());
    return std::move(*a);
  }
  std::unique_ptr<FsAdapter> Make() { return Make(Options()); }

  std::string PathOf(const ObjectKey& key) const {
    return base_ + "/" + FsAdapter::RelativePath(key);
  }

  std::unique_ptr<TempDir> dir_;
  std::string base_;
};

// Stores keys with the given payloads and checks the task succeeded.
void StoreAll(L2Adapter* a, const std::vector<ObjectKey>& keys,
              const std::vector<std::vector<uint8_t>>& payloads) {
  std::vector<std::span<const uint8_t>> objs(payloads.begin(), payloads.end());
  StoreResult r = StoreSync(a, keys, objs);
  ASSERT_TRUE(r.status.ok()) << r.status.ToString();
}

TEST_P(FsAdapterTest, RoundTripsObjectsOfEverySizeAndAlignment) {
  auto a = Make();
  const std::vector<size_t> sizes = {
      0, 1, 4095, 4096, 4097, 65536 + 3, (1 << 20) + 1, 3 << 20, (2 << 20) + 4097};
  std::vector<ObjectKey> keys;
  std::vector<std::unique_ptr<AlignedBuffer>> sources;
  std::vector<std::span<const uint8_t>> objs;
  uint64_t total = 0;
  for (size_t i = 0; i < sizes.size(); ++i) {
    keys.push_back(MakeKey(i, "org/model", i % 2 ? "salt" : ""));
    // Half the sources are misaligned: O_DIRECT must bounce them.
    sources.push_back(std::make_unique<AlignedBuffer>(sizes[i], i % 2 ? 8 : 0));
    auto p = MakePayload(i, sizes[i]);
    std::copy(p.begin(), p.end(), sources.back()->data());
    objs.emplace_back(sources.back()->data(), sizes[i]);
    total += sizes[i];
  }
  StoreResult r = StoreSync(a.get(), keys, objs);
  ASSERT_TRUE(r.status.ok()) << r.status.ToString();
  EXPECT_EQ(r.bytes_written, total);
  EXPECT_EQ(a->Usage().used_bytes, total);
  EXPECT_EQ(fs_testing::CountFiles(base_ + "/tmp"), 0u);
  for (size_t i = 0; i < keys.size(); ++i) {
    EXPECT_EQ(std::filesystem::file_size(PathOf(keys[i])), kFsRecordHeaderSize + sizes[i]);
  }

  // Targets aligned or not; bytes around them stay untouched.
  for (size_t misalign : {0, 16}) {
    std::vector<std::unique_ptr<AlignedBuffer>> targets;
    std::vector<std::span<uint8_t>> bufs;
    for (size_t s : sizes) {
      targets.push_back(std::make_unique<AlignedBuffer>(s + 5000, misalign));
      bufs.push_back(targets.back()->span().first(s));
    }
    Bitmap loaded = LoadSync(a.get(), keys, bufs);
    EXPECT_TRUE(loaded.All()) << loaded.ToString();
    for (size_t i = 0; i < keys.size(); ++i) {
      auto p = MakePayload(i, sizes[i]);
      EXPECT_TRUE(std::equal(p.begin(), p.end(), targets[i]->data())) << "key " << i;
      for (size_t b = sizes[i]; b < sizes[i] + 5000; ++b) {
        ASSERT_EQ(targets[i]->data()[b], 0xEE) << "wrote past the object, key " << i;
      }
    }
  }
  AdapterCounters c = a->Counters();
  EXPECT_EQ(c.load_keys_failed, 0u);
  EXPECT_EQ(c.load_bytes, 2 * total);
  EXPECT_EQ(a->corrupt_records(), 0u);
  a->Close();
}

TEST_P(FsAdapterTest, StoreSkipsKeysAlreadyPresent) {
  auto a = Make();
  std::vector<ObjectKey> keys = {MakeKey(1), MakeKey(2), MakeKey(1)};  // a duplicate in-task
  std::vector<std::vector<uint8_t>> p = {MakePayload(1, 5000), MakePayload(2, 7000),
                                         MakePayload(1, 5000)};
  std::vector<std::span<const uint8_t>> objs(p.begin(), p.end());
  StoreResult r = StoreSync(a.get(), keys, objs);
  ASSERT_TRUE(r.status.ok());
  EXPECT_EQ(r.bytes_written, 12000u);
  r = StoreSync(a.get(), keys, objs);
  ASSERT_TRUE(r.status.ok());
  EXPECT_EQ(r.bytes_written, 0u);
  EXPECT_EQ(a->Usage().used_bytes, 12000u);
  EXPECT_EQ(a->StoredKeys().size(), 2u);
  a->Close();
}

TEST_P(FsAdapterTest, LookupLocksAndDeleteSparesLockedKeysUnlessForced) {
  RecordingListener listener;
  auto a = Make(Options(), &listener);
  std::vector<ObjectKey> keys = {MakeKey(1), MakeKey(2), MakeKey(3)};
  StoreAll(a.get(), keys, {MakePayload(1, 1000), MakePayload(2, 2000), MakePayload(3, 3000)});
  EXPECT_EQ(a->Usage().used_bytes, 6000u);
  EXPECT_EQ(listener.Stored()[keys[1].ToString()], 2000u);

  std::vector<ObjectKey> probe = {keys[0], keys[1], MakeKey(99)};
  EXPECT_EQ(LookupSync(a.get(), probe).ToString(), "110");
  EXPECT_EQ(LookupSync(a.get(), std::span(&keys[1], 1)).ToString(), "1");  // k1 locked twice
  EXPECT_EQ(a->LockedKeyCount(), 2u);

  auto del = a->Delete(keys);
  ASSERT_TRUE(del.has_value());
  EXPECT_EQ(del->ToString(), "001");
  EXPECT_EQ(a->Usage().used_bytes, 3000u);
  EXPECT_FALSE(std::filesystem::exists(PathOf(keys[2])));
  EXPECT_TRUE(std::filesystem::exists(PathOf(keys[0])));
  EXPECT_EQ(listener.DeletedCount(keys[2]), 1u);
  EXPECT_EQ(listener.DeletedCount(keys[0]), 0u);

  a->SubmitUnlock(std::span(&keys[0], 1));
  a->SubmitUnlock(std::span(&keys[1], 1));  // one of two locks
  del = a->Delete(std::span(keys).first(2));
  ASSERT_TRUE(del.has_value());
  EXPECT_EQ(del->ToString(), "10");
  EXPECT_EQ(a->Usage().used_bytes, 2000u);

  del = a->Delete(std::span(&keys[1], 1), /*force=*/true);
  ASSERT_TRUE(del.has_value());
  EXPECT_EQ(del->ToString(), "1");
  EXPECT_EQ(a->Usage().used_bytes, 0u);
  EXPECT_EQ(listener.DeletedCount(keys[1]), 1u);
  EXPECT_EQ(fs_testing::RecordFiles(base_).size(), 0u);
  // Deleting again, or unknown keys: "not stored after the call", no notification.
  del = a->Delete(keys, true);
  ASSERT_TRUE(del.has_value());
  EXPECT_EQ(del->ToString(), "111");
  // A key twice in one call: both bits follow the one deletion.
  StoreAll(a.get(), {keys[0]}, {MakePayload(1, 1000)});
  std::vector<ObjectKey> twice = {keys[0], keys[0]};
  EXPECT_EQ(a->Delete(twice)->ToString(), "11");
  EXPECT_EQ(listener.DeletedCount(keys[0]), 2u);
  EXPECT_EQ(a->Usage().used_bytes, 0u);
  EXPECT_EQ(a->Counters().deleted_keys, 4u);
  a->Close();
}

TEST_P(FsAdapterTest, UsageByCacheSaltAndCapacity) {
  auto o = Options();
  o.max_capacity = 1 << 20;
  auto a = Make(o);
  StoreAll(a.get(), {MakeKey(1, "m", "a"), MakeKey(2, "m", "b"), MakeKey(3, "m", "")},
           {MakePayload(1, 100), MakePayload(2, 200), MakePayload(3, 300)});
  AdapterUsage u = a->Usage();
  EXPECT_EQ(u.capacity_bytes, 1u << 20);
  EXPECT_EQ(u.used_bytes, 600u);
  EXPECT_EQ(u.bytes_by_cache_salt["a"], 100u);
  EXPECT_EQ(u.bytes_by_cache_salt["b"], 200u);
  EXPECT_EQ(u.bytes_by_cache_salt[""], 300u);
  // The capacity is soft: the eviction controller deletes down to it; stores are not refused.
  StoreAll(a.get(), {MakeKey(4)}, {MakePayload(4, 2 << 20)});
  EXPECT_EQ(a->Usage().used_bytes, 600u + (2 << 20));
  a->Close();
}

TEST_P(FsAdapterTest, LoadFailsForAbsentKeysAndWrongSizedBuffers) {
  auto a = Make();
  StoreAll(a.get(), {MakeKey(1)}, {MakePayload(1, 8192)});
  AlignedBuffer small(8191), ok(8192), large(8193), other(10);
  std::vector<ObjectKey> keys = {MakeKey(1), MakeKey(1), MakeKey(1), MakeKey(2)};
  std::vector<std::span<uint8_t>> bufs = {small.span(), ok.span(), large.span(), other.span()};
  EXPECT_EQ(LoadSync(a.get(), keys, bufs).ToString(), "0100");
  EXPECT_EQ(small.data()[0], 0xEE);  // untouched
  EXPECT_EQ(large.data()[0], 0xEE);
  EXPECT_EQ(a->corrupt_records(), 0u);
  EXPECT_EQ(a->StoredKeys().size(), 1u);
  a->Close();
}

TEST_P(FsAdapterTest, ListKeysPagesThroughOneModel) {
  auto a = Make();
  std::vector<ObjectKey> keys;
  std::vector<std::vector<uint8_t>> payloads;
  std::set<std::string> want;
  for (int i = 0; i < 25; ++i) {
    keys.push_back(MakeKey(i % 10, "org/A", i % 3 ? "s" : "", keys::KvRank{4, uint16_t(i % 4)},
                           static_cast<uint32_t>(i / 10)));
    payloads.push_back(MakePayload(i, 10 + i));
    want.insert(fmt::format("{}={}", keys.back().ToString(), 10 + i));
  }
  for (int i = 0; i < 5; ++i) {
    keys.push_back(MakeKey(100 + i, "org/B"));
    payloads.push_back(MakePayload(i, 1));
  }
  StoreAll(a.get(), keys, payloads);
  std::set<std::string> got;
  std::string cursor;
  int pages = 0;
  do {
    auto page = a->ListKeys("org/A", 7, cursor);
    ASSERT_TRUE(page.has_value()) << page.error().ToString();
    EXPECT_LE(page->keys.size(), 7u);
    for (const auto& [k, size] : page->keys) {
      EXPECT_TRUE(got.insert(fmt::format("{}={}", k.ToString(), size)).second) << "duplicate";
    }
    cursor = page->next_cursor;
    ASSERT_LT(++pages, 10);
  } while (!cursor.empty());
  EXPECT_EQ(pages, 4);
  EXPECT_EQ(got, want);
  auto none = a->ListKeys("org/C", 7, "");
  ASSERT_TRUE(none.has_value());
  EXPECT_TRUE(none->keys.empty());
  EXPECT_TRUE(none->next_cursor.empty());
  EXPECT_FALSE(a->ListKeys("org/A", 7, "garbage").has_value());
  EXPECT_FALSE(a->ListKeys("org/A", 7, keys.back().ToString()).has_value());  // other model
  a->Close();
}

TEST_P(FsAdapterTest, StatusJsonReportsTheAdapter) {
  auto a = Make();
  StoreAll(a.get(), {MakeKey(1)}, {MakePayload(1, 10)});
  nlohmann::json j = a->StatusJson();
  EXPECT_EQ(j["type"], "fs");
  EXPECT_EQ(j["healthy"], true);
  EXPECT_EQ(j["counters"]["corrupt_records"], 0);
  EXPECT_EQ(j["fs"]["base_path"], base_);
  EXPECT_EQ(j["fs"]["files"], 1);
  EXPECT_EQ(j["fs"]["io_engine"], std::string(a->io_engine_name()));
  EXPECT_EQ(j["fs"]["use_odirect"], GetParam().odirect);
  EXPECT_EQ(j["fs"]["odirect_error"], "");
  a->Close();
  EXPECT_EQ(a->StatusJson()["healthy"], false);
}

// ---- Atomic publish and crash consistency -----------------------------------------------------

// While a store is held just before its rename (and, separately, inside its payload write),
// readers see nothing: no final file, lookups and loads miss. Released, the key appears whole.
TEST_P(FsAdapterTest, ReadersNeverSeeAnUnpublishedRecord) {
  for (FsIoOpKind blocked : {FsIoOpKind::kWritev, FsIoOpKind::kRename}) {
    SCOPED_TRACE(FsIoOpKindName(blocked));
    std::filesystem::remove_all(base_);
    Gate gate;
    std::atomic<bool> armed{true};
    auto o = Options();
    InstallHook(&o, [&](FsIoOp* op) -> std::optional<int64_t> {
      if (op->kind == blocked && (blocked != FsIoOpKind::kWritev || op->offset > 0) &&
          armed.exchange(false)) {
        gate.Pass();
      }
      return std::nullopt;
    });
    auto a = Make(o);
    ObjectKey key = MakeKey(7);
    std::vector<uint8_t> payload = MakePayload(7, 300000);
    std::span<const uint8_t> obj(payload);
    Waiter waiter(a.get());
    TaskId task = a->SubmitStore(std::span(&key, 1), std::span(&obj, 1));
    gate.AwaitArrivals(1);

    EXPECT_FALSE(std::filesystem::exists(PathOf(key)));
    EXPECT_EQ(LookupSync(a.get(), std::span(&key, 1)).ToString(), "0");
    AlignedBuffer buf(payload.size());
    std::span<uint8_t> target = buf.span();
    EXPECT_EQ(LoadSync(a.get(), std::span(&key, 1), std::span(&target, 1)).ToString(), "0");
    EXPECT_EQ(fs_testing::CountFiles(base_ + "/tmp"), 1u);
    EXPECT_EQ(a->Delete(std::span(&key, 1))->ToString(), "0");

    gate.Open();
    StoreResult r = waiter.Store(task);
    ASSERT_TRUE(r.status.ok()) << r.status.ToString();
    EXPECT_EQ(fs_testing::CountFiles(base_ + "/tmp"), 0u);
    EXPECT_EQ(LoadSync(a.get(), std::span(&key, 1), std::span(&target, 1)).ToString(), "1");
    EXPECT_TRUE(std::equal(payload.begin(), payload.end(), buf.data()));
    a->SubmitUnlock(std::span(&key, 1));
    a->Close();
  }
}

// A crash between the write and the rename leaves a temp file and no record; recovery removes
// the temp file and the key stays absent.
TEST_P(FsAdapterTest, CrashBeforeRenameLeavesOnlyATempFileThatRecoveryRemoves) {
  auto o = Options();
  // "Crash": the rename never happens, and neither does the cleanup a live process would do.
  InstallHook(&o, [](FsIoOp* op) -> std::optional<int64_t> {
    if (op->kind == FsIoOpKind::kRename) return -EIO;
    if (op->kind == FsIoOpKind::kUnlink) return 0;
    return std::nullopt;
  });
  auto a = Make(o);
  ObjectKey key = MakeKey(3);
  std::vector<uint8_t> payload = MakePayload(3, 50000);
  std::span<const uint8_t> obj(payload);
  StoreResult r = StoreSync(a.get(), std::span(&key, 1), std::span(&obj, 1));
  EXPECT_FALSE(r.status.ok());
  EXPECT_EQ(fs_testing::CountFiles(base_ + "/tmp"), 1u);
  EXPECT_FALSE(std::filesystem::exists(PathOf(key)));
  EXPECT_EQ(a->Usage().used_bytes, 0u);
  a->Close();
  a.reset();

  // Another stray temp file, as if from an older crash.
  fs_testing::WriteFile(base_ + "/tmp/12345-1-1.tmp", "partial");
  auto b = Make();
  EXPECT_EQ(b->recovery_stats().removed_temp_files, 2u);
  EXPECT_EQ(b->recovery_stats().keys, 0u);
  EXPECT_EQ(fs_testing::CountFiles(base_ + "/tmp"), 0u);
  EXPECT_EQ(LookupSync(b.get(), std::span(&key, 1)).ToString(), "0");
  b->Close();
}

enum class Damage {
  kTruncateInHeader,
  kTruncateAtPayload,
  kTruncateInPayload,
  kFlipMagic,
  kFlipHeaderKey,
  kFlipHeaderChecksum,
  kFlipPayload,
  kWrongKey,
  kWrongLength,  // a valid record of this key with another size (load only: it is consistent)
  kAppend,       // file longer than its header says (recovery only: a load reads what it needs)
};

constexpr Damage kAllDamage[] = {Damage::kTruncateInHeader,  Damage::kTruncateAtPayload,
                                 Damage::kTruncateInPayload, Damage::kFlipMagic,
                                 Damage::kFlipHeaderKey,     Damage::kFlipHeaderChecksum,
                                 Damage::kFlipPayload,       Damage::kWrongKey,
                                 Damage::kWrongLength,       Damage::kAppend};

void Inflict(Damage d, const std::string& path, const ObjectKey& key, size_t size) {
  std::string bytes = fs_testing::ReadFile(path);
  ASSERT_EQ(bytes.size(), kFsRecordHeaderSize + size);
  auto record = [](const ObjectKey& k, size_t n) {
    auto r = *EncodeFsRecord(k.ToString(), MakePayload(5, n));
    return std::string(r.begin(), r.end());
  };
  switch (d) {
    case Damage::kTruncateInHeader:
      bytes.resize(100);
      break;
    case Damage::kTruncateAtPayload:
      bytes.resize(kFsRecordHeaderSize);
      break;
    case Damage::kTruncateInPayload:
      bytes.resize(kFsRecordHeaderSize + size / 2);
      break;
    case Damage::kFlipMagic:
      bytes[0] ^= 0x20;
      break;
    case Damage::kFlipHeaderKey:
      bytes[45] ^= 0x01;
      break;
    case Damage::kFlipHeaderChecksum:
      bytes[kFsRecordHeaderSize - 3] ^= 0x80;
      break;
    case Damage::kFlipPayload:
      bytes[kFsRecordHeaderSize + size / 3] ^= 0x04;
      break;
    case Damage::kWrongKey:
      bytes = record(MakeKey(4242), size);
      break;
    case Damage::kWrongLength:
      bytes = record(key, size + 4096);
      break;
    case Damage::kAppend:
      bytes += "trailing garbage";
      break;
  }
  fs_testing::WriteFile(path, bytes);
}

TEST_P(FsAdapterTest, DamagedRecordsAreMissesAtLoadCountedAndRemoved) {
  RecordingListener listener;
  auto a = Make(Options(), &listener);
  const size_t size = (2 << 20) + 123;  // several read chunks, an unaligned tail
  uint64_t expected_corrupt = 0;
  for (Damage d : kAllDamage) {
    if (d == Damage::kAppend) continue;
    SCOPED_TRACE(static_cast<int>(d));
    ObjectKey key = MakeKey(1000 + static_cast<int>(d));
    ObjectKey intact = MakeKey(2000 + static_cast<int>(d));
    StoreAll(a.get(), {key, intact}, {MakePayload(1, size), MakePayload(2, size)});
    uint64_t used = a->Usage().used_bytes;
    Inflict(d, PathOf(key), key, size);
    // Locked keys are removed too: their bytes are useless.
    EXPECT_EQ(LookupSync(a.get(), std::span(&key, 1)).ToString(), "1");

    AlignedBuffer b1(size), b2(size);
    std::vector<ObjectKey> keys = {key, intact};
    std::vector<std::span<uint8_t>> bufs = {b1.span(), b2.span()};
    EXPECT_EQ(LoadSync(a.get(), keys, bufs).ToString(), "01");
    auto p = MakePayload(2, size);
    EXPECT_TRUE(std::equal(p.begin(), p.end(), b2.data()));
    EXPECT_EQ(a->corrupt_records(), ++expected_corrupt);
    EXPECT_FALSE(std::filesystem::exists(PathOf(key)));
    EXPECT_EQ(a->Usage().used_bytes, used - size);
    EXPECT_EQ(listener.DeletedCount(key), 1u);
    EXPECT_EQ(LookupSync(a.get(), std::span(&key, 1)).ToString(), "0");
    a->SubmitUnlock(std::span(&key, 1));
    a->SubmitUnlock(std::span(&key, 1));
  }
  EXPECT_EQ(a->StatusJson()["counters"]["corrupt_records"], expected_corrupt);
  EXPECT_EQ(a->LockedKeyCount(), 0u);
  a->Close();
}

// Recovery reads headers, not payloads: everything but a payload flip (found at the first load)
// and a consistent record of another size (a valid record) is removed at start.
TEST_P(FsAdapterTest, DamagedRecordsAreRemovedByRecovery) {
  const size_t size = 2 * 4096 + 7;
  std::vector<ObjectKey> damaged, intact;
  std::optional<ObjectKey> payload_flipped;
  {
    auto a = Make();
    for (Damage d : kAllDamage) {
      if (d == Damage::kWrongLength) continue;
      damaged.push_back(MakeKey(100 + static_cast<int>(d)));
      intact.push_back(MakeKey(200 + static_cast<int>(d)));
      StoreAll(a.get(), {damaged.back(), intact.back()},
               {MakePayload(1, size), MakePayload(2, size)});
    }
    a->Close();
  }
  size_t i = 0;
  for (Damage d : kAllDamage) {
    if (d == Damage::kWrongLength) continue;
    Inflict(d, PathOf(damaged[i]), damaged[i], size);
    if (d == Damage::kFlipPayload) payload_flipped = damaged[i];
    ++i;
  }
  auto b = Make();
  EXPECT_EQ(b->recovery_stats().removed_corrupt_files, damaged.size() - 1);
  EXPECT_EQ(b->recovery_stats().keys, intact.size() + 1);
  EXPECT_EQ(b->Usage().used_bytes, (intact.size() + 1) * size);
  for (const ObjectKey& k : damaged) {
    EXPECT_EQ(std::filesystem::exists(PathOf(k)), k == *payload_flipped) << k.ToString();
  }
  EXPECT_TRUE(LookupSync(b.get(), intact).All());
  b->SubmitUnlock(intact);
  // The payload flip: found by the load, never served, removed.
  AlignedBuffer buf(size);
  std::span<uint8_t> target = buf.span();
  EXPECT_EQ(LoadSync(b.get(), std::span(&*payload_flipped, 1), std::span(&target, 1)).ToString(),
            "0");
  EXPECT_EQ(b->corrupt_records(), 1u);
  EXPECT_TRUE(LookupSync(b.get(), damaged).None());
  EXPECT_EQ(b->Usage().used_bytes, intact.size() * size);
  b->Close();
}

TEST_P(FsAdapterTest, ARecordDeletedBehindTheAdaptersBackIsAMiss) {
  auto a = Make();
  ObjectKey key = MakeKey(5);
  StoreAll(a.get(), {key}, {MakePayload(5, 1000)});
  std::filesystem::remove(PathOf(key));
  AlignedBuffer buf(1000);
  std::span<uint8_t> target = buf.span();
  EXPECT_EQ(LoadSync(a.get(), std::span(&key, 1), std::span(&target, 1)).ToString(), "0");
  EXPECT_EQ(a->Usage().used_bytes, 0u);
  EXPECT_EQ(a->StatusJson()["fs"]["missing_records"], 1);
  EXPECT_EQ(LookupSync(a.get(), std::span(&key, 1)).ToString(), "0");
  a->Close();
}

// ---- Recovery
// ------------------------------------------------------------------------------------

TEST_P(FsAdapterTest, RecoveryFindsEveryKeyWithExactSizesAndServesItsBytes) {
  std::vector<ObjectKey> keys;
  std::vector<std::vector<uint8_t>> payloads;
  uint64_t total = 0;
  std::map<std::string, uint64_t> by_salt;
  std::string long_model(250, 'L');
  long_model[3] = '/';
  for (int i = 0; i < 40; ++i) {
    std::string salt = i % 3 == 0 ? "" : fmt::format("tenant{}", i % 3);
    std::string model = i == 39 ? long_model : (i % 2 ? "meta-llama/Llama-3.1-8B" : "m");
    keys.push_back(MakeKey(i, model, salt, keys::KvRank{2, uint16_t(i % 2)}, i % 5));
    payloads.push_back(MakePayload(i, 1000 * i + i));
    total += payloads.back().size();
    by_salt[salt] += payloads.back().size();
  }
  {
    auto a = Make();
    StoreAll(a.get(), keys, payloads);
    a->Close();
  }
  // Files that are not ours are left alone and counted.
  fs_testing::WriteFile(base_ + "/README", "hello");
  fs_testing::WriteFile(base_ + "/ab/notes.txt", "x");
  fs_testing::WriteFile(base_ + "/ab/not%zz-a-key.kv", "x");

  RecordingListener listener;  // attached before Start: it hears of every recovered key
  auto b = Make(Options(), &listener);
  EXPECT_EQ(b->recovery_stats().keys, keys.size());
  EXPECT_EQ(b->recovery_stats().bytes, total);
  EXPECT_EQ(b->recovery_stats().ignored_files, 3u);
  EXPECT_EQ(b->recovery_stats().removed_corrupt_files, 0u);
  EXPECT_TRUE(std::filesystem::exists(base_ + "/ab/notes.txt"));
  AdapterUsage u = b->Usage();
  EXPECT_EQ(u.used_bytes, total);
  for (const auto& [salt, bytes] : by_salt) EXPECT_EQ(u.bytes_by_cache_salt[salt], bytes) << salt;

  auto stored = listener.Stored();
  ASSERT_EQ(stored.size(), keys.size());
  for (size_t i = 0; i < keys.size(); ++i) {
    EXPECT_EQ(stored[keys[i].ToString()], payloads[i].size());
  }

  EXPECT_TRUE(LookupSync(b.get(), keys).All());
  std::vector<std::unique_ptr<AlignedBuffer>> targets;
  std::vector<std::span<uint8_t>> bufs;
  for (const auto& p : payloads) {
    targets.push_back(std::make_unique<AlignedBuffer>(p.size()));
    bufs.push_back(targets.back()->span());
  }
  EXPECT_TRUE(LoadSync(b.get(), keys, bufs).All());
  for (size_t i = 0; i < keys.size(); ++i) {
    EXPECT_TRUE(std::equal(payloads[i].begin(), payloads[i].end(), targets[i]->data())) << i;
  }
  b->SubmitUnlock(keys);
  b->Close();
}

TEST_P(FsAdapterTest, WithoutRecoveryOldRecordsAreInvisible) {
  {
    auto a = Make();
    StoreAll(a.get(), {MakeKey(1)}, {MakePayload(1, 100)});
    a->Close();
  }
  ObjectKey key = MakeKey(1);
  {
    // Never started: no recovery scan.
    auto unstarted = FsAdapter::Create(Options(), "unstarted");
    ASSERT_TRUE(unstarted.has_value());
    EXPECT_EQ((*unstarted)->Usage().used_bytes, 0u);
    EXPECT_EQ(LookupSync(unstarted->get(), std::span(&key, 1)).ToString(), "0");
    (*unstarted)->Close();
  }
  auto o = Options();
  o.recover_on_start = false;
  auto b = Make(o);
  EXPECT_EQ(b->Usage().used_bytes, 0u);
  EXPECT_EQ(LookupSync(b.get(), std::span(&key, 1)).ToString(), "0");
  // A store of the same key replaces the old file.
  StoreAll(b.get(), {key}, {MakePayload(1, 100)});
  EXPECT_EQ(b->Usage().used_bytes, 100u);
  b->Close();
}

TEST_P(FsAdapterTest, OneAdapterPerDirectory) {
  auto a = Make();
  auto second = FsAdapter::Create(Options(), "second");
  ASSERT_FALSE(second.has_value());
  EXPECT_EQ(second.error().code(), StatusCode::kFailedPrecondition);
  EXPECT_NE(second.error().message().find("in use"), std::string::npos);
  a->Close();
  auto third = FsAdapter::Create(Options(), "third");
  EXPECT_TRUE(third.has_value());
}

// ---- Failures
// ------------------------------------------------------------------------------------

TEST_P(FsAdapterTest, AFailedWriteFailsTheTaskAndKeepsTheOtherKeys) {
  for (int err : {EIO, ENOSPC}) {
    SCOPED_TRACE(strerror(err));
    std::filesystem::remove_all(base_);
    auto o = Options();
    const size_t bad_size = 5 * 4096;
    InstallHook(&o, [&](FsIoOp* op) -> std::optional<int64_t> {
      if (op->kind == FsIoOpKind::kWritev && op->offset > 0 && op->TotalLength() == bad_size) {
        return -err;
      }
      return std::nullopt;
    });
    auto a = Make(o);
    std::vector<ObjectKey> keys = {MakeKey(1), MakeKey(2), MakeKey(3)};
    StoreResult r;
    {
      auto p = std::vector<std::vector<uint8_t>>{MakePayload(1, 100), MakePayload(2, bad_size),
                                                 MakePayload(3, 300)};
      std::vector<std::span<const uint8_t>> objs(p.begin(), p.end());
      r = StoreSync(a.get(), keys, objs);
    }
    ASSERT_FALSE(r.status.ok());
    EXPECT_EQ(r.status.code(), StatusCode::kIOError);
    EXPECT_EQ(r.status.retryable(), err == ENOSPC);
    EXPECT_EQ(r.bytes_written, 400u);  // the keys it did store
    EXPECT_NE(r.status.message().find(keys[1].ToString()), std::string::npos)
        << r.status.ToString();
    EXPECT_EQ(a->Usage().used_bytes, 400u);
    EXPECT_EQ(LookupSync(a.get(), keys).ToString(), "101");
    EXPECT_EQ(fs_testing::CountFiles(base_ + "/tmp"), 0u);
    EXPECT_EQ(fs_testing::RecordFiles(base_).size(), 2u);
    EXPECT_NE(a->StatusJson()["fs"]["last_error"].get<std::string>(), "");
    a->SubmitUnlock(keys);
    a->Close();
  }
}

TEST_P(FsAdapterTest, CancelTakesQueuedTasksOnly) {
  Gate gate;
  std::atomic<bool> armed{true};
  auto o = Options();
  o.io_threads = 1;
  InstallHook(&o, [&](FsIoOp* op) -> std::optional<int64_t> {
    if (op->kind == FsIoOpKind::kOpen && armed.exchange(false)) gate.Pass();
    return std::nullopt;
  });
  auto a = Make(o);
  Waiter waiter(a.get());
  std::vector<uint8_t> p = MakePayload(1, 1000);
  std::span<const uint8_t> obj(p);
  ObjectKey k1 = MakeKey(1), k2 = MakeKey(2);
  TaskId t1 = a->SubmitStore(std::span(&k1, 1), std::span(&obj, 1));
  gate.AwaitArrivals(1);  // t1 is running, held in its first open
  TaskId t2 = a->SubmitStore(std::span(&k2, 1), std::span(&obj, 1));
  AlignedBuffer buf(1000);
  std::span<uint8_t> target = buf.span();
  TaskId t3 = a->SubmitLoad(std::span(&k1, 1), std::span(&target, 1));
  TaskId t4 = a->SubmitLoad(std::span(&k1, 1), std::span(&target, 1));
  EXPECT_FALSE(a->Cancel(t1));  // its I/O started
  EXPECT_TRUE(a->Cancel(t2));
  EXPECT_TRUE(a->Cancel(t3));
  gate.Open();
  EXPECT_TRUE(waiter.Store(t1).status.ok());
  EXPECT_EQ(waiter.Load(t4).ToString(), "1");  // runs after t2's and t3's slots
  EXPECT_TRUE(waiter.pending_stores().empty());
  EXPECT_FALSE(a->QueryLoadResult(t3).has_value());
  EXPECT_TRUE(a->Cancel(t1));  // finished
  AdapterCounters c = a->Counters();
  EXPECT_EQ(c.cancelled_tasks, 2u);
  EXPECT_EQ(c.in_flight_tasks, 0u);
  EXPECT_EQ(LookupSync(a.get(), std::span(&k2, 1)).ToString(), "0");
  a->Close();
}

TEST_P(FsAdapterTest, CloseReportsEveryTaskOnceAndLeavesNoTempFiles) {
  auto a = Make();
  std::vector<std::vector<uint8_t>> payloads;
  std::vector<ObjectKey> keys;
  for (int i = 0; i < 64; ++i) {
    keys.push_back(MakeKey(i));
    payloads.push_back(MakePayload(i, 64 * 1024));
  }
  std::vector<std::span<const uint8_t>> objs(payloads.begin(), payloads.end());
  std::vector<TaskId> tasks;
  for (int i = 0; i < 64; i += 4) {
    tasks.push_back(a->SubmitStore(std::span(keys).subspan(i, 4), std::span(objs).subspan(i, 4)));
  }
  a->Close();
  std::map<TaskId, int> seen;
  for (const StoreResult& r : a->PopCompletedStores()) ++seen[r.task];
  for (TaskId t : tasks) EXPECT_EQ(seen[t], 1) << t;
  EXPECT_EQ(a->Counters().in_flight_tasks, 0u);
  EXPECT_EQ(fs_testing::CountFiles(base_ + "/tmp"), 0u);
  // What was stored is consistent on disk.
  auto files = fs_testing::RecordFiles(base_);
  EXPECT_EQ(files.size(), a->StoredKeys().size());
  EXPECT_EQ(a->Usage().used_bytes, files.size() * 64 * 1024);
}

INSTANTIATE_TEST_SUITE_P(Variants, FsAdapterTest,
                         ::testing::Values(Variant{FsIoEngineKind::kPread, false},
                                           Variant{FsIoEngineKind::kIoUring, false},
                                           Variant{FsIoEngineKind::kPread, true},
                                           Variant{FsIoEngineKind::kIoUring, true}),
                         VariantName);

// ---- Engines and O_DIRECT
// ------------------------------------------------------------------------

TEST(FsAdapterEngineTest, IoUringAndPreadWriteIdenticalFiles) {
  TempDir dir;
  std::vector<ObjectKey> keys;
  std::vector<std::vector<uint8_t>> payloads;
  for (int i = 0; i < 20; ++i) {
    keys.push_back(MakeKey(i, "org/model", i % 2 ? "s" : ""));
    payloads.push_back(MakePayload(i, 777 * i * i));
  }
  std::vector<std::string> bases;
  for (FsIoEngineKind kind : {FsIoEngineKind::kPread, FsIoEngineKind::kIoUring}) {
    FsAdapterOptions o;
    o.base_path = dir.path() + (kind == FsIoEngineKind::kPread ? "/pread" : "/uring");
    o.io_engine = kind;
    auto a = FsAdapter::Create(o, "x");
    ASSERT_TRUE(a.has_value());
    StoreAll(a->get(), keys, payloads);
    (*a)->Close();
    bases.push_back(o.base_path);
  }
  auto f0 = fs_testing::RecordFiles(bases[0]);
  ASSERT_EQ(f0, fs_testing::RecordFiles(bases[1]));
  ASSERT_EQ(f0.size(), keys.size());
  for (const auto& [rel, size] : f0) {
    EXPECT_EQ(fs_testing::ReadFile(bases[0] + "/" + rel),
              fs_testing::ReadFile(bases[1] + "/" + rel))
        << rel;
  }
  // Each engine reads what the other wrote.
  for (size_t i = 0; i < 2; ++i) {
    FsAdapterOptions o;
    o.base_path = bases[1 - i];
    o.io_engine = i == 0 ? FsIoEngineKind::kPread : FsIoEngineKind::kIoUring;
    auto a = FsAdapter::Create(o, "x");
    ASSERT_TRUE(a.has_value());
    ASSERT_TRUE((*a)->Start().ok());
    EXPECT_EQ((*a)->recovery_stats().keys, keys.size());
    std::vector<std::unique_ptr<AlignedBuffer>> targets;
    std::vector<std::span<uint8_t>> bufs;
    for (const auto& p : payloads) {
      targets.push_back(std::make_unique<AlignedBuffer>(p.size()));
      bufs.push_back(targets.back()->span());
    }
    EXPECT_TRUE(LoadSync(a->get(), keys, bufs).All());
    for (size_t k = 0; k < keys.size(); ++k) {
      EXPECT_TRUE(std::equal(payloads[k].begin(), payloads[k].end(), targets[k]->data()));
    }
    (*a)->Close();
  }
}

TEST(FsAdapterODirectTest, TmpfsRefusingODirectFailsCreationClearly) {
  if (!fs_testing::IsTmpfs("/dev/shm")) GTEST_SKIP() << "/dev/shm is not tmpfs here";
  if (fs_testing::SupportsODirect("/dev/shm")) {
    GTEST_SKIP() << "tmpfs accepts O_DIRECT on this kernel (Linux >= 6.6)";
  }
  TempDir dir("/dev/shm");
  FsAdapterOptions o;
  o.base_path = dir.path();
  o.use_odirect = true;
  auto a = FsAdapter::Create(o, "shm");
  ASSERT_FALSE(a.has_value());
  EXPECT_EQ(a.error().code(), StatusCode::kInvalidArgument);
  EXPECT_NE(a.error().message().find("O_DIRECT"), std::string::npos) << a.error().ToString();
  EXPECT_NE(a.error().message().find("tmpfs"), std::string::npos) << a.error().ToString();
}

// A filesystem that starts refusing O_DIRECT after creation (injected EINVAL at open): the
// failure shows in the task status and the status JSON, and the adapter turns unhealthy.
TEST(FsAdapterODirectTest, ODirectOpenFailureIsReportedNotDowngraded) {
  std::string parent = fs_testing::ODirectCapableParent();
  if (parent.empty()) GTEST_SKIP() << "no filesystem supporting O_DIRECT here";
  TempDir dir(parent);
  for (FsIoEngineKind kind : {FsIoEngineKind::kPread, FsIoEngineKind::kIoUring}) {
    FsAdapterOptions o;
    o.base_path = dir.path() + (kind == FsIoEngineKind::kPread ? "/p" : "/u");
    o.use_odirect = true;
    o.io_engine = kind;
    std::atomic<int> plain_opens{0};
    InstallHook(&o, [&](FsIoOp* op) -> std::optional<int64_t> {
      if (op->kind != FsIoOpKind::kOpen) return std::nullopt;
      if (op->flags & O_DIRECT) return -EINVAL;
      ++plain_opens;
      return std::nullopt;
    });
    auto a = FsAdapter::Create(o, "od");
    ASSERT_TRUE(a.has_value()) << a.error().ToString();
    ObjectKey key = MakeKey(1);
    std::vector<uint8_t> p = MakePayload(1, 8192);
    std::span<const uint8_t> obj(p);
    StoreResult r = StoreSync(a->get(), std::span(&key, 1), std::span(&obj, 1));
    ASSERT_FALSE(r.status.ok());
    EXPECT_NE(r.status.message().find("O_DIRECT"), std::string::npos) << r.status.ToString();
    EXPECT_EQ(plain_opens.load(), 0);  // never retried without O_DIRECT
    nlohmann::json j = (*a)->StatusJson();
    EXPECT_NE(j["fs"]["odirect_error"].get<std::string>().find("O_DIRECT"), std::string::npos);
    EXPECT_FALSE((*a)->healthy());
    (*a)->Close();
  }
}

// EINVAL from an O_DIRECT write or read (a device that wants another alignment, a filesystem
// that changed under us) means what it means at open: O_DIRECT is refused. The task fails with
// that reason, the adapter turns unhealthy with it in last_error and odirect_error, and nothing
// is retried without O_DIRECT.
TEST(FsAdapterODirectTest, ODirectTransferRefusalMarksTheAdapterUnhealthy) {
  std::string parent = fs_testing::ODirectCapableParent();
  if (parent.empty()) GTEST_SKIP() << "no filesystem supporting O_DIRECT here";
  TempDir dir(parent);
  int n = 0;
  for (FsIoEngineKind kind : {FsIoEngineKind::kPread, FsIoEngineKind::kIoUring}) {
    for (FsIoOpKind refused : {FsIoOpKind::kWritev, FsIoOpKind::kReadv}) {
      SCOPED_TRACE(fmt::format("{} {}", kind == FsIoEngineKind::kPread ? "pread" : "io_uring",
                               FsIoOpKindName(refused)));
      FsAdapterOptions o;
      o.base_path = fmt::format("{}/{}", dir.path(), n++);
      o.use_odirect = true;
      o.io_engine = kind;
      std::atomic<bool> refuse{false};
      std::atomic<int> buffered_transfers{0};
      InstallHook(&o, [&](FsIoOp* op) -> std::optional<int64_t> {
        if (op->kind != FsIoOpKind::kReadv && op->kind != FsIoOpKind::kWritev) return std::nullopt;
        if (!op->direct) ++buffered_transfers;
        if (op->kind == refused && refuse.load()) return -EINVAL;
        return std::nullopt;
      });
      auto a = FsAdapter::Create(o, "od");
      ASSERT_TRUE(a.has_value()) << a.error().ToString();
      std::vector<ObjectKey> keys = {MakeKey(1), MakeKey(2)};
      std::vector<uint8_t> p = MakePayload(1, 8192);
      std::vector<std::span<const uint8_t>> objs = {p, p};
      if (refused == FsIoOpKind::kReadv) {
        ASSERT_TRUE(
            StoreSync(a->get(), std::span(keys).first(1), std::span(objs).first(1)).status.ok());
      }
      ASSERT_TRUE((*a)->healthy());
      refuse = true;
      if (refused == FsIoOpKind::kWritev) {
        StoreResult r = StoreSync(a->get(), std::span(keys).subspan(1), std::span(objs).subspan(1));
        ASSERT_FALSE(r.status.ok());
        EXPECT_NE(r.status.message().find("O_DIRECT"), std::string::npos) << r.status.ToString();
      } else {
        AlignedBuffer buffer(8192);
        std::span<uint8_t> dst = buffer.span();
        EXPECT_EQ(LoadSync(a->get(), std::span(keys).first(1), std::span(&dst, 1)).ToString(), "0");
        EXPECT_EQ((*a)->StoredKeys().size(), 1u);  // a refusal is not a damaged record
      }
      EXPECT_FALSE((*a)->healthy());
      nlohmann::json j = (*a)->StatusJson();
      const std::string what = FsIoOpKindName(refused) == std::string("read") ? "read " : "write ";
      for (const char* field : {"last_error", "odirect_error"}) {
        std::string e = j["fs"][field];
        EXPECT_NE(e.find(what), std::string::npos) << field << ": " << e;
        EXPECT_NE(e.find("refuses O_DIRECT"), std::string::npos) << field << ": " << e;
      }
      EXPECT_EQ(buffered_transfers.load(), 0);  // never downgraded
      (*a)->Close();
    }
  }
}

// An io_uring submission failing for good in the middle of a store fails that store with an
// IOError and turns the adapter unhealthy with the reason; the process lives on, and so does
// the adapter (that thread continues with blocking I/O).
TEST(FsAdapterEngineTest, IoUringSubmitFailureFailsTheTaskNotTheProcess) {
  if (!MakeUringFsIoEngine(4).has_value()) GTEST_SKIP() << "io_uring unavailable here";
  TempDir dir;
  FsAdapterOptions o;
  o.base_path = dir.path();
  o.io_engine = FsIoEngineKind::kIoUring;
  o.io_threads = 1;
  std::atomic<int> fail_next{0};
  o.wrap_engine = [&](std::unique_ptr<FsIoEngine>) {
    return MakeUringFsIoEngine(8, 1 << 20, [&](unsigned) { return fail_next.exchange(0); }).value();
  };
  auto a = FsAdapter::Create(o, "ring");
  ASSERT_TRUE(a.has_value()) << a.error().ToString();
  std::vector<ObjectKey> keys = {MakeKey(1), MakeKey(2)};
  std::vector<uint8_t> p = MakePayload(1, 10000);
  std::vector<std::span<const uint8_t>> objs = {p, p};

  fail_next = -EFAULT;
  StoreResult r = StoreSync(a->get(), std::span(keys).first(1), std::span(objs).first(1));
  ASSERT_FALSE(r.status.ok());
  EXPECT_EQ(r.status.code(), StatusCode::kIOError) << r.status.ToString();
  EXPECT_FALSE((*a)->healthy());
  nlohmann::json j = (*a)->StatusJson();
  for (const char* field : {"io_engine_error", "last_error"}) {
    std::string e = j["fs"][field];
    EXPECT_NE(e.find("io_uring_submit_and_wait failed: Bad address"), std::string::npos)
        << field << ": " << e;
  }
  EXPECT_EQ(fs_testing::CountFiles(dir.path() + "/tmp"), 0u);
  EXPECT_EQ(LookupSync(a->get(), std::span(keys).first(1)).ToString(), "0");

  // Later tasks work.
  r = StoreSync(a->get(), std::span(keys).subspan(1), std::span(objs).subspan(1));
  ASSERT_TRUE(r.status.ok()) << r.status.ToString();
  std::vector<uint8_t> back(p.size());
  std::span<uint8_t> dst(back);
  EXPECT_EQ(LoadSync(a->get(), std::span(keys).subspan(1), std::span(&dst, 1)).ToString(), "1");
  EXPECT_EQ(back, p);
  (*a)->Close();
}

TEST(FsAdapterODirectTest, UnalignedObjectsAreBounced) {
  std::string parent = fs_testing::ODirectCapableParent();
  if (parent.empty()) GTEST_SKIP() << "no filesystem supporting O_DIRECT here";
  TempDir dir(parent);
  FsAdapterOptions o;
  o.base_path = dir.path();
  o.use_odirect = true;
  auto a = FsAdapter::Create(o, "od");
  ASSERT_TRUE(a.has_value()) << a.error().ToString();
  ObjectKey key = MakeKey(1);
  AlignedBuffer src(10000, 3);
  auto p = MakePayload(1, 10000);
  std::copy(p.begin(), p.end(), src.data());
  std::span<const uint8_t> obj(src.data(), src.size());
  ASSERT_TRUE(StoreSync(a->get(), std::span(&key, 1), std::span(&obj, 1)).status.ok());
  AlignedBuffer dst(10000, 5);
  std::span<uint8_t> target = dst.span();
  EXPECT_EQ(LoadSync(a->get(), std::span(&key, 1), std::span(&target, 1)).ToString(), "1");
  EXPECT_TRUE(std::equal(p.begin(), p.end(), dst.data()));
  EXPECT_EQ((*a)->StatusJson()["fs"]["bounced_objects"], 2);
  (*a)->Close();
}

}  // namespace
}  // namespace kvtier::l2

// ---- The L2 adapter conformance suite, over both engines, buffered and O_DIRECT ---------------

namespace kvtier::l2::testing {
namespace {

// The directories of the adapters the suite makes (it may hold two at once), removed at exit.
std::vector<std::unique_ptr<fs_testing::TempDir>>& SuiteDirs() {
  static std::vector<std::unique_ptr<fs_testing::TempDir>> dirs;
  return dirs;
}

std::unique_ptr<L2Adapter> MakeFsForConformance(FsIoEngineKind engine, bool odirect) {
  std::string parent = odirect ? fs_testing::ODirectCapableParent() : "";
  auto& dir = SuiteDirs().emplace_back(std::make_unique<fs_testing::TempDir>(parent));
  FsAdapterOptions o;
  o.base_path = dir->path();
  o.io_engine = engine;
  o.use_odirect = odirect;
  auto a = FsAdapter::Create(o, "fs-conformance");
  if (!a) {
    ADD_FAILURE() << a.error().ToString();
    return nullptr;
  }
  return std::move(*a);
}

std::vector<AdapterCase> FsCases() {
  std::vector<AdapterCase> cases = {
      {"fs_pread", [] { return MakeFsForConformance(FsIoEngineKind::kPread, false); }},
      {"fs_io_uring", [] { return MakeFsForConformance(FsIoEngineKind::kIoUring, false); }},
  };
  if (!fs_testing::ODirectCapableParent().empty()) {
    cases.push_back(
        {"fs_pread_odirect", [] { return MakeFsForConformance(FsIoEngineKind::kPread, true); }});
    cases.push_back({"fs_io_uring_odirect",
                     [] { return MakeFsForConformance(FsIoEngineKind::kIoUring, true); }});
  }
  return cases;
}

}  // namespace

INSTANTIATE_TEST_SUITE_P(Fs, AdapterConformanceTest, ::testing::ValuesIn(FsCases()),
                         AdapterCaseName);

}  // namespace kvtier::l2::testing
