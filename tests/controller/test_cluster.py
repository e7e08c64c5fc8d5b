"""Issue 6's acceptance test with real processes: one `kvtier controller` and several
`kvtier server --controller ...` processes, each driven by an engine speaking the server protocol
(tests/integration/kvwire.py) with a KV cache in shared memory.

1. Chunks stored on each server show up in the controller's index: per-worker key counts, and
   prefix lookups by token ids (and by chunk hashes, and FIND_KV) naming every holder.
2. A server killed with SIGKILL is reaped after the heartbeat timeout; its keys leave the index.
3. A restarted controller rebuilds, through the servers' full syncs, an index equal to the
   surviving servers' L1 contents.
4. Peer fetch: a server with a `peer` L2 adapter finds a chunk that only another server holds,
   loads it from that server, and a RETRIEVE returns KV bitwise equal to what was stored there.

Asynchronous conditions are awaited by polling the controller's HTTP API and the servers'
/api/status with a deadline, never by sleeping a fixed time.
"""
import importlib.util
import json
import os
import random
import re
import signal
import subprocess
import sys
import tempfile
import urllib.request

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
INTEGRATION = os.path.join(os.path.dirname(HERE), "integration")
sys.path.insert(0, INTEGRATION)
import kvwire  # noqa: E402
import ctlwire  # noqa: E402  (tests/controller, on the path through conftest.py)
import testkit  # noqa: E402
from testkit import free_port_triple  # noqa: E402

# The engine side of tests/integration (KvCache: a paged KV cache in shared memory), loaded
# under its own name: `conftest` here is tests/controller's.
_spec = importlib.util.spec_from_file_location("kvt_integration_conftest",
                                               os.path.join(INTEGRATION, "conftest.py"))
it = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(it)
KvCache, CHUNK, BLOCK, LAYERS = it.KvCache, it.CHUNK, it.BLOCK, it.LAYERS
BPC = CHUNK // BLOCK  # blocks per chunk

KVTIER_BIN = os.environ.get("KVTIER_BIN")
MODEL = "cluster-model"
HEARTBEAT = ("--heartbeat-interval", "200ms", "--worker-timeout", "1500ms")
SERVER_READY = re.compile(r"kvtier server ready: (\S+).* admin=(http://\S+)")
WAIT = 20.0  # seconds: the deadline of every polled condition


def tokens(n, seed):
    rnd = random.Random(seed)
    return [rnd.randrange(128000) for _ in range(n)]


def wait_until(predicate, what, timeout=WAIT, state=None):
    return testkit.wait_until(predicate, what, timeout, state)


class Server:
    """`kvtier server` on a free tcp port (also its peer-fetch address) and a free admin port,
    reporting to the controller at tcp://127.0.0.1:controller_port."""

    def __init__(self, server_id, controller_port, config=None):
        self.server_id = server_id
        self.log = tempfile.TemporaryFile(mode="w+")
        cmd = [KVTIER_BIN, "--log-level", "warn", "server", "--endpoint", "tcp://127.0.0.1:0",
               "--admin-port", "0", "--server-id", server_id, "--l1-size", "64MiB",
               "--controller", f"tcp://127.0.0.1:{controller_port}"]
        if config:
            cmd += ["--config", config]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=self.log, text=True)
        line = self.proc.stdout.readline()
        m = SERVER_READY.match(line)
        if not m:
            self.proc.kill()
            self.proc.wait()
            raise RuntimeError(f"server {server_id} did not start: {line!r} {self.log_text()}")
        self.endpoint, self.admin = m[1], m[2]
        self.clients = []

    def log_text(self):
        self.log.seek(0)
        return self.log.read()

    def client(self):
        c = kvwire.Client(self.endpoint, timeout_ms=15000)
        self.clients.append(c)
        return c

    def status(self):
        with urllib.request.urlopen(self.admin + "/api/status", timeout=10) as r:
            return json.loads(r.read())

    def alive(self):
        return self.proc.poll() is None

    def stop(self):
        for c in self.clients:
            c.close()
        self.clients = []
        if self.proc.poll() is None:
            self.proc.terminate()
        try:
            return self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait()


