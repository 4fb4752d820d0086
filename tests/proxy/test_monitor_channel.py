"""The channel between a proxy's workers (siblings.py) without a proxy: requests, garbage, absent siblings."""

from __future__ import annotations

import asyncio
import os
from typing import Any

from kvstore_proxy import siblings
from kvstore_proxy.siblings import Family, SiblingServer


class FakeTransport:
    def __init__(self) -> None:
        self.written = b""
        self.closed = self.aborted = False

    def write(self, data: bytes) -> None:
        self.written += data

    def close(self) -> None:
        self.closed = True

    def abort(self) -> None:
        self.aborted = True


def peer(one_shot: dict[bytes, Any], streams: dict[bytes, Any] | None = None) -> tuple[Any, FakeTransport]:
    p = siblings._Peer(one_shot, streams or {})
    t = FakeTransport()
    p.connection_made(t)
    return p, t


def test_a_request_line_gets_its_handlers_reply_then_the_connection_closes():
    p, t = peer({b"echo": lambda arg: b"got " + arg})
    p.data_received(b"ech")
    assert t.written == b""
    p.data_received(b"o some args\nignored")
    assert t.written == b"got some args" and t.closed


def test_garbage_from_a_sibling_gets_an_error_and_never_kills_the_worker():
    def boom(arg: bytes) -> bytes:
        raise ValueError("bad")

    p, t = peer({b"boom": boom})
    p.data_received(b"nosuch\n")
    assert t.written == b'{"error": "unknown request"}' and t.closed
    p, t = peer({b"boom": boom})
    p.data_received(b"boom x\n")
    assert t.written == b'{"error": "request failed"}' and t.closed
    p, t = peer({})
    p.data_received(b"x" * 5000)  # no end of line in sight
    assert t.aborted


def test_a_stream_request_hands_the_connection_over_and_hears_of_its_end():
    ended = []
    p, t = peer({}, {b"monitor": lambda transport: (lambda: ended.append(transport))})
    p.data_received(b"monitor\n")
    p.data_received(b"more bytes are ignored")
    assert t.written == b"" and not t.closed
    p.connection_lost(None)
    assert ended == [t]


async def test_ask_reaches_every_live_sibling_and_reports_the_others(tmp_path):
    directory = str(tmp_path)
    loop = asyncio.get_running_loop()
    servers = []
    for index in (1, 2):
        fam = Family(workers=4, index=index, directory=directory)
        server = SiblingServer(fam, loop, {b"who": lambda arg, i=index: b"worker %d %s" % (i, arg)}, {})
        await server.start()
        servers.append(server)
    # worker 3 died: its socket file is left behind and refuses connections
    import socket

    stale = socket.socket(socket.AF_UNIX)
    stale.bind(os.path.join(directory, "3.sock"))
    stale.close()
    try:
        me = Family(workers=4, index=0, directory=directory)
        replies = await siblings.ask(me, b"who x", timeout=2)
        assert replies == {1: b"worker 1 x", 2: b"worker 2 x", 3: None}
    finally:
        for server in servers:
            server.close()
    assert not os.path.exists(os.path.join(directory, "1.sock"))


def test_the_channel_directory_is_private_to_the_user():
    directory = siblings.make_directory()
    try:
        assert os.stat(directory).st_mode & 0o777 == 0o700
    finally:
        siblings.remove_directory(directory)
    assert not os.path.exists(directory)
