"""Fixtures for the kvtier Python tests.

Most tests need no server: `fake_server` is an in-process ZMQ ROUTER (tests/fake_server.py,
needing Debian's python3-zmq and python3-msgpack; skipped without them).

`kvtier_server` starts a real `kvtier server` from $KVTIER_BIN for integration tests; it is a
stub for now and every test using it is skipped while KVTIER_BIN is not set.
"""

from __future__ import annotations

import gc
import os
import shlex
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

_PACKAGE_ROOT = Path(__file__).resolve().parent.parent
# `python -m pytest` run inside python/ puts the source package first on sys.path; unless it
# holds a built extension (setup.py build_ext --inplace), test the installed package instead.
if not list((_PACKAGE_ROOT / "kvtier").glob("_kvtier*.so")):
    sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _PACKAGE_ROOT]
sys.path.insert(0, str(Path(__file__).parent))  # for fake_server


@pytest.fixture
def fake_server() -> Iterator:
    pytest.importorskip("zmq")
    pytest.importorskip("msgpack")
    from fake_server import FakeServer

    servers: list[FakeServer] = []

    def start(handler=None, **kwargs) -> FakeServer:
        server = FakeServer(handler, **kwargs)
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.close()
    # Finalise unreachable pyzmq objects now, on this thread: left to a later garbage collection
    # they can be finalised on another thread in the middle of its socket calls (libzmq sockets
    # are not thread-safe), which aborted the process once under a loaded ctest run.
    gc.collect()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def kvtier_server(tmp_path) -> Iterator[str]:
    """The endpoint of a `kvtier server` started from $KVTIER_BIN (skipped when unset).

    A stub for the integration tests to come: starts
    `$KVTIER_BIN --log-level warn server --endpoint ipc://<tmp>/kvtier.sock --admin-port <free>`
    (plus $KVTIER_SERVER_ARGS), waits for its "kvtier server ready" line, and stops it with
    SIGTERM after the test.
    """
    binary = os.environ.get("KVTIER_BIN")
    if not binary:
        pytest.skip("KVTIER_BIN is not set: no kvtier server binary to test against")
    endpoint = f"ipc://{tmp_path}/kvtier.sock"
    args = [binary, "--log-level", "warn", "server", "--endpoint", endpoint,
            "--admin-port", str(_free_port()), *shlex.split(os.environ.get("KVTIER_SERVER_ARGS", ""))]
    process = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = process.stdout.readline()
        if not line.startswith("kvtier server ready"):
            process.kill()
            pytest.fail(f"{args} did not start: {line!r} {process.stderr.read()}")
        yield endpoint
    finally:
        if process.poll() is None:
            process.terminate()
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