class Engine:
    """One engine attached to one server: a shared-memory KV cache filled with random bytes."""

    def __init__(self, server, kvcache, seed):
        self.server, self.client = server, server.client()
        self.cache = kvcache(instance=f"engine-{server.server_id}", model=MODEL, num_blocks=192)
        self.cache.fill(seed)
        self.original = bytes(self.cache.shm.buf)
        assert self.client.call("HELLO", protocol_version=1, client="cluster-it")["chunk_size"] \
            == CHUNK
        self.client.call("REGISTER_KV_CACHE", **self.cache.registration())
        self.sessions = 0

    def store(self, toks, first_block=0):
        """Stores every full chunk of `toks` from blocks first_block, ...; returns the chunks."""
        self.sessions += 1
        rid = f"store-{self.sessions}"
        n = len(toks) // CHUNK
        r = self.client.call("STORE", instance_id=self.cache.instance,
                             key=kvwire.key(MODEL, rid, toks, rank=0, end=n * CHUNK),
                             block_ids=list(range(first_block, first_block + n * BPC)))
        self.client.call("END_SESSION", request_id=rid)
        assert r["stored_chunks"] == n, r
        return n

    def lookup(self, rid, toks):
        """LOOKUP with read locks, then the prefix length once the prefetch is done."""
        self.client.call("LOOKUP", key=kvwire.key(MODEL, rid, toks), read_locks=1, timeout_ms=0)
        r = self.client.call("WAIT_PREFETCH_STATUS", request_id=rid, timeout_ms=10000)
        assert r["done"], r
        return r["hit_chunks"]

    def retrieve(self, rid, toks, chunks, first_block):
        return self.client.call("RETRIEVE", instance_id=self.cache.instance,
                                key=kvwire.key(MODEL, rid, toks, rank=0, end=chunks * CHUNK),
                                block_ids=list(range(first_block, first_block + chunks * BPC)),
                                skip_first_n_tokens=0)


def block_at(data, cache, layer, kv, b):
    off = layer * cache.layer_bytes + (kv * cache.num_blocks + b) * cache.block_bytes
    return bytes(data[off:off + cache.block_bytes])


def assert_same_kv(src, src_first, dst, dst_first, n_blocks):
    """dst's blocks [dst_first, +n) hold what src's engine had in [src_first, +n) when it stored."""
    assert src.cache.block_bytes == dst.cache.block_bytes
    now = bytes(dst.cache.shm.buf)
    for layer in range(LAYERS):
        for kv in range(2):
            for i in range(n_blocks):
                want = block_at(src.original, src.cache, layer, kv, src_first + i)
                got = block_at(now, dst.cache, layer, kv, dst_first + i)
                assert got == want, (layer, kv, i)


