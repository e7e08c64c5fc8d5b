// Test-only: a POSIX shared-memory segment standing in for an engine's KV cache.
#pragma once

#include <atomic>
#include <cstdint>
#include <cstring>
#include <memory>
#include <random>
#include <span>
#include <string>

#include <fcntl.h>
#include <fmt/format.h>
#include <sys/mman.h>
#include <unistd.h>

#include "kvtier/common/check.h"

namespace kvtier::transfer::testing {

class TestShm {
 public:
  // Creates (exclusively) and maps a zeroed segment of `size` bytes under a fresh name.
  explicit TestShm(uint64_t size) : size_(size) {
    static std::atomic<uint64_t> counter{0};
    name_ = fmt::format("/kvt_xfer_test_{}_{}", getpid(), counter.fetch_add(1));
    const int fd = shm_open(name_.c_str(), O_CREAT | O_EXCL | O_RDWR, 0600);
    KVT_CHECK_MSG(fd >= 0, "shm_open {}: {}", name_, std::strerror(errno));
    KVT_CHECK(ftruncate(fd, static_cast<off_t>(size)) == 0);
    void* p = mmap(nullptr, size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    KVT_CHECK(p != MAP_FAILED);
    close(fd);
    data_ = static_cast<uint8_t*>(p);
  }
  ~TestShm() {
    munmap(data_, size_);
    Unlink();
  }
  TestShm(const TestShm&) = delete;
  TestShm& operator=(const TestShm&) = delete;

  // Removes the name (the mappings stay); idempotent.
  void Unlink() {
    if (!unlinked_) shm_unlink(name_.c_str());
    unlinked_ = true;
  }

  const std::string& name() const { return name_; }
  uint64_t size() const { return size_; }
  uint8_t* data() { return data_; }
  std::span<uint8_t> bytes() { return {data_, size_}; }

  // A seeded pseudo-random pattern (every byte distinct-ish, so misplaced bytes show).
  void Fill(uint64_t seed) {
    std::mt19937_64 rng(seed);
    uint64_t i = 0;
    for (; i + 8 <= size_; i += 8) {
      const uint64_t v = rng();
      std::memcpy(data_ + i, &v, 8);
    }
    for (; i < size_; ++i) data_[i] = static_cast<uint8_t>(rng());
  }

 private:
  std::string name_;
  uint64_t size_;
  uint8_t* data_ = nullptr;
  bool unlinked_ = false;
};

}  // namespace kvtier::transfer::testing
