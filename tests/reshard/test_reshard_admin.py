"""kvstore-admin reshard / rebalance / check against real ZooKeeper and redis-servers (no proxy running)."""

from __future__ import annotations

import json

import pytest
import redis
from reshard_helpers import keys_in_slots, load_keys

from kvstore_admin.errors import RESHARD_STOPPED
from kvstore_cluster import paths
from kvstore_cluster.ops.context import CRASH_HOOK_ENV, CRASH_HOOK_EXIT
from kvstore_cluster.proxy_registration import PROTOCOLS, ProxyRegistration
from kvstore_cluster.slots import key_slot


def registration(slots_version: int, protocols: dict[str, int] | None = None) -> ProxyRegistration:
    """What a proxy that applied ``slots_version`` registers (a fake one: nothing listens there)."""
    return ProxyRegistration("127.0.0.1:1", 1, 1.0, slots_version, 0, False,
                             PROTOCOLS if protocols is None else protocols)


def test_reshard_moves_keys_with_their_ttls_and_ownership(cluster) -> None:  # type: ignore[no-untyped-def]
    c = cluster(groups=2)
    moving = keys_in_slots(0, 999, 3000, "m")
    staying = keys_in_slots(1000, 8191, 1000, "s")
    load_keys(c.master("g1"), moving[:2000])
    load_keys(c.master("g1"), moving[2000:], ttl=1000)
    load_keys(c.master("g1"), staying)
    result = c.admin("reshard", "--slots", "0-999", "--to", "g2", "--slots-per-step", "300", "--json")
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout)
    assert out["slots_moved"] == 1000 and out["keys_moved"] == 3000 and out["steps"] == 4
    owners = c.owners()
    assert set(owners[:1000]) == {"g2"} and set(owners[1000:8192]) == {"g1"}
    assert c.store.read_slots().value.migrating == ()
    assert c.store.client.exists(paths.reshard(c.tc.name)) is None
    g1, g2 = c.master("g1"), c.master("g2")
    assert g2.dbsize() == 3000 and g1.dbsize() == 1000
    assert g2.get(moving[0]) == b"v" * 100
    assert all(900 < g2.ttl(k) <= 1000 for k in moving[2000:2050])
    assert g2.ttl(moving[0]) == -1
    c.check_ok()


def test_a_key_already_on_the_target_stops_the_reshard_and_is_not_overwritten(cluster) -> None:  # type: ignore[no-untyped-def]
    c = cluster(groups=2)
    keys = keys_in_slots(0, 99, 500)
    load_keys(c.master("g1"), keys)
    c.master("g2").set(keys[123], b"the target's own value")
    result = c.admin("reshard", "--slots", "0-99", "--to", "g2")
    assert result.exit_code == RESHARD_STOPPED
    assert "BUSYKEY" in result.stderr and repr(keys[123].decode()) in result.stderr
    assert "Nothing was overwritten" in result.stderr
    assert c.master("g2").get(keys[123]) == b"the target's own value"
    assert c.master("g1").get(keys[123]) == b"v" * 100
    # The slots stay migrating, every other key is in exactly one place.
    assert c.store.read_slots().value.migrating
    assert c.master("g1").dbsize() + c.master("g2").dbsize() == 501
    # A second reshard is refused while this one is recorded.
    again = c.admin("reshard", "--slots", "5000-5100", "--to", "g2")
    assert again.exit_code == 1 and "a reshard is already in progress" in again.stderr
    assert "use --resume or --abort" in again.stderr
    # Resolve the conflict (keep the source's copy), then resume.
    c.master("g2").delete(keys[123])
    resumed = c.admin("reshard", "--resume", "--json")
    assert resumed.exit_code == 0, resumed.output
    assert c.master("g2").dbsize() == 500 and c.master("g1").dbsize() == 0
    c.check_ok()


@pytest.mark.parametrize("step", ["marked", "acked", "migrated", "committed"])
def test_an_admin_killed_at_any_step_is_resumed_by_resume(cluster, step: str) -> None:  # type: ignore[no-untyped-def]
    c = cluster(groups=2)
    keys = keys_in_slots(0, 1999, 6000)
    load_keys(c.master("g1"), keys)
    args = ("reshard", "--slots", "0-1999", "--to", "g2", "--slots-per-step", "700", "--batch", "50")
    crashed = c.admin_process(*args, env={CRASH_HOOK_ENV: step})
    assert crashed.returncode == CRASH_HOOK_EXIT, crashed.stderr
    assert c.store.client.exists(paths.reshard(c.tc.name)) is not None
    # Running the same command again resumes it.
    resumed = c.admin_process(*args, "--json")
    assert resumed.returncode == 0, resumed.stderr
    assert set(c.owners()[:2000]) == {"g2"}
    assert c.store.read_slots().value.migrating == ()
    assert c.all_keys() == {"g1": set(), "g2": set(keys)}
    c.check_ok()


