// `kvtier bench l2` (fs part): fs adapter store and load throughput with 32 MiB objects, each
// against a raw sequential pwrite/pread of the same bytes to one file in the same directory, in
// the same run (ratio = adapter / raw).
#pragma once

#include <string>

#include "harness.h"

namespace kvtier::bench {

// `dir`: an existing directory on the filesystem to measure; the suite works in a fresh
// subdirectory of it and removes it afterwards. Buffered I/O always; O_DIRECT too where the
// filesystem supports it (raw I/O then uses O_DIRECT as well). Page caches are not dropped:
// buffered reads of both sides come from the page cache, O_DIRECT reads from the device.
Status RunL2FsBench(const SuiteOptions& options, Reporter* reporter, const std::string& dir);

}  // namespace kvtier::bench
