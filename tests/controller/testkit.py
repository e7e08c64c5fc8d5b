"""Helpers shared by the controller tests (tests/controller is on sys.path through
conftest.py): free local TCP ports, and polling a condition with a deadline."""
import socket
import time

import pytest


def free_port():
    """A port free on 127.0.0.1 right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def free_port_triple():
    """A port P with P, P+1 and P+2 free: servers find the controller's events and heartbeats at
    P+1 and P+2."""
    for _ in range(50):
        base = free_port()
        if base + 2 > 65535:
            continue
        socks = []
        try:
            for p in (base, base + 1, base + 2):
                s = socket.socket()
                socks.append(s)
                s.bind(("127.0.0.1", p))
            return base
        except OSError:
            continue
        finally:
            for s in socks:
                s.close()
    pytest.skip("no three consecutive free ports")


def wait_until(predicate, what, timeout, state=None):
    """Polls `predicate` (another process's state: there is nothing to block on) until it returns
    something true, and returns that; on timeout fails the test, showing state() if given."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}" + (f": {state()}" if state else ""))
        time.sleep(0.02)