def test_abort_finishes_the_marked_step_and_leaves_the_rest_with_its_owner(cluster) -> None:  # type: ignore[no-untyped-def]
    c = cluster(groups=2)
    keys = keys_in_slots(0, 2999, 6000)
    load_keys(c.master("g1"), keys)
    args = ("reshard", "--slots", "0-2999", "--to", "g2", "--slots-per-step", "1000", "--batch", "20")
    crashed = c.admin_process(*args, env={CRASH_HOOK_ENV: "migrated"})
    assert crashed.returncode == CRASH_HOOK_EXIT
    # Keys of the marked step are split between g1 and g2 now.
    assert 0 < c.master("g2").dbsize() < 6000
    aborted = c.admin("reshard", "--abort", "--json")
    assert aborted.exit_code == 0, aborted.output
    assert json.loads(aborted.stdout)["status"] == "aborted"
    owners = c.owners()
    assert set(owners[:1000]) == {"g2"} and set(owners[1000:8192]) == {"g1"}
    assert c.store.read_slots().value.migrating == ()
    assert c.store.client.exists(paths.reshard(c.tc.name)) is None
    found = c.all_keys()
    assert found["g1"] | found["g2"] == set(keys) and not (found["g1"] & found["g2"])
    assert all(key_slot(k) < 1000 for k in found["g2"])
    c.check_ok()
    assert "no reshard in progress" in c.admin("reshard", "--abort").stdout


def test_status_shows_a_reshard_stopped_part_way(cluster) -> None:  # type: ignore[no-untyped-def]
    c = cluster(groups=2)
    keys = keys_in_slots(0, 2999, 3000)
    load_keys(c.master("g1"), keys)
    args = ("reshard", "--slots", "0-2999", "--to", "g2", "--slots-per-step", "1000")
    # Stopped twice: after step 1's commit, then once step 2's mark is applied by every proxy.
    for step in ("committed", "acked"):
        crashed = c.admin_process(*args, env={CRASH_HOOK_ENV: step})
        assert crashed.returncode == CRASH_HOOK_EXIT, crashed.stderr
    first_step_keys = sum(1 for k in keys if key_slot(k) < 1000)

    data = json.loads(c.admin("status", "--json").stdout)
    r = data["reshard"]
    assert (r["phase"], r["step"], r["steps"]) == ("moving", 2, 3)
    assert r["moving"] == [{"lo": 1000, "hi": 1999, "from": "g1", "to": "g2"}]
    assert (r["slots_done"], r["slots_total"], r["keys_moved"]) == (1000, 3000, first_step_keys)
    assert r["request"] == {"command": "reshard", "slots": "0-2999", "to": "g2"}
    assert (r["aborting"], r["no_data"]) == (False, False)
    assert data["slots"]["migrating"] == [{"lo": 1000, "hi": 1999, "from": "g1", "to": "g2"}]
    text = c.admin("status").stdout
    assert (f"reshard in progress: step 2/3, phase moving: slots 1000-1999 g1->g2; 1000/3000 slots done, "
            f"{first_step_keys} keys moved") in text
    assert "request: command=reshard slots=0-2999 to=g2" in text and "'kvstore-admin reshard --resume'" in text

    resumed = c.admin("reshard", "--resume", "--json")
    assert resumed.exit_code == 0, resumed.output
    assert json.loads(c.admin("status", "--json").stdout)["reshard"] is None
    assert "reshard" not in c.admin("status").stdout


def test_a_proxy_that_does_not_ack_stops_the_reshard_by_name(cluster) -> None:  # type: ignore[no-untyped-def]
    c = cluster(groups=2)
    load_keys(c.master("g1"), keys_in_slots(0, 99, 100))
    version = c.store.client.exists(paths.slots(c.tc.name)).version
    fake = paths.proxy(c.tc.name, "stale-proxy-1")
    c.store.client.create(fake, registration(version).encode())
    c.store.client.create(paths.proxy(c.tc.name, "good-proxy"), registration(10**6).encode())
    result = c.admin("reshard", "--slots", "0-99", "--to", "g2", "--timeout", "0.5")
    assert result.exit_code == RESHARD_STOPPED
    assert "stale-proxy-1" in result.stderr and "good-proxy" not in result.stderr
    assert "resumable" in result.stderr
    assert c.master("g1").dbsize() == 100  # nothing moved before the barrier
    c.store.client.delete(fake)  # the proxy goes away
    assert c.admin("reshard", "--resume").exit_code == 0
    assert c.master("g2").dbsize() == 100
    c.check_ok()


