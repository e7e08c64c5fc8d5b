"""The GPU data path end to end: a real `kvtier server` process and torch CUDA tensors in this
process (and in child processes) shared by CUDA IPC. Skipped without torch, a CUDA device, or
$KVTIER_BIN; the server must be built with CUDA (KVT_WITH_CUDA)."""

from __future__ import annotations

import json
import multiprocessing
import os
import socket
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest

import kvtier
from kvtier.cuda_cache import CudaKvCache

try:
    import torch
except ImportError:  # the tests skip (each one, so that pytest still collects them)
    torch = None

CHUNK = 256
FORMATS = ["kv_nhd", "nb_kv_nhd", "kv_hnd", "nb_kv_hnd", "mla", "cross_layer"]
DTYPES = ["bfloat16", "float16", "float32", "float8_e4m3fn"]


def _need_gpu() -> None:
    if torch is None:
        pytest.skip("torch is not installed")
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device visible to torch")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    def __init__(self, endpoint: str, admin_port: int) -> None:
        self.endpoint = endpoint
        self.admin_port = admin_port

    def status(self) -> dict[str, Any]:
        url = f"http://127.0.0.1:{self.admin_port}/api/status"
        with urllib.request.urlopen(url, timeout=10) as r:
            return json.loads(r.read())

    def wait_for(self, predicate, timeout: float = 30.0) -> dict[str, Any]:
        """Polls /api/status until predicate(status) holds (the reaper runs on its own tick)."""
        deadline = time.monotonic() + timeout
        while True:
            status = self.status()
            if predicate(status):
                return status
            if time.monotonic() > deadline:
                raise AssertionError(f"condition not reached in {timeout}s: {status}")
            time.sleep(0.1)


@pytest.fixture(scope="module")
def server(tmp_path_factory) -> Iterator[Server]:
    _need_gpu()
    binary = os.environ.get("KVTIER_BIN")
    if not binary:
        pytest.skip("KVTIER_BIN is not set: no kvtier server binary to test against")
    tmp = tmp_path_factory.mktemp("gpu")
    config = tmp / "server.yaml"
    # Workers silent for 3 s are reaped (the reaping test); the others keep storing, retrieving
    # and pinging.
    config.write_text("engine:\n  registration_grace: 3s\n  worker_timeout: 3s\n")
    endpoint = f"ipc://{tmp}/kvtier.sock"
    port = _free_port()
    args = [binary, "--log-level", "warn", "server", "--config", str(config),
            "--endpoint", endpoint, "--admin-port", str(port), "--l1-size", "2GiB"]
    process = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = process.stdout.readline()
        if not line.startswith("kvtier server ready"):
            process.kill()
            pytest.fail(f"{args} did not start: {line!r} {process.stderr.read()}")
        yield Server(endpoint, port)
    finally:
        process.terminate()
        process.wait(timeout=60)


def make_cache(fmt: str, dtype: Any, *, layers: int = 3, blocks: int = 64, block_size: int = 16,
               heads: int = 2, dim: int = 64, seed: int = 0) -> list[Any]:
    if fmt == "mla":
        shape = (blocks, block_size, dim * 3)
    elif fmt == "cross_layer":
        shape = (blocks, layers, 2, block_size, heads, dim)
        layers = 1  # one tensor
    else:
        shape = {
            "kv_nhd": (2, blocks, block_size, heads, dim),
            "nb_kv_nhd": (blocks, 2, block_size, heads, dim),
            "kv_hnd": (2, blocks, heads, block_size, dim),
            "nb_kv_hnd": (blocks, 2, heads, block_size, dim),
        }[fmt]
    g = torch.Generator(device="cuda").manual_seed(seed)
    out = []
    size = torch.empty(0, dtype=dtype).element_size()
    for _ in range(layers):
        # Random bits of the right width, viewed as the dtype (NaN patterns included: compared
        # bitwise).
        t = torch.empty(shape, dtype=dtype, device="cuda")
        t.view(torch.uint8).copy_(
            torch.randint(0, 256, (*shape[:-1], shape[-1] * size), dtype=torch.uint8,
                          device="cuda", generator=g))
        out.append(t)
    return out


def token_slices(t: Any, fmt: str, block: int, offset: int) -> list[Any]:
    """Views of one token (every head, K and V) of one layer tensor."""
    if fmt == "kv_nhd":
        return [t[:, block, offset]]
    if fmt == "nb_kv_nhd":
        return [t[block, :, offset]]
    if fmt == "kv_hnd":
        return [t[:, block, :, offset]]
    if fmt == "nb_kv_hnd":
        return [t[block, :, :, offset]]
    if fmt == "cross_layer":
        return [t[block, :, :, offset]]  # every layer at once
    return [t[block, offset]]