class Cluster:
    def __init__(self, controller_factory, kvcache, tmp_path):
        self.controller_factory, self.kvcache, self.tmp = controller_factory, kvcache, tmp_path
        self.base = free_port_triple()
        self.controller = controller_factory(*HEARTBEAT, base_port=self.base)
        self.servers = {}

    def start_server(self, server_id, config=None):
        s = Server(server_id, self.base, config=config)
        self.servers[server_id] = s
        return s

    def restart_controller(self):
        assert self.controller.stop() == 0
        self.controller = self.controller_factory(*HEARTBEAT, base_port=self.base)
        return self.controller

    def stop(self):
        for s in self.servers.values():
            s.stop()

    # The controller's view.
    def workers(self):
        status, body = self.controller.http("/controller/workers")
        assert status == 200, body
        return {w["instance_id"]: w for w in body["workers"]}

    def lookup(self, toks, **extra):
        """/lookup by token ids: [(instance_id, matched_chunks), ...], longest first."""
        status, body = self.controller.http("/lookup", "POST",
                                            {"model": MODEL, "token_ids": toks, **extra})
        assert status == 200, body
        assert body["num_chunks"] == len(toks) // CHUNK and body["chunk_size"] == CHUNK, body
        for m in body["matches"]:
            assert m["matched_tokens"] == m["matched_chunks"] * CHUNK, m
            assert m["address"] == self.servers[m["instance_id"]].endpoint, m
        return [(m["instance_id"], m["matched_chunks"]) for m in body["matches"]]

    def lookup_hashes(self, toks):
        """/lookup by chunk hashes computed here (ctlwire's independent TokenHasher)."""
        hashes = [h.hex() for h in ctlwire.token_hashes(toks, CHUNK)]
        status, body = self.controller.http("/lookup", "POST",
                                            {"model": MODEL, "chunk_hashes": hashes})
        assert status == 200, body
        return [(m["instance_id"], m["matched_chunks"]) for m in body["matches"]]

    def gauge(self, name):
        _, text = self.controller.http("/metrics", raw=True)
        m = re.search(rf"^kvtier_controller_{name}(?:{{[^}}]*}})? (\S+)$", text, re.M)
        assert m, f"no metric {name}"
        return float(m[1])

    # Index == servers.
    def in_sync(self, expected=None):
        """The controller's workers once each matches its server: registered, full sync complete,
        the controller's key count = the reporter's mirror = the server's L1 objects (= expected
        when given). Returns {instance: keys} or None."""
        workers = self.workers()
        live = {sid: s for sid, s in self.servers.items() if s.alive()}
        if set(workers) != set(live):
            return None
        counts = {}
        for sid, s in live.items():
            st = s.status()
            rep, l1 = st["reporter"], st["storage"]["l1"]
            if rep["state"] != "registered":
                return None
            loc = workers[sid]["locations"][0]
            mirror = rep["locations"][0]
            if loc["location"] != "L1" or loc["sync"]["state"] != "complete":
                return None
            if int(rep["controller_epoch"] or "0", 16) != self.controller.epoch:
                return None
            if not (loc["key_count"] == mirror["keys"] == l1["resident_objects"]
                    == workers[sid]["key_count"]):
                return None
            if loc["last_seq"] != mirror["last_seq"] or mirror["pending_keys"] != 0:
                return None
            if expected is not None and loc["key_count"] != expected[sid]:
                return None
            counts[sid] = loc["key_count"]
        return counts

    def state(self):
        out = {"controller": {sid: (w["key_count"], w["locations"][0]["sync"]["state"])
                              for sid, w in self.workers().items()}}
        for sid, s in self.servers.items():
            if s.alive():
                st = s.status()
                out[sid] = {"reporter": st["reporter"]["state"],
                            "mirror": st["reporter"]["locations"][0]["keys"],
                            "l1": st["storage"]["l1"]["resident_objects"]}
        return out


@pytest.fixture
def cluster(controller_factory, kvcache, tmp_path):
    if not KVTIER_BIN:
        pytest.skip("KVTIER_BIN is not set (ctest sets it)")
    c = Cluster(controller_factory, kvcache, tmp_path)
    yield c
    c.stop()


@pytest.fixture
def kvcache():
    caches = []

    def make(**kw):
        c = KvCache(**kw)
        caches.append(c)
        return c

    yield make
    for c in caches:
        c.close()


# Token sequences: A, B, C on one server each; the prefix P (2 chunks) on s0 (P+X, 4 chunks)
# and on s1 (P+Y, 3 chunks).
A, B, C = tokens(3 * CHUNK + 17, 1), tokens(2 * CHUNK, 2), tokens(4 * CHUNK, 3)
P = tokens(2 * CHUNK, 4)
PX, PY = P + tokens(2 * CHUNK, 5), P + tokens(1 * CHUNK + 100, 6)
EXPECTED = {"s0": 3 + 4, "s1": 2 + 3, "s2": 4}


def start_three(cluster):
    """Three servers with one engine each, holding A / P+X, B / P+Y and C; the index in sync."""
    engines = {}
    for i, sid in enumerate(("s0", "s1", "s2")):
        engines[sid] = Engine(cluster.start_server(sid), cluster.kvcache, seed=100 + i)
    e0, e1, e2 = engines["s0"], engines["s1"], engines["s2"]
    e0.store(A)
    e0.store(PX, first_block=3 * BPC)
    e1.store(B)
    e1.store(PY, first_block=2 * BPC)
    e2.store(C)
    wait_until(lambda: cluster.in_sync(EXPECTED), "the index to match the three servers",
               state=cluster.state)
    return engines


