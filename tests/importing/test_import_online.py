"""An import of a live source into a real cluster: every type, TTLs, big keys, a writer, cutover, verify, resume."""

from __future__ import annotations

import json
import signal
from pathlib import Path

import pytest
import redis
from import_helpers import Writer, admin, admin_process, fill, start_admin, summary

from kvstore_admin.importing import testhooks
from kvstore_admin.importing.groups import MARKER_DB, MARKER_KEY
from kvstore_admin.processes import wait_until
from kvstore_cluster import paths
from kvstore_cluster.store import ClusterStore


def cluster_client(cluster, key: bytes | str) -> redis.Redis:  # type: ignore[no-untyped-def]
    from kvstore_cluster.slots import key_slot

    k = key.encode() if isinstance(key, str) else key
    gid = cluster.slots.owner(key_slot(k))
    return redis.Redis(port=cluster.nodes[gid][0].port)


def test_import_with_writer_cutover_and_verify(cluster, source, proxy_factory, zk) -> None:  # type: ignore[no-untyped-def]
    src = redis.Redis(port=source.port)
    fill(src, 3000, big=20_000)
    writer = Writer(source.port).start()
    writer.wait_ops(200)
    proc = admin_process(cluster.zk_hosts, cluster.name, "import", "--from", source.address, "--cutover",
                         "--pause", "6", "--verify", "--verify-keys", "all", "--big-key-bytes", "50000", "--json")
    # The source is paused now: what the writer got acknowledged is all there is.
    acked = dict(writer.counters)
    pushed = writer.pushed
    out = summary(proc)
    assert proc.returncode == 0, proc.stderr
    assert out["result"].startswith("cut over"), out
    assert out["snapshot"]["big_keys"] >= 2  # the big list and hash were rebuilt in chunks
    assert out["stream"]["commands"] > 0 and out["stream"]["errors"] == 0, out["stream"]
    assert out["verify"]["ok"] and out["verify"]["differences"] == 0, out["verify"]
    assert out["verify"]["counts_source"] == out["verify"]["counts_cluster"]
    assert all(out["verify"]["counts_source"][t] > 0 for t in ("string", "list", "set", "zset", "hash", "stream"))

    # What an application sees through the proxy: the writer's acknowledged totals.
    proxy = proxy_factory.start(cluster.zk_hosts, cluster.name)
    app = redis.Redis(port=proxy.port)
    for key, value in acked.items():
        assert int(app.get(key)) == value, key
    assert app.llen("queue") == pushed
    assert app.ttl("ttl:short") > 0
    assert app.xinfo_groups("x:0")[0]["name"] == b"workers"
    assert app.llen("big:list") == 20_000 and app.hlen("big:hash") == 20_000
    # The import is finished: its markers are gone and its record says done.
    for procs in cluster.nodes.values():
        node = redis.Redis(port=procs[0].port, db=MARKER_DB)
        assert node.get(MARKER_KEY) is None
    record = ClusterStore(zk, cluster.name).read_import()
    assert record is not None and record.value.phase == "done"
    writer.finish()  # returns once the pause is over
    # A finished import is not run again by mistake.
    again = admin_process(cluster.zk_hosts, cluster.name, "import", "--from", source.address)
    assert again.returncode == 1 and "was cut over" in again.stderr and "--forget" in again.stderr


def _crash_then_resume(cluster, source, hook: str, writer: Writer, work: Path) -> dict:  # type: ignore[no-untyped-def]
    crashed = admin_process(cluster.zk_hosts, cluster.name, "import", "--from", source.address, "--json",
                            "--work-dir", str(work), env={testhooks.ENV: hook})
    assert crashed.returncode == testhooks.EXIT_CODE, crashed.stderr
    assert list(work.glob("kvstore-import-*"))  # killed: its work directory stays behind...
    writer.wait_ops(writer.ops + 300)
    proc = admin_process(cluster.zk_hosts, cluster.name, "import", "--from", source.address, "--cutover",
                         "--pause", "6", "--verify", "--verify-keys", "all", "--json", "--work-dir", str(work))
    out = summary(proc)
    assert proc.returncode == 0, proc.stderr + json.dumps(out, indent=1)
    assert out["verify"]["ok"], out["verify"]
    assert not list(work.glob("kvstore-import-*"))  # ... until the next run removes it
    return out


