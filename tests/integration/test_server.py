"""Integration tests: real `kvtier server` processes, real sockets, real engine processes.

The client side is kvwire.py, an independent implementation of docs/protocol.md, so these tests
check the server against the specification. Conditions that become true asynchronously (an L2
write, a reaped worker) are awaited by polling the admin status with a deadline, never by
sleeping a fixed time.
"""
import os
import random
import signal
import subprocess
import sys
import time
import threading

import pytest

import kvwire
from conftest import BLOCK, CHUNK, LAYERS, KvCache

HERE = os.path.dirname(os.path.abspath(__file__))
BPC = CHUNK // BLOCK  # blocks per chunk


def tokens(n, seed):
    rnd = random.Random(seed)
    return [rnd.randrange(128000) for _ in range(n)]


def wait_until(predicate, what, timeout=30.0, state=None):
    """Polls `predicate` until it is true; on timeout, fails showing state() when given."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}" + (f": {state()}" if state else ""))
        time.sleep(0.05)


def store(c, cache, request_id, toks, first_block=0, start=0, end=None):
    end = end if end is not None else (len(toks) // CHUNK) * CHUNK
    n_blocks = (end - start) // BLOCK
    return c.call("STORE", instance_id=cache.instance,
                  key=kvwire.key(cache.model, request_id, toks, rank=0, start=start, end=end),
                  block_ids=list(range(first_block, first_block + n_blocks)))


def lookup(c, model, request_id, toks):
    c.call("LOOKUP", key=kvwire.key(model, request_id, toks), read_locks=1, timeout_ms=0)
    r = c.call("WAIT_PREFETCH_STATUS", request_id=request_id, timeout_ms=10000)
    assert r["done"]
    return r["hit_chunks"]


def retrieve(c, cache, request_id, toks, chunks, first_block):
    return c.call("RETRIEVE", instance_id=cache.instance,
                  key=kvwire.key(cache.model, request_id, toks, rank=0, end=chunks * CHUNK),
                  block_ids=list(range(first_block, first_block + chunks * BPC)),
                  skip_first_n_tokens=0)


def assert_blocks_equal(cache, original, src_first, dst_first, n_blocks):
    for layer in range(LAYERS):
        for kv in range(2):
            for i in range(n_blocks):
                off = layer * cache.layer_bytes + (kv * cache.num_blocks + src_first + i) * cache.block_bytes
                want = original[off:off + cache.block_bytes]
                assert cache.block(layer, kv, dst_first + i) == want, (layer, kv, i)


def test_store_then_retrieve_into_other_blocks_is_bitwise_equal(server, kvcache):
    c = server.client()
    hello = c.call("HELLO", protocol_version=1, client="it")
    assert hello["chunk_size"] == CHUNK
    cache = kvcache()
    cache.fill(1)
    original = bytes(cache.shm.buf)
    c.call("REGISTER_KV_CACHE", **cache.registration())
    toks = tokens(4 * CHUNK + 100, 1)
    assert store(c, cache, "s1", toks)["stored_chunks"] == 4
    c.call("END_SESSION", request_id="s1")

    assert lookup(c, cache.model, "r1", toks) == 4
    cache.zero()
    assert retrieve(c, cache, "r1", toks, 4, first_block=64)["retrieved_chunks"] == 4
    assert_blocks_equal(cache, original, 0, 64, 4 * BPC)
    assert c.call("END_SESSION", request_id="r1")["touched_keys"] >= 4


def test_partial_prefix_hits(server, kvcache):
    c = server.client()
    cache = kvcache()
    c.call("REGISTER_KV_CACHE", **cache.registration())
    toks = tokens(3 * CHUNK, 2)
    store(c, cache, "s", toks)
    # Same first 2 chunks, then different tokens: 2 hits.
    other = toks[:2 * CHUNK] + tokens(2 * CHUNK, 3)
    assert lookup(c, cache.model, "a", other) == 2
    # A difference in chunk 0 changes every chunk's hash: no hit.
    changed = [toks[0] + 1] + toks[1:]
    assert lookup(c, cache.model, "b", changed) == 0
    # A different salt is a different tenant: no hit.
    c.call("LOOKUP", key=kvwire.key(cache.model, "c", toks, salt="tenant-b"))
    assert c.call("WAIT_PREFETCH_STATUS", request_id="c", timeout_ms=10000)["hit_chunks"] == 0
    # An unknown request id is an error, not 0.
    with pytest.raises(kvwire.ServerError) as e:
        c.call("QUERY_PREFETCH_STATUS", request_id="never")
    assert e.value.code == 2


def test_hits_come_from_l2_after_l1_is_cleared(server_factory, kvcache, tmp_path):
    server = server_factory("--l2-fs-path", str(tmp_path / "l2"))
    c = server.client()
    cache = kvcache()
    cache.fill(5)
    original = bytes(cache.shm.buf)
    c.call("REGISTER_KV_CACHE", **cache.registration())
    toks = tokens(3 * CHUNK, 5)
    assert store(c, cache, "s", toks)["stored_chunks"] == 3
    wait_until(lambda: server.status()["storage"]["store_controller"]["keys_stored"] >= 3, "L2 stores")
    assert c.call("CLEAR", force=True)["cleared"] >= 3
    assert server.status()["storage"]["l1"]["resident_objects"] == 0
    assert lookup(c, cache.model, "r", toks) == 3  # prefetched from the fs tier
    cache.zero()
    retrieve(c, cache, "r", toks, 3, first_block=50)
    assert_blocks_equal(cache, original, 0, 50, 3 * BPC)


def test_several_clients_at_once(server, kvcache):
    errors = []

    def engine(i):
        try:
            c = server.client()
            cache = kvcache(instance=f"engine-{i}", num_blocks=64)
            cache.fill(100 + i)
            original = bytes(cache.shm.buf)
            c.call("REGISTER_KV_CACHE", **cache.registration())
            for round_ in range(3):
                toks = tokens(2 * CHUNK, 1000 * i + round_)
                store(c, cache, f"s{i}-{round_}", toks)
                assert lookup(c, cache.model, f"r{i}-{round_}", toks) == 2
                retrieve(c, cache, f"r{i}-{round_}", toks, 2, first_block=32)
                assert_blocks_equal(cache, original, 0, 32, 2 * BPC)
                cache.shm.buf[:] = original
                c.call("END_SESSION", request_id=f"r{i}-{round_}")
        except Exception as exc:  # surfaced below
            errors.append(exc)

    threads = [threading.Thread(target=engine, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors


def test_end_session_touch_keeps_a_sessions_chunks_over_an_untouched_one(server_factory, kvcache):
    # 256 KiB chunks; 4 MiB of L1 = 16 chunks, eviction from 80% down to 70%.
    server = server_factory("--l1-size", "4MiB")
    c = server.client()
    cache = kvcache(num_blocks=96)
    c.call("REGISTER_KV_CACHE", **cache.registration())
    a, b = tokens(4 * CHUNK, 10), tokens(4 * CHUNK, 11)
    store(c, cache, "a", a)
    store(c, cache, "b", b)
    # Session a is used again and ended: all of its chunks become recently used together.
    assert lookup(c, cache.model, "a2", a) == 4
    c.call("FREE_LOOKUP_LOCKS", key=kvwire.key(cache.model, "a2", a))
    c.call("END_SESSION", request_id="a2")
    # More data pushes L1 over its watermark: the least recently used chunks (b's) go.
    store(c, cache, "c", tokens(6 * CHUNK, 12))
    wait_until(lambda: server.status()["storage"]["l1_eviction"]["evicted_keys"] >= 3, "eviction")
    assert lookup(c, cache.model, "a3", a) == 4
    assert lookup(c, cache.model, "b3", b) < 4


ENGINE_SCRIPT = r"""
import os, sys, signal
sys.path.insert(0, sys.argv[1])
import kvwire
from conftest import KvCache, CHUNK
endpoint, mode = sys.argv[2], sys.argv[3]
c = kvwire.Client(endpoint)
cache = KvCache(instance="doomed", num_blocks=64)
cache.fill(7)
c.call("REGISTER_KV_CACHE", **cache.registration())
c.call("PING", instance_id="doomed")  # a live engine pings: it is reaped after worker_timeout
toks = list(range(1, 2 * CHUNK + 1))
if mode == "lookup":
    c.call("LOOKUP", key=kvwire.key(cache.model, "doomed-req", toks))
    c.call("WAIT_PREFETCH_STATUS", request_id="doomed-req", timeout_ms=10000)
    print("locked", flush=True)
