"""Fixtures: a real `kvtier controller` process (the binary named by $KVTIER_BIN) on free
loopback ports, stopped with SIGTERM after the test."""
import json
import os
import re
import subprocess
import sys
import tempfile
import urllib.error
import urllib.request

import pytest

sys.path.insert(0, os.path.dirname(__file__))
import ctlwire  # noqa: E402
import testkit  # noqa: E402

KVTIER_BIN = os.environ.get("KVTIER_BIN")
READY = re.compile(r"kvtier controller ready: requests=(\S+) events=(\S+) heartbeats=(\S+)"
                   r" admin=(\S+) epoch=(\S+)")


class Controller:
    def __init__(self, *flags, base_port=0):
        """base_port 0: free ports; else requests, events and heartbeats on base_port, +1, +2."""
        ports = [base_port + i if base_port else 0 for i in range(3)]
        self.cmd = [KVTIER_BIN, "--log-level", "warn", "controller",
                    "--request-endpoint", f"tcp://127.0.0.1:{ports[0]}",
                    "--events-endpoint", f"tcp://127.0.0.1:{ports[1]}",
                    "--heartbeat-endpoint", f"tcp://127.0.0.1:{ports[2]}",
                    "--admin-port", "0", *flags]
        # The log goes to a file: a pipe nobody reads could fill and block the controller.
        self.log = tempfile.TemporaryFile(mode="w+")
        self.proc = subprocess.Popen(self.cmd, stdout=subprocess.PIPE, stderr=self.log, text=True)
        line = self.proc.stdout.readline()  # printed once it serves
        m = READY.match(line)
        if not m:
            self.proc.kill()
            self.proc.wait()
            raise RuntimeError(f"controller did not start: {line!r} {self.log_text()}")
        self.endpoints = {"requests": m[1], "events": m[2], "heartbeats": m[3]}
        self.admin = m[4]
        self.epoch = int(m[5], 16)
        self.workers = []

    def log_text(self):
        self.log.seek(0)
        return self.log.read()

    def worker(self, instance_id, **kwargs):
        w = ctlwire.Worker(self.endpoints, instance_id, **kwargs)
        self.workers.append(w)
        return w

    def http(self, path, method="GET", body=None, raw=False):
        """(status, parsed JSON or text); HTTP errors are returned, not raised."""
        data = None
        if body is not None:
            data = body.encode() if isinstance(body, str) else json.dumps(body).encode()
        req = urllib.request.Request(self.admin + path, data=data, method=method,
                                     headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=10) as r:
                status, ctype, text = r.status, r.headers.get_content_type(), r.read().decode()
        except urllib.error.HTTPError as e:
            status, ctype, text = e.code, e.headers.get_content_type(), e.read().decode()
        if ctype == "application/json" and not raw:
            return status, json.loads(text)
        return status, text

    def wait_for(self, condition, timeout=10.0, what="condition"):
        """Polls `condition` until it is true or `timeout` passes (then fails the test)."""
        return testkit.wait_until(condition, what, timeout)

    def stop(self):
        for w in self.workers:
            w.close()
        if self.proc.poll() is None:
            self.proc.terminate()
        return self.proc.wait(timeout=30)


@pytest.fixture
def controller_factory():
    if not KVTIER_BIN:
        pytest.skip("KVTIER_BIN is not set (ctest sets it)")
    started = []

    def start(*flags, base_port=0):
        c = Controller(*flags, base_port=base_port)
        started.append(c)
        return c

    yield start
    for c in started:
        c.stop()


@pytest.fixture
def controller(controller_factory):
    return controller_factory()
