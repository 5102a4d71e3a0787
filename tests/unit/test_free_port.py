"""free_port: ports a test server can bind after the call, outside the kernel's ephemeral range."""

from __future__ import annotations

import socket

from mxfs.demo import _ephemeral_range, free_port


def test_ports_lie_outside_the_ephemeral_range_and_are_never_repeated():
    low, high = _ephemeral_range()
    ports = [free_port() for _ in range(200)]
    assert len(set(ports)) == len(ports)
    assert all(not low <= p <= high for p in ports)
    for port in ports[:20]:
        with socket.socket() as s:
            s.bind(("127.0.0.1", port))


def test_a_port_in_use_is_not_handed_out():
    listeners = []
    try:
        for _ in range(50):
            port = free_port()
            s = socket.socket()
            s.bind(("127.0.0.1", port))
            s.listen()
            listeners.append(s)
        busy = {s.getsockname()[1] for s in listeners}
        assert not busy & {free_port() for _ in range(50)}
    finally:
        for s in listeners:
            s.close()
