"""Cluster options: the record's strict decoding and ``kvstore-admin option list/get/set`` against a real ZooKeeper."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner, Result

from kvstore_admin.cli import cli
from kvstore_admin.errors import CLUSTER_MISSING_OR_EXISTS, CORRUPT_DATA, USAGE, USER_ERROR
from kvstore_cluster import paths
from kvstore_cluster.model import ModelError
from kvstore_cluster.options import ClusterOptions


def test_the_record_round_trips_and_defaults_what_it_does_not_name() -> None:
    empty = ClusterOptions()
    assert empty.transactions == "single-slot" and empty.encode() == b'{"format":1,"options":{}}'
    set_ = empty.with_value("transactions", "per-group")
    assert ClusterOptions.decode(set_.encode()) == set_ and set_.transactions == "per-group"


@pytest.mark.parametrize(("raw", "message"), [
    (b"{", "not valid JSON"),
    (b"[]", "expected a JSON object"),
    (b'{"format":2,"options":{}}', "unsupported format version"),
    (b'{"format":1}', "missing field 'options'"),
    (b'{"format":1,"options":[]}', "wrong type"),
    (b'{"format":1,"options":{"transactions":true}}', "must be a string"),
    (b'{"format":1,"options":{"transactions":"sideways"}}', "expected one of single-slot, per-group"),
    (b'{"format":1,"options":{"colour":"blue"}}', "unknown option 'colour'"),
])
def test_garbage_is_refused_with_a_clear_message(raw: bytes, message: str) -> None:
    with pytest.raises(ModelError, match=message):
        ClusterOptions.decode(raw)


def _admin(zk_hosts: str, *args: str, cluster: str = "c1") -> Result:
    return CliRunner().invoke(cli, ["--zk", zk_hosts, "--cluster", cluster, *args])


def test_option_commands(zk_hosts: str, zk) -> None:  # type: ignore[no-untyped-def]
    assert _admin(zk_hosts, "init", "--mode", "cache").exit_code == 0
    listed = _admin(zk_hosts, "option", "list", "--json")
    assert listed.exit_code == 0
    rows = json.loads(listed.output)
    assert [(r["name"], r["value"], r["default"], r["choices"]) for r in rows] == [
        ("keyless-tag", "", "", []),
        ("transactions", "single-slot", "single-slot", ["single-slot", "per-group"])]
    assert "per-group:" in _admin(zk_hosts, "option", "list").output  # the help text, for humans
    assert _admin(zk_hosts, "option", "get", "transactions").output == "single-slot\n"
    done = _admin(zk_hosts, "option", "set", "transactions", "per-group")
    assert done.exit_code == 0 and "was single-slot" in done.output
    data, _ = zk.get(paths.options("c1"))
    assert ClusterOptions.decode(data).transactions == "per-group"
    got = json.loads(_admin(zk_hosts, "option", "get", "transactions", "--json").output)
    assert got["value"] == "per-group" and got["default"] == "single-slot"
    assert _admin(zk_hosts, "option", "set", "transactions", "per-group").exit_code == 0  # no change: fine
    # a free value: the keyless scripts' tag
    assert _admin(zk_hosts, "option", "set", "keyless-tag", "asgi").exit_code == 0
    assert ClusterOptions.decode(zk.get(paths.options("c1"))[0]).keyless_tag == b"asgi"
    # refusals: one line each, meaningful exit codes
    for args, code, text in [
        (("option", "get", "colour"), USER_ERROR, "unknown option 'colour'"),
        (("option", "set", "colour", "blue"), USER_ERROR, "unknown option 'colour'"),
        (("option", "set", "transactions", "sideways"), USER_ERROR, "expected one of single-slot, per-group"),
        (("option", "set", "transactions"), USAGE, "Missing argument"),
        (("option", "set", "keyless-tag", "x" * 1025), USER_ERROR, "a tag is at most 1024 bytes"),
    ]:
        result = _admin(zk_hosts, *args)
        assert result.exit_code == code and text in result.output, (args, result.output)
    missing = _admin(zk_hosts, "option", "list", cluster="nosuch")
    assert missing.exit_code == CLUSTER_MISSING_OR_EXISTS, missing.output
    zk.set(paths.options("c1"), b"{garbage")
    corrupt = _admin(zk_hosts, "option", "get", "transactions")
    assert corrupt.exit_code == CORRUPT_DATA and "malformed" in corrupt.output
    assert _admin(zk_hosts, "option", "--help").exit_code == 0