else:  # mid-store: the STORE is sent, the process dies without waiting for the reply
    c.send_frames([kvwire.header(kvwire.OPCODES["STORE"], 99), kvwire.msgpack.packb(dict(
        instance_id="doomed", key=kvwire.key(cache.model, "doomed-req", toks, rank=0),
        block_ids=list(range(32))), use_bin_type=True)])
    print("sent", flush=True)
sys.stdin.read()  # killed here
"""


@pytest.mark.parametrize("mode", ["lookup", "store"])
def test_a_killed_client_leaves_nothing_behind(server_factory, kvcache, mode):
    server = server_factory("--worker-timeout", "1s", "--session-ttl", "2s")
    c = server.client()
    cache = kvcache(instance="survivor", num_blocks=64)
    c.call("REGISTER_KV_CACHE", **cache.registration())
    toks = list(range(1, 2 * CHUNK + 1))
    if mode == "lookup":
        store(c, cache, "seed", toks)  # what the doomed client will lock
    proc = subprocess.Popen([sys.executable, "-c", ENGINE_SCRIPT, HERE, server.endpoint, mode],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() in ("locked", "sent")
    if mode == "lookup":
        st = server.status()
        assert st["storage"]["l1"]["read_locked_objects"] >= 2
        assert st["engine"]["sessions"] >= 1
    proc.kill()
    proc.wait()

    def clean():
        c.call("PING", instance_id="survivor")  # the survivor stays alive
        st = server.status()
        workers = [w["instance_id"] for w in st["engine"]["workers"]]
        l1 = st["storage"]["l1"]
        return (workers == ["survivor"] and st["engine"]["sessions"] == 0
                and l1["read_locked_objects"] == 0 and l1["staging_objects"] == 0)

    def state():
        st = server.status()
        return {"workers": st["engine"]["workers"], "sessions": st["engine"]["sessions"], "l1": st["storage"]["l1"]}

    wait_until(clean, "the vanished client's registration, session and locks to be released", state=state)
    # The survivor is untouched: its data is still retrievable.
    if mode == "lookup":
        assert lookup(c, cache.model, "after", toks) == 2


def test_malformed_and_hostile_requests_get_errors_and_harm_no_one(server, kvcache):
    victim = server.client()
    cache = kvcache()
    cache.fill(9)
    original = bytes(cache.shm.buf)
    victim.call("REGISTER_KV_CACHE", **cache.registration())
    toks = tokens(2 * CHUNK, 9)
    store(victim, cache, "v", toks)

    bad = server.client()

    def expect_error(frames, code):
        bad.send_frames(frames)
        _, _, flags, body = bad.receive()
        assert flags & kvwire.FLAG_ERROR, body
        assert body["code"] == code, body
        return body

    noop = kvwire.header(15, 1)
    expect_error([noop, b"\xc1"], 800)                                   # not msgpack
    expect_error([noop, b"\x93\x01\x02\x03"], 800)                       # an array, not a map
    expect_error([kvwire.header(99, 2), b"\x80"], 802)                   # unknown opcode
    expect_error([kvwire.header(15, 3, version=9), b"\x80"], 801)        # wrong version
    expect_error([b"XX" + noop[2:], b"\x80"], 800)                       # bad magic
    expect_error([noop], 800)                                            # one frame
    expect_error([noop, b"\x80", b"\x80"], 800)                          # three frames
    with pytest.raises(kvwire.ServerError) as e:                         # block id out of range
        bad.call("STORE", instance_id=cache.instance,
                 key=kvwire.key(cache.model, "x", toks, rank=0), block_ids=[10 ** 6] * 32)
    assert e.value.code == 14  # out of range, even though both chunks are cached already
    with pytest.raises(kvwire.ServerError) as e:                         # range past the tokens
        bad.call("STORE", instance_id=cache.instance,
                 key=kvwire.key(cache.model, "x", toks, rank=0, end=8 * CHUNK),
                 block_ids=list(range(128)))
    assert e.value.code == 800  # the decoder checks ranges against the tokens
    with pytest.raises(kvwire.ServerError) as e:                         # bad salt
        bad.call("LOOKUP", key=kvwire.key(cache.model, "x", toks, salt="a/b"))
    assert e.value.code in (1, 200, 800)
    with pytest.raises(kvwire.ServerError) as e:                         # unaligned start
        bad.call("STORE", instance_id=cache.instance,
                 key=kvwire.key(cache.model, "x", toks, rank=0, start=7),
                 block_ids=list(range(32)))
    assert e.value.code in (1, 800)
    bad.send_frames([noop, os.urandom(3000)])                            # random bytes
    assert bad.receive()[2] & kvwire.FLAG_ERROR

    # The server still serves, and the victim's data is intact.
    assert bad.call("NOOP") == {}
    assert lookup(victim, cache.model, "v2", toks) == 2
    cache.zero()
    retrieve(victim, cache, "v2", toks, 2, first_block=40)
    assert_blocks_equal(cache, original, 0, 40, 2 * BPC)
    assert server.status()["transport"]["malformed"] >= 8


def test_sigterm_flushes_to_l2_and_a_restart_recovers_it(server_factory, kvcache, tmp_path):
    l2 = str(tmp_path / "l2")
    server = server_factory("--l2-fs-path", l2)
    c = server.client()
    cache = kvcache(num_blocks=192)
    cache.fill(11)
    original = bytes(cache.shm.buf)
    c.call("REGISTER_KV_CACHE", **cache.registration())
    toks = tokens(5 * CHUNK, 11)
    assert store(c, cache, "s", toks)["stored_chunks"] == 5
    c.close()
    assert server.stop(sig_term=True) == 0  # graceful: pending L2 stores are flushed first

    again = server_factory("--l2-fs-path", l2)
    c = again.client()
    c.call("REGISTER_KV_CACHE", **cache.registration())
    assert lookup(c, cache.model, "r", toks) == 5  # recovered from disk
    cache.zero()
    retrieve(c, cache, "r", toks, 5, first_block=80)
    assert_blocks_equal(cache, original, 0, 80, 5 * BPC)


def test_metrics_and_status(server, kvcache):
    c = server.client()
    c.call("NOOP")
    status = server.status()
    assert status["server"]["chunk_size"] == CHUNK
    metrics = server.http("/metrics")
    assert "kvtier_transport_requests" in metrics
    assert "kvtier_request_duration_seconds_bucket" in metrics
    assert server.http("/api/healthcheck")["status"] == "ok"
