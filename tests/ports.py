"""Loopback ports for the tests' servers and for addresses where nothing may answer."""

from __future__ import annotations

import socket


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago: bind a server there soon, or use it as an address where
    nothing listens."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]