def test_index_names_every_holder(cluster):
    start_three(cluster)
    # One holder each.
    assert cluster.lookup(A) == [("s0", 3)]
    assert cluster.lookup(B) == [("s1", 2)]
    assert cluster.lookup(C) == [("s2", 4)]
    # The shared prefix: both holders credited, longest first, ties by instance id.
    assert cluster.lookup(PX) == [("s0", 4), ("s1", 2)]
    assert cluster.lookup(PY) == [("s1", 3), ("s0", 2)]
    assert cluster.lookup(P) == [("s0", 2), ("s1", 2)]
    assert cluster.lookup(PX, exclude_instance="s0") == [("s1", 2)]
    # A prefix of a stored sequence, and a sequence that diverges after it.
    assert cluster.lookup(C[:2 * CHUNK]) == [("s2", 2)]
    assert cluster.lookup(C[:3 * CHUNK] + tokens(2 * CHUNK, 7)) == [("s2", 3)]
    # Nobody holds these: another chunk 0, fewer tokens than a chunk.
    assert cluster.lookup(tokens(3 * CHUNK, 8)) == []
    assert cluster.lookup([C[0] + 1] + C[1:]) == []
    assert cluster.lookup(C[:CHUNK - 1]) == []
    # The same answers from chunk hashes computed independently of kvtier.
    assert cluster.lookup_hashes(PX) == [("s0", 4), ("s1", 2)]
    assert cluster.lookup_hashes(A) == [("s0", 3)]
    # FIND_KV on the wire: a chunk of P has both holders, each at L1 with its address.
    w = ctlwire.Worker(cluster.controller.endpoints, "probe")
    try:
        h = ctlwire.token_hashes(P, CHUNK)[1]
        holders = w.call(ctlwire.FIND_KV, {"model": MODEL, "world_size": 1, "rank": 0,
                                           "hash": h})["holders"]
        assert [(x["instance_id"], x["worker_id"], x["location"], x["address"]) for x in holders] \
            == [(sid, 0, "L1", cluster.servers[sid].endpoint) for sid in ("s0", "s1")]
    finally:
        w.close()
    # Totals: 16 (key, worker, location) holders, 14 distinct keys (P's 2 chunks twice).
    assert cluster.gauge("keys") == 14
    assert cluster.gauge("holders") == 16
    assert cluster.gauge("workers") == 3
    _, health = cluster.controller.http("/health")
    assert (health["instances"], health["workers"], health["keys"]) == (3, 3, 14)


def test_a_killed_server_is_reaped_and_its_keys_leave(cluster):
    start_three(cluster)
    victim = cluster.servers["s1"]
    victim.proc.send_signal(signal.SIGKILL)
    victim.proc.wait()
    # No DEREGISTER: the controller notices the silence after --worker-timeout.
    wait_until(lambda: "s1" not in cluster.workers(), "s1 to be reaped", state=cluster.state)
    assert cluster.gauge("workers_reaped_total") >= 1
    assert cluster.gauge("deregistrations_total") == 0
    _, dash = cluster.controller.http("/api/dashboard")
    reaps = [e["message"] for e in dash["events"] if e["kind"] == "reaped"]
    assert any(m.startswith(f"reaped s1/0 (address '{victim.endpoint}')")
               and m.endswith("; 5 keys dropped") for m in reaps), reaps
    assert cluster.lookup(B) == []
    assert cluster.lookup(PY) == [("s0", 2)]
    assert cluster.lookup(PX) == [("s0", 4)]
    assert cluster.lookup(A) == [("s0", 3)] and cluster.lookup(C) == [("s2", 4)]
    # The survivors kept heartbeating: registered, their keys all there.
    wait_until(lambda: cluster.in_sync({"s0": 7, "s2": 4}), "the survivors in the index",
               state=cluster.state)
    assert cluster.gauge("keys") == 7 + 4 and cluster.gauge("holders") == 7 + 4


def test_a_restarted_controller_rebuilds_the_index_from_full_syncs(cluster):
    engines = start_three(cluster)
    # One server dies first: the rebuilt index must hold the survivors only.
    cluster.servers["s2"].proc.send_signal(signal.SIGKILL)
    cluster.servers["s2"].proc.wait()
    wait_until(lambda: "s2" not in cluster.workers(), "s2 to be reaped", state=cluster.state)
    # And a survivor changes while the controller is down: s0 stores another sequence.
    before_epoch = cluster.controller.epoch
    queries = [A, B, C, P, PX, PY]
    before = [cluster.lookup(q) for q in queries]
    assert before == [[("s0", 3)], [("s1", 2)], [], [("s0", 2), ("s1", 2)],
                      [("s0", 4), ("s1", 2)], [("s1", 3), ("s0", 2)]]

    assert cluster.controller.stop() == 0
    D = tokens(2 * CHUNK, 9)
    engines["s0"].store(D, first_block=7 * BPC)
    controller = cluster.restart_controller()
    assert controller.epoch != before_epoch

    counts = wait_until(lambda: cluster.in_sync({"s0": 9, "s1": 5}),
                        "the servers' full syncs to the restarted controller",
                        state=cluster.state)
    assert counts == {"s0": 9, "s1": 5}
    assert [cluster.lookup(q) for q in queries] == before
    assert cluster.lookup(D) == [("s0", 2)]
    assert cluster.gauge("keys") == 9 + 5 - 2 and cluster.gauge("holders") == 9 + 5
    for sid in ("s0", "s1"):
        w = cluster.workers()[sid]
        assert w["address"] == cluster.servers[sid].endpoint
        assert w["locations"][0]["sync"]["total_keys"] == counts[sid]


