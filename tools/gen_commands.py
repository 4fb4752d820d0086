"""Regenerate kvstore_proxy/command_data.json from a throwaway redis-server's COMMAND and COMMAND DOCS.

Usage: .venv/bin/python tools/gen_commands.py [--redis-server /usr/bin/redis-server] [--output PATH]

The JSON holds, for every command and subcommand (``"object|encoding"``), what the proxy needs from
Redis itself: arity, flags, ACL categories, key specs in a compact form, and the docs' group and
summary (for docs/commands.md). The proxy's own classification lives in kvstore_proxy/commands.py.

Key spec forms (one list per spec, in the server's order):
    begin:  ["index", pos] | ["keyword", KEYWORD, startfrom] | ["unknown"]
    find:   ["range", lastkey, keystep, limit] | ["keynum", keynumidx, firstkey, keystep] | ["unknown"]
    flags:  the spec's flags (RO, RW, OW, RM, access, update, insert, delete, not_key, incomplete, ...)
"""

from __future__ import annotations

import argparse
import contextlib
import json
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import redis

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUTPUT = ROOT / "kvstore_proxy" / "command_data.json"


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def throwaway_redis(redis_server: str = "redis-server") -> Iterator[int]:
    """Run a persistence-free redis-server on a free local port; yield the port; always stop it."""
    binary = shutil.which(redis_server) or redis_server
    with tempfile.TemporaryDirectory(prefix="kvstore-gen-") as tmp:
        port = _free_port()
        proc = subprocess.Popen(
            [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
             "--dir", tmp],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            client = redis.Redis(host="127.0.0.1", port=port)
            deadline = time.monotonic() + 10
            while True:
                if proc.poll() is not None:
                    raise RuntimeError(f"redis-server exited with status {proc.returncode} on port {port}")
                try:
                    client.ping()
                    break
                except redis.ConnectionError:
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.05)
            client.close()
            yield port
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


class RawConnection:
    """Replies exactly as the server sends them: redis-py's COMMAND callbacks would reshape them."""

    def __init__(self, port: int, host: str = "127.0.0.1"):
        self._conn = redis.Connection(host=host, port=port)

    def __call__(self, *args: str | bytes) -> Any:
        self._conn.send_command(*args)
        return self._conn.read_response()

    def close(self) -> None:
        self._conn.disconnect()


def _text(value: Any) -> Any:
    if isinstance(value, bytes):
        return value.decode()
    if isinstance(value, list):
        return [_text(v) for v in value]
    if isinstance(value, dict):
        return {_text(k): _text(v) for k, v in value.items()}
    return value


def _pairs(value: Any) -> dict[str, Any]:
    """RESP2 sends maps as flat lists; hiredis may already have turned them into dicts."""
    if isinstance(value, dict):
        return {_text(k): v for k, v in value.items()}
    return {_text(value[i]): value[i + 1] for i in range(0, len(value), 2)}


def _key_spec(raw: Any) -> dict[str, Any]:
    spec = _pairs(raw)
    bs = _pairs(spec["begin_search"])
    bs_spec = _pairs(bs["spec"])
    fk = _pairs(spec["find_keys"])
    fk_spec = _pairs(fk["spec"])
    begin: list[Any]
    find: list[Any]
    match _text(bs["type"]):
        case "index":
            begin = ["index", bs_spec["index"]]
        case "keyword":
            begin = ["keyword", _text(bs_spec["keyword"]), bs_spec["startfrom"]]
        case other:
            begin = [other]
    match _text(fk["type"]):
        case "range":
            find = ["range", fk_spec["lastkey"], fk_spec["keystep"], fk_spec["limit"]]
        case "keynum":
            find = ["keynum", fk_spec["keynumidx"], fk_spec["firstkey"], fk_spec["keystep"]]
        case other:
            find = [other]
    return {"begin": begin, "find": find, "flags": _text(spec["flags"])}


def _entry(raw: list[Any], docs: dict[str, Any], out: dict[str, dict[str, Any]]) -> None:
    name = _text(raw[0]).lower()
    doc = _pairs(docs.get(name, []))
    entry: dict[str, Any] = {
        "arity": raw[1],
        "flags": _text(raw[2]),
        "acl": [c.removeprefix("@") for c in _text(raw[6])],
        "keys": [_key_spec(s) for s in raw[8]],
        "group": _text(doc.get("group", b"")),
        "summary": _text(doc.get("summary", b"")),
    }
    subs = raw[9] if len(raw) > 9 else []
    if subs:
        entry["subcommands"] = sorted(_text(s[0]).lower() for s in subs)
        sub_docs = _pairs(doc.get("subcommands", []))
        for sub in subs:
            _entry(sub, sub_docs, out)
    out[name] = entry


def collect(port: int, host: str = "127.0.0.1") -> dict[str, Any]:
    """Everything command_data.json holds, read from the server at ``host:port``."""
    conn = RawConnection(port, host)
    try:
        version = _text(conn("INFO", "server")).split("redis_version:")[1].split()[0]
        docs = _pairs(conn("COMMAND", "DOCS"))
        commands: dict[str, dict[str, Any]] = {}
        for raw in conn("COMMAND"):
            _entry(raw, docs, commands)
    finally:
        conn.close()
    return {"redis_version": version, "commands": dict(sorted(commands.items()))}


def dumps(data: dict[str, Any]) -> str:
    """One command per line: small diffs when Redis changes, still valid JSON."""
    lines = ["{", f'"redis_version": {json.dumps(data["redis_version"])},', '"commands": {']
    items = list(data["commands"].items())
    for i, (name, entry) in enumerate(items):
        comma = "," if i < len(items) - 1 else ""
        lines.append(f"{json.dumps(name)}: {json.dumps(entry, sort_keys=True)}{comma}")
    lines += ["}", "}"]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--redis-server", default="redis-server")
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT)
    args = parser.parse_args(argv)
    with throwaway_redis(args.redis_server) as port:
        data = collect(port)
    args.output.write_text(dumps(data))
    print(f"wrote {len(data['commands'])} commands from redis {data['redis_version']} to {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
