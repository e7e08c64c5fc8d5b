#!/usr/bin/env bash
# Installs every dependency, builds, and runs the whole test suite:
#   1. asan preset (ASan + UBSan): every unit and stress test, the fuzz targets over their
#      seed corpora, and smoke runs of `kvtier bench` and `kvtier demo`;
#   2. tsan preset (ThreadSanitizer): every test again, for the concurrency code;
#   3. release preset (gcc, optimised): builds everything and runs the smoke tests.
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
run_preset release -L smoke
echo "=== all tests passed in $(( $(date +%s) - start )) s"
