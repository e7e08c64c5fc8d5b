// HostPool's CUDA registration (label `gpu`; skipped where no device is visible).
#include <cstring>

#include <cuda_runtime_api.h>
#include <gtest/gtest.h>

#include "kvtier/memory/host_pool.h"

namespace kvtier::memory {
namespace {

bool HaveDevice() {
  int devices = 0;
  if (cudaGetDeviceCount(&devices) != cudaSuccess) {
    cudaGetLastError();
    return false;
  }
  return devices > 0;
}

void CheckRegisteredPool(const HostPoolOptions& options) {
  auto created = HostPool::Create(options);
  ASSERT_TRUE(created.has_value()) << created.error().ToString();
  const HostPool& pool = **created;
  ASSERT_TRUE(pool.cuda_registered());

  unsigned int flags = 0;
  ASSERT_EQ(cudaHostGetFlags(&flags, pool.data()), cudaSuccess);
  EXPECT_TRUE(flags & cudaHostRegisterPortable);
  EXPECT_TRUE(flags & cudaHostRegisterMapped);

  // A device round trip through the pinned pool.
  std::memset(pool.data(), 0x5A, pool.size() / 2);
  void* device = nullptr;
  ASSERT_EQ(cudaMalloc(&device, pool.size() / 2), cudaSuccess);
  ASSERT_EQ(cudaMemcpy(device, pool.data(), pool.size() / 2, cudaMemcpyHostToDevice), cudaSuccess);
  ASSERT_EQ(
      cudaMemcpy(pool.data() + pool.size() / 2, device, pool.size() / 2, cudaMemcpyDeviceToHost),
      cudaSuccess);
  ASSERT_EQ(cudaFree(device), cudaSuccess);
  EXPECT_EQ(std::memcmp(pool.data(), pool.data() + pool.size() / 2, pool.size() / 2), 0);
}

TEST(HostPoolCudaTest, RegistersAnonymousAndShmPools) {
  if (!HaveDevice()) GTEST_SKIP() << "no CUDA device";
  HostPoolOptions options;
  options.size_bytes = 8 << 20;
  CheckRegisteredPool(options);
  options.shm_name = "kvtier_cuda_test";
  CheckRegisteredPool(options);
}

TEST(HostPoolCudaTest, UnregisteredWhenNotAsked) {
  if (!HaveDevice()) GTEST_SKIP() << "no CUDA device";
  HostPoolOptions options;
  options.size_bytes = 1 << 20;
  options.register_with_cuda = false;
  auto pool = HostPool::Create(options);
  ASSERT_TRUE(pool.has_value());
  EXPECT_FALSE((*pool)->cuda_registered());
  unsigned int flags = 0;
  EXPECT_NE(cudaHostGetFlags(&flags, (*pool)->data()), cudaSuccess);
  cudaGetLastError();
}

}  // namespace
}  // namespace kvtier::memory