def expect_copied(src: list[Any], dst: list[Any], fmt: str, src_blocks: list[int],
                  dst_blocks: list[int], tokens: int, skip: int, block_size: int) -> None:
    """dst as it must be after retrieving src's tokens [0, tokens) from src_blocks into
    dst_blocks, skipping the first `skip`."""
    for layer in range(len(src)):
        for t in range(skip, tokens):
            b, o = divmod(t, block_size)
            for s_view, d_view in zip(token_slices(src[layer], fmt, src_blocks[b], o),
                                      token_slices(dst[layer], fmt, dst_blocks[b], o)):
                d_view.copy_(s_view)


def bits(t: Any) -> Any:
    return t.contiguous().view(torch.uint8)


def key(model: str, tokens: list[int], request_id: str, rank: bool = True) -> kvtier.Key:
    fields = {"worker_rank": 0} if rank else {}
    return kvtier.Key(model=model, request_id=request_id, tokens=tokens, **fields)


def lookup_until(client: Any, model: str, tokens: list[int], request_id: str, want: int,
                 timeout: float = 10.0) -> None:
    """LOOKUP until `want` chunks hit. A STORE's event completes a moment before the server
    publishes its chunks (docs/gpu.md, Ordering), so a lookup right after it may still miss."""
    deadline = time.monotonic() + timeout
    while True:
        client.lookup(key(model, tokens, request_id, rank=False)).result(10)
        hits = client.wait_prefetch_status(request_id, wait=10).result(15).hit_chunks
        if hits == want or time.monotonic() > deadline:
            assert hits == want, f"{request_id}: {hits} of {want} chunks hit"
            return
        client.end_session(request_id).result(10)  # the round trips pace the retries


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("dtype_name", DTYPES)
def test_round_trip_is_bitwise(server: Server, fmt: str, dtype_name: str) -> None:
    dtype = getattr(torch, dtype_name)
    block_size = 16
    model = f"gpu-{fmt}-{dtype_name}"
    src = make_cache(fmt, dtype, seed=1)
    dst = make_cache(fmt, dtype, seed=2)
    expected = [t.clone() for t in dst]
    with kvtier.Client(server.endpoint) as client:
        src_cache = CudaKvCache(client, instance_id=f"{model}-src", model=model, kv_caches=src,
                                format=fmt)
        dst_cache = CudaKvCache(client, instance_id=f"{model}-dst", model=model, kv_caches=dst,
                                format=fmt)
        src_cache.register(timeout=30)
        dst_cache.register(timeout=30)
        for c in (src_cache, dst_cache):
            client.ping(c.instance_id).result(10)
        tokens = list(range(1000, 1000 + 2 * CHUNK))
        src_blocks = [(i * 7 + 3) % 64 for i in range(2 * CHUNK // block_size)]
        dst_blocks = [(i * 5 + 1) % 64 for i in range(2 * CHUNK // block_size)]
        stored = src_cache.store(src_blocks, key(model, tokens, "r1")).result(30, sync=True)
        assert stored.stored_chunks == 2
        assert stored.event_ipc_handle is not None

        lookup_until(client, model, tokens, "r2", 2)
        skip = CHUNK + block_size + 3  # inside the second chunk, mid-block
        future = dst_cache.retrieve(dst_blocks, key(model, tokens, "r2"),
                                    skip_first_n_tokens=skip)
        deadline = time.monotonic() + 30
        while not future.done():  # the reply and the server's event: polled, never blocking
            assert time.monotonic() < deadline, "retrieve not done in 30 s"
        got = future.result(30)
        torch.cuda.current_stream().synchronize()  # result() ordered the stream after the copy
        assert got.retrieved_chunks == 2
        expect_copied(src, expected, fmt, src_blocks, dst_blocks, 2 * CHUNK, skip, block_size)
        for layer in range(len(dst)):
            assert torch.equal(bits(dst[layer]), bits(expected[layer])), f"layer {layer}"
        client.end_session("r1").result(10)
        client.end_session("r2").result(10)
        src_cache.unregister(10)
        dst_cache.unregister(10)


def test_bad_requests_fail_cleanly(server: Server) -> None:
    fmt, dtype = "kv_nhd", torch.bfloat16
    kv = make_cache(fmt, dtype, seed=3)
    with kvtier.Client(server.endpoint) as client:
        cache = CudaKvCache(client, instance_id="bad-1", model="bad", kv_caches=kv, format=fmt)
        # A handle that is no allocation.
        with pytest.raises(kvtier.KvtierError):
            client.register_kv_cache(instance_id="bad-0", model="bad", layout=cache.layout,
                                     backend="cuda", device_uuid=cache.device_uuid,
                                     cuda_ipc_handles=[b"\x01" * 64] * 3).result(10)
        # Layers claimed beyond their allocation: offsets past the end.
        layout = dict(cache.layout)
        layout["layer_offsets"] = [o + (1 << 30) for o in cache.layout["layer_offsets"]]
        with pytest.raises(kvtier.InvalidArgument):
            client.register_kv_cache(instance_id="bad-2", model="bad", layout=layout,
                                     backend="cuda", device_uuid=cache.device_uuid,
                                     cuda_ipc_handles=cache.handles).result(10)
        # A device the server cannot see.
        with pytest.raises(kvtier.NotFound):
            client.register_kv_cache(instance_id="bad-3", model="bad", layout=cache.layout,
                                     backend="cuda", device_uuid=b"\xee" * 16,
                                     cuda_ipc_handles=cache.handles).result(10)
        cache.register(timeout=30)
        tokens = list(range(CHUNK))
        with pytest.raises(kvtier.KvtierError):  # block 64 is past num_blocks
            cache.store([64] * 16, key("bad", tokens, "b1")).result(10)
        assert cache.store(list(range(16)), key("bad", tokens, "b1")).result(10).stored_chunks == 1
        cache.unregister(10)
    # The reply came before the copies ended; the mapping closes when the last transfer using
    # the registration returns.
    server.wait_for(lambda st: st["gpu"]["ipc_mappings"] == 0, timeout=10)


def _child_store(endpoint: str, fmt: str, seed: int, instance: str, tokens: list[int],
                 unregister: bool) -> None:
    kv = make_cache(fmt, torch.bfloat16, seed=seed)
    with kvtier.Client(endpoint) as client:
        cache = CudaKvCache(client, instance_id=instance, model="shared", kv_caches=kv, format=fmt)
        cache.register(timeout=30)
        blocks = list(range(len(tokens) // 16))
        if tokens:
            r = cache.store(blocks, key("shared", tokens, f"{instance}-s")).result(60, sync=True)
            assert r.stored_chunks == len(tokens) // CHUNK, r
        if unregister:
            cache.unregister(10)


def test_two_processes_store_concurrently(server: Server) -> None:
    fmt = "kv_nhd"
    ctx = multiprocessing.get_context("spawn")
    seqs = {7: list(range(5000, 5000 + 4 * CHUNK)), 8: list(range(9000, 9000 + 4 * CHUNK))}
    children = [ctx.Process(target=_child_store,
                            args=(server.endpoint, fmt, seed, f"child-{seed}", seqs[seed], True))
                for seed in seqs]
    for c in children:
        c.start()
    for c in children:
        c.join(120)
        assert c.exitcode == 0
    # This process reads both back and compares with the children's data (same seeds).
    dst = make_cache(fmt, torch.bfloat16, seed=99)
    with kvtier.Client(server.endpoint) as client:
        cache = CudaKvCache(client, instance_id="reader", model="shared", kv_caches=dst,
                            format=fmt)
        cache.register(timeout=30)
        client.ping("reader").result(10)
        blocks = list(range(4 * CHUNK // 16))
        for seed, tokens in seqs.items():
            lookup_until(client, "shared", tokens, f"read-{seed}", 4)
            cache.retrieve(blocks, key("shared", tokens, f"read-{seed}")).result(60, sync=True)
            src = make_cache(fmt, torch.bfloat16, seed=seed)
            for layer in range(len(dst)):
                assert torch.equal(bits(dst[layer][:, : len(blocks)]),
                                   bits(src[layer][:, : len(blocks)])), (seed, layer)
            client.end_session(f"read-{seed}").result(10)
        cache.unregister(10)


def test_exited_client_is_reaped_and_its_mappings_released(server: Server) -> None:
    ctx = multiprocessing.get_context("spawn")
    child = ctx.Process(target=_child_store,
                        args=(server.endpoint, "kv_hnd", 11, "leaver", [], False))
    child.start()
    child.join(120)
    assert child.exitcode == 0
    # Registered, never pinged, gone: reaped after registration_grace (3 s).
    status = server.wait_for(
        lambda s: all(w["instance_id"] != "leaver" for w in s["engine"]["workers"]))
    assert status["gpu"]["ipc_mappings"] == 0
