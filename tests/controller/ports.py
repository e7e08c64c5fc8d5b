"""Free local TCP ports for the controller tests (tests/controller is on sys.path through
conftest.py)."""
import socket

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
