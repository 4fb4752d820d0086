# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False
"""The proxy's per-request path, compiled: parse, route, forward, bound the replies, merge, deliver in order.

::

    client bytes ─► SessionCore.data_received: multibulk parsed in place (offsets, no object per argument)
      │   name ─► session.routes, a dict (empty: every request goes to Session._slow)
      │   Route of one key ─► Slotter.slot(key) ─► router.slot_map (its slot_backend, a byte per slot)
      │   Route of a split command (MGET MSET DEL UNLINK EXISTS TOUCH) ─► one sub-request per group
      │   anything else, inline commands too ─► Session._slow(args, raw, t0), in Python
      ▼
    Reply in the session's Fifo and in the backend's; the request's bytes copied to the backend's buffer
      ▼
    Outbox.run, once per loop iteration: one write per dirty backend, then flush of the dirty sessions
      ▼
    BackendCore.data_received: reply bounds (RESP2 and RESP3, resumable across reads) ─► the Fifo's head
      │   Reply: its bytes go straight to the session's output buffer when it is next in line
      │   KeyPart: kept until every group answered, then merged (MultiReply.merged)
      │   any other entry (Python: AUTH probe, MIGRATE, fan-out parts...): entry.done(raw)
      ▼
    SessionCore: one write per client per loop iteration; at once when nothing else is pending

Python keeps everything that is not per request: connections' lifecycle (session.py, backend.py),
the command table and the slow path, answers, fan-out, migration, topology and stats.
"""

cimport cython
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_CheckExact, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from cpython.dict cimport PyDict_CheckExact, PyDict_GetItem, PyDict_Size
from cpython.list cimport PyList_GET_ITEM, PyList_GET_SIZE
from cpython.mem cimport PyMem_Free, PyMem_Malloc, PyMem_Realloc
from cpython.object cimport PyObject
from cpython.ref cimport Py_INCREF
from libc.limits cimport LLONG_MIN
from libc.math cimport INFINITY
from libc.string cimport memchr, memcmp, memcpy, memmove
from posix.time cimport CLOCK_MONOTONIC, clock_gettime, timespec

from kvstore_cluster.keyslot cimport Slotter

from kvstore_proxy.commands import Kind

SLOT_COUNT = 16384

cdef enum:
    INLINE_MAX = 64 * 1024              # Redis's PROTO_INLINE_MAX_SIZE
    MAX_MULTIBULK = 1024 * 1024         # Redis's limit for an unauthenticated client; applied to all
    MAX_PENDING = 100000                # replies outstanding before a client is no longer read
    KEEP_BUFFER = 64 * 1024             # an output buffer grown past this is given back after a write
    KEEP_INPUT = 1024 * 1024            # the same for the buffer of a partial request or reply

# Why a request is not valid (problem_text: what Redis says after "Protocol error: ")
cdef enum:
    E_MBULK_LEN = 1
    E_BULK_LEN = 2
    E_DOLLAR = 3
    E_BIG_MBULK = 4
    E_BIG_BULK = 5

# Merge kinds: commands.Merge's values
cdef enum:
    MERGE_ORDERED = 1
    MERGE_OK = 2
    MERGE_SUM = 3

# Stack entries for RESP3's streamed forms, which have no element count. Both are far above any real
# count, so decrementing them for each element never reaches 0.
cdef long long CHUNKS = 1LL << 61      # a streamed string "$?": ";N" chunks until ";0"
cdef long long STREAMED = 1LL << 62    # a streamed aggregate "*?" "%?" "~?" ">?": elements until "."


class ProtocolError(Exception):
    """Bytes that are not RESP; the message is what Redis would say after ``Protocol error: ``."""


cdef inline double monotonic() noexcept nogil:
    """time.monotonic(), without a Python call."""
    cdef timespec ts
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return ts.tv_sec + ts.tv_nsec * 1e-9


# --- byte buffers -----------------------------------------------------------------------------------

cdef int buf_reserve(Buf *b, Py_ssize_t extra) except -1:
    cdef Py_ssize_t need = b.len + extra
    cdef Py_ssize_t cap = b.cap * 2 if b.cap else 256
    cdef char *p
    if need <= b.cap:
        return 0
    while cap < need:
        cap *= 2
    p = <char *>PyMem_Realloc(b.data, cap)
    if p == NULL:
        raise MemoryError()
    b.data = p
    b.cap = cap
    return 0


cdef inline int buf_put(Buf *b, const char *p, Py_ssize_t n) except -1:
    if b.len + n > b.cap:
        buf_reserve(b, n)
    memcpy(b.data + b.len, p, n)
    b.len += n
    return 0


cdef void buf_empty(Buf *b, Py_ssize_t keep) noexcept:
    """Forget the contents; give the memory back if a burst grew it past ``keep``."""
    b.len = 0
    if b.cap > keep:
        PyMem_Free(b.data)
        b.data = NULL
        b.cap = 0


cdef void buf_free(Buf *b) noexcept:
    PyMem_Free(b.data)
    b.data = NULL
    b.len = b.cap = 0


cdef inline const char *read_start(Buf *carry, bytes data, Py_ssize_t *n) except NULL:
    """Where a read's bytes are to be parsed from: after the partial message kept from the last
    read if there is one (``carry`` then holds both), else in ``data`` itself."""
    if carry.len:
        buf_put(carry, PyBytes_AS_STRING(data), PyBytes_GET_SIZE(data))
        n[0] = carry.len
        return carry.data
    n[0] = PyBytes_GET_SIZE(data)
    return PyBytes_AS_STRING(data)


cdef inline int read_end(Buf *carry, const char *buf, Py_ssize_t p, Py_ssize_t n) except -1:
    """Keep ``buf[p:n]``, the start of a message the next read completes, in ``carry``; ``buf`` may
    be ``carry``'s own bytes."""
    if p >= n:
        buf_empty(carry, KEEP_INPUT)
    elif buf == carry.data:
        memmove(carry.data, carry.data + p, n - p)
        carry.len = n - p
    else:
        carry.len = 0
        buf_put(carry, buf + p, n - p)
    return 0


cdef inline Py_ssize_t put_header(char *out, char tag, long long v) noexcept nogil:
    """``tag``, ``v`` in decimal and CRLF at ``out`` (room for 24 bytes); the length written."""
    cdef char digits[20]
    cdef Py_ssize_t k = 0, i = 1
    cdef bint neg = v < 0
    cdef unsigned long long u = <unsigned long long>(-v if neg else v)
    out[0] = tag
    if neg:
        out[1] = 45
        i = 2
    while True:
        digits[k] = 48 + <char>(u % 10)
        k += 1
        u //= 10
        if u == 0:
            break
    while k:
        k -= 1
        out[i] = digits[k]
        i += 1
    out[i] = 13
    out[i + 1] = 10
    return i + 2


# --- small parsers --------------------------------------------------------------------------------

cdef inline Py_ssize_t find_crlf(const char *buf, Py_ssize_t p, Py_ssize_t n) noexcept nogil:
    """Position of the first CRLF at or after ``p``, or -1."""
    cdef const char *q
    while p < n:
        q = <const char *>memchr(buf + p, 13, n - p)
        if q == NULL:
            return -1
        p = q - buf
        if p + 1 >= n:
            return -1
        if buf[p + 1] == 10:
            return p
        p += 1
    return -1


cdef inline Py_ssize_t length_line(const char *buf, Py_ssize_t p, Py_ssize_t n, long long *out) noexcept nogil:
    """The common case of a length line at ``buf[p]`` (a type byte, then digits, CRLF, written
    canonically): the position of its CRLF, with the value in ``out``; -1 for anything else (a sign,
    a leading zero, garbage, or not all there yet), which the caller takes the general way."""
    cdef Py_ssize_t q = p + 1, end = p + 19
    cdef long long v = 0
    if end > n:
        end = n
    while q < end and 48 <= buf[q] <= 57:
        v = v * 10 + (buf[q] - 48)
        q += 1
    if q + 1 >= n or q == p + 1 or buf[q] != 13 or buf[q + 1] != 10 or (buf[p + 1] == 48 and q > p + 2):
        return -1
    out[0] = v
    return q


