#include "kvtier/memory/host_pool.h"

#include <cerrno>
#include <cstring>
#include <string>
#include <vector>

#include <fcntl.h>
#include <gtest/gtest.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "kvtier/common/units.h"

namespace kvtier::memory {
namespace {

uint64_t PageSize() { return static_cast<uint64_t>(sysconf(_SC_PAGESIZE)); }

std::unique_ptr<HostPool> MustCreate(const HostPoolOptions& options) {
  auto pool = HostPool::Create(options);
  EXPECT_TRUE(pool.has_value()) << pool.error().ToString();
  return pool ? std::move(*pool) : nullptr;
}

// Pages of [data, data + size) that are resident.
size_t ResidentPages(const uint8_t* data, uint64_t size) {
  std::vector<unsigned char> vec(size / PageSize());
  EXPECT_EQ(mincore(const_cast<uint8_t*>(data), size, vec.data()), 0) << std::strerror(errno);
  size_t resident = 0;
  for (unsigned char v : vec) resident += v & 1;
  return resident;
}

std::string UniqueShmName(const char* tag) {
  return "kvtier_test_" + std::string(tag) + "_" + std::to_string(getpid());
}

bool ShmExists(const std::string& name) {
  const int fd = shm_open(("/" + name).c_str(), O_RDONLY, 0);
  if (fd < 0) return false;
  close(fd);
  return true;
}

TEST(HostPoolTest, AnonymousPoolIsZeroedAndWritable) {
  HostPoolOptions options;
  options.size_bytes = 3 * PageSize() + 1;
  auto pool = MustCreate(options);
  ASSERT_NE(pool, nullptr);
  ASSERT_NE(pool->data(), nullptr);
  EXPECT_EQ(pool->size(), 4 * PageSize());  // rounded up to the page size
  EXPECT_FALSE(pool->hugepages());
  EXPECT_TRUE(pool->shm_name().empty());
#ifndef KVT_WITH_CUDA
  EXPECT_FALSE(pool->cuda_registered());
#endif
  for (uint64_t i = 0; i < pool->size(); ++i) ASSERT_EQ(pool->data()[i], 0) << i;
  for (uint64_t i = 0; i < pool->size(); ++i) pool->data()[i] = static_cast<uint8_t>(i * 7);
  for (uint64_t i = 0; i < pool->size(); ++i) {
    ASSERT_EQ(pool->data()[i], static_cast<uint8_t>(i * 7));
  }
}

TEST(HostPoolTest, NoCudaRegistrationWhenNotAsked) {
  HostPoolOptions options;
  options.size_bytes = PageSize();
  options.register_with_cuda = false;
  auto pool = MustCreate(options);
  ASSERT_NE(pool, nullptr);
  EXPECT_FALSE(pool->cuda_registered());
}

TEST(HostPoolTest, PopulateMakesEveryPageResident) {
  HostPoolOptions options;
  options.size_bytes = 64 * PageSize();
  options.register_with_cuda = false;  // pinning would fault every page in
  auto lazy = MustCreate(options);
  ASSERT_NE(lazy, nullptr);
  EXPECT_EQ(ResidentPages(lazy->data(), lazy->size()), 0u);

  options.populate = true;
  auto populated = MustCreate(options);
  ASSERT_NE(populated, nullptr);
  EXPECT_EQ(ResidentPages(populated->data(), populated->size()), 64u);

  options.shm_name = UniqueShmName("populate");
  auto shm = MustCreate(options);
  ASSERT_NE(shm, nullptr);
  EXPECT_EQ(ResidentPages(shm->data(), shm->size()), 64u);
}

TEST(HostPoolTest, ShmPoolIsVisibleToASecondMappingAndUnlinkedAfterwards) {
  const std::string name = UniqueShmName("visible");
  HostPoolOptions options;
  options.size_bytes = 5 * PageSize();
  options.shm_name = name;
  auto pool = MustCreate(options);
  ASSERT_NE(pool, nullptr);
  EXPECT_EQ(pool->shm_name(), name);
  EXPECT_FALSE(pool->hugepages());
  for (uint64_t i = 0; i < pool->size(); ++i) ASSERT_EQ(pool->data()[i], 0);
  std::memcpy(pool->data() + 100, "from the pool", 14);

  // Another "process": its own shm_open and mapping of the same name.
  const int fd = shm_open(("/" + name).c_str(), O_RDWR, 0);
  ASSERT_GE(fd, 0) << std::strerror(errno);
  struct stat st;
  ASSERT_EQ(fstat(fd, &st), 0);
  EXPECT_EQ(static_cast<uint64_t>(st.st_size), pool->size());
  void* other = mmap(nullptr, pool->size(), PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
  close(fd);
  ASSERT_NE(other, MAP_FAILED) << std::strerror(errno);
  auto* bytes = static_cast<uint8_t*>(other);
  EXPECT_STREQ(reinterpret_cast<const char*>(bytes + 100), "from the pool");
  std::memcpy(bytes + pool->size() - 16, "from the peer", 14);
  EXPECT_STREQ(reinterpret_cast<const char*>(pool->data() + pool->size() - 16), "from the peer");
  munmap(other, pool->size());

  EXPECT_TRUE(ShmExists(name));
  pool.reset();
  EXPECT_FALSE(ShmExists(name));
}

TEST(HostPoolTest, ShmReplacesAStaleSegment) {
  const std::string name = UniqueShmName("stale");
  // A stale segment of another size with data in it.
  const int fd = shm_open(("/" + name).c_str(), O_CREAT | O_RDWR | O_TRUNC, 0600);
  ASSERT_GE(fd, 0) << std::strerror(errno);
  ASSERT_EQ(ftruncate(fd, static_cast<off_t>(9 * PageSize())), 0);
  ASSERT_EQ(pwrite(fd, "stale", 5, 0), 5);
  close(fd);

  HostPoolOptions options;
  options.size_bytes = 2 * PageSize();
  options.shm_name = "/" + name;  // a leading '/' is accepted
  auto pool = MustCreate(options);
  ASSERT_NE(pool, nullptr);
  EXPECT_EQ(pool->shm_name(), name);
  EXPECT_EQ(pool->size(), 2 * PageSize());
  for (uint64_t i = 0; i < pool->size(); ++i) ASSERT_EQ(pool->data()[i], 0);
  pool.reset();
  EXPECT_FALSE(ShmExists(name));
}

TEST(HostPoolTest, RejectsInvalidOptions) {
  HostPoolOptions zero;
  EXPECT_EQ(HostPool::Create(zero).error().code(), StatusCode::kInvalidArgument);

  for (const std::string& bad : {std::string("a/b"), std::string("/"), std::string("//x"),
                                 std::string("."), std::string(".."), std::string(300, 'x')}) {
    HostPoolOptions options;
    options.size_bytes = PageSize();
    options.shm_name = bad;
    auto r = HostPool::Create(options);
    ASSERT_FALSE(r.has_value()) << bad;
    EXPECT_EQ(r.error().code(), StatusCode::kInvalidArgument) << bad;
  }

  HostPoolOptions both;
  both.size_bytes = PageSize();
  both.use_hugepages = true;
  both.shm_name = UniqueShmName("both");
  auto r = HostPool::Create(both);
  ASSERT_FALSE(r.has_value());
  EXPECT_EQ(r.error().code(), StatusCode::kInvalidArgument);
  EXPECT_FALSE(ShmExists(both.shm_name));

  HostPoolOptions huge;
  huge.size_bytes = ~uint64_t{0};
  EXPECT_EQ(HostPool::Create(huge).error().code(), StatusCode::kInvalidArgument);
}

TEST(HostPoolTest, ImpossibleSizesFailAsPoolCreateFailed) {
  HostPoolOptions options;
  options.size_bytes = uint64_t{1} << 50;  // 1 PiB: more than the address space
  auto anonymous = HostPool::Create(options);
  ASSERT_FALSE(anonymous.has_value());
  EXPECT_EQ(anonymous.error().code(), StatusCode::kPoolCreateFailed);

  // More than the shm filesystem holds is refused up front, and nothing is left behind.
  options.shm_name = UniqueShmName("too_big");
  auto shm = HostPool::Create(options);
  ASSERT_FALSE(shm.has_value());
  EXPECT_EQ(shm.error().code(), StatusCode::kPoolCreateFailed);
  EXPECT_NE(shm.error().message().find("shm-size"), std::string::npos) << shm.error().ToString();
  EXPECT_FALSE(ShmExists(options.shm_name));
}

TEST(HostPoolTest, HugepagesSucceedOrSayHowToReserveThem) {
  HostPoolOptions options;
  options.size_bytes = 3 * kMiB;
  options.use_hugepages = true;
  auto pool = HostPool::Create(options);
  if (!pool.has_value()) {
    const Status& s = pool.error();
    EXPECT_EQ(s.code(), StatusCode::kPoolCreateFailed);
    EXPECT_NE(s.message().find("hugepages"), std::string::npos) << s.ToString();
    EXPECT_NE(s.message().find("/proc/sys/vm/nr_hugepages"), std::string::npos) << s.ToString();
    GTEST_SKIP() << "no 2 MiB hugepages on this machine: " << s.ToString();
  }
  EXPECT_TRUE((*pool)->hugepages());
  EXPECT_EQ((*pool)->size(), 4 * kMiB);  // rounded up to 2 MiB
  (*pool)->data()[0] = 1;
  (*pool)->data()[(*pool)->size() - 1] = 2;
  EXPECT_EQ((*pool)->data()[0] + (*pool)->data()[(*pool)->size() - 1], 3);
}

}  // namespace
}  // namespace kvtier::memory