def test_a_proxy_that_cannot_move_keys_refuses_the_marks(cluster) -> None:  # type: ignore[no-untyped-def]
    c = cluster(groups=2)
    load_keys(c.master("g1"), keys_in_slots(0, 99, 10))
    old = paths.proxy(c.tc.name, "old-proxy")
    c.store.client.create(old, registration(10**6, protocols={}).encode())
    result = c.admin("reshard", "--slots", "0-99", "--to", "g2")
    assert result.exit_code == RESHARD_STOPPED and "old-proxy" in result.stderr
    assert "do not move keys of migrating slots" in result.stderr
    assert c.store.read_slots().value.migrating == ()  # nothing was marked
    # Version 1 MIGRATEs whole keys (a big one would stall both servers) and ignores keys in pieces.
    c.store.client.set(old, registration(10**6, protocols={"migration": 1}).encode())
    result = c.admin("reshard", "--resume")
    assert result.exit_code == RESHARD_STOPPED and "old-proxy" in result.stderr
    assert c.store.read_slots().value.migrating == ()
    # A registration that does not decode cannot vouch for its proxy either.
    c.store.client.set(old, json.dumps({"slots_version": 10**6, "protocols": {"migration": 1}}).encode())
    result = c.admin("reshard", "--resume")
    assert result.exit_code == RESHARD_STOPPED and "registration of proxy old-proxy is unreadable" in result.stderr
    assert "missing field 'address'" in result.stderr
    assert c.store.read_slots().value.migrating == ()
    c.store.client.delete(old)
    assert c.admin("reshard", "--resume").exit_code == 0
    assert c.master("g2").dbsize() == 10


def test_rebalance_gives_a_new_group_its_fair_share(cluster, redis_factory) -> None:  # type: ignore[no-untyped-def]
    c = cluster(groups=2)
    keys = [f"key:{i}".encode() for i in range(6000)]
    for gid, ks in (("g1", [k for k in keys if key_slot(k) < 8192]), ("g2", [k for k in keys if key_slot(k) >= 8192])):
        load_keys(c.master(gid), ks)
    new = redis_factory.start()
    assert c.admin("group", "add", "--master", new.address).exit_code == 0
    dry = c.admin("rebalance", "--dry-run")
    assert dry.exit_code == 0, dry.output
    assert "move 5461 slots" in dry.stdout and "g1 -> g3: 2730 slots" in dry.stdout
    assert "g2 -> g3: 2731 slots" in dry.stdout
    assert c.counts() == {"g1": 8192, "g2": 8192}  # a dry run changes nothing
    result = c.admin("rebalance")
    assert result.exit_code == 0, result.output
    assert sorted(c.counts().values()) == [5461, 5461, 5462]
    found = c.all_keys()
    on_g3 = redis.Redis(port=new.port).dbsize()
    assert sum(len(v) for v in found.values()) + on_g3 == 6000 and 1500 < on_g3 < 2500
    c.check_ok()
    assert "nothing to do" in c.admin("rebalance").stdout


def test_drain_then_group_remove(cluster) -> None:  # type: ignore[no-untyped-def]
    c = cluster(groups=3)
    keys = [f"key:{i}".encode() for i in range(3000)]
    owners = c.owners()
    for gid in ("g1", "g2", "g3"):
        load_keys(c.master(gid), [k for k in keys if owners[key_slot(k)] == gid])
    refused = c.admin("group", "remove", "g2")
    assert refused.exit_code == 1 and "owns" in refused.stderr
    result = c.admin("rebalance", "--drain", "g2")
    assert result.exit_code == 0, result.output
    assert c.counts() == {"g1": 8192, "g3": 8192}
    assert c.master("g2").dbsize() == 0
    c.check_ok()
    assert c.admin("group", "remove", "g2").exit_code == 0
    assert c.store.read_groups().value.ids() == ["g1", "g3"]
    assert sum(len(v) for g, v in c.all_keys().items() if g != "g2") == 3000


def test_check_reports_planted_misplaced_keys(cluster) -> None:  # type: ignore[no-untyped-def]
    c = cluster(groups=2)
    right = keys_in_slots(0, 8191, 50, "r")
    wrong = keys_in_slots(8192, 16383, 7, "w")
    load_keys(c.master("g1"), right + wrong)
    result = c.admin("check", "--json")
    assert result.exit_code == 10
    found = json.loads(result.stdout)
    assert found["misplaced"] == 7 and not found["ok"]
    g1 = next(g for g in found["groups"] if g["group"] == "g1")
    assert g1["misplaced"] == 7 and len(g1["examples"]) == 5
    assert all(ex["owner"] == "g2" for ex in g1["examples"])
    text = c.admin("check")
    assert text.exit_code == 10 and "MISPLACED: 7 keys" in text.stdout