def test_peer_fetch_loads_a_chunk_another_server_holds(cluster, tmp_path):
    holder = Engine(cluster.start_server("peer-a"), cluster.kvcache, seed=41)
    config = tmp_path / "peer-b.yaml"
    config.write_text(
        "l2:\n"
        "  adapters:\n"
        "    - type: peer\n"
        "      name: peers\n"
        f"      controller: tcp://127.0.0.1:{cluster.base}\n"
        "      instance_id: peer-b\n"
        "      controller_timeout: 2s\n"
        "      peer_timeout: 5s\n")
    fetcher = Engine(cluster.start_server("peer-b", config=str(config)), cluster.kvcache, seed=42)
    T = tokens(3 * CHUNK + 50, 40)
    holder.store(T, first_block=10)
    wait_until(lambda: cluster.in_sync({"peer-a": 3, "peer-b": 0}),
               "the index to hold peer-a's chunks", state=cluster.state)
    assert cluster.lookup(T) == [("peer-a", 3)]

    # peer-b misses every chunk in L1; its peer adapter finds them (FIND_KV) and loads them
    # from peer-a (READ_OBJECTS).
    assert fetcher.server.status()["storage"]["l1"]["resident_objects"] == 0
    assert fetcher.lookup("fetch", T) == 3
    fetcher.cache.zero()
    assert fetcher.retrieve("fetch", T, 3, first_block=60)["retrieved_chunks"] == 3
    assert_same_kv(holder, 10, fetcher, 60, 3 * BPC)
    fetcher.client.call("END_SESSION", request_id="fetch")

    peer = fetcher.server.status()["storage"]["l2_adapters"][0]
    assert (peer["name"], peer["fetched_keys"]) == ("peers", 3), peer
    assert (peer["controller_errors"], peer["peer_errors"]) == (0, 0), peer
    # The index still matches both servers' L1 (peer-a's 3 chunks stay there). What peer-b keeps
    # is the prefetch's business (today: temporary L1 buffers, freed after the RETRIEVE and not
    # reported), so only the agreement of index and L1 is checked for it.
    counts = wait_until(cluster.in_sync, "the index to match both servers", state=cluster.state)
    assert counts["peer-a"] == 3
    assert cluster.lookup(T)[0] == ("peer-a", 3)
    # A sequence nobody holds misses, peers included.
    assert fetcher.lookup("miss", tokens(2 * CHUNK, 43)) == 0
    assert fetcher.server.status()["storage"]["l2_adapters"][0]["fetched_keys"] == 3

    # Mixed: peer-b holds chunk 0 of U itself, peer-a all 3 chunks: the local chunk comes from
    # peer-b's L1, the other two from peer-a.
    U = tokens(3 * CHUNK, 44)
    holder.store(U, first_block=100)
    fetcher.cache.shm.buf[:] = fetcher.original  # the engine's own KV again (zeroed above)
    fetcher.store(U[:CHUNK], first_block=120)
    wait_until(lambda: cluster.in_sync({"peer-a": 6, "peer-b": 1}),
               "U in the index", state=cluster.state)
    assert cluster.lookup(U) == [("peer-a", 3), ("peer-b", 1)]
    assert fetcher.lookup("mixed", U) == 3
    fetcher.cache.zero()
    assert fetcher.retrieve("mixed", U, 3, first_block=0)["retrieved_chunks"] == 3
    assert_same_kv(fetcher, 120, fetcher, 0, BPC)
    assert_same_kv(holder, 100 + BPC, fetcher, BPC, 2 * BPC)
    fetcher.client.call("END_SESSION", request_id="mixed")
    assert fetcher.server.status()["storage"]["l2_adapters"][0]["fetched_keys"] == 5
