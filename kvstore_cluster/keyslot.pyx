# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
"""The slot of a key, compiled: CRC16 with Redis Cluster hash tags, and key rules (prefix -> tag).

This is the cluster's one slot function: the proxy's request path calls ``Slotter.slot`` from C;
everything else calls ``key_slot`` (no rules) or ``Slotter.key_slot`` from Python.
"""

from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_GET_SIZE
from cpython.mem cimport PyMem_Free, PyMem_Malloc
from libc.string cimport memchr

SLOT_COUNT = 16384

# CRC16/XMODEM (poly 0x1021), as Redis Cluster's crc16.c, eight bytes per step ("slicing by 8"):
# T[k][x] is the CRC of byte x followed by k zero bytes, and the CRC is linear, so eight bytes
# b0..b7 taken from state c give T[7][c >> 8 ^ b0] ^ T[6][c & 0xFF ^ b1] ^ T[5][b2] ^ ... ^ T[0][b7].
cdef unsigned short T[8][256]


cdef void _init_tables() noexcept:
    cdef unsigned int crc, i, j, k
    for i in range(256):
        crc = i << 8
        for j in range(8):
            crc = ((crc << 1) ^ 0x1021) if crc & 0x8000 else (crc << 1)
        T[0][i] = crc & 0xFFFF
    for k in range(1, 8):
        for i in range(256):
            T[k][i] = ((T[k - 1][i] << 8) & 0xFFFF) ^ T[0][T[k - 1][i] >> 8]


_init_tables()


cdef inline unsigned int crc16(const unsigned char *p, Py_ssize_t n) noexcept nogil:
    cdef unsigned int crc = 0
    while n >= 8:
        crc = (T[7][(crc >> 8) ^ p[0]] ^ T[6][(crc & 0xFF) ^ p[1]] ^ T[5][p[2]] ^ T[4][p[3]]
               ^ T[3][p[4]] ^ T[2][p[5]] ^ T[1][p[6]] ^ T[0][p[7]])
        p += 8
        n -= 8
    while n > 0:
        crc = ((crc << 8) & 0xFFFF) ^ T[0][(crc >> 8) ^ p[0]]
        p += 1
        n -= 1
    return crc


cdef int tag_slot(const unsigned char *key, Py_ssize_t n) noexcept nogil:
    """Redis Cluster's keyHashSlot: the first ``{...}`` with something inside is what is hashed."""
    cdef const unsigned char *s = <const unsigned char *>memchr(key, 123, n)  # '{'
    cdef const unsigned char *e
    if s != NULL:
        e = <const unsigned char *>memchr(s + 1, 125, n - (s + 1 - key))  # '}'
        if e != NULL and e > s + 1:
            return crc16(s + 1, e - s - 1) & 0x3FFF
    return crc16(key, n) & 0x3FFF


def key_slot(bytes key not None) -> int:
    """Return the slot of ``key`` exactly as Redis Cluster's ``CLUSTER KEYSLOT`` does (no key rules)."""
    return tag_slot(<const unsigned char *>PyBytes_AS_STRING(key), PyBytes_GET_SIZE(key))