def test_check_allows_a_migrating_key_on_either_side_but_not_both(cluster) -> None:  # type: ignore[no-untyped-def]
    from kvstore_cluster.model import Migration

    c = cluster(groups=2)
    slots = c.store.read_slots()
    c.store.set_slots(slots.value.with_migrating((Migration(0, 99, "g1", "g2"),)), slots.version)
    a, b = keys_in_slots(0, 99, 2)
    c.master("g1").set(a, b"1")
    c.master("g2").set(b, b"1")
    c.check_ok()
    c.master("g1").set(b, b"2")
    result = c.admin("check", "--json")
    assert result.exit_code == 10
    assert json.loads(result.stdout)["on_both_sides"] == 1


def test_no_data_reassigns_and_drops_the_old_keys_in_cache_mode_only(cluster) -> None:  # type: ignore[no-untyped-def]
    c = cluster(groups=2)
    load_keys(c.master("g1"), keys_in_slots(0, 99, 200))
    result = c.admin("reshard", "--slots", "0-99", "--to", "g2", "--no-data", "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["keys_deleted"] == 200
    assert set(c.owners()[:100]) == {"g2"}
    assert c.master("g1").dbsize() == 0 and c.master("g2").dbsize() == 0
    c.check_ok()


def test_no_data_in_datastore_mode_needs_a_confirmation(cluster) -> None:  # type: ignore[no-untyped-def]
    c = cluster(groups=2, mode="datastore")
    result = c.admin("reshard", "--slots", "0-99", "--to", "g2", "--no-data")
    assert result.exit_code == 1 and "--yes-lose-data" in result.stderr
    assert set(c.owners()[:100]) == {"g1"}
    assert c.admin("reshard", "--slots", "0-99", "--to", "g2", "--no-data", "--yes-lose-data").exit_code == 0
    assert set(c.owners()[:100]) == {"g2"}


def test_datastore_reshard_moves_master_to_master_and_replicas_follow(cluster) -> None:  # type: ignore[no-untyped-def]
    from kvstore_admin.processes import wait_until

    c = cluster(groups=2, mode="datastore", replicas=1)
    keys = keys_in_slots(0, 499, 1000)
    load_keys(c.master("g1"), keys)
    assert c.admin("reshard", "--slots", "0-499", "--to", "g2").exit_code == 0
    rep1 = redis.Redis(port=c.tc.nodes["g1"][1].port)
    rep2 = redis.Redis(port=c.tc.nodes["g2"][1].port)
    wait_until(lambda: rep2.dbsize() == 1000 and rep1.dbsize() == 0, 10, "replicas to follow")
    c.check_ok()


def test_bad_reshard_requests_are_refused_with_exit_1(cluster) -> None:  # type: ignore[no-untyped-def]
    c = cluster(groups=2)
    owners_before = c.owners()
    unknown = c.admin("reshard", "--slots", "0-9", "--to", "g9")
    assert unknown.exit_code == 1 and "unknown group 'g9'" in unknown.stderr
    bad = c.admin("reshard", "--slots", "0-99999", "--to", "g2")
    assert bad.exit_code == 1 and "--slots: bad slot range" in bad.stderr
    usage = c.admin("reshard", "--slots", "0-9")
    assert usage.exit_code == 2 and "give --slots and --to" in usage.stderr
    nothing = c.admin("reshard", "--slots", "9000-9010", "--to", "g2")
    assert nothing.exit_code == 0 and "nothing to do" in nothing.stdout
    assert "no reshard in progress; nothing to resume" in c.admin("reshard", "--resume").stdout
    drain = c.admin("rebalance", "--drain", "g7")
    assert drain.exit_code == 1 and "unknown group 'g7'" in drain.stderr
    for flag, value in (("--busy-slots-per-step", "0"), ("--slots-per-step", "x"), ("--busy-rate", "-1")):
        refused = c.admin("rebalance", flag, value)
        assert refused.exit_code == 2 and f"Invalid value for '{flag}'" in refused.stderr, refused.stderr
    assert c.owners() == owners_before  # nothing moved


def test_a_reshard_whose_marks_were_dropped_stops_before_moving_a_key(cluster) -> None:  # type: ignore[no-untyped-def]
    """What a sentinel does when a cache group of a migration fails: the marks go; no key may move then."""
    c = cluster(groups=2)
    keys = keys_in_slots(0, 999, 2000)
    load_keys(c.master("g1"), keys)
    args = ("reshard", "--slots", "0-999", "--to", "g2")
    crashed = c.admin_process(*args, env={CRASH_HOOK_ENV: "acked"})
    assert crashed.returncode == CRASH_HOOK_EXIT, crashed.stderr
    slots = c.store.read_slots()
    c.store.set_slots(slots.value.with_migrating(()), slots.version)  # the marks are dropped

    resumed = c.admin("reshard", "--resume")

    assert resumed.exit_code == 11, resumed.output
    assert "no longer marked migrating g1->g2" in resumed.stderr
    assert c.all_keys() == {"g1": set(keys), "g2": set()}  # nothing moved to a group not owning the slots
