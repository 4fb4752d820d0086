"""The shortcuts that find where an array reply ends without the Python scanner agree with it."""

from __future__ import annotations

import hiredis
from hypothesis import given, settings
from hypothesis import strategies as st

from kvstore_proxy import resp
from kvstore_proxy.backend import bulk_array_end, uniform_bulk_array_end

_PAYLOAD = st.binary(max_size=120) | st.sampled_from([b"", b"x", b"abc", b"+=(", b"\r\n+ok", b"$3\r\nabc", b"_*%~>"])
_OTHER = st.sampled_from([b"$-1\r\n", b"+ok\r\n", b"_\r\n", b"*-1\r\n", b"=7\r\ntxt:abc\r\n", b"(12\r\n",
                          b":5\r\n", b",1.5\r\n", b"#t\r\n", b"-ERR x\r\n", b"*1\r\n$1\r\na\r\n"])
_ELEMENT = _PAYLOAD.map(lambda v: b"$%d\r\n%s\r\n" % (len(v), v)) | _OTHER
_NEXT = st.sampled_from([b"", b"+NEXT\r\n", b"$3\r\nabc\r\n", b"*1\r\n$3\r\nabc\r\n", b"$3\r\n"])


def _true_end(buf: bytes) -> int:
    end, complete = resp.scan_reply(buf, 0, len(buf), [])
    return end if complete else -1


@settings(max_examples=800, deadline=None)
@given(st.sampled_from([b"*", b"~"]), st.lists(_ELEMENT, min_size=1, max_size=8), _NEXT, st.integers(0, 200))
def test_bulk_array_end_is_exact_or_declines(head: bytes, elements: list[bytes], after: bytes, cut: int) -> None:
    reply = head + b"%d\r\n" % len(elements) + b"".join(elements)
    buf = reply + after
    reader = hiredis.Reader(notEnoughData=None)
    reader.feed(buf)
    try:
        value = reader.gets()
    except hiredis.ProtocolError:
        return
    if value.__class__ is not list:
        return
    try:
        end = bulk_array_end(buf, 0, len(buf), value)
    except TypeError:  # an element that is no string: the caller falls back
        return
    assert end in (-1, len(reply))
    nulls = b"$-1\r\n" in elements
    if all(e.startswith(b"$") for e in elements) and not any(c in reply for c in b"+=(") \
            and not (nulls and any(c in reply[1:] for c in b"_*%~>")):
        assert end == len(reply)  # the common cases are never declined


@settings(max_examples=800, deadline=None)
@given(st.lists(_ELEMENT, min_size=1, max_size=8), _NEXT, st.integers(0, 400))
def test_uniform_bulk_array_end_is_exact_or_declines(elements: list[bytes], after: bytes, cut: int) -> None:
    reply = b"*%d\r\n" % len(elements) + b"".join(elements)
    buf = (reply + after)[: max(cut, 1)] if cut < len(reply) + len(after) else reply + after
    end = uniform_bulk_array_end(buf, 0, len(buf))
    assert end in (-1, _true_end(buf))
    if end >= 0:
        assert end == len(reply)
    if buf.startswith(reply) and len(set(elements)) == 1 and elements[0].startswith(b"$") and elements[0][1] != 45:
        assert end == len(reply)
