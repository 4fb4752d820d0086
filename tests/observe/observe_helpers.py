"""Helpers of the observability tests: scrape /metrics into values, plain HTTP requests, a ZooKeeper relay."""

from __future__ import annotations

import socket
import urllib.error
import urllib.request
from typing import Any

from prometheus_client.parser import text_string_to_metric_families
from sentinel_helpers import TcpProxy

from kvstore_admin.processes import LocalProcess


class Scrape:
    """One scrape: ``value(name, **labels)`` finds a sample (labels given must match, others are free)."""

    def __init__(self, text: str):
        self.text = text
        self.samples: list[tuple[str, dict[str, str], float]] = []
        self.types: dict[str, str] = {}
        for fam in text_string_to_metric_families(text):
            self.types[fam.name] = fam.type
            for s in fam.samples:
                self.samples.append((s.name, dict(s.labels), s.value))

    def all(self, name: str, **labels: str) -> list[tuple[dict[str, str], float]]:
        return [(lab, v) for n, lab, v in self.samples if n == name and all(lab.get(k) == w for k, w in labels.items())]

    def value(self, name: str, **labels: str) -> float:
        found = self.all(name, **labels)
        if len(found) != 1:
            raise KeyError(f"{name}{labels}: {len(found)} samples ({found[:5]})")
        return found[0][1]

    def sum(self, name: str, **labels: str) -> float:
        return sum(v for _, v in self.all(name, **labels))


def get(port: int, path: str = "/metrics", timeout: float = 5.0) -> tuple[int, dict[str, str], bytes]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=timeout) as r:
            return r.status, dict(r.headers), r.read()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), exc.read()


def scrape(port: int) -> Scrape:
    status, headers, body = get(port)
    assert status == 200, body
    assert headers["Content-Type"].startswith("text/plain; version=0.0.4")
    return Scrape(body.decode())


def raw_request(port: int, data: bytes, timeout: float = 5.0) -> bytes:
    """Send ``data`` as it is and read the whole answer (the server closes after one reply)."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(data)
        out = b""
        while True:
            chunk = s.recv(65536)
            if not chunk:
                return out
            out += chunk


def status_of(reply: bytes) -> int:
    return int(reply.split(b" ", 2)[1])


class ZkRelay(TcpProxy):
    """A TcpProxy in front of ZooKeeper with the test's chroot: cut() makes ZooKeeper unreachable."""

    def __init__(self, zookeeper: LocalProcess, zk_hosts: str):
        super().__init__(("127.0.0.1", zookeeper.port))
        chroot = zk_hosts[zk_hosts.index("/"):]
        self.hosts = f"127.0.0.1:{self.port}{chroot}"


def labels_of(found: list[tuple[dict[str, str], float]], key: str) -> set[Any]:
    return {lab[key] for lab, _ in found}
