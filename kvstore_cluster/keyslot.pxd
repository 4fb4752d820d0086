# The slot function's C interface, for the proxy's compiled request path (cimported there).

cdef class Slotter:
    cdef int nrules
    cdef int *node_rule     # per trie node: index of the rule ending there, or -1
    cdef unsigned char *node_lo
    cdef unsigned char *node_hi
    cdef int *node_base     # per trie node: where its children start in edges (child of byte c: edges[base + c - lo])
    cdef int *edges         # child node index, 0 = none (node 0 is the root, never a child)
    cdef int *rule_slot
    cdef readonly tuple rules

    cdef int slot(self, const unsigned char *key, Py_ssize_t n) noexcept nogil
    cdef _build(self, list pairs)


cdef int tag_slot(const unsigned char *key, Py_ssize_t n) noexcept nogil
