#!/usr/bin/env bash
# Installs every dependency, builds, and runs the whole test suite:
#   1. asan preset (ASan + UBSan): every unit and stress test, the fuzz targets over their
#      seed corpora, and smoke runs of `kvtier bench` and `kvtier demo`;
#   2. tsan preset (ThreadSanitizer): every test again, for the concurrency code;
#   3. cuda preset (gcc, optimised, CUDA code through nvcc) when nvcc is installed, else the
#      release preset: every test again (GPU tests skip without a GPU), so the optimised gcc
#      build and the CUDA code never rot.
# Usage: scripts/test.sh            (KVT_JOBS=N to override the parallelism)
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/setup.sh
jobs="${KVT_JOBS:-$(nproc)}"

run_preset() {
  local preset="$1"; shift
  echo "=== ${preset}: configure and build"
  cmake --preset "$preset" >/dev/null
  cmake --build --preset "$preset" -j "$jobs"
  echo "=== ${preset}: test"
  ctest --preset "$preset" -j "$jobs" "$@"
}

start=$(date +%s)
run_preset asan
run_preset tsan
if command -v nvcc >/dev/null 2>&1 || [ -x /usr/local/cuda/bin/nvcc ]; then
  run_preset cuda
else
  echo "=== nvcc not found: building the release preset instead of cuda"
  run_preset release
fi
echo "=== all tests passed in $(( $(date +%s) - start )) s"
