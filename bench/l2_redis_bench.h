// `kvtier bench l2_redis`: the redis L2 adapter's store and load throughput against
// redis-benchmark SET / GET of the same value size, measured in the same run on the same
// redis-server (started by the suite on a free loopback port).
#pragma once

#include "harness.h"

namespace kvtier::bench {

// Skips (returns OK with no results, a note on stderr) when redis-server is not installed.
Status RunL2RedisBench(const SuiteOptions& options, Reporter* reporter);

}  // namespace kvtier::bench
