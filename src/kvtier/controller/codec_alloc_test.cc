// Hostile declared sizes must be rejected before anything is allocated for them. Measured as the
// growth of the process's peak virtual size (VmPeak), so this test has a binary of its own: other
// tests' large buffers would raise the peak first and hide a regression.
#include <cstdint>
#include <fstream>
#include <string>
#include <vector>

#include <gtest/gtest.h>

#include "kvtier/controller/codec.h"

namespace kvtier::controller {
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

std::vector<uint8_t> Frame(MessageType type, uint8_t flags, std::initializer_list<int> body) {
  std::vector<uint8_t> out = EncodeHeader(Header{.flags = flags, .type = type, .request_id = 1});
  for (int b : body) out.push_back(static_cast<uint8_t>(b));
  return out;
}

TEST(ControllerCodecAllocationTest, HugeDeclaredSizesAllocateNothing) {
  const uint64_t before = PeakVirtualKiB();
  ASSERT_GT(before, 0u) << "no VmPeak in /proc/self/status";
  const std::vector<std::vector<uint8_t>> frames = {
      // {"groups": array32 of 2^20 elements, then one}
      Frame(MessageType::kAdmit, 0,
            {0x81, 0xa6, 'g', 'r', 'o', 'u', 'p', 's', 0xdd, 0x00, 0x10, 0x00, 0x00, 0x80}),
      // {"workers": array32 of 2^20 maps} in a reply, which allows the most elements
      Frame(MessageType::kWorkers, kFlagReply,
            {0x81, 0xa7, 'w', 'o', 'r', 'k', 'e', 'r', 's', 0xdd, 0x00, 0x10, 0x00, 0x00, 0x80}),
      // {"a": map32 of 2^19 entries, then one}
      Frame(MessageType::kLookup, 0, {0x81, 0xa1, 'a', 0xdf, 0x00, 0x08, 0x00, 0x00, 0xa1, 'b', 1}),
      // {"hashes": bin32 of 2^32 - 32 bytes} with 32 present
      Frame(MessageType::kLookup, 0,
            {0x81, 0xa6, 'h', 'a', 's', 'h', 'e', 's', 0xc6, 0xff, 0xff, 0xff, 0xe0, 1,  2,
             3,    4,    5,   6,   7,   8,   9,   10,  11,   12,   13,   14,   15,   16, 17,
             18,   19,   20,  21,  22,  23,  24,  25,  26,   27,   28,   29,   30,   31, 32}),
  };
  for (int round = 0; round < 4; ++round) {
    for (const auto& frame : frames) {
      Result<Header> h = DecodeHeader(frame);
      ASSERT_TRUE(h.has_value()) << h.error().ToString();
      Status s;
      if ((h->flags & kFlagReply) != 0) {
        auto r = DecodeReply(frame);
        ASSERT_FALSE(r.has_value());
        s = r.error();
      } else if (IsEvent(h->type)) {
        auto r = DecodeEvent(frame);
        ASSERT_FALSE(r.has_value());
        s = r.error();
      } else {
        auto r = DecodeRequest(frame);
        ASSERT_FALSE(r.has_value());
        s = r.error();
      }
      EXPECT_EQ(s.code(), StatusCode::kProtocolError) << s.ToString();
    }
  }
  const uint64_t growth_kib = PeakVirtualKiB() - before;
  EXPECT_LT(growth_kib, 4096u) << "decoding tiny frames raised the peak virtual size by "
                               << growth_kib << " KiB";
}

}  // namespace
}  // namespace kvtier::controller
