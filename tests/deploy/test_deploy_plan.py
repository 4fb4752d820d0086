"""The filters that turn the inventory into kvstore-admin commands: only what ZooKeeper lacks, never a removal."""

from __future__ import annotations

from deploy_helpers import plan_filters

redis_groups, group_plan = plan_filters().redis_groups, plan_filters().group_plan


def inventory(**hosts: list[dict]) -> dict[str, dict]:
    return {h: {"ansible_host": f"10.0.0.{i}", "redis_instances": insts}
            for i, (h, insts) in enumerate(hosts.items(), 1)}


HOSTVARS = inventory(
    a=[{"port": 6379, "group": "g1", "role": "master"}, {"port": 6380, "group": "g2", "role": "replica"}],
    b=[{"port": 6379, "group": "g2", "role": "master"}, {"port": 6380, "group": "g1", "role": "replica"}],
)


def test_instances_on_several_hosts_make_groups_of_one_master_and_its_replicas() -> None:
    wanted = redis_groups(list(HOSTVARS), HOSTVARS)
    assert wanted == {"errors": [], "groups": {
        "g1": {"master": "10.0.0.1:6379", "replicas": ["10.0.0.2:6380"]},
        "g2": {"master": "10.0.0.2:6379", "replicas": ["10.0.0.1:6380"]},
    }}


def test_redis_address_wins_over_ansible_host() -> None:
    hv = {"a": {"ansible_host": "h", "redis_address": "10.1.1.1", "redis_instances": [
        {"port": 1, "group": "g1", "role": "master"}]}}
    assert redis_groups(["a"], hv)["groups"]["g1"]["master"] == "10.1.1.1:1"


def test_inventory_mistakes_are_reported() -> None:
    hv = inventory(a=[{"port": 1, "group": "g1", "role": "master"}, {"port": 2, "group": "g1", "role": "master"},
                      {"port": 3, "group": "g2", "role": "replica"}, {"port": 4, "group": "bad/name", "role": "master"},
                      {"port": 5, "group": "g3", "role": "primary"}])
    errors = redis_groups(["a"], hv)["errors"]
    assert any("two masters" in e for e in errors)
    assert any("group g2 has no master" in e for e in errors)
    assert any("bad group name" in e for e in errors)
    assert any("'primary'" in e for e in errors)


def test_an_empty_cluster_gets_one_group_add_per_group() -> None:
    plan = group_plan(redis_groups(list(HOSTVARS), HOSTVARS), [])
    assert [a["argv"] for a in plan["actions"]] == [
        ["group", "add", "--id", "g1", "--master", "10.0.0.1:6379", "--replica", "10.0.0.2:6380"],
        ["group", "add", "--id", "g2", "--master", "10.0.0.2:6379", "--replica", "10.0.0.1:6380"],
    ]
    assert plan["errors"] == []


def test_a_matching_cluster_needs_nothing_even_after_a_failover() -> None:
    existing = [  # g1 failed over: the inventory's replica is the master now
        {"id": "g1", "master": "10.0.0.2:6380", "replicas": ["10.0.0.1:6379"], "state": "ok"},
        {"id": "g2", "master": "10.0.0.2:6379", "replicas": ["10.0.0.1:6380"], "state": "ok"},
    ]
    plan = group_plan(redis_groups(list(HOSTVARS), HOSTVARS), existing)
    assert plan == {"actions": [], "errors": [], "extra_nodes": {}, "unmanaged_groups": []}


def test_a_replacement_node_is_added_as_replica_and_the_failed_one_is_reported() -> None:
    hv = inventory(a=[{"port": 6379, "group": "g1", "role": "master"}],
                   c=[{"port": 6379, "group": "g1", "role": "replica"}])
    existing = [{"id": "g1", "master": "10.0.0.1:6379", "replicas": ["10.9.9.9:6379"], "state": "ok"},
                {"id": "g9", "master": "10.8.8.8:1", "replicas": [], "state": "ok"}]
    plan = group_plan(redis_groups(list(hv), hv), existing)
    assert [a["argv"] for a in plan["actions"]] == [["group", "add-replica", "g1", "10.0.0.2:6379"]]
    assert plan["extra_nodes"] == {"10.9.9.9:6379": "g1", "10.8.8.8:1": "g9"}
    assert plan["unmanaged_groups"] == ["g9"]


def test_a_node_in_another_group_stops_the_plan() -> None:
    existing = [{"id": "g7", "master": "10.0.0.1:6379", "replicas": [], "state": "ok"}]
    plan = group_plan(redis_groups(list(HOSTVARS), HOSTVARS), existing)
    assert any("10.0.0.1:6379 is in group g7" in e for e in plan["errors"])
    assert all("g1" not in a["description"] for a in plan["actions"])