cdef class Slotter:
    """The slot function of one set of key rules, built once per rules version.

    A rule ``(prefix, tag)`` makes every key starting with ``prefix`` hash as if its hash tag
    were ``tag`` (slot = CRC16(tag) mod 16384); the longest matching prefix wins; a key matching
    no rule hashes as Redis Cluster does. The prefixes are a trie whose nodes index their children
    by byte, so finding the longest match costs one step per matched byte, whatever the number of
    rules; without rules ``slot`` is ``key_slot``.
    """

    def __cinit__(self):
        self.nrules = 0
        self.node_rule = NULL
        self.node_lo = NULL
        self.node_hi = NULL
        self.node_base = NULL
        self.edges = NULL
        self.rule_slot = NULL
        self.rules = ()

    def __init__(self, rules=()):
        """``rules``: ``(prefix, tag)`` pairs of bytes; prefixes non-empty and distinct."""
        pairs = []
        seen = set()
        for prefix, tag in rules:
            if not isinstance(prefix, bytes) or not isinstance(tag, bytes):
                raise TypeError("key rules are (prefix, tag) pairs of bytes")
            if not prefix:
                raise ValueError("a key rule's prefix must not be empty")
            if prefix in seen:
                raise ValueError(f"key rule prefix {prefix!r} given twice")
            seen.add(prefix)
            pairs.append((prefix, tag))
        self.rules = tuple(pairs)
        if pairs:
            self._build(pairs)

    cdef _build(self, list pairs):
        # A Python trie first (node: [children dict, rule index]); then flattened to C arrays.
        nodes = [[{}, -1]]
        for i, (prefix, tag) in enumerate(pairs):
            cur = 0
            for c in prefix:
                nxt = nodes[cur][0].get(c)
                if nxt is None:
                    nxt = len(nodes)
                    nodes.append([{}, -1])
                    nodes[cur][0][c] = nxt
                cur = nxt
            nodes[cur][1] = i
        cdef Py_ssize_t count = len(nodes), nedges = 0, k
        for children, _ in nodes:
            if children:
                nedges += max(children) - min(children) + 1
        self.node_rule = <int *>PyMem_Malloc(count * sizeof(int))
        self.node_lo = <unsigned char *>PyMem_Malloc(count)
        self.node_hi = <unsigned char *>PyMem_Malloc(count)
        self.node_base = <int *>PyMem_Malloc(count * sizeof(int))
        self.edges = <int *>PyMem_Malloc((nedges + 1) * sizeof(int))
        self.rule_slot = <int *>PyMem_Malloc(len(pairs) * sizeof(int))
        if not (self.node_rule and self.node_lo and self.node_hi and self.node_base and self.edges
                and self.rule_slot):
            raise MemoryError()
        cdef int base = 0
        for k in range(count):
            children, rule = nodes[k]
            self.node_rule[k] = rule
            if children:
                lo, hi = min(children), max(children)
                self.node_lo[k], self.node_hi[k], self.node_base[k] = lo, hi, base
                for c in range(lo, hi + 1):
                    self.edges[base + c - lo] = children.get(c, 0)
                base += hi - lo + 1
            else:  # lo > hi: no byte has a child
                self.node_lo[k], self.node_hi[k], self.node_base[k] = 1, 0, 0
        cdef bytes tag_bytes
        for k, (_, tag_bytes) in enumerate(pairs):
            self.rule_slot[k] = crc16(<const unsigned char *>PyBytes_AS_STRING(tag_bytes),
                                      PyBytes_GET_SIZE(tag_bytes)) & 0x3FFF
        self.nrules = len(pairs)

    def __dealloc__(self):
        PyMem_Free(self.node_rule)
        PyMem_Free(self.node_lo)
        PyMem_Free(self.node_hi)
        PyMem_Free(self.node_base)
        PyMem_Free(self.edges)
        PyMem_Free(self.rule_slot)

    cdef int slot(self, const unsigned char *key, Py_ssize_t n) noexcept nogil:
        cdef int node = 0, best = -1, nxt
        cdef Py_ssize_t i
        cdef unsigned char c
        if self.nrules:
            for i in range(n):
                c = key[i]
                if c < self.node_lo[node] or c > self.node_hi[node]:
                    break
                nxt = self.edges[self.node_base[node] + c - self.node_lo[node]]
                if nxt == 0:
                    break
                node = nxt
                if self.node_rule[node] >= 0:
                    best = self.node_rule[node]
            if best >= 0:
                return self.rule_slot[best]
        return tag_slot(key, n)

    def key_slot(self, bytes key not None) -> int:
        """The slot of ``key`` under these rules."""
        return self.slot(<const unsigned char *>PyBytes_AS_STRING(key), PyBytes_GET_SIZE(key))

    def __repr__(self):
        return f"Slotter({len(self.rules)} rules)"
