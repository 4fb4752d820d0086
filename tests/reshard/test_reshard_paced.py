"""A reshard yields to clients (the pace) and still completes with nothing lost; without clients it goes full speed."""

from __future__ import annotations

import json
import threading
import time

import pytest
import redis
from reshard_helpers import admin_process, g3_just_added
from test_reshard_through_proxies import Proxy

from kvstore_cluster.slots import key_slot


class Writer(threading.Thread):
    """Pipelined SETs through the proxy, over and over the same keys (enough bytes/s to count as clients)."""

    KEYS = 3000

    def __init__(self, client: redis.Redis, stop: threading.Event):
        super().__init__(daemon=True)
        self.client = client
        self.stop_event = stop
        self.acked: dict[bytes, bytes] = {}  # key -> the value of its last acknowledged SET
        self.count = 0
        self.problems: list[str] = []

    def run(self) -> None:
        n = 0
        try:
            while not self.stop_event.is_set():
                pipe = self.client.pipeline(transaction=False)
                batch = [(b"paced:%d" % ((n + i) % self.KEYS), b"%d:" % (n + i) + b"x" * 100) for i in range(100)]
                for k, v in batch:
                    pipe.set(k, v)
                for (k, v), r in zip(batch, pipe.execute(raise_on_error=False), strict=True):
                    if r is True:
                        self.acked[k] = v
                        self.count += 1
                    else:
                        self.problems.append(f"SET {k!r} -> {r!r}")
                n += len(batch)
        except Exception as exc:  # noqa: BLE001 - reported by the test
            self.problems.append(f"{type(exc).__name__}: {exc}")


@pytest.mark.timeout(240)
def test_a_rebalance_under_client_load_is_paced_and_loses_nothing_and_an_idle_one_is_not(cluster, tmp_path) -> None:  # type: ignore[no-untyped-def]
    c = cluster(groups=3)
    keys = g3_just_added(c, 20_000)
    proxy = Proxy(c.zk_hosts, c.tc.name, tmp_path / "proxy.log")
    stop = threading.Event()
    writer = Writer(proxy.client(), stop)
    try:
        writer.start()
        deadline = time.monotonic() + 10
        while writer.count < 2000 and time.monotonic() < deadline:
            time.sleep(0.01)
        # One step planned: while clients are busy it is cut to --busy-slots-per-step slots.
        busy = admin_process(c.zk_hosts, "rebalance", "--json", "--busy-rate", "4000", "--slots-per-step", "16384",
                             "--busy-slots-per-step", "2000",
                             cluster=c.tc.name, timeout=120)
        assert busy.returncode == 0, busy.stderr
        stop.set()
        writer.join(30)
        # No clients now: the way back goes at full speed.
        idle = admin_process(c.zk_hosts, "rebalance", "--drain", "g3", "--json", "--busy-rate", "4000",
                             "--slots-per-step", "16384", cluster=c.tc.name, timeout=120)
        assert idle.returncode == 0, idle.stderr
    finally:
        stop.set()
        proxy.stop()
    paced, unpaced = json.loads(busy.stdout), json.loads(idle.stdout)
    assert not writer.problems, writer.problems[:10]
    assert paced["keys_moved"] >= 6000
    assert paced["keys_moved_paced"] > 0, paced  # the writer was seen as clients
    assert unpaced["keys_moved"] >= paced["keys_moved"] and unpaced["keys_moved_paced"] == 0, unpaced
    assert paced["steps"] >= 2 and unpaced["steps"] == 1, (paced["steps"], unpaced["steps"])
    owners_after = c.owners()
    direct = {gid: c.master(gid) for gid in ("g1", "g2", "g3")}

    def read(key: bytes) -> bytes | None:
        return direct[owners_after[key_slot(key)]].get(key)  # type: ignore[return-value,index]

    lost = [k for k, v in writer.acked.items() if read(k) != v]
    assert not lost, f"{len(lost)} acknowledged writes lost, e.g. {lost[:3]}"
    assert all(read(k) == b"v" * 100 for k in keys[::53])
    c.check_ok()
