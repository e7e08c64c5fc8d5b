// Hostile declared sizes must be rejected before anything is allocated for them. Measured as the
// growth of the process's peak virtual size (VmPeak), so this test has a binary of its own: other
// tests' large buffers would raise the peak first and hide a regression.
#include <cstdint>
#include <fstream>
#include <string>
#include <vector>

#include <gtest/gtest.h>

#include "kvtier/protocol/codec.h"

namespace kvtier::protocol {
namespace {

// VmPeak in KiB, from /proc/self/status.
uint64_t PeakVirtualKiB() {
  std::ifstream status("/proc/self/status");
  std::string line;
  while (std::getline(status, line)) {
    if (line.rfind("VmPeak:", 0) == 0) return std::stoull(line.substr(7));
  }
  return 0;
}

std::vector<uint8_t> Bytes(std::initializer_list<int> bytes) {
  std::vector<uint8_t> out;
  for (int b : bytes) out.push_back(static_cast<uint8_t>(b));
  return out;
}

TEST(CodecAllocationTest, HugeDeclaredContainersAllocateNothing) {
  const uint64_t before = PeakVirtualKiB();
  ASSERT_GT(before, 0u) << "no VmPeak in /proc/self/status";
  // Each container declares as many elements as the decoder's own limits would let through
  // (about a million: tens of MB of msgpack objects), then ends after a few bytes.
  const std::vector<uint8_t> payloads[] = {
      // {"block_ids": array32 of 1048576 elements, then 1 element}
      Bytes({0x81, 0xa9, 'b', 'l', 'o', 'c', 'k', '_', 'i', 'd', 's', 0xdd, 0x00, 0x10, 0x00, 0x00,
             1}),
      // {"a": map32 of 524288 entries, then one}
      Bytes({0x81, 0xa1, 'a', 0xdf, 0x00, 0x08, 0x00, 0x00, 0xa1, 'b', 1}),
      // {"key": {"tokens": bin32 of 2^32 - 4 bytes}} with 4 bytes present
      Bytes({0x81, 0xa3, 'k',  'e',  'y',  0x81, 0xa6, 't', 'o', 'k', 'e',
             'n',  's',  0xc6, 0xff, 0xff, 0xff, 0xfc, 1,   2,   3,   4}),
  };
  for (int round = 0; round < 4; ++round) {
    for (const auto& payload : payloads) {
      for (Opcode op : {Opcode::kStore, Opcode::kLookup, Opcode::kNoop}) {
        auto r = DecodeRequest(Header{.opcode = op}, payload);
        ASSERT_FALSE(r.has_value());
        EXPECT_EQ(r.error().code(), StatusCode::kProtocolError) << r.error().ToString();
      }
    }
  }
  const uint64_t growth_kib = PeakVirtualKiB() - before;
  EXPECT_LT(growth_kib, 4096u) << "decoding tiny payloads raised the peak virtual size by "
                               << growth_kib << " KiB";
}

}  // namespace
}  // namespace kvtier::protocol
