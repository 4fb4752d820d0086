# The compiled request path's types (datapath.pyx); Python code sees the ``public`` fields.

from kvstore_cluster.keyslot cimport Slotter


cdef struct Buf:
    char *data
    Py_ssize_t len
    Py_ssize_t cap


cdef struct Req:
    # The multibulk request being parsed; offsets are relative to its first byte.
    Py_ssize_t argc         # elements it declares (0: its header is not parsed yet)
    Py_ssize_t got          # elements parsed
    Py_ssize_t next         # where the next element (or, once complete, the next request) starts
    Py_ssize_t *el          # 3 per element: header start, payload start, payload length
    Py_ssize_t cap          # elements el has room for
    bint own                # el belongs to this session (a partial request kept across reads)


cdef struct Stack:
    # Element counts still expected by the enclosing aggregates of a partial reply.
    long long *items
    Py_ssize_t depth
    Py_ssize_t cap


cdef class SlotMap:
    cdef unsigned char idx[16384]
    cdef readonly list entries
    cdef readonly list table
    cdef bint wide              # more than 256 distinct entries: index ``table`` itself


cdef class Fifo:
    cdef list items
    cdef Py_ssize_t head, count, mask

    cdef int push(self, object o) except -1
    cdef int push_front(self, object o) except -1
    cdef object pop(self)
    cdef void _shrink(self) noexcept
    cdef int _grow(self) except -1


# A command's latency histogram: log-linear buckets of whole microseconds (datapath.latency_bucket),
# exact under 16 µs, then 16 to each power of two (each under 6.25% wide), the last from 2**36 µs
# (19 hours) up.
cdef enum:
    HIST_SUB_BITS = 4
    HIST_SUB = 1 << HIST_SUB_BITS
    HIST_TOP_BITS = 36
    HIST_BUCKETS = (HIST_TOP_BITS - HIST_SUB_BITS + 1) << HIST_SUB_BITS


cdef class CommandStat:
    cdef public object name
    cdef public long long calls
    cdef public double usec
    cdef public long long errors
    cdef unsigned long long hist[HIST_BUCKETS]  # replies by latency, with latency tracking on


cdef class Reply:
    cdef public object session
    cdef public object data
    cdef public double t0
    cdef public CommandStat stat
    cdef object _args
    cdef object src         # bytes holding the request at src[off:off+size] (fast path), or None
    cdef Py_ssize_t off, size

    cpdef object fail(self, object err)


cdef class MultiReply(Reply):
    cdef int merge, nparts, left
    cdef Py_ssize_t nkeys
    cdef list results       # per part: its raw reply (or the error it failed with)
    cdef int *part_of       # per key, in request order: the part it went to (MGET's merge needs it)

    cdef object part_in(self, int index, object raw)
    cdef bytes merged(self)
    cdef bytes summed(self)
    cdef bytes ordered(self)


cdef class KeyPart:
    cdef public MultiReply parent
    cdef public int index
    cdef public double t0

    cpdef object done(self, object raw)
    cpdef object fail(self, object err)


cdef class Route:
    cdef public object spec
    cdef public CommandStat stat
    cdef public bint fast
    cdef public Py_ssize_t key, nmin, nmax, step
    cdef public int merge   # 0: one key at position ``key``; else a split multi-key command's merge


cdef class Outbox:
    cdef public object loop
    cdef public list backends
    cdef public list sessions
    cdef public bint scheduled
    cdef public double slow_threshold
    cdef public bint latency_tracking
    cdef object _run

    cpdef schedule(self)
    cpdef run(self)


cdef class BackendCore:
    cdef public object transport
    cdef public Outbox outbox
    cdef public object resp3
    cdef public object error
    cdef public Fifo fifo
    cdef public bint up, dirty, retired
    cdef public long long sent
    cdef Buf out
    cdef Py_ssize_t out_count
    cdef Buf inbuf
    cdef Py_ssize_t scan
    cdef Stack stack

    cpdef send(self, object r, object raw)
    cpdef refuse(self, object r)
    cpdef flush(self)
    cdef int put(self, object r, const char *p, Py_ssize_t n) except -1


cdef class SessionCore:
    cdef public object worker
    cdef public object transport
    cdef public object routes
    cdef public Outbox outbox
    cdef public Fifo fifo
    cdef public bint dirty, resp3
    cdef public bint _closing, _paused_writing, _paused_pending
    cdef public object _close_after
    cdef public double last_active
    cdef public Py_ssize_t max_bulk
    cdef object table       # the worker's Router: slot_backend and slotter
    cdef object router3     # the worker's Resp3Router: what a slot entry without a RESP3 twin gets
    cdef Buf inbuf
    cdef Req rq
    cdef Buf obuf

    cpdef flush(self)
    cdef int deliver(self, Reply r, const char *p, Py_ssize_t n, double now) except -1
    cdef int count(self, Reply r, const char *p, Py_ssize_t n, double now) except -1
    cdef int dispatch(self, Route route, object src, const char *base, Py_ssize_t size, double t0,
                      SlotMap slots, Slotter slotter) except -1
    cdef int split(self, Route route, object src, const char *base, Py_ssize_t size, double t0,
                   SlotMap slots, Slotter slotter) except -1
    cdef int dispatch_whole(self, object e, Route route, object src, const char *base, Py_ssize_t size,
                            double t0) except -1
    cdef int write_out(self) except -1