@pytest.mark.parametrize("hook", [
    "streaming:30",  # killed after the 30th batch of the stream: the groups' markers say what each one applied
    "cross-group:3",  # killed after the first group of a command spanning groups committed it
])
def test_killed_while_streaming_resumes_without_duplicates(cluster, source, hook: str, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    src = redis.Redis(port=source.port)
    fill(src, 800)
    writer = Writer(source.port).start()
    writer.wait_ops(100)
    out = _crash_then_resume(cluster, source, hook, writer, tmp_path)
    acked = dict(writer.counters)
    assert out["start"] == "continue", out
    assert out["stream"]["errors"] == 0
    if hook.startswith("cross-group"):  # one group had it, the others had not: it was skipped there only
        assert out["stream"]["skipped_already_applied"] >= 1
    for key, value in acked.items():
        assert int(cluster_client(cluster, key).get(key)) == value, key
    writer.finish()


def test_killed_while_copying_the_snapshot_starts_over(cluster, source, zk) -> None:  # type: ignore[no-untyped-def]
    src = redis.Redis(port=source.port)
    fill(src, 6000)
    writer = Writer(source.port).start()
    writer.wait_ops(100)
    crashed = admin_process(cluster.zk_hosts, cluster.name, "import", "--from", source.address,
                            env={testhooks.ENV: "snapshot"})
    assert crashed.returncode == testhooks.EXIT_CODE, crashed.stderr
    record = ClusterStore(zk, cluster.name).read_import()
    assert record is not None and record.value.phase == "snapshot"
    # status shows the stopped import (its runner's ephemeral znode goes with the dead process's session)
    shown = admin(cluster.zk_hosts, cluster.name, "status")
    assert f"import from {source.address} db 0: snapshot, " in shown.output, shown.output
    as_json = json.loads(admin(cluster.zk_hosts, cluster.name, "status", "--json").output)
    assert as_json["import"]["source"] == source.address and as_json["import"]["phase"] == "snapshot"
    # Keys copied by the dead run that the source deletes meanwhile must not survive the next run.
    copied = [k for procs in cluster.nodes.values() for k in redis.Redis(port=procs[0].port).scan_iter(count=1000)]
    assert copied
    doomed = [k for k in copied if k.startswith(b"s:")][:50]
    src.delete(*doomed)
    writer.wait_ops(writer.ops + 200)
    proc = admin_process(cluster.zk_hosts, cluster.name, "import", "--from", source.address, "--cutover",
                         "--pause", "6", "--verify", "--verify-keys", "all", "--json")
    out = summary(proc)
    assert proc.returncode == 0, proc.stderr + json.dumps(out, indent=1)
    assert out["start"] == "resync" and "copying the snapshot" in out["start_reason"]
    assert out["snapshot"]["stale_keys_deleted"] >= len(doomed)
    assert out["verify"]["ok"], out["verify"]
    for k in doomed:
        assert cluster_client(cluster, k).exists(k) == 0
    writer.finish()


def test_resume_after_the_backlog_moved_on_loads_a_fresh_snapshot(cluster, redis_factory) -> None:  # type: ignore[no-untyped-def]
    source = redis_factory.start(extra={"repl-diskless-sync-delay": "0", "repl-backlog-size": "16kb"})
    src = redis.Redis(port=source.port)
    fill(src, 500)
    proc = start_admin(cluster.zk_hosts, cluster.name, "import", "--from", source.address, "--json")
    wait_until(lambda: cluster_client(cluster, "counter:start").get("counter:start") == b"41", 30, "the snapshot")
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    # More writes than the 16 KB backlog holds while no import runs.
    for i in range(2000):
        src.set(f"later:{i}", "y" * 40)
    src.delete("counter:start")
    again = admin_process(cluster.zk_hosts, cluster.name, "import", "--from", source.address, "--cutover",
                          "--pause", "5", "--verify", "--verify-keys", "all", "--json")
    res = summary(again)
    assert again.returncode == 0, again.stderr
    assert res["start"] == "resync" and "cannot continue" in res["start_reason"], res
    assert res["snapshot"]["stale_keys_deleted"] >= 1  # counter:start
    assert res["verify"]["ok"], res["verify"]
    assert cluster_client(cluster, "counter:start").exists("counter:start") == 0


def test_replica_source_is_imported_but_cutover_refused(cluster, redis_factory) -> None:  # type: ignore[no-untyped-def]
    master = redis_factory.start(extra={"repl-diskless-sync-delay": "0"})
    replica = redis_factory.start(replicaof=master.address, extra={"repl-diskless-sync-delay": "0"})
    m = redis.Redis(port=master.port)
    fill(m, 300)
    wait_until(lambda: redis.Redis(port=replica.port).dbsize() == m.dbsize(), 15, "the replica to sync")
    refused = admin_process(cluster.zk_hosts, cluster.name, "import", "--from", replica.address, "--cutover")
    assert refused.returncode == 1
    assert f"is a replica of {master.address}" in refused.stderr and "--cutover refused" in refused.stderr
    proc = start_admin(cluster.zk_hosts, cluster.name, "import", "--from", replica.address, "--json")
    wait_until(lambda: cluster_client(cluster, "counter:start").get("counter:start") == b"41", 30, "the snapshot")
    m.set("written:on:master", "yes")  # reaches the import through the replica's stream
    wait_until(lambda: cluster_client(cluster, "written:on:master").get("written:on:master") == b"yes", 15,
               "the master's write to arrive")
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    res = json.loads(out)
    assert res["role"] == "replica" and res["result"].startswith("stopped")


def test_reshard_during_import_stops_it(cluster, source, zk) -> None:  # type: ignore[no-untyped-def]
    src = redis.Redis(port=source.port)
    fill(src, 200)
    proc = start_admin(cluster.zk_hosts, cluster.name, "import", "--from", source.address, "--json")
    wait_until(lambda: cluster_client(cluster, "counter:start").get("counter:start") == b"41", 30, "the snapshot")
    store = ClusterStore(zk, cluster.name)
    slots = store.read_slots()
    store.set_slots(slots.value.assign([(0, 10)], "g2"), slots.version)  # what a reshard's commit does
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 12, err
    assert "slot owners changed" in err
    # Running it again now routes with the new owners, from a fresh snapshot.
    again = admin_process(cluster.zk_hosts, cluster.name, "import", "--from", source.address, "--cutover",
                          "--pause", "3", "--verify", "--json")
    res = summary(again)
    assert again.returncode == 0 and res["start"] == "resync" and "slot owners" in res["start_reason"]
    assert zk.exists(paths.import_lock(cluster.name)) is None


def test_interactive_enter_cuts_over(cluster, source, zk, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """On a terminal, Enter once caught up starts the cutover (here stdin is a line already typed)."""
    import io
    import threading

    from kvstore_admin.importing.progress import Progress
    from kvstore_admin.importing.run import Importer, Options

    fill(redis.Redis(port=source.port), 100)
    monkeypatch.setattr("sys.stdin", io.StringIO("\n"))
    messages: list[str] = []

    class Recorder(Progress):
        def message(self, text: str) -> None:
            messages.append(text)

    summary_ = Importer(ClusterStore(zk, cluster.name), Options(source=source.address, pause=1), Recorder(),
                        threading.Event(), prompt=True).run()
    assert summary_.result.startswith("cut over"), summary_
    assert any(m.startswith("IN SYNC") for m in messages), messages


def test_stream_commands_spanning_groups(cluster, source) -> None:  # type: ignore[no-untyped-def]
    """Commands whose keys sit in several groups (SORT's BY/GET patterns too) give the source's result."""
    src = redis.Redis(port=source.port)
    src.rpush("ids", *range(30))
    for i in range(30):
        src.set(f"w_{i}", (i * 7) % 30)
        src.hset(f"obj_{i}", "name", f"n{i}")
    proc = start_admin(cluster.zk_hosts, cluster.name, "import", "--from", source.address, "--json")
    wait_until(lambda: cluster_client(cluster, "ids").llen("ids") == 30, 30, "the snapshot")
    src.sort("ids", by="w_*", get=["obj_*->name", "#"], store="sorted")
    src.sadd("s1", 1, 2)
    src.sadd("s2", 2, 3)
    src.sunionstore("u", ["s1", "s2"])
    src.zadd("z1", {"a": 1})
    src.zunionstore("zu", ["z1", "u"])
    src.rpoplpush("ids", "other")
    src.copy("obj_3", "copied")
    src.rename("w_5", "renamed")
    wait_until(lambda: cluster_client(cluster, "renamed").exists("renamed") == 1, 15, "the stream to be applied")
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    done = admin_process(cluster.zk_hosts, cluster.name, "import", "--from", source.address, "--cutover",
                         "--pause", "3", "--verify", "--verify-keys", "all", "--json")
    res = summary(done)
    assert done.returncode == 0, done.stderr
    assert res["verify"]["ok"], res["verify"]
    assert res["stream"]["errors"] == 0 and not res["stream"]["unsupported"], res["stream"]
    assert res["start"] == "continue"
    for key in ("sorted", "u", "zu", "other", "copied", "renamed", "ids"):
        assert cluster_client(cluster, key).dump(key) is not None, key
    assert cluster_client(cluster, "sorted").lrange("sorted", 0, -1) == src.lrange("sorted", 0, -1)
    assert cluster_client(cluster, "w_5").exists("w_5") == 0


def test_disk_snapshot(cluster, redis_factory) -> None:  # type: ignore[no-untyped-def]
    """--disk-snapshot: the source saves to its disk and sends the file ($<length>), without the diskless delay
    (30 s here: the import has to finish well before it)."""
    source = redis_factory.start(extra={"repl-diskless-sync": "yes", "repl-diskless-sync-delay": "30"})
    fill(redis.Redis(port=source.port), 500)
    proc = admin_process(cluster.zk_hosts, cluster.name, "import", "--from", source.address, "--disk-snapshot",
                         "--cutover", "--pause", "1", "--verify", "--verify-keys", "all", "--json", timeout=25)
    out = summary(proc)
    assert proc.returncode == 0, proc.stderr
    assert out["verify"]["ok"] and out["snapshot"]["keys"] == redis.Redis(port=source.port).dbsize()


def test_source_going_away_stops_the_import_resumably(cluster, source, zk) -> None:  # type: ignore[no-untyped-def]
    src = redis.Redis(port=source.port)
    fill(src, 300)
    proc = start_admin(cluster.zk_hosts, cluster.name, "import", "--from", source.address, "--json")
    wait_until(lambda: cluster_client(cluster, "counter:start").get("counter:start") == b"41", 30, "the snapshot")
    src.set("last:write", 1)
    wait_until(lambda: cluster_client(cluster, "last:write").get("last:write") == b"1", 15, "the last write")
    source.signal(signal.SIGKILL)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 12, err
    assert f"the source {source.address} closed the replication link" in err and "to resume" in err
    record = ClusterStore(zk, cluster.name).read_import()
    assert record is not None and record.value.phase == "streaming"
