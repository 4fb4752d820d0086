"""Socket options the proxy sets on every connection it makes or accepts."""

from __future__ import annotations

import socket
from typing import Any


def set_nodelay(transport: Any) -> None:
    """Turn Nagle off: requests and replies are small and must leave at once."""
    sock = transport.get_extra_info("socket")
    if sock is not None:
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError:
            pass  # not a TCP socket (a unix socket): nothing to turn off
