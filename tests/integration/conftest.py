"""Fixtures: real `kvtier server` processes (the binary named by $KVTIER_BIN), each on its own
ipc endpoint and admin port, stopped with SIGTERM (a graceful shutdown) after the test."""
import json
import os
import socket
import subprocess
import tempfile
import time
import urllib.request
from multiprocessing import shared_memory

import pytest

import kvwire

KVTIER_BIN = os.environ.get("KVTIER_BIN")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    def __init__(self, tmp, *flags):
        self.endpoint = f"ipc://{tmp}/kvtier.sock"
        self.admin_port = free_port()
        self.cmd = [KVTIER_BIN, "--log-level", "warn", "server", "--endpoint", self.endpoint,
                    "--admin-port", str(self.admin_port), *flags]
        self.proc = subprocess.Popen(self.cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     text=True)
        line = self.proc.stdout.readline()  # "kvtier server ready: ..." once it serves
        if not line.startswith("kvtier server ready"):
            self.proc.kill()
            raise RuntimeError(f"server did not start: {line} {self.proc.stderr.read()}")

    def client(self):
        return kvwire.Client(self.endpoint)

    def http(self, path, method="GET"):
        req = urllib.request.Request(f"http://127.0.0.1:{self.admin_port}{path}", method=method)
        with urllib.request.urlopen(req, timeout=10) as r:
            body = r.read().decode()
            return json.loads(body) if r.headers.get_content_type() == "application/json" else body

    def status(self):
        return self.http("/api/status")

    def stop(self, sig_term=True):
        if self.proc.poll() is None:
            self.proc.terminate() if sig_term else self.proc.kill()
        return self.proc.wait(timeout=60)


@pytest.fixture
def server_factory():
    if not KVTIER_BIN:
        pytest.skip("KVTIER_BIN is not set (ctest sets it)")
    servers, dirs = [], []

    def start(*flags):
        d = tempfile.mkdtemp(prefix="kvt-it-")
        dirs.append(d)
        s = Server(d, *flags)
        servers.append(s)
        return s

    yield start
    for s in servers:
        s.stop()


@pytest.fixture
def server(server_factory):
    return server_factory()


# The engine side: a paged KV cache in shared memory, vLLM flash-attention layout.
LAYERS, HEADS, DIM, BLOCK, CHUNK = 2, 2, 64, 16, 256


class KvCache:
    def __init__(self, num_blocks=128, instance="engine-0", model="it-model"):
        self.num_blocks, self.instance, self.model = num_blocks, instance, model
        self.layer_bytes = 2 * num_blocks * BLOCK * HEADS * DIM * 2
        self.shm = shared_memory.SharedMemory(create=True, size=self.layer_bytes * LAYERS)
        self.block_bytes = BLOCK * HEADS * DIM * 2

    def registration(self):
        return dict(instance_id=self.instance, model=self.model, world_size=1, worker_rank=0,
                    backend="host",
                    layout={"num_layers": LAYERS, "num_blocks": self.num_blocks,
                            "block_size": BLOCK, "num_kv_heads": HEADS, "head_dim": DIM,
                            "dtype": "bf16", "format": "kv_nhd",
                            "layer_offsets": [l * self.layer_bytes for l in range(LAYERS)]},
                    shm_name="/" + self.shm.name, shm_size=self.layer_bytes * LAYERS)

    def block(self, layer, kv, b):
        off = layer * self.layer_bytes + (kv * self.num_blocks + b) * self.block_bytes
        return bytes(self.shm.buf[off:off + self.block_bytes])

    def fill(self, seed):
        import random
        rnd = random.Random(seed)
        self.shm.buf[:] = rnd.randbytes(len(self.shm.buf))

    def zero(self):
        self.shm.buf[:] = bytes(len(self.shm.buf))

    def close(self):
        self.shm.close()
        self.shm.unlink()


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