cdef inline bint parse_ll(const char *s, Py_ssize_t n, long long *out, bint strict) noexcept nogil:
    """An integer: '-' and up to 18 digits. ``strict`` is Redis's string2ll, for what clients send:
    no leading zero (but "0"), no "-0"; replies are read as Redis writes them, without it."""
    cdef Py_ssize_t i = 0
    cdef long long v = 0
    cdef bint neg = False
    if strict and n == 1 and s[0] == 48:
        out[0] = 0
        return True
    if n > 0 and s[0] == 45:
        neg = True
        i = 1
    if i >= n or n - i > 18 or (strict and s[i] == 48):
        return False
    while i < n:
        if s[i] < 48 or s[i] > 57:
            return False
        v = v * 10 + (s[i] - 48)
        i += 1
    out[0] = -v if neg else v
    return True


# --- client requests ------------------------------------------------------------------------------

# The element offsets of a request being parsed: shared by every session (one request is handled at a
# time, to the end, before the next is parsed); a session whose request is cut by the end of a read
# moves its offsets to an array of its own (Req.own) until the rest arrives.
cdef Py_ssize_t *scratch = NULL
cdef Py_ssize_t scratch_cap = 0


cdef int req_room(Req *rq, Py_ssize_t need) except -1:
    """Room in rq.el for ``need`` elements."""
    global scratch, scratch_cap
    cdef Py_ssize_t cap
    cdef Py_ssize_t *p
    if need <= rq.cap:
        return 0
    cap = rq.cap * 2 if rq.cap >= 16 else 16
    while cap < need:
        cap *= 2
    p = <Py_ssize_t *>PyMem_Realloc(rq.el, cap * 3 * sizeof(Py_ssize_t))
    if p == NULL:
        raise MemoryError()
    rq.el = p
    rq.cap = cap
    if not rq.own:
        scratch, scratch_cap = p, cap
    return 0


cdef inline void req_begin(Req *rq) noexcept:
    if not rq.own:
        rq.el = scratch
        rq.cap = scratch_cap


cdef void req_done(Req *rq) noexcept:
    """The request was handled: back to a request boundary, on the shared offsets."""
    if rq.own:
        PyMem_Free(rq.el)
        rq.own = False
    rq.el = scratch
    rq.cap = scratch_cap
    rq.argc = rq.got = rq.next = 0


cdef int req_keep(Req *rq) except -1:
    """The request continues in the next read: its offsets move to an array of its own."""
    cdef Py_ssize_t cap = rq.got + 8
    cdef Py_ssize_t *p
    if rq.own:
        return 0
    p = <Py_ssize_t *>PyMem_Malloc(cap * 3 * sizeof(Py_ssize_t))
    if p == NULL:
        raise MemoryError()
    if rq.got:
        memcpy(p, rq.el, rq.got * 3 * sizeof(Py_ssize_t))
    rq.el = p
    rq.cap = cap
    rq.own = True
    return 0


cdef inline Py_ssize_t request_line(const char *buf, Py_ssize_t p, Py_ssize_t n, long long *v, int too_big,
                                    int bad, int *problem) noexcept:
    """The count or length line of a request at ``buf[p]`` ("*N", "$N"), as Redis reads it: where its
    CRLF is; -1 when it is not all there yet, -2 when it is not valid (``problem``: ``too_big`` for a
    line longer than Redis would wait for, ``bad`` for anything but an integer)."""
    cdef Py_ssize_t nl = length_line(buf, p, n, v)
    if nl >= 0:
        return nl
    nl = find_crlf(buf, p, n)
    if nl < 0:
        if n - p > INLINE_MAX:
            problem[0] = too_big
            return -2
        return -1
    if not parse_ll(buf + p + 1, nl - p - 1, v, True):
        problem[0] = bad
        return -2
    return nl


cdef int parse_request(Req *rq, const char *buf, Py_ssize_t start, Py_ssize_t n, Py_ssize_t max_bulk,
                       int *problem) except -2:
    """Parse (or go on parsing) the multibulk request at ``buf[start]``, as Redis's processMultibulkBuffer.

    1: complete, ending at ``start + rq.next``; 2: an empty one (``*0``, ``*-1``), to skip; 0: more data
    needed (``rq`` remembers how far it got, so a request arriving in many reads is parsed once);
    -1: not a valid request, ``problem`` says why.
    """
    cdef Py_ssize_t p, nl, e
    cdef long long v
    cdef Py_ssize_t *el
    if rq.argc == 0:
        nl = request_line(buf, start, n, &v, E_BIG_MBULK, E_MBULK_LEN, problem)
        if nl < 0:
            return 0 if nl == -1 else -1
        if v > MAX_MULTIBULK:
            problem[0] = E_MBULK_LEN
            return -1
        rq.next = nl + 2 - start
        if v <= 0:
            return 2
        rq.argc = v
        rq.got = 0
    p = start + rq.next
    while rq.got < rq.argc:
        if p >= n:
            return 0
        if buf[p] != 36:  # '$'
            problem[0] = E_DOLLAR
            return -1
        nl = request_line(buf, p, n, &v, E_BIG_BULK, E_BULK_LEN, problem)
        if nl < 0:
            return 0 if nl == -1 else -1
        if v < 0 or v > max_bulk:
            problem[0] = E_BULK_LEN
            return -1
        e = nl + 2 + v + 2  # Redis skips the two bytes after the payload without looking at them
        if e > n:
            return 0
        if rq.got >= rq.cap:
            req_room(rq, rq.got + 1)
        el = rq.el + 3 * rq.got
        el[0] = p - start
        el[1] = nl + 2 - start
        el[2] = v
        rq.got += 1
        p = e
        rq.next = p - start
    return 1


cdef str problem_text(int problem, const char *buf, Py_ssize_t at):
    if problem == E_MBULK_LEN:
        return "invalid multibulk length"
    if problem == E_BULK_LEN:
        return "invalid bulk length"
    if problem == E_DOLLAR:
        return f"expected '$', got '{chr(<unsigned char>buf[at])}'"
    if problem == E_BIG_MBULK:
        return "too big mbulk count string"
    return "too big bulk count string"


cdef list req_args(Req *rq, const char *base):
    cdef list out = []
    cdef Py_ssize_t i
    cdef Py_ssize_t *el
    for i in range(rq.got):
        el = rq.el + 3 * i
        out.append(PyBytes_FromStringAndSize(base + el[1], el[2]))
    return out


def request_args(bytes raw not None, Py_ssize_t off=0, Py_ssize_t size=-1):
    """The arguments of the (validated) multibulk request at ``raw[off:off+size]``."""
    cdef const char *b = PyBytes_AS_STRING(raw)
    cdef Py_ssize_t p = off, n = off + size if size >= 0 else PyBytes_GET_SIZE(raw), nl, i
    cdef long long count, v
    cdef list out = []
    nl = find_crlf(b, p, n)
    if nl < 0 or b[p] != 42 or not parse_ll(b + p + 1, nl - p - 1, &count, True):
        raise ProtocolError("not a multibulk request")
    p = nl + 2
    for i in range(count):
        nl = find_crlf(b, p, n)
        if nl < 0 or b[p] != 36 or not parse_ll(b + p + 1, nl - p - 1, &v, True) or nl + 4 + v > n:
            raise ProtocolError("not a multibulk request")
        out.append(PyBytes_FromStringAndSize(b + nl + 2, v))
        p = nl + 4 + v
    return out


