// Entry points of the `kvtier bench` suites (one file each in bench/).
#pragma once

#include "harness.h"

namespace kvtier::bench {

Status RunSyncSuite(const SuiteOptions& options, Reporter* reporter);    // sync_suite.cc
Status RunL1Suite(const SuiteOptions& options, Reporter* reporter);      // l1_suite.cc
Status RunL2Suite(const SuiteOptions& options, Reporter* reporter);      // l2_suite.cc
Status RunServerSuite(const SuiteOptions& options, Reporter* reporter);  // server_suite.cc
Status RunGpuSuite(const SuiteOptions& options, Reporter* reporter);     // gpu_suite.cc

// controller_suite.cc
Status RunControllerSuite(const SuiteOptions& options, Reporter* reporter);

}  // namespace kvtier::bench
