"""RESP2 building blocks: reply encoders, request encoding, the resumable reply scanner, inline splitting."""

from __future__ import annotations

import hiredis

CRLF = b"\r\n"
OK = b"+OK\r\n"
PONG = b"+PONG\r\n"
NULL_BULK = b"$-1\r\n"
NULL_ARRAY = b"*-1\r\n"
EMPTY_ARRAY = b"*0\r\n"

# Precomputed headers: most arguments and replies are short, and a list index is cheaper than
# formatting a number on every request.
_TABLE = 4096
BULK_HDR = [b"$%d\r\n" % i for i in range(_TABLE)]
ARRAY_HDR = [b"*%d\r\n" % i for i in range(_TABLE)]
INT = [b":%d\r\n" % i for i in range(_TABLE)]


class ProtocolError(Exception):
    """Bytes that are not RESP; the message is what Redis would say after ``Protocol error: ``."""


# --- encoders ----------------------------------------------------------------------------------


def bulk(value: bytes) -> bytes:
    n = len(value)
    return (BULK_HDR[n] if n < _TABLE else b"$%d\r\n" % n) + value + CRLF


def integer(n: int) -> bytes:
    return INT[n] if 0 <= n < _TABLE else b":%d\r\n" % n


def status(text: str | bytes) -> bytes:
    raw = text.encode() if isinstance(text, str) else text
    return b"+" + raw.replace(b"\r", b" ").replace(b"\n", b" ") + CRLF


def error(text: str | bytes) -> bytes:
    """An error reply; ``text`` starts with the error code (``ERR``, ``NOAUTH``, ...)."""
    raw = text.encode(errors="replace") if isinstance(text, str) else text
    return b"-" + raw.replace(b"\r", b" ").replace(b"\n", b" ") + CRLF


def array(items: list[bytes]) -> bytes:
    """An array of already encoded replies."""
    n = len(items)
    return (ARRAY_HDR[n] if n < _TABLE else b"*%d\r\n" % n) + b"".join(items)


def bulk_array(values: list[bytes | None]) -> bytes:
    """An array of bulk strings (``None`` -> null bulk), as MGET answers."""
    n = len(values)
    out = [ARRAY_HDR[n] if n < _TABLE else b"*%d\r\n" % n]
    append = out.append
    for v in values:
        if v is None:
            append(NULL_BULK)
        else:
            m = len(v)
            append(BULK_HDR[m] if m < _TABLE else b"$%d\r\n" % m)
            append(v)
            append(CRLF)
    return b"".join(out)


def encode_value(obj: object) -> bytes:
    """Encode a value as hiredis parsed it (bytes, int, None, list, ReplyError)."""
    if isinstance(obj, bytes):
        return bulk(obj)
    if isinstance(obj, int):
        return integer(obj)
    if obj is None:
        return NULL_BULK
    if isinstance(obj, list):
        return array([encode_value(x) for x in obj])
    if isinstance(obj, hiredis.ReplyError):
        return error(str(obj))
    if isinstance(obj, str):
        return bulk(obj.encode())
    raise TypeError(f"cannot encode {type(obj).__name__} as RESP")


def command(args: list[bytes]) -> bytes:
    """Encode a request as a multibulk array (what every Redis client sends)."""
    n = len(args)
    out = [ARRAY_HDR[n] if n < _TABLE else b"*%d\r\n" % n]
    append = out.append
    for a in args:
        m = len(a)
        append(BULK_HDR[m] if m < _TABLE else b"$%d\r\n" % m)
        append(a)
        append(CRLF)
    return b"".join(out)


# --- parsing -----------------------------------------------------------------------------------

_NOT_ENOUGH = object()


def parse_one(raw: bytes) -> object:
    """Parse one complete reply (the scanner already found its bounds) into Python values.

    A fresh reader per call: a shared one would be left in a bad state by a malformed reply.
    """
    reader = hiredis.Reader(notEnoughData=_NOT_ENOUGH)
    reader.feed(raw)
    value = reader.gets()
    if value is _NOT_ENOUGH:
        raise ProtocolError("incomplete reply")
    return value


def scan_reply(buf: bytes | bytearray, p: int, n: int, stack: list[int]) -> tuple[int, bool]:
    """Skip over complete RESP elements from ``p``; return ``(position, reply_complete)``.

    Resumable: when the data ends inside a reply, ``position`` is the start of the first
    incomplete element and ``stack`` holds the element counts still expected by the enclosing
    arrays; call again with both once more data has arrived. Only the incomplete element is
    looked at again, so a large array arriving in many reads costs linear time.
    """
    find = buf.find
    while True:
        if p >= n:
            return p, False
        c = buf[p]
        nl = find(b"\r\n", p)
        if nl < 0:
            return p, False
        if c == 36:  # $
            size = int(buf[p + 1 : nl])
            if size >= 0:
                end = nl + size + 4
                if end > n:
                    return p, False
                p = end
            else:
                p = nl + 2
        elif c == 42:  # *
            count = int(buf[p + 1 : nl])
            p = nl + 2
            if count > 0:
                stack.append(count)
                continue
        elif c == 43 or c == 45 or c == 58:  # + - :
            p = nl + 2
        else:
            raise ProtocolError(f"unexpected reply type byte {bytes([c])!r}")
        # one element is complete: close every array it completes
        while stack:
            stack[-1] -= 1
            if stack[-1]:
                break
            stack.pop()
        else:
            return p, True


def split_inline(line: bytes) -> list[bytes]:
    """Split an inline command line into arguments like Redis's ``sdssplitargs``.

    Raises ``ProtocolError("unbalanced quotes in request")`` as Redis does.
    """
    args: list[bytes] = []
    i, n = 0, len(line)
    while True:
        while i < n and line[i] in b" \t\r\n\v\f":
            i += 1
        if i >= n:
            return args
        cur = bytearray()
        in_dq = in_sq = False
        while True:
            if in_dq:
                if i >= n:
                    raise ProtocolError("unbalanced quotes in request")
                c = line[i]
                if (c == 0x5C and i + 3 < n and line[i + 1] == 0x78
                        and _is_hex(line[i + 2]) and _is_hex(line[i + 3])):
                    cur.append(int(line[i + 2 : i + 4], 16))
                    i += 3
                elif c == 0x5C and i + 1 < n:
                    i += 1
                    cur.append({0x6E: 10, 0x72: 13, 0x74: 9, 0x62: 8, 0x61: 7}.get(line[i], line[i]))
                elif c == 0x22:
                    if i + 1 < n and line[i + 1] not in b" \t\r\n\v\f":
                        raise ProtocolError("unbalanced quotes in request")
                    in_dq = False
                else:
                    cur.append(c)
            elif in_sq:
                if i >= n:
                    raise ProtocolError("unbalanced quotes in request")
                c = line[i]
                if c == 0x5C and i + 1 < n and line[i + 1] == 0x27:
                    i += 1
                    cur.append(0x27)
                elif c == 0x27:
                    if i + 1 < n and line[i + 1] not in b" \t\r\n\v\f":
                        raise ProtocolError("unbalanced quotes in request")
                    in_sq = False
                else:
                    cur.append(c)
            else:
                if i >= n:
                    break
                c = line[i]
                if c in b" \t\r\n\v\f":
                    break
                if c == 0x22:
                    in_dq = True
                elif c == 0x27:
                    in_sq = True
                else:
                    cur.append(c)
            i += 1
        args.append(bytes(cur))


def _is_hex(c: int) -> bool:
    return c in b"0123456789abcdefABCDEF"
