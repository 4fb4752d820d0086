"""The compiled reply bounds: every RESP2/RESP3 reply, split across reads anywhere, reaches its request whole."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kvstore_proxy.backend import Backend
from kvstore_proxy.datapath import CommandStat, Outbox, Reply, reply_end, scan_reply

_TEXT = st.binary(max_size=12).map(lambda b: b.replace(b"\r", b"r").replace(b"\n", b"n"))
_NUM = st.integers(-(10**12), 10**12)


def _bulk(tag: bytes, payload: bytes) -> bytes:
    return tag + b"%d\r\n" % len(payload) + payload + b"\r\n"


_LEAF = st.one_of(
    _TEXT.map(lambda t: b"+" + t + b"\r\n"),
    _TEXT.map(lambda t: b"-ERR " + t + b"\r\n"),
    _NUM.map(lambda n: b":%d\r\n" % n),
    st.binary(max_size=40).map(lambda b: _bulk(b"$", b)),  # payloads may hold CRLF, '*', '$'...
    st.sampled_from([b"$-1\r\n", b"*-1\r\n", b"_\r\n", b",1.5\r\n", b",-inf\r\n", b"#t\r\n", b"#f\r\n",
                     b"(3492890328409238509324850943850943825024385\r\n"]),
    st.binary(max_size=20).map(lambda b: _bulk(b"=", b"txt:" + b)),
    st.binary(max_size=20).map(lambda b: _bulk(b"!", b"ERR " + b)),
    st.lists(st.binary(min_size=1, max_size=6), max_size=3).map(
        lambda chunks: b"$?\r\n" + b"".join(_bulk(b";", c) for c in chunks) + b";0\r\n"),
)


def _aggregate(children: st.SearchStrategy[list[bytes]]) -> st.SearchStrategy[bytes]:
    def counted(tag: bytes) -> st.SearchStrategy[bytes]:
        return children.map(lambda items: tag + b"%d\r\n" % len(items) + b"".join(items))

    maps = st.lists(st.tuples(_LEAF, _LEAF), max_size=3).map(
        lambda pairs: b"%%%d\r\n" % len(pairs) + b"".join(k + v for k, v in pairs))
    streamed = st.tuples(st.sampled_from([b"*", b"~"]), children).map(
        lambda t: t[0] + b"?\r\n" + b"".join(t[1]) + b".\r\n")
    attributed = st.tuples(st.lists(st.tuples(_LEAF, _LEAF), min_size=1, max_size=2), children).map(
        lambda t: b"|%d\r\n" % len(t[0]) + b"".join(k + v for k, v in t[0]) + b"*%d\r\n" % len(t[1]) + b"".join(t[1]))
    return st.one_of(counted(b"*"), counted(b"~"), maps, streamed, attributed)


_REPLY = st.recursive(_LEAF, lambda inner: _aggregate(st.lists(inner, max_size=4)), max_leaves=12)


@pytest.fixture
def backend() -> Iterator[Backend]:
    loop = asyncio.new_event_loop()
    try:
        yield Backend("g1", "127.0.0.1:1", Outbox(loop))
    finally:
        loop.close()


def _feed(backend: Backend, replies: list[bytes], cuts: list[int]) -> list[bytes]:
    pending = [Reply(None, time.monotonic(), CommandStat("t"), []) for _ in replies]
    backend.fifo.extend(pending)
    stream = b"".join(replies)
    at = 0
    for cut in sorted({c % (len(stream) + 1) for c in cuts}) + [len(stream)]:
        if cut > at:
            backend.data_received(stream[at:cut])
            at = cut
    return [r.data for r in pending]


@settings(max_examples=400, deadline=None)
@given(st.lists(_REPLY, min_size=1, max_size=6), st.lists(st.integers(0, 10**6), max_size=12))
def test_each_request_gets_its_reply_bytes_whatever_the_reads(replies: list[bytes], cuts: list[int]) -> None:
    loop = asyncio.new_event_loop()
    try:
        backend = Backend("g1", "127.0.0.1:1", Outbox(loop))
        assert _feed(backend, replies, cuts) == replies
        assert not backend.fifo and backend.buffered == 0
    finally:
        loop.close()


@settings(max_examples=300, deadline=None)
@given(_REPLY, st.sampled_from([b"", b"+NEXT\r\n", b"$3\r\nabc\r\n", b"*1\r\n"]))
def test_reply_end_is_exact_and_says_when_a_reply_is_incomplete(reply: bytes, after: bytes) -> None:
    assert reply_end(reply + after) == len(reply)
    for cut in range(len(reply)):
        assert reply_end(reply[:cut]) == -1


@settings(max_examples=200, deadline=None)
@given(_REPLY, st.sampled_from([b"", b"+NEXT\r\n"]), st.lists(st.integers(1, 50), min_size=1, max_size=30))
def test_scan_reply_resumes_where_it_stopped(reply: bytes, after: bytes, steps: list[int]) -> None:
    """resp.scan_reply, the resumable scanner Python code calls (leased connections): fed more and
    more of the bytes, it ends exactly at the reply's end, with nothing left on its stack."""
    buf = bytearray(reply + after)
    pos, stack, n, complete = 0, [], 0, False  # type: ignore[var-annotated]
    for step in steps * (len(buf) // sum(steps) + 1):
        n = min(n + step, len(buf))
        pos, complete = scan_reply(buf, pos, n, stack)
        if complete or n == len(buf):
            break
    assert (pos, complete, stack) == (len(reply), True, [])


def test_a_reply_byte_at_a_time(backend: Backend) -> None:
    replies = [b"*3\r\n$1\r\na\r\n*2\r\n:1\r\n$-1\r\n%1\r\n+k\r\n$2\r\nv\n\r\n", b"$5\r\nhello\r\n", b"+OK\r\n"]
    assert _feed(backend, replies, list(range(100))) == replies


@pytest.mark.parametrize("garbage", [b"?x\r\n", b";3\r\nabc\r\n", b".\r\n", b"$x\r\n", b"|?\r\n", b"%x\r\n"])
def test_what_is_not_resp_is_refused(garbage: bytes) -> None:
    from kvstore_proxy.resp import ProtocolError

    with pytest.raises(ProtocolError):
        reply_end(garbage)
