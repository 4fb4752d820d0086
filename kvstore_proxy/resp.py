"""RESP for the Python paths: RESP2/RESP3 reply encoders, request encoding, parsing one reply, inline splitting.

The per-request parsing and reply bounds are compiled (datapath.pyx).
"""

from __future__ import annotations

import hiredis

from kvstore_proxy.datapath import ProtocolError, reply_end, scan_reply

__all__ = ["ProtocolError", "scan_reply"]  # compiled, with the request path that uses them too

CRLF = b"\r\n"
OK = b"+OK\r\n"
PONG = b"+PONG\r\n"
NULL_BULK = b"$-1\r\n"
NULL_ARRAY = b"*-1\r\n"
EMPTY_ARRAY = b"*0\r\n"
NULL = b"_\r\n"  # RESP3's one null, for every type
NULL_ARRAY_OF = {2: NULL_ARRAY, 3: NULL}  # a nil array (EXEC aborted, a blocking timeout) by protocol

# Precomputed headers: most arguments and replies are short, and a list index is cheaper than
# formatting a number on every request.
_TABLE = 4096
BULK_HDR = [b"$%d\r\n" % i for i in range(_TABLE)]
ARRAY_HDR = [b"*%d\r\n" % i for i in range(_TABLE)]
INT = [b":%d\r\n" % i for i in range(_TABLE)]


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


def bulk_array(values: list[bytes | None], null: bytes = NULL_BULK) -> bytes:
    """An array of bulk strings (``None`` -> ``null``: ``$-1`` in RESP2), as MGET answers."""
    n = len(values)
    out = [ARRAY_HDR[n] if n < _TABLE else b"*%d\r\n" % n]
    append = out.append
    for v in values:
        if v is None:
            append(null)
        else:
            m = len(v)
            append(BULK_HDR[m] if m < _TABLE else b"$%d\r\n" % m)
            append(v)
            append(CRLF)
    return b"".join(out)


class Resp2:
    """The replies the proxy builds itself whose encoding depends on the client's protocol: RESP2.

    A session holds one of ``RESP2``/``RESP3`` (chosen by HELLO), so answers and merges call
    ``session.enc.null`` or ``session.enc.map(...)`` and never test the protocol themselves.
    """

    __slots__ = ()
    null = NULL_BULK  # a missing string (GET, CLIENT GETNAME, RANDOMKEY)
    bulk_array = staticmethod(bulk_array)

    @staticmethod
    def map(pairs: list[tuple[bytes, bytes]]) -> bytes:
        """Already encoded keys and values: a flat array in RESP2."""
        return array([x for kv in pairs for x in kv])

    @staticmethod
    def verbatim(text: bytes) -> bytes:
        """Text meant for humans (INFO, CLIENT LIST): a bulk string in RESP2."""
        return bulk(text)

    @staticmethod
    def double(x: float) -> bytes:
        """A floating point number (MEMORY STATS ratios): a bulk string in RESP2, as Redis's %.17g."""
        return bulk(b"%.17g" % x)


class Resp3(Resp2):
    """The same replies for a client that sent ``HELLO 3``, encoded as Redis 7.0 encodes them."""

    __slots__ = ()
    null = NULL

    @staticmethod
    def bulk_array(values: list[bytes | None]) -> bytes:  # type: ignore[override]  # RESP3 has one null
        return bulk_array(values, NULL)

    @staticmethod
    def map(pairs: list[tuple[bytes, bytes]]) -> bytes:
        return b"%%%d\r\n" % len(pairs) + b"".join(x for kv in pairs for x in kv)

    @staticmethod
    def verbatim(text: bytes) -> bytes:
        return b"=%d\r\ntxt:" % (len(text) + 4) + text + CRLF

    @staticmethod
    def double(x: float) -> bytes:
        return b",%.17g\r\n" % x


RESP2 = Resp2()
RESP3 = Resp3()
PROTOCOLS: dict[int, Resp2] = {2: RESP2, 3: RESP3}


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
    """Encode a request as a multibulk array (what every Redis client sends).

    Raises TypeError for anything but bytes-like arguments. Two to four arguments (GET, SET,
    INCR, LPUSH, HSET...: most requests) take one ``join`` of a tuple, about half the time of the
    general loop; an argument of 4096 bytes or more (IndexError) takes the loop.
    """
    n = len(args)
    h = BULK_HDR
    try:
        if n == 2:
            a, b = args
            return b"".join((b"*2\r\n", h[len(a)], a, CRLF, h[len(b)], b, CRLF))
        if n == 3:
            a, b, c = args
            return b"".join((b"*3\r\n", h[len(a)], a, CRLF, h[len(b)], b, CRLF, h[len(c)], c, CRLF))
        if n == 4:
            a, b, c, d = args
            return b"".join((b"*4\r\n", h[len(a)], a, CRLF, h[len(b)], b, CRLF, h[len(c)], c, CRLF,
                             h[len(d)], d, CRLF))
    except IndexError:
        pass
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
    RESP3 forms hiredis does not read are handled first: a blob error (``!``) becomes a
    ReplyError, and attributes (``|``) in front of the reply are skipped (they describe it).
    """
    c = raw[:1]
    if c == b"|":
        raw = raw[_attribute_end(raw) :]
        c = raw[:1]
    if c == b"!":
        nl = raw.find(CRLF)
        return hiredis.ReplyError(raw[nl + 2 : -2].decode(errors="replace"))
    reader = hiredis.Reader(notEnoughData=_NOT_ENOUGH)
    reader.feed(raw)
    value = reader.gets()
    if value is _NOT_ENOUGH:
        raise ProtocolError("incomplete reply")
    return value


def _attribute_end(raw: bytes) -> int:
    """Where the reply behind the attribute(s) at the start of ``raw`` begins."""
    p = 0
    while raw[p : p + 1] == b"|":
        nl = raw.find(CRLF, p)
        pairs = int(raw[p + 1 : nl])
        p = nl + 2
        for _ in range(2 * pairs):
            p = reply_end(raw, p)
            if p < 0:
                raise ProtocolError("incomplete attribute")
    return p


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