# Command names as sent ("GET", "get") -> one bytes object each, so looking a request's name up in
# the routes dict allocates nothing (a dict hit compares the object first). Bounded: names past
# NAME_MAX (a client sending garbage names) get a fresh object per lookup.
cdef enum:
    NAME_SLOTS = 8192
    NAME_MAX = 4096
    NAME_LEN_MAX = 48

cdef PyObject *name_obj[NAME_SLOTS]
cdef const char *name_data[NAME_SLOTS]
cdef Py_ssize_t name_len[NAME_SLOTS]
cdef Py_ssize_t name_count = 0


cdef object route_name(const char *p, Py_ssize_t n):
    global name_count
    cdef unsigned int h = 2166136261u
    cdef Py_ssize_t i
    cdef object o
    if n > NAME_LEN_MAX:
        return PyBytes_FromStringAndSize(p, n)
    for i in range(n):
        h = (h ^ <unsigned char>p[i]) * 16777619u
    h &= NAME_SLOTS - 1
    while name_obj[h] != NULL:
        if name_len[h] == n and memcmp(name_data[h], p, n) == 0:
            return <object>name_obj[h]
        h = (h + 1) & (NAME_SLOTS - 1)
    o = PyBytes_FromStringAndSize(p, n)
    if name_count < NAME_MAX:
        Py_INCREF(o)
        name_obj[h] = <PyObject *>o
        name_data[h] = PyBytes_AS_STRING(o)
        name_len[h] = n
        name_count += 1
    return o


def command_name(bytes name not None) -> bytes:
    """The one bytes object the compiled path looks ``name`` up with: routes dicts keyed by it are
    hit on identity, without comparing bytes."""
    return route_name(PyBytes_AS_STRING(name), PyBytes_GET_SIZE(name))


# --- backend replies ------------------------------------------------------------------------------

cdef int stack_push(Stack *st, long long v) except -1:
    cdef long long *p
    if st.depth >= st.cap:
        p = <long long *>PyMem_Realloc(st.items, (st.cap * 2 + 8) * sizeof(long long))
        if p == NULL:
            raise MemoryError()
        st.items = p
        st.cap = st.cap * 2 + 8
    st.items[st.depth] = v
    st.depth += 1
    return 0


cdef int scan(const char *buf, Py_ssize_t p, Py_ssize_t n, Stack *st, Py_ssize_t *out) except -1:
    """Skip complete RESP2/RESP3 elements from ``p``: 1 when a whole reply is complete (``out``: its end),
    0 when the data ends first (``out``: where to resume; ``st`` holds what the enclosing aggregates
    still expect).

    Every RESP3 type is known, including the forms Redis 7.0 does not send (streamed strings and
    aggregates): a map of N pairs is 2N elements, an attribute ``|N`` is its 2N elements and the reply
    it describes, all together one element.
    """
    cdef char c
    cdef Py_ssize_t nl, e
    cdef long long v
    while True:
        if p >= n:
            out[0] = p
            return 0
        c = buf[p]
        nl = length_line(buf, p, n, &v)
        if nl < 0:
            nl = find_crlf(buf, p, n)
            if nl < 0:
                out[0] = p
                return 0
            if not parse_ll(buf + p + 1, nl - p - 1, &v, False):
                v = LLONG_MIN  # not a number: only a one-line type or a streamed form may have that
        if c == 36 or c == 61 or c == 33:  # $ = !  (bulk, verbatim, blob error)
            if v == LLONG_MIN:
                if c == 36 and nl == p + 2 and buf[p + 1] == 63:  # "$?"
                    stack_push(st, CHUNKS)
                    p = nl + 2
                    continue
                raise ProtocolError(f"bad length line {PyBytes_FromStringAndSize(buf + p, nl - p)!r}")
            if v >= 0:
                e = nl + v + 4
                if e > n:
                    out[0] = p
                    return 0
                p = e
            else:
                p = nl + 2
        elif c == 42 or c == 37 or c == 126 or c == 62 or c == 124:  # * % ~ > |
            if v == LLONG_MIN:
                if nl == p + 2 and buf[p + 1] == 63 and c != 124:  # "*?"
                    stack_push(st, STREAMED)
                    p = nl + 2
                    continue
                raise ProtocolError(f"bad count line {PyBytes_FromStringAndSize(buf + p, nl - p)!r}")
            p = nl + 2
            if c == 37:  # map: key and value per entry
                v *= 2
            elif c == 124:  # attribute: its map, then the reply it is about
                v = 2 * v + 1
            if v > 0:
                stack_push(st, v)
                continue
        elif c == 43 or c == 45 or c == 58 or c == 95 or c == 44 or c == 35 or c == 40:  # + - : _ , # (
            p = nl + 2
        elif c == 59:  # ; a chunk of a streamed string
            if not st.depth or st.items[st.depth - 1] != CHUNKS:
                raise ProtocolError("string chunk outside a streamed string")
            if v == LLONG_MIN or v < 0:
                raise ProtocolError("bad string chunk length")
            if v > 0:
                e = nl + v + 4
                if e > n:
                    out[0] = p
                    return 0
                p = e
                continue
            p = nl + 2
            st.depth -= 1  # ";0" ends the string: one element complete
        elif c == 46:  # . the end of a streamed aggregate
            if not st.depth or st.items[st.depth - 1] <= CHUNKS:
                raise ProtocolError("end marker outside a streamed aggregate")
            p = nl + 2
            st.depth -= 1
        else:
            raise ProtocolError(f"unexpected reply type byte {bytes([<unsigned char>c])!r}")
        # one element is complete: close every aggregate it completes
        while st.depth:
            st.items[st.depth - 1] -= 1
            if st.items[st.depth - 1]:
                break
            st.depth -= 1
        if not st.depth:
            out[0] = p
            return 1


cdef inline int reply_bounds(const char *buf, Py_ssize_t p, Py_ssize_t n, Stack *st, Py_ssize_t *out) except -1:
    """scan for a reply at ``p`` with nothing pending, the one-line and bulk replies inline."""
    cdef char c = buf[p]
    cdef Py_ssize_t nl, e
    cdef long long v
    if c == 43 or c == 58 or c == 45 or c == 95 or c == 44 or c == 35:  # + : - _ , #
        nl = find_crlf(buf, p, n)
        if nl < 0:
            out[0] = p
            return 0
        out[0] = nl + 2
        return 1
    if c == 36:  # $
        nl = length_line(buf, p, n, &v)
        if nl >= 0:
            e = nl + v + 4
            if e > n:
                out[0] = p
                return 0
            out[0] = e
            return 1
    return scan(buf, p, n, st, out)


def reply_end(bytes buf not None, Py_ssize_t start=0) -> int:
    """Where the RESP2/RESP3 reply at ``buf[start]`` ends, or -1 if it is incomplete."""
    cdef Stack st
    cdef Py_ssize_t end
    cdef int rc
    st.items = NULL
    st.depth = st.cap = 0
    try:
        rc = scan(PyBytes_AS_STRING(buf), start, PyBytes_GET_SIZE(buf), &st, &end)
    finally:
        PyMem_Free(st.items)
    return end if rc == 1 else -1


def scan_reply(buf, Py_ssize_t p, Py_ssize_t n, list stack not None):
    """Skip complete RESP2/RESP3 elements of ``buf`` (bytes or bytearray) from ``p`` up to ``n``;
    return ``(position, reply_complete)``. Resumable: when the data ends inside a reply,
    ``position`` is where the first incomplete element starts and ``stack`` holds what the
    enclosing aggregates still expect; call again with both once more data has arrived."""
    cdef const unsigned char[:] view = buf
    cdef Stack st
    cdef Py_ssize_t end = p, i
    cdef int rc = 0
    if n > view.shape[0]:
        n = view.shape[0]
    if p >= n:
        return p, False
    st.depth = len(stack)
    st.cap = st.depth + 8
    st.items = <long long *>PyMem_Malloc(st.cap * sizeof(long long))
    if st.items == NULL:
        raise MemoryError()
    try:
        for i in range(st.depth):
            st.items[i] = stack[i]
        rc = scan(<const char *>&view[0], p, n, &st, &end)
        stack[:] = [st.items[i] for i in range(st.depth)]
    finally:
        PyMem_Free(st.items)
    return end, rc == 1


