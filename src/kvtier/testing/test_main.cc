// main() for every kvtier unit test binary: quiet logging unless KVT_TEST_LOG asks for more.
#include <cstdlib>

#include <gtest/gtest.h>

#include "kvtier/common/logging.h"

int main(int argc, char** argv) {
  ::testing::InitGoogleTest(&argc, argv);
  // Death tests fork; "threadsafe" re-executes the binary, which is safe with threads and TSan.
  GTEST_FLAG_SET(death_test_style, "threadsafe");
  const char* level = std::getenv("KVT_TEST_LOG");
  kvtier::InitLogging(level ? level : "warn").IgnoreError();
  return RUN_ALL_TESTS();
}
