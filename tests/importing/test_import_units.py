"""Pure parts of the import: stream parsing with offsets, the spool, RDB aux fields, key positions, records."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from kvstore_admin.importing.apply import StreamError, StreamParser
from kvstore_admin.importing.groups import Marker
from kvstore_admin.importing.resp import pack
from kvstore_admin.importing.routing import CommandTable, UnknownCommand
from kvstore_admin.importing.scratch import rdb_aux, stream_db
from kvstore_admin.importing.spool import Spool, SpoolClosed
from kvstore_cluster.import_state import ImportRunner, ImportState
from kvstore_cluster.model import ModelError


def test_parser_gives_each_command_its_bytes_and_end_offset() -> None:
    commands = [pack("SELECT", 0), pack("SET", "k", "v" * 300), pack("MULTI"), pack("INCR", b"\x00\r\n"),
                pack("EXEC")]
    stream = b"".join(commands)
    parser = StreamParser(1000)
    got = []
    for i in range(0, len(stream), 7):  # arbitrary read boundaries
        parser.feed(stream[i : i + 7])
        while (item := parser.next()) is not None:
            got.append(item)
    assert [raw for _, raw, _ in got] == commands
    ends, total = [], 1000
    for c in commands:
        total += len(c)
        ends.append(total)
    assert [end for _, _, end in got] == ends
    assert got[3][0] == [b"INCR", b"\x00\r\n"]


@pytest.mark.parametrize("garbage", [b":42\r\n", b"+OK\r\n", b"*1\r\n:1\r\n", b"$3\r\nabc\r\n"])
def test_parser_refuses_what_is_not_a_command(garbage: bytes) -> None:
    parser = StreamParser(0)
    parser.feed(pack("PING") + garbage)
    assert parser.next() is not None
    with pytest.raises(StreamError, match="not a command"):
        parser.next()


def test_parser_refuses_protocol_garbage() -> None:
    parser = StreamParser(0)
    parser.feed(b"*1\r\n$x\r\n")
    with pytest.raises(StreamError, match="garbage in its replication stream"):
        parser.next()


def test_spool_keeps_order_across_memory_and_file(tmp_path: Path) -> None:
    spool = Spool(tmp_path, memory_limit=10)
    chunks = [bytes([65 + i]) * (3 + i) for i in range(12)]
    for c in chunks[:6]:
        spool.append(c)  # the first ones fit in memory, then it spills
    got = spool.read(4, 0.01)
    for c in chunks[6:]:
        spool.append(c)
    while True:
        data = spool.read(5, 0.01)
        if not data:
            break
        got += data
    assert got == b"".join(chunks)
    assert not (tmp_path / "stream.spool").exists()  # read back to the end: the file is gone
    spool.append(b"again")
    spool.close("bye")
    assert spool.read(100, 0.01) == b"again"
    with pytest.raises(SpoolClosed, match="bye"):
        spool.read(100, 0.01)


def test_rdb_aux_fields(tmp_path: Path) -> None:
    rdb = tmp_path / "x.rdb"
    rdb.write_bytes(b"REDIS0010\xfa\tredis-ver\x067.0.15\xfa\x0erepl-stream-db\xc0\x03\xfa\x07repl-id(" + b"a" * 40
                    + b"\xfa\x0brepl-offset\xc1\x8d\x03\xfe\x00")
    aux = rdb_aux(rdb)
    assert aux[b"redis-ver"] == b"7.0.15" and aux[b"repl-id"] == b"a" * 40 and aux[b"repl-offset"] == 909
    assert stream_db(rdb) == 3
    rdb.write_bytes(b"REDIS0010\xfe\x00")
    assert stream_db(rdb) == -1
    rdb.write_bytes(b"garbage")
    assert stream_db(rdb) == -1


def _entry(name: str, first: int, last: int, step: int, flags: tuple[str, ...] = (), subs=None):  # type: ignore[no-untyped-def]
    return [name.encode(), -2, [f.encode() for f in flags], first, last, step, [], [], [], subs or []]


def test_command_table_key_positions() -> None:
    table = CommandTable([
        _entry("set", 1, 1, 1), _entry("mset", 1, -1, 2), _entry("del", 1, -1, 1), _entry("ping", 0, 0, 0),
        _entry("zunionstore", 1, 1, 1, ("movablekeys",)),
        _entry("xgroup", 0, 0, 0, subs=[_entry("xgroup|create", 2, 2, 1)]),
    ])
    assert table.keys(b"set", [b"SET", b"k", b"v"]) == [b"k"]
    assert table.keys(b"mset", [b"MSET", b"a", b"1", b"b", b"2"]) == [b"a", b"b"]
    assert table.keys(b"del", [b"DEL", b"a", b"b", b"c"]) == [b"a", b"b", b"c"]
    assert table.keys(b"ping", [b"PING"]) == []
    assert table.keys(b"zunionstore", [b"ZUNIONSTORE", b"d", b"2", b"a", b"b"]) is None
    assert table.keys(b"xgroup", [b"XGROUP", b"CREATE", b"s", b"g", b"$"]) == [b"s"]
    with pytest.raises(UnknownCommand):
        table.keys(b"module.cmd", [b"MODULE.CMD", b"k"])
    with pytest.raises(UnknownCommand):
        table.keys(b"xgroup", [b"XGROUP", b"NOPE", b"s"])


def test_marker_round_trip_and_garbage() -> None:
    m = Marker("f" * 40, 123456, 3)
    assert Marker.decode(m.encode()) == m
    for raw in (b"", b"x 1 2", b"f" * 40 + b" one 2", b"f" * 40 + b" 1"):
        assert Marker.decode(raw) is None


def _state(**changes):  # type: ignore[no-untyped-def]
    base = {"format": 1, "source": "10.0.0.1:6379", "db": 0, "phase": "streaming", "replid": "a" * 40,
            "snapshot_offset": 5, "offset": 9, "slots_digest": "abc", "snapshot_keys": 3, "started_at": 1.0,
            "updated_at": 2.0, "finished_at": None}
    return json.dumps({**base, **changes})


def test_import_state_round_trip_and_strict_decoding() -> None:
    state = ImportState.decode(_state())
    assert ImportState.decode(state.encode()) == state
    for changes, message in [
        ({"phase": "maybe"}, "phase must be one of"),
        ({"replid": "short"}, "replid must be 40 hex digits"),
        ({"db": -1}, "db must be a non-negative integer"),
        ({"offset": True}, "wrong type"),
        ({"source": "nohost"}, "expected HOST:PORT"),
        ({"finished_at": "soon"}, "finished_at"),
        ({"format": 2}, "unsupported format version"),
    ]:
        with pytest.raises(ModelError, match=message):
            ImportState.decode(_state(**changes))
    with pytest.raises(ModelError, match="not valid JSON"):
        ImportState.decode(b"{")
    with pytest.raises(ModelError, match="missing field 'slots_digest'"):
        ImportState.decode(json.dumps({k: v for k, v in json.loads(_state()).items() if k != "slots_digest"}))


def test_import_runner_record() -> None:
    runner = ImportRunner("host-1", 42, 5.0)
    assert ImportRunner.decode(runner.encode()) == runner
    for raw, message in [(b'{"host": "", "pid": 1, "started_at": 1}', "host must be"),
                         (b'{"host": "h", "pid": 0, "started_at": 1}', "pid must be a positive integer"),
                         (b'{"host": "h", "pid": "1", "started_at": 1}', "wrong type"),
                         (b'{"host": "h", "pid": 1}', "missing field 'started_at'")]:
        with pytest.raises(ModelError, match=message):
            ImportRunner.decode(raw)