# --- the slot table, as the C path reads it ------------------------------------------------------------

@cython.final
cdef class SlotMap:
    """A router's ``slot_backend`` list compacted: one byte per slot indexing its few distinct entries.

    16 KiB instead of 128 KiB of pointers: the lookup of every request stays in the L1 cache. Built
    whenever the router assigns a new table (which it never changes in place).
    """

    def __init__(self, list table not None):
        cdef Py_ssize_t i
        cdef dict seen = {}
        if len(table) != SLOT_COUNT:
            raise ValueError(f"a slot table has {SLOT_COUNT} entries, not {len(table)}")
        self.table = table
        self.entries = []
        self.wide = False
        for i in range(SLOT_COUNT):
            e = table[i]
            k = seen.get(id(e))
            if k is None:
                k = seen[id(e)] = len(self.entries)
                self.entries.append(e)
                if k > 255:
                    self.wide = True
                    return
            self.idx[i] = k


cdef inline object slot_entry(SlotMap m, int slot):
    if m.wide:
        return <object>PyList_GET_ITEM(m.table, slot)
    return <object>PyList_GET_ITEM(m.entries, m.idx[slot])


# --- the FIFOs ----------------------------------------------------------------------------------------

@cython.final
cdef class Fifo:
    """Requests in order: a session's (its replies are written in this order) or a backend's (its replies
    arrive in this order). A ring over a list, so the garbage collector sees the entries; deque-like
    for Python code (append, appendleft, popleft, [i], len, clear)."""

    def __cinit__(self):
        self.items = None
        self.head = 0
        self.count = 0
        self.mask = -1

    cdef int _grow(self) except -1:
        cdef Py_ssize_t cap = (self.mask + 1) * 2 if self.items is not None else 8
        cdef Py_ssize_t i
        cdef list new = [None] * cap
        for i in range(self.count):
            new[i] = self.items[(self.head + i) & self.mask]
        self.items = new
        self.head = 0
        self.mask = cap - 1
        return 0

    cdef void _shrink(self) noexcept:
        self.items = None
        self.head = 0
        self.mask = -1

    cdef int push(self, object o) except -1:
        if self.count > self.mask:
            self._grow()
        self.items[(self.head + self.count) & self.mask] = o
        self.count += 1
        return 0

    cdef int push_front(self, object o) except -1:
        if self.count > self.mask:
            self._grow()
        self.head = (self.head - 1) & self.mask
        self.items[self.head] = o
        self.count += 1
        return 0

    cdef object pop(self):
        cdef object o = self.items[self.head]
        self.items[self.head] = None
        self.head = (self.head + 1) & self.mask
        self.count -= 1
        if self.count == 0:
            self.head = 0
            if self.mask > 1023:  # a burst grew it: give the memory back
                self._shrink()
        return o

    def append(self, o):
        self.push(o)

    def appendleft(self, o):
        self.push_front(o)

    def extend(self, items):
        for o in items:
            self.push(o)

    def popleft(self):
        if not self.count:
            raise IndexError("pop from an empty Fifo")
        return self.pop()

    def clear(self):
        items = self.items  # released after the Fifo is consistent again
        self._shrink()
        self.count = 0

    def __len__(self):
        return self.count

    def __bool__(self):
        return self.count > 0

    def __getitem__(self, Py_ssize_t i):
        if i < 0:
            i += self.count
        if i < 0 or i >= self.count:
            raise IndexError("Fifo index out of range")
        return self.items[(self.head + i) & self.mask]

    def __iter__(self):
        return iter([self.items[(self.head + i) & self.mask] for i in range(self.count)])

    def __contains__(self, o):
        cdef Py_ssize_t i
        for i in range(self.count):
            if self.items[(self.head + i) & self.mask] is o:
                return True
        return False

    def __repr__(self):
        return f"Fifo({list(self)!r})"


cdef inline object fifo_head(Fifo f):
    return f.items[f.head]


# --- what a request leaves behind -----------------------------------------------------------------

cdef extern from *:
    int __builtin_clzll(unsigned long long) nogil


cdef inline Py_ssize_t latency_bucket(double seconds) noexcept nogil:
    """The histogram bucket (CommandStat.hist) of a latency: whole microseconds below HIST_SUB,
    then HIST_SUB buckets to each power of two (the top bit and the HIST_SUB_BITS after it);
    under 1 µs the first, 2**HIST_TOP_BITS µs and over the last."""
    cdef double us = seconds * 1e6
    cdef unsigned long long v
    cdef int shift
    if us >= HIST_SUB:
        if us >= <double>((<unsigned long long>1) << HIST_TOP_BITS):
            return HIST_BUCKETS - 1
        v = <unsigned long long>us
        shift = 63 - __builtin_clzll(v) - HIST_SUB_BITS
        return (shift << HIST_SUB_BITS) + <Py_ssize_t>(v >> shift)
    if us >= 1.0:
        return <Py_ssize_t>us
    return 0


def latency_bucket_of(double seconds):
    """The histogram bucket a reply after ``seconds`` is counted in (an index of LATENCY_BUCKETS)."""
    return latency_bucket(seconds)


