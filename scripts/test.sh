#!/usr/bin/env bash
# Installs every dependency, builds, and runs the test suite (the README's test command, and
# what CI runs; it must stay well under 30 minutes on 2 cores):
#   1. asan preset (ASan + UBSan): everything is built and every test runs: unit, stress,
#      fuzz targets over their seed corpora, integration tests with real processes, smoke runs
#      of `kvtier bench` and `kvtier demo`;
#   2. tsan preset (ThreadSanitizer): the tests labelled stress or concurrency (every test of
#      code that runs on more than one thread), built through the concurrency_tests target;
#   3. cuda preset (gcc, optimised, CUDA code through nvcc) when nvcc is installed, else the
#      release preset: the kvtier binary, the Python package and the GPU tests are built, and
#      the Python, integration and GPU tests run (GPU tests skip without a GPU), so the
#      optimised gcc build and the CUDA code never rot.
# Usage: scripts/test.sh             the stages above
#        KVT_FULL=1 scripts/test.sh  every test in every stage (slow: three full builds)
#        KVT_JOBS=N                  build and test parallelism (default: nproc)
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/setup.sh
jobs="${KVT_JOBS:-$(nproc)}"
full="${KVT_FULL:-0}"

# run_preset <preset> <build targets ("" = all)> <ctest label regex ("" = all)>
run_preset() {
  local preset="$1" targets="$2" labels="$3"
  local t0
  t0=$(date +%s)
  if [ "$full" = 1 ]; then
    targets="" labels=""
  fi
  echo "=== ${preset}: configure and build ${targets:-everything}"
  cmake --preset "$preset" >/dev/null
  # shellcheck disable=SC2086  # a list of targets, or none (= all)
  cmake --build --preset "$preset" -j "$jobs" ${targets:+--target $targets}
  echo "=== ${preset}: test ${labels:-everything}"
  ctest --preset "$preset" -j "$jobs" ${labels:+-L "$labels"}
  echo "=== ${preset}: done in $(( $(date +%s) - t0 )) s"
}

start=$(date +%s)
run_preset asan "" ""
run_preset tsan concurrency_tests "stress|concurrency"
if command -v nvcc >/dev/null 2>&1 || [ -x /usr/local/cuda/bin/nvcc ]; then
  run_preset cuda "kvtier _kvtier gpu_tests" "integration|gpu"
else
  echo "=== nvcc not found: the release preset instead of cuda"
  run_preset release "kvtier _kvtier gpu_tests" "integration|gpu"
fi
echo "=== all tests passed in $(( $(date +%s) - start )) s"
