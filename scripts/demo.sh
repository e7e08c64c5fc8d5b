#!/usr/bin/env bash
# kvtier's main job on embedded defaults: installs dependencies, builds the release binary and
# runs the demo workload (an engine storing and reusing KV through the cache), showing prefix
# hits. Extra arguments go to `kvtier demo` (see `kvtier demo --help`).
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/setup.sh >/dev/null
cmake --preset release >/dev/null
cmake --build --preset release -j "${KVT_JOBS:-$(nproc)}" --target kvtier >/dev/null
exec build/release/apps/kvtier/kvtier --log-level warn demo "$@"
