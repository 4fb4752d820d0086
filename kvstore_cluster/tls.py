"""TLS from certificate files: the proxy's listening side (reloadable) and every process's side to Redis nodes.

**Listening** (kvstore-proxy ``--tls-listen``): :class:`ServerTLS` owns one ``SSLContext`` given to
the listening socket; ``reload()`` (SIGHUP, or the files' modification times changing) loads the
certificate, key and CA again into that same context, so new connections get the new certificate
and connected ones keep theirs. A file that does not load (half-written, key not matching) is
reported and the old material is kept. With a CA file, clients must present a certificate it
signed.

**To Redis nodes**: a group whose record says ``tls`` (``kvstore-admin group add --tls``) has nodes
listening with TLS (redis-server ``tls-port``). Each process is configured once at start
(:func:`configure`: the CA that signed the nodes' certificates, and the client certificate and key
that nodes with ``tls-auth-clients yes`` require) and learns which addresses speak TLS from every
groups table it reads (:func:`remember`, called by ``ClusterStore.read_groups`` and the proxy's
watch): the connect calls of every client of a node (``kvstore_cluster.node.Node``, the proxy's
backends and leases, the importer) ask :func:`for_address`. Node certificates are verified
against the CA but not against a host name: nodes are addressed by IP, as Redis's own replication
does.
"""

from __future__ import annotations

import os
import ssl
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import structlog

log = structlog.get_logger("kvstore.tls")

ENV_CA = "KVSTORE_REDIS_TLS_CA_CERT_FILE"
ENV_CERT = "KVSTORE_REDIS_TLS_CERT_FILE"
ENV_KEY = "KVSTORE_REDIS_TLS_KEY_FILE"


class TLSConfigError(ValueError):
    """A certificate, key or CA file that cannot be used; the message names it."""


def _load_chain(ctx: ssl.SSLContext, cert: str, key: str | None) -> None:
    try:
        ctx.load_cert_chain(cert, key)
    except FileNotFoundError as exc:
        raise TLSConfigError(f"cannot read {exc.filename or cert}: no such file") from None
    except (ssl.SSLError, OSError) as exc:
        raise TLSConfigError(f"cannot use the certificate {cert} with the key {key or cert}: "
                             f"{getattr(exc, 'reason', None) or exc}") from None


def _load_ca(ctx: ssl.SSLContext, ca: str) -> None:
    try:
        ctx.load_verify_locations(cafile=ca)
    except FileNotFoundError:
        raise TLSConfigError(f"cannot read the CA file {ca}: no such file") from None
    except (ssl.SSLError, OSError) as exc:
        raise TLSConfigError(f"cannot use the CA file {ca}: {getattr(exc, 'reason', None) or exc}") from None


@dataclass(frozen=True, slots=True)
class TLSFiles:
    cert: str
    key: str
    ca: str | None = None

    def mtimes(self) -> tuple[float, ...]:
        out = []
        for f in (self.cert, self.key, self.ca):
            try:
                out.append(os.stat(f).st_mtime if f else 0.0)
            except OSError:
                out.append(-1.0)
        return tuple(out)


class ServerTLS:
    """The listening context of ``files``, reloadable in place."""

    def __init__(self, files: TLSFiles):
        self.files = files
        self.context = self._build()
        self._stamp = files.mtimes()
        self.reloads = 0

    def _build(self, into: ssl.SSLContext | None = None) -> ssl.SSLContext:
        ctx = into or ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        _load_chain(ctx, self.files.cert, self.files.key)
        if self.files.ca:
            _load_ca(ctx, self.files.ca)
            ctx.verify_mode = ssl.CERT_REQUIRED
        return ctx

    def reload(self) -> str | None:
        """Load the files again (checked on a scratch context first); the error text, None if loaded."""
        self._stamp = self.files.mtimes()
        try:
            self._build()  # all or nothing: the live context is touched only with files known good
            self._build(self.context)
        except TLSConfigError as exc:
            log.error("tls_reload_failed", error=str(exc), kept="the certificate loaded before")
            return str(exc)
        self.reloads += 1
        log.info("tls_reloaded", cert=self.files.cert, ca=self.files.ca)
        return None

    def reload_if_changed(self) -> None:
        if self.files.mtimes() != self._stamp:
            self.reload()


# --- the client side, to Redis nodes ---------------------------------------------------------------

_client: ssl.SSLContext | None = None
_tls_nodes: frozenset[str] = frozenset()


def client_context(ca: str | None, cert: str | None, key: str | None) -> ssl.SSLContext:
    """A context that verifies nodes with ``ca`` (the system's CAs without) and presents ``cert``."""
    ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
    ctx.check_hostname = False
    if ca:
        _load_ca(ctx, ca)
    if cert:
        _load_chain(ctx, cert, key)
    elif key:
        raise TLSConfigError("a client key was given without its certificate")
    return ctx


def configure(ca: str | None = None, cert: str | None = None, key: str | None = None) -> None:
    """This process's TLS material for nodes (flags, else ``KVSTORE_REDIS_TLS_*``); TLSConfigError if unusable."""
    global _client
    ca = ca or os.environ.get(ENV_CA) or None
    cert = cert or os.environ.get(ENV_CERT) or None
    key = key or os.environ.get(ENV_KEY) or None
    _client = client_context(ca, cert, key) if (ca or cert or key) else None


def remember(groups: Iterable[Any]) -> None:
    """The addresses of every node of the groups marked ``tls`` (a fresh groups table was read)."""
    global _tls_nodes
    _tls_nodes = frozenset(n for g in groups if g.tls for n in g.nodes)


def add_nodes(addresses: Iterable[str]) -> None:
    """Nodes about to join a TLS group (``group add --tls``), before any table names them."""
    global _tls_nodes
    _tls_nodes = _tls_nodes | frozenset(addresses)


def for_address(address: str) -> ssl.SSLContext | None:
    """The context to connect to the node at ``address`` with, None for plain TCP."""
    global _client
    if address not in _tls_nodes:
        return None
    if _client is None:
        _client = client_context(None, None, None)
    return _client
