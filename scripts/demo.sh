#!/usr/bin/env bash
# kvtier's main job on embedded defaults: installs dependencies, builds the release binary,
# starts `kvtier server` (L1 in RAM, an fs L2 tier under ./kvtier-data/l2, admin on
# 127.0.0.1:8080 or the next free port) and runs the demo client against it: multi-turn chats
# through the host shared-memory path, printing prefix hits, tokens served from the cache and
# retrieve GB/s. Then it shows the server's status and stops it gracefully (SIGTERM).
# Extra arguments go to `kvtier demo` (see `kvtier demo --help`).
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/setup.sh >/dev/null
cmake --preset release >/dev/null
cmake --build --preset release -j "${KVT_JOBS:-$(nproc)}" --target kvtier >/dev/null
bin=build/release/apps/kvtier/kvtier

data="${KVT_DEMO_DIR:-$PWD/kvtier-data}"
mkdir -p "$data"
endpoint="ipc://$data/kvtier.sock"
port=8080
while (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; do port=$((port + 1)); done

log="$data/server.log"
"$bin" --log-level warn server --endpoint "$endpoint" --admin-port "$port" \
  --l1-size 1GiB --l2-fs-path "$data/l2" >"$data/server.out" 2>"$log" &
server=$!
trap 'kill -TERM $server 2>/dev/null || true; wait $server 2>/dev/null || true' EXIT
# The server prints one "ready" line once it serves.
for _ in $(seq 1 200); do
  grep -q "kvtier server ready" "$data/server.out" 2>/dev/null && break
  kill -0 $server 2>/dev/null || { cat "$log" >&2; exit 1; }
  sleep 0.05
done
echo "$(cat "$data/server.out")  (log: $log)"
echo

"$bin" --log-level warn demo --endpoint "$endpoint" "$@"

echo
echo "server status (http://127.0.0.1:$port/api/status):"
/usr/bin/python3 - "$port" <<'PY'
import json, sys, urllib.request
s = json.load(urllib.request.urlopen(f"http://127.0.0.1:{sys.argv[1]}/api/status"))
l1, st = s["storage"]["l1"], s["storage"]["store_controller"]
print(f"  L1: {l1['resident_objects']} chunks, {l1['used_bytes'] / 2**20:.0f} MiB of {l1['capacity_bytes'] / 2**20:.0f} MiB")
print(f"  L2: {st['keys_stored']} chunks written to the fs tier, {st['keys_dropped']} dropped")
c = s["engine"]["counters"]
print(f"  lookups {c['lookups']}, hit tokens {c['lookup_hit_tokens']} of {c['lookup_requested_tokens']}")
PY
kill -TERM $server
wait $server
trap - EXIT
echo "server stopped cleanly (SIGTERM: requests drained, L2 flushed)"