cdef long long bucket_upper_us(Py_ssize_t i):
    if i < HIST_SUB:
        return i + 1
    return (i % HIST_SUB + HIST_SUB + 1) << (i // HIST_SUB - 1)


# Each histogram bucket's upper bound in µs, exclusive: bucket i holds [LATENCY_BUCKETS[i - 1],
# LATENCY_BUCKETS[i]) (from 0 for the first; the last holds everything above it too).
LATENCY_BUCKETS = tuple(bucket_upper_us(i) for i in range(HIST_BUCKETS))


cdef class CommandStat:
    """Calls, total latency and the latency histogram of one command name (INFO commandstats and
    latencystats); counted in C where the reply is (SessionCore.count)."""

    def __init__(self, name):
        self.name = name
        self.calls = 0
        self.usec = 0.0  # seconds, despite the name; INFO converts
        self.errors = 0

    def histogram(self):
        """The buckets that counted replies: {index of LATENCY_BUCKETS: replies}."""
        cdef Py_ssize_t i
        return {i: self.hist[i] for i in range(HIST_BUCKETS) if self.hist[i]}


@cython.freelist(512)
@cython.no_gc
cdef class Reply:
    """One request's place in the client's FIFO; ``data`` is its encoded reply once known.

    Backends hold the same object in their own FIFO; a reply routed whole is written to the client
    as the backend sent it, never parsed or re-encoded. ``args`` is parsed from the request's bytes
    only when asked for (SLOWLOG, a migrating slot).

    Not tracked by the garbage collector: one is made per request, and tracking them would make
    collections (pauses) frequent. Its one cycle, session -> Fifo -> Reply -> session, is broken
    when the connection closes (the session clears its Fifo).
    """

    def __init__(self, session, double t0, CommandStat stat, args):
        self.session = session
        self.data = None
        self.t0 = t0
        self.stat = stat
        self._args = args

    @property
    def args(self):
        if self._args is None and self.src is not None:
            self._args = request_args(self.src, self.off, self.size)
        return self._args

    @args.setter
    def args(self, value):
        self._args = value

    @property
    def raw(self):
        """The request's bytes as the client sent them (None for a request the proxy built)."""
        if self.src is None:
            return None
        return self.src[self.off : self.off + self.size]

    cpdef object fail(self, object err):
        """Answer with an encoded error reply; returns self (finished) for the caller to notify."""
        if self.data is None:
            self.data = err
        return self


cdef Reply new_reply(SessionCore s, double t0, CommandStat stat, object src, const char *base, Py_ssize_t size):
    cdef Reply r = Reply.__new__(Reply)
    r.session = s
    r.t0 = t0
    r.stat = stat
    r.src = src
    r.off = base - PyBytes_AS_STRING(src)
    r.size = size
    return r


@cython.no_gc
cdef class MultiReply(Reply):
    """A multi-key request split by group (MGET MSET DEL UNLINK EXISTS TOUCH); merged once every
    group's KeyPart is in: the first error in group order, else MGET's values in request order,
    +OK, or the sum of the counts."""

    def __dealloc__(self):
        PyMem_Free(self.part_of)

    cdef object part_in(self, int index, object raw):
        """Keep part ``index``'s reply; self once every part is in (``data`` merged), else None."""
        self.results[index] = raw
        self.left -= 1
        if self.left:
            return None
        if self.data is None:
            self.data = self.merged()
        return self

    cdef bytes merged(self):
        cdef Py_ssize_t g
        cdef bytes raw
        for g in range(self.nparts):
            raw = self.results[g]
            if PyBytes_GET_SIZE(raw) and (raw[0] == 45 or raw[0] == 33):  # '-', RESP3's blob error '!'
                return raw if raw[0] == 45 else blob_error(raw)
        try:
            if self.merge == MERGE_ORDERED:
                return self.ordered()
            if self.merge == MERGE_SUM:
                return self.summed()
            return b"+OK\r\n"
        except ValueError as exc:
            return b"-ERR kvstore could not merge replies: " + str(exc).encode().replace(b"\r", b" ").replace(b"\n", b" ") + b"\r\n"

    cdef bytes summed(self):
        cdef long long total = 0, v
        cdef bytes raw
        cdef const char *b
        cdef Py_ssize_t n
        cdef char head[24]
        for raw in self.results:
            b = PyBytes_AS_STRING(raw)
            n = PyBytes_GET_SIZE(raw)
            if n < 4 or b[0] != 58 or not parse_ll(b + 1, n - 3, &v, False):
                raise ValueError(f"expected an integer from a group, got {raw[:80]!r}")
            total += v
        n = put_header(head, 58, total)
        return PyBytes_FromStringAndSize(head, n)

    cdef bytes ordered(self):
        """MGET: each part is an array of one bulk string or null per key it was sent; the merged
        reply takes them in request order (nulls as the group sent them: $-1 in RESP2, _ in RESP3)."""
        cdef Py_ssize_t g, k, p, nl, e, total, np = self.nparts, nk = self.nkeys, i
        # per part: the next of its values to take, and where its values start in span
        cdef Py_ssize_t *at = <Py_ssize_t *>PyMem_Malloc((2 * np + 2 * nk) * sizeof(Py_ssize_t))
        cdef Py_ssize_t *first = at + np
        cdef Py_ssize_t *span = first + np  # per value, grouped by part: start, end in its part's reply
        cdef const char *b
        cdef char *o
        cdef long long v
        cdef bytes raw, out
        cdef char head[24]
        if at == NULL:
            raise MemoryError()
        try:
            for g in range(np):
                at[g] = 0
            for k in range(nk):
                at[self.part_of[k]] += 1
            i = 0
            for g in range(np):
                first[g] = i
                i += at[g]
            total = put_header(head, 42, nk)
            for g in range(np):
                raw = self.results[g]
                b = PyBytes_AS_STRING(raw)
                e = PyBytes_GET_SIZE(raw)
                nl = length_line(b, 0, e, &v)
                if nl < 0 or b[0] != 42 or v != at[g]:
                    raise ValueError(f"expected {at[g]} values from a group, got {raw[:80]!r}")
                p = nl + 2
                for k in range(v):
                    i = 2 * (first[g] + k)
                    span[i] = p
                    p = bulk_or_null_end(b, p, e)
                    if p < 0:
                        raise ValueError(f"expected {at[g]} values from a group, got {raw[:80]!r}")
                    span[i + 1] = p
                if p != e:
                    raise ValueError(f"expected {at[g]} values from a group, got {raw[:80]!r}")
                total += e - (nl + 2)
                at[g] = first[g]
            out = PyBytes_FromStringAndSize(NULL, total)
            o = PyBytes_AS_STRING(out)
            i = put_header(o, 42, nk)
            o += i
            for k in range(nk):
                g = self.part_of[k]
                b = PyBytes_AS_STRING(<bytes>PyList_GET_ITEM(self.results, g))
                i = 2 * at[g]
                at[g] += 1
                memcpy(o, b + span[i], span[i + 1] - span[i])
                o += span[i + 1] - span[i]
            return out
        finally:
            PyMem_Free(at)


cdef inline Py_ssize_t bulk_or_null_end(const char *b, Py_ssize_t p, Py_ssize_t n) noexcept:
    """End of the bulk string or null ($-1, _, *-1) at ``p``, or -1."""
    cdef long long v
    cdef Py_ssize_t nl = length_line(b, p, n, &v)
    if nl >= 0 and b[p] == 36:
        return nl + v + 4 if nl + v + 4 <= n else -1
    nl = find_crlf(b, p, n)
    if nl < 0:
        return -1
    if b[p] == 36 and parse_ll(b + p + 1, nl - p - 1, &v, False):
        if v < 0:
            return nl + 2 if v == -1 else -1
        return nl + v + 4 if nl + v + 4 <= n else -1
    if b[p] == 95 and nl == p + 1:
        return nl + 2
    if b[p] == 42 and nl == p + 3 and b[p + 1] == 45 and b[p + 2] == 49:
        return nl + 2
    return -1


cdef bytes blob_error(bytes raw):
    """RESP3's ``!len\\r\\nTEXT\\r\\n`` as the simple error ``-TEXT\\r\\n``."""
    cdef Py_ssize_t nl = raw.find(b"\r\n")
    text = raw[nl + 2 : len(raw) - 2].replace(b"\r", b" ").replace(b"\n", b" ")
    return b"-" + text + b"\r\n"


@cython.freelist(256)
@cython.no_gc
cdef class KeyPart:
    """One group's share of a MultiReply: the backend hands it its raw reply."""

    def __init__(self, MultiReply parent, int index):
        self.parent = parent
        self.index = index
        self.t0 = parent.t0

    @property
    def session(self):
        return self.parent.session

    cpdef object done(self, object raw):
        return self.parent.part_in(self.index, raw if PyBytes_CheckExact(raw) else bytes(raw))

    cpdef object fail(self, object err):
        return self.parent.part_in(self.index, err if PyBytes_CheckExact(err) else bytes(err))


# --- routes ---------------------------------------------------------------------------------------

cdef class Route:
    """How one command spec is served, with its stats. ``fast`` routes go in a worker's routes dict,
    keyed by the name as clients spell it, and are served by the compiled path without a lookup:
    KEYED commands with their one key at a fixed position, and the split multi-key commands."""

    def __init__(self, spec, CommandStat stat):
        self.spec = spec
        self.stat = stat
        self.nmin = spec.arity if spec.arity > 0 else -spec.arity
        self.nmax = spec.arity if spec.arity > 0 else (1 << 62)
        self.key = 0
        self.step = 1
        self.merge = 0
        fixed = getattr(spec, "_fixed", None)
        if spec.kind is Kind.KEYED and b"|" not in spec.name and fixed is not None and len(fixed) == 1:
            self.fast = True
            self.key = fixed[0]
        elif spec.kind is Kind.MULTI:
            self.fast = True
            self.merge = int(spec.merge)
            self.step = spec.step
        else:
            self.fast = False


# --- coalesced writes -------------------------------------------------------------------------------

cdef class Outbox:
    """Collects dirty backends and client sessions; one ``call_soon`` flushes them all.

    Many clients' requests to one backend leave in one ``write``; a client whose replies came from
    several backends in one iteration gets them in one ``write`` too. ``slow_threshold`` (seconds)
    is the worker's SLOWLOG threshold and ``latency_tracking`` whether CommandStat histograms count,
    both read where replies are counted.
    """

    def __init__(self, loop):
        self.loop = loop
        self.backends = []
        self.sessions = []
        self.scheduled = False
        self.slow_threshold = INFINITY
        self.latency_tracking = True
        self._run = self.run

    cpdef schedule(self):
        if not self.scheduled:
            self.scheduled = True
            self.loop.call_soon(self._run)

    cpdef run(self):
        cdef list backends = self.backends, sessions
        self.scheduled = False
        if backends:
            self.backends = []
            for b in backends:
                b.flush()
        sessions = self.sessions
        if sessions:
            self.sessions = []
            for s in sessions:
                if isinstance(s, SessionCore):
                    (<SessionCore>s).flush()
                else:
                    s.flush()


cdef int notify_session(object s, Outbox outbox) except -1:
    if isinstance(s, SessionCore):
        if not (<SessionCore>s).dirty:
            (<SessionCore>s).dirty = True
            outbox.sessions.append(s)
            outbox.schedule()
    elif s is not None and not s.dirty:
        s.dirty = True
        outbox.sessions.append(s)
        outbox.schedule()
    return 0


def notify(r, Outbox outbox):
    """``r`` got its data outside the backend's reply loop: have its session flushed this iteration."""
    notify_session(r.session, outbox)


cdef int finished(object r, double now, Outbox outbox) except -1:
    """``r`` (returned by an entry's done/fail) has its data: deliver it."""
    cdef Reply reply
    if isinstance(r, Reply):
        reply = <Reply>r
        if isinstance(reply.session, SessionCore) and PyBytes_CheckExact(reply.data):
            return (<SessionCore>reply.session).deliver(reply, PyBytes_AS_STRING(reply.data),
                                                        PyBytes_GET_SIZE(reply.data), now)
    notify_session(r.session, outbox)
    return 0


# --- backend connections ------------------------------------------------------------------------------

cdef int send_elsewhere(object e, object r, const char *p, Py_ssize_t n) except -1:
    """Request ``p[:n]`` for a slot table entry that is not a connected Backend (a Refuser, a
    Migrating, a backend that is down): its ``send`` decides."""
    if isinstance(e, BackendCore):
        (<BackendCore>e).send(r, PyBytes_FromStringAndSize(p, n))
    else:
        e.send(r, PyBytes_FromStringAndSize(p, n))
    return 0


cdef class BackendCore:
    """The per-request half of a connection to a group's master (backend.py has its lifecycle).

    Requests are appended to ``fifo`` and to a write buffer sent once per loop iteration (Outbox);
    replies are bounded in C and handed to the FIFO's entries in order.
    """

    def __cinit__(self, *args, **kwargs):
        self.fifo = Fifo()
        self.up = True
        self.dirty = False
        self.retired = False
        self.sent = 0
        self.out_count = 0
        self.scan = 0

    def __dealloc__(self):
        buf_free(&self.out)
        buf_free(&self.inbuf)
        PyMem_Free(self.stack.items)

    cdef int put(self, object r, const char *p, Py_ssize_t n) except -1:
        self.fifo.push(r)
        buf_put(&self.out, p, n)
        self.out_count += 1
        if not self.dirty:
            self.dirty = True
            self.outbox.backends.append(self)
            self.outbox.schedule()
        return 0

    cpdef send(self, object r, object raw):
        """Queue request ``raw`` (bytes) whose reply ``r`` waits for; refused at once if down."""
        if not self.up:
            self.refuse(r)
            return
        if not PyBytes_CheckExact(raw):
            raw = bytes(raw)
        self.put(r, PyBytes_AS_STRING(raw), PyBytes_GET_SIZE(raw))

    cpdef refuse(self, object r):
        done = r.fail(self.error)
        if done is not None:
            notify_session(done.session, self.outbox)

    cpdef flush(self):
        self.dirty = False
        if self.out.len and self.transport is not None:
            self.sent += self.out_count
            data = PyBytes_FromStringAndSize(self.out.data, self.out.len)
            self.out_count = 0
            buf_empty(&self.out, KEEP_INPUT)
            self.transport.write(data)

    @property
    def queued(self):
        """Requests in the write buffer, not sent yet."""
        return self.out_count

    @property
    def buffered(self):
        """Bytes of a partial reply kept until the rest arrives."""
        return self.inbuf.len

    def _queue_first(self, bytes raw not None):
        """Put ``raw`` before every queued request (AUTH or HELLO on a fresh connection)."""
        cdef Py_ssize_t n = PyBytes_GET_SIZE(raw)
        buf_reserve(&self.out, n)
        memmove(self.out.data + n, self.out.data, self.out.len)
        memcpy(self.out.data, PyBytes_AS_STRING(raw), n)
        self.out.len += n
        self.out_count += 1

    def _drop_queued(self):
        self.out_count = 0
        buf_empty(&self.out, KEEP_INPUT)

    def _reset_reader(self):
        """A new connection: nothing of a partial reply is kept."""
        buf_empty(&self.inbuf, KEEP_INPUT)
        self.scan = 0
        self.stack.depth = 0

    def data_received(self, object data):
        cdef const char *buf
        cdef Py_ssize_t n, p = 0, end = 0
        cdef int rc
        cdef Fifo fifo = self.fifo
        cdef double now = monotonic()
        cdef object entry, done
        if not PyBytes_CheckExact(data):
            data = bytes(data)
        buf = read_start(&self.inbuf, data, &n)
        try:
            while p < n:
                if self.stack.depth:
                    rc = scan(buf, self.scan, n, &self.stack, &end)
                else:
                    rc = reply_bounds(buf, p, n, &self.stack, &end)
                if rc == 0:
                    self.scan = end
                    break
                if buf[p] == 62:  # '>': a push answers no request
                    self._drop_push(PyBytes_FromStringAndSize(buf + p, end - p))
                    p = end
                    continue
                if not fifo.count:
                    raise ProtocolError(f"a reply to no request: {PyBytes_FromStringAndSize(buf + p, min(end - p, 60))!r}")
                entry = fifo.pop()
                if type(entry) is Reply:
                    if isinstance((<Reply>entry).session, SessionCore):
                        (<SessionCore>(<Reply>entry).session).deliver(<Reply>entry, buf + p, end - p, now)
                    else:
                        (<Reply>entry).data = PyBytes_FromStringAndSize(buf + p, end - p)
                        notify_session((<Reply>entry).session, self.outbox)
                elif type(entry) is KeyPart:
                    done = (<KeyPart>entry).parent.part_in((<KeyPart>entry).index,
                                                          PyBytes_FromStringAndSize(buf + p, end - p))
                    if done is not None:
                        finished(done, now, self.outbox)
                else:
                    done = entry.done(PyBytes_FromStringAndSize(buf + p, end - p))
                    if done is not None:
                        finished(done, now, self.outbox)
                p = end
        except ProtocolError as exc:
            # Garbage or an unsolicited reply: nothing after it can be matched to a request.
            self._protocol_failure(str(exc))
            return
        read_end(&self.inbuf, buf, p, n)
        self.scan = self.scan - p if p < n else 0
        if self.retired and not fifo.count:
            self._close_if_drained()


cdef object twin(object e, object router3):
    """The RESP3 counterpart of a slot table entry (resp3_router.py says why)."""
    if isinstance(e, BackendCore):
        return (<BackendCore>e).resp3
    t = getattr(e, "resp3", None)
    return t if t is not None else router3.missing(e)


# --- client connections -------------------------------------------------------------------------------

cdef class SessionCore:
    """The per-request half of a client connection (session.py has the rest): requests in, replies out.

    ``routes`` maps command names as sent to fast Routes; an empty dict (unauthenticated, MULTI,
    blocked, subscribed, MONITOR attached...) sends every request to ``_slow``. ``resp3`` is set
    by HELLO: the session's requests then go to each entry's RESP3 twin.
    """

    def __cinit__(self, *args, **kwargs):
        self.fifo = Fifo()
        self.routes = {}
        self.dirty = False
        self.resp3 = False
        self._closing = False
        self._paused_writing = False
        self._paused_pending = False
        self._close_after = None
        self.last_active = monotonic()
        self.rq.el = scratch
        self.rq.cap = scratch_cap
        self.rq.own = False

    def __init__(self, worker):
        self.worker = worker
        self.table = worker.router
        self.router3 = worker.router3
        self.outbox = worker.outbox
        self.max_bulk = worker.config.max_request_size

    def __dealloc__(self):
        buf_free(&self.inbuf)
        buf_free(&self.obuf)
        if self.rq.own:
            PyMem_Free(self.rq.el)

    @property
    def pending_input(self):
        """Bytes of a partial request kept until the rest arrives (Redis's query buffer)."""
        return self.inbuf.len

    def data_received(self, object data):
        cdef const char *buf
        cdef const char *nl
        cdef Py_ssize_t n, pos = 0, size
        cdef object src
        cdef int rc, problem = 0
        cdef double t0
        cdef Route route
        cdef PyObject *found
        cdef Slotter slotter
        cdef SlotMap slots
        cdef Fifo fifo = self.fifo
        if self._closing:
            return
        if not PyBytes_CheckExact(data):
            data = bytes(data)
        src = None if self.inbuf.len else data  # bytes carried over: src is made when a Reply needs it
        buf = read_start(&self.inbuf, data, &n)
        t0 = monotonic()
        self.last_active = t0
        routes = self.routes
        table = self.table
        slots = table.slot_map
        slotter = table.slotter
        req_begin(&self.rq)
        while pos < n:
            if self.rq.argc == 0 and buf[pos] != 42:  # not '*': an inline command, as telnet users type them
                nl = <const char *>memchr(buf + pos, 10, n - pos)
                if nl == NULL:
                    if n - pos > INLINE_MAX:
                        self._protocol_error("too big inline request")
                        return
                    break
                line = PyBytes_FromStringAndSize(buf + pos, nl - (buf + pos))
                pos = nl + 1 - buf
                try:
                    self._inline(line, t0)
                except ProtocolError as exc:
                    self._protocol_error(str(exc))
                    return
                if self._closing:
                    break
                routes = self.routes
                slots = table.slot_map
                slotter = table.slotter
                req_begin(&self.rq)
                continue
            rc = parse_request(&self.rq, buf, pos, n, self.max_bulk, &problem)
            if rc == 0:
                break
            if rc < 0:
                self._protocol_error(problem_text(problem, buf, pos + self.rq.next))
                return
            size = self.rq.next
            if rc == 2:  # "*0" / "*-1": Redis skips these silently
                req_done(&self.rq)
                pos += size
                continue
            route = None
            if PyDict_CheckExact(routes) and PyDict_Size(routes):
                found = PyDict_GetItem(routes, route_name(buf + pos + self.rq.el[1], self.rq.el[2]))
                if found != NULL and type(<object>found) is Route:
                    route = <Route>found
                    if not route.fast or self.rq.argc < route.nmin or self.rq.argc > route.nmax \
                            or (route.merge and (self.rq.argc - 1) % route.step):
                        route = None
            if route is not None:
                if src is None:
                    src = PyBytes_FromStringAndSize(buf, n)
                    buf = PyBytes_AS_STRING(src)  # same bytes; the Replies' offsets point into src
                    self.inbuf.len = 0
                if route.merge:
                    self.split(route, src, buf + pos, size, t0, slots, slotter)
                else:
                    self.dispatch(route, src, buf + pos, size, t0, slots, slotter)
                req_done(&self.rq)
                pos += size
                continue
            args = req_args(&self.rq, buf + pos)
            raw = PyBytes_FromStringAndSize(buf + pos, size)
            req_done(&self.rq)
            pos += size
            self._slow(args, raw, t0)
            if self._closing:
                break
            routes = self.routes
            slots = table.slot_map
            slotter = table.slotter
            req_begin(&self.rq)
        if not self._closing:  # QUIT: what follows it is never read
            read_end(&self.inbuf, buf, pos, n)
            if pos < n and self.rq.argc:
                req_keep(&self.rq)
        if fifo.count:
            if fifo.count > MAX_PENDING and not self._paused_pending and self.transport is not None:
                self._paused_pending = True
                self.transport.pause_reading()
            if (<Reply?>fifo_head(fifo)).data is not None:
                self.flush()

    cdef int dispatch(self, Route route, object src, const char *base, Py_ssize_t size, double t0,
                      SlotMap slots, Slotter slotter) except -1:
        """A request with one key at ``route.key``: to the slot's backend."""
        cdef Py_ssize_t *el = self.rq.el + 3 * route.key
        cdef object e = slot_entry(slots, slotter.slot(<const unsigned char *>base + el[1], el[2]))
        cdef Reply r
        if self.resp3:
            e = twin(e, self.router3)
        r = new_reply(self, t0, route.stat, src, base, size)
        self.fifo.push(r)
        if isinstance(e, BackendCore) and (<BackendCore>e).up:
            (<BackendCore>e).put(r, base, size)
        else:
            send_elsewhere(e, r, base, size)
        return 0

    cdef int split(self, Route route, object src, const char *base, Py_ssize_t size, double t0,
                   SlotMap slots, Slotter slotter) except -1:
        """MGET MSET DEL UNLINK EXISTS TOUCH: whole to one backend if every key is there, else one
        sub-request per backend (its keys in request order) and a MultiReply merging the replies."""
        cdef Py_ssize_t step = route.step, nkeys = (self.rq.argc - 1) // step, k, i, g = 0, ng = 0
        cdef Py_ssize_t *el = self.rq.el
        cdef int *part_of = <int *>PyMem_Malloc(2 * nkeys * sizeof(int))
        cdef int *counts = part_of + nkeys
        cdef int slot
        cdef list groups = []
        cdef object e
        cdef PyObject *last = NULL
        cdef PyObject *found
        cdef object entry
        cdef int last_g = -1
        cdef MultiReply mr
        cdef KeyPart part
        cdef BackendCore be
        cdef Buf **bufs
        cdef int *pk
        cdef char head[24]
        cdef Py_ssize_t hn
        if part_of == NULL:
            raise MemoryError()
        try:
            for k in range(nkeys):
                i = 1 + k * step
                slot = slotter.slot(<const unsigned char *>base + el[3 * i + 1], el[3 * i + 2])
                entry = slot_entry(slots, slot)
                found = <PyObject *>entry
                if found != last or self.resp3:
                    e = entry
                    if self.resp3:
                        e = twin(e, self.router3)
                    for g in range(ng + 1):
                        if g == ng:
                            groups.append(e)
                            counts[ng] = 0
                            ng += 1
                            break
                        if <PyObject *>groups[g] == <PyObject *>e:
                            break
                    last = found
                    last_g = g
                part_of[k] = last_g
                counts[last_g] += 1
            if ng == 1:
                self.dispatch_whole(groups[0], route, src, base, size, t0)
                return 0
            mr = MultiReply.__new__(MultiReply)
            mr.session = self
            mr.t0 = t0
            mr.stat = route.stat
            mr.src = src
            mr.off = base - PyBytes_AS_STRING(src)
            mr.size = size
            mr.merge = route.merge
            mr.nparts = mr.left = ng
            mr.nkeys = nkeys
            mr.results = [None] * ng
            self.fifo.push(mr)
            if route.merge == MERGE_ORDERED:
                mr.part_of = part_of  # the merge puts the values back in request order
                part_of = NULL
            bufs = <Buf **>PyMem_Malloc(ng * sizeof(Buf *))
            if bufs == NULL:
                raise MemoryError()
            for g in range(ng):
                bufs[g] = NULL
            try:
                # Each group's sub-request: straight into its backend's buffer, or into one of its
                # own for an entry that is not a connected Backend (sent through Python below).
                for g in range(ng):
                    e = groups[g]
                    if isinstance(e, BackendCore) and (<BackendCore>e).up:
                        bufs[g] = &(<BackendCore>e).out
                    else:
                        bufs[g] = <Buf *>PyMem_Malloc(sizeof(Buf))
                        if bufs[g] == NULL:
                            raise MemoryError()
                        bufs[g].data = NULL
                        bufs[g].len = bufs[g].cap = 0
                        counts[g] = -1 - counts[g]  # marks a Python entry; the count is -1 - counts[g]
                    hn = put_header(head, 42, 1 + (counts[g] if counts[g] >= 0 else -1 - counts[g]) * step)
                    buf_put(bufs[g], head, hn)
                    buf_put(bufs[g], base + el[0], el[1] + el[2] + 2 - el[0])  # the command name
                pk = mr.part_of if part_of == NULL else part_of
                for k in range(nkeys):
                    i = 1 + k * step
                    # the key (and its value): contiguous in the request, headers included
                    buf_put(bufs[pk[k]], base + el[3 * i],
                            el[3 * (i + step - 1) + 1] + el[3 * (i + step - 1) + 2] + 2 - el[3 * i])
                # Every backend part is queued before any Python runs: what Python sends meanwhile
                # must come after them in both the buffer and the FIFO.
                for g in range(ng):
                    if counts[g] >= 0:
                        be = <BackendCore>groups[g]
                        part = KeyPart.__new__(KeyPart)
                        part.parent = mr
                        part.index = g
                        part.t0 = t0
                        be.fifo.push(part)
                        be.out_count += 1
                        if not be.dirty:
                            be.dirty = True
                            be.outbox.backends.append(be)
                            be.outbox.schedule()
                for g in range(ng):
                    if counts[g] < 0:
                        part = KeyPart.__new__(KeyPart)
                        part.parent = mr
                        part.index = g
                        part.t0 = t0
                        send_elsewhere(groups[g], part, bufs[g].data, bufs[g].len)
            finally:
                for g in range(ng):
                    if bufs[g] != NULL and counts[g] < 0:
                        buf_free(bufs[g])
                        PyMem_Free(bufs[g])
                PyMem_Free(bufs)
        finally:
            PyMem_Free(part_of)
        return 0

    cdef int dispatch_whole(self, object e, Route route, object src, const char *base, Py_ssize_t size,
                            double t0) except -1:
        cdef Reply r = new_reply(self, t0, route.stat, src, base, size)
        self.fifo.push(r)
        if isinstance(e, BackendCore) and (<BackendCore>e).up:
            (<BackendCore>e).put(r, base, size)
        else:
            send_elsewhere(e, r, base, size)
        return 0

    def split_request(self, Route route not None, bytes raw not None, double t0):
        """The slow path's way into ``split``: a multi-key request given as its bytes. The session
        may be part-way through a request of its own (a stashed request replayed by a lease's
        reply): that one's parse state is kept aside meanwhile."""
        cdef Slotter slotter = self.table.slotter
        cdef int problem = 0
        cdef const char *b = PyBytes_AS_STRING(raw)
        cdef Req partial = self.rq
        self.rq.argc = self.rq.got = self.rq.next = 0
        self.rq.own = False
        req_begin(&self.rq)
        try:
            if parse_request(&self.rq, b, 0, PyBytes_GET_SIZE(raw), PyBytes_GET_SIZE(raw), &problem) != 1 \
                    or self.rq.argc < 2 or (self.rq.argc - 1) % route.step:
                raise ProtocolError("not a multi-key request")
            self.split(route, raw, b, self.rq.next, t0, self.table.slot_map, slotter)
        finally:
            req_done(&self.rq)
            self.rq = partial
            req_begin(&self.rq)

    cdef int count(self, Reply r, const char *p, Py_ssize_t n, double now) except -1:
        """A reply ``p[:n]`` leaves for the client: INFO commandstats, latencystats and errorstats, SLOWLOG."""
        cdef CommandStat st = r.stat
        cdef double dt = now - r.t0
        if st is not None:
            st.calls += 1
            st.usec += dt
            if self.outbox.latency_tracking:
                st.hist[latency_bucket(dt)] += 1
        if n and p[0] == 45:  # '-'
            if st is not None:
                st.errors += 1
            self.worker.stats.count_error(PyBytes_FromStringAndSize(p, n if n < 40 else 40))
        if dt > self.outbox.slow_threshold:
            self.worker.slowlog.add(r, dt, self)
        return 0

    cdef int deliver(self, Reply r, const char *p, Py_ssize_t n, double now) except -1:
        """The reply to ``r`` is ``p[:n]`` (``r.data`` may hold it already). Next in line: into the
        output buffer, written at once if the client waits for nothing else; otherwise kept in
        ``r.data`` until the replies before it are in."""
        cdef Fifo fifo = self.fifo
        if self.transport is None:
            return 0  # the client is gone; nobody reads it
        if fifo.count and <PyObject *>fifo.items[fifo.head] == <PyObject *>r:
            fifo.pop()
            self.count(r, p, n, now)
            if not fifo.count and self._close_after is None and not self._paused_pending:
                if self.obuf.len:
                    buf_put(&self.obuf, p, n)
                    self.write_out()
                else:
                    self.transport.write(PyBytes_FromStringAndSize(p, n))
                return 0
            buf_put(&self.obuf, p, n)
        elif r.data is None:
            r.data = PyBytes_FromStringAndSize(p, n)
        if not self.dirty:
            self.dirty = True
            self.outbox.sessions.append(self)
            self.outbox.schedule()
        return 0

    cdef int write_out(self) except -1:
        data = PyBytes_FromStringAndSize(self.obuf.data, self.obuf.len)
        buf_empty(&self.obuf, KEEP_BUFFER)
        self.transport.write(data)
        return 0

    cpdef flush(self):
        """Write every finished reply at the head of the FIFO, in request order."""
        cdef Fifo fifo = self.fifo
        cdef Reply r
        cdef double now
        cdef bint closing = False
        cdef object d
        self.dirty = False
        transport = self.transport
        if transport is None:
            fifo.clear()
            buf_empty(&self.obuf, 0)
            return
        now = monotonic()
        close_after = self._close_after
        while fifo.count:
            r = <Reply?>fifo_head(fifo)
            d = r.data
            if d is None:
                break
            fifo.pop()
            if not PyBytes_CheckExact(d):
                d = bytes(d)
            buf_put(&self.obuf, PyBytes_AS_STRING(d), PyBytes_GET_SIZE(d))
            self.count(r, PyBytes_AS_STRING(d), PyBytes_GET_SIZE(d), now)
            if r is close_after:
                closing = True
                break
        if self.obuf.len:
            self.write_out()
        if closing:
            fifo.clear()
            transport.close()
            return
        if self._paused_pending and fifo.count < MAX_PENDING // 2:
            self._paused_pending = False
            if not self._paused_writing and not self._closing:
                transport.resume_reading()
