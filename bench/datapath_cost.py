"""Instructions per request of the proxy's request path, counted by callgrind, without sockets.

    client bytes ─► Session.data_received ─► Outbox.run ─► (fake backend: a canned reply)
        ─► Backend.data_received ─► the reply written to the client's (fake) transport

A Worker with three fake backends serves N requests of one kind at pipeline depth 1, in one
process under ``valgrind --tool=callgrind``; the same run with N + DELTA requests less that one,
divided by DELTA, is the cost of one request (start-up and imports cancel out). Instruction counts
hardly move with the machine's load, unlike ops/s, so a change to the hot path is measured here
first (``make bench`` shows what a client sees):

    .venv/bin/python bench/datapath_cost.py                       # this tree, GET SET MGET
    .venv/bin/python bench/datapath_cost.py --baseline main       # and git REF, side by side
    .venv/bin/python bench/datapath_cost.py --proxy-option latency_tracking=false
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent

REQUESTS = {  # name: the request's arguments
    "GET": [b"GET", b"key:1"],
    "SET": [b"SET", b"key:1", b"xyz"],
    "MGET": [b"MGET", *[b"key:%d" % i for i in range(10)]],  # 10 keys: split over the three groups
}


class Transport:
    """What the worker writes to, kept (the backends') or dropped (the client's)."""

    def __init__(self) -> None:
        self.out = bytearray()

    def write(self, data: bytes) -> None:
        self.out += data

    def get_extra_info(self, name: str) -> Any:
        return ("127.0.0.1", 1) if name in ("peername", "sockname") else None

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass


def _answer(request: bytes) -> bytes:
    """The reply of a Redis holding "xyz" under every key to ``request`` (GET, SET or MGET)."""
    import hiredis

    reader = hiredis.Reader()
    reader.feed(request)
    out = b""
    while (args := reader.gets()) is not False:
        name = args[0].upper()
        if name == b"SET":
            out += b"+OK\r\n"
        elif name == b"GET":
            out += b"$3\r\nxyz\r\n"
        else:
            out += b"*%d\r\n" % (len(args) - 1) + b"$3\r\nxyz\r\n" * (len(args) - 1)
    return out


async def serve(kind: str, n: int, options: dict[str, Any]) -> None:
    """``n`` requests of ``kind``, one at a time, each answered before the next is sent."""
    from kvstore_cluster.model import Group, Groups, SlotTable, even_split
    from kvstore_proxy import resp
    from kvstore_proxy.config import ProxyConfig
    from kvstore_proxy.server import Worker
    from kvstore_proxy.session import Session

    worker = Worker(ProxyConfig(**options), asyncio.get_running_loop())
    worker.listening = True
    ids = ["g1", "g2", "g3"]
    worker.router.apply(Groups(tuple(Group(g, f"127.0.0.1:{10000 + i}") for i, g in enumerate(ids))), 1,
                        SlotTable(tuple(even_split(ids))), 1)
    backends = []
    for g in ids:
        b = worker.router.backends[g]
        if b._connect_task is not None:
            b._connect_task.cancel()  # never connects: its transport is a fake
        b.connection_made(Transport())
        backends.append(b)
    session = Session(worker)
    client = Transport()
    session.connection_made(client)
    request = resp.command(REQUESTS[kind])
    # One request first: what each backend gets, and so the reply it sends, is the same every time.
    session.data_received(request)
    worker.outbox.run()
    canned = [(b, _answer(bytes(b.transport.out))) for b in backends if b.transport.out]
    for b, reply in canned:
        b.transport.out.clear()
        b.data_received(reply)
    worker.outbox.run()
    expected = bytes(client.out)
    assert expected.startswith((b"+OK", b"$3", b"*10")), expected
    for _ in range(n):
        client.out.clear()
        session.data_received(request)
        worker.outbox.run()
        for b, reply in canned:
            b.transport.out.clear()
            b.data_received(reply)
        worker.outbox.run()
    assert bytes(client.out) == expected, client.out


def child(args: argparse.Namespace) -> int:
    sys.path.insert(0, args.root)  # the tree measured (this one, or a --baseline checkout) first
    asyncio.run(serve(args.child, args.requests, json.loads(args.options)))
    return 0


def instructions(root: Path, kind: str, n: int, options: dict[str, Any], tmp: Path) -> int:
    out = tmp / f"callgrind.{os.getpid()}.{kind}.{n}"
    env = {**os.environ, "PYTHONHASHSEED": "0", "PYTHONDONTWRITEBYTECODE": "1"}
    subprocess.run(["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}", sys.executable,
                    str(Path(__file__).resolve()), "--child", kind, "--requests", str(n),
                    "--root", str(root), "--options", json.dumps(options)],
                   check=True, env=env, cwd=root, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    match = re.search(r"^summary:\s+(\d+)", out.read_text(), re.M)
    out.unlink()
    if match is None:
        raise SystemExit(f"no summary line in callgrind's output {out}")
    return int(match.group(1))


def per_request(root: Path, kind: str, n: int, delta: int, options: dict[str, Any], tmp: Path) -> float:
    return (instructions(root, kind, n + delta, options, tmp) - instructions(root, kind, n, options, tmp)) / delta


def _option(text: str) -> tuple[str, Any]:
    name, sep, value = text.partition("=")
    if not sep:
        raise argparse.ArgumentTypeError(f"{text!r}: want NAME=VALUE (a ProxyConfig field)")
    return name, json.loads(value)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tests", default=",".join(REQUESTS), help=f"comma-separated, of {', '.join(REQUESTS)}")
    ap.add_argument("--requests", type=int, default=2000, help="requests of the shorter run (default 2000)")
    ap.add_argument("--delta", type=int, default=10000, help="how many more the longer run has (default 10000)")
    ap.add_argument("--baseline", metavar="REF", help="also measure git REF of this repository (e.g. main)")
    ap.add_argument("--proxy-option", type=_option, action="append", default=[], metavar="NAME=JSON",
                    help="a ProxyConfig field for both trees, e.g. latency_tracking=false (repeatable)")
    ap.add_argument("--child", choices=list(REQUESTS), help=argparse.SUPPRESS)
    ap.add_argument("--root", default=str(ROOT), help=argparse.SUPPRESS)
    ap.add_argument("--options", default="{}", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        return child(args)
    if shutil.which("valgrind") is None:
        raise SystemExit("valgrind is missing (Debian: apt-get install valgrind)")
    kinds = [k.strip().upper() for k in args.tests.split(",") if k.strip()]
    if not kinds or any(k not in REQUESTS for k in kinds):
        ap.error(f"--tests: choose from {', '.join(REQUESTS)}")
    options = dict(args.proxy_option)
    with tempfile.TemporaryDirectory(prefix="kvstore-datapath-cost-") as d:
        tmp = Path(d)
        trees = {"this tree": ROOT}
        if args.baseline:
            sys.path.insert(0, str(ROOT))
            from bench.cluster import checkout

            trees[args.baseline] = checkout(args.baseline, tmp / "baseline")
        print(f"instructions per request (callgrind; runs of {args.requests} and {args.requests + args.delta} "
              f"requests; options {options or 'none'})")
        print(f"{'request':<8}" + "".join(f"{name:>14}" for name in trees) + ("       ratio" if len(trees) > 1 else ""))
        for kind in kinds:
            costs = [per_request(root, kind, args.requests, args.delta, options, tmp) for root in trees.values()]
            ratio = f"{costs[0] / costs[1]:>11.3f}x" if len(costs) > 1 else ""
            print(f"{kind:<8}" + "".join(f"{c:>14,.0f}" for c in costs) + ratio, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
