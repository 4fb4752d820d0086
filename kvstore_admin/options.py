"""``kvstore-admin option get/set/list``: the cluster options record (kvstore_cluster.options)."""

from __future__ import annotations

from typing import Any

from kvstore_admin.errors import USER_ERROR, AdminError
from kvstore_cluster.model import ModelError
from kvstore_cluster.options import OPTIONS, lookup
from kvstore_cluster.store import ClusterStore


def _lookup(name: str) -> None:
    try:
        lookup(name)
    except ModelError as exc:
        raise AdminError(str(exc), USER_ERROR) from None


def list_options(store: ClusterStore) -> list[dict[str, Any]]:
    """Every option with its value, default, choices and help, sorted by name."""
    current = store.read_options().value
    return [{"name": o.name, "value": current.get(o.name), "default": o.default, "choices": list(o.choices),
             "help": o.help} for o in sorted(OPTIONS.values(), key=lambda o: o.name)]


def get_option(store: ClusterStore, name: str) -> dict[str, Any]:
    _lookup(name)
    return next(o for o in list_options(store) if o["name"] == name)


def set_option(store: ClusterStore, name: str, value: str) -> dict[str, Any]:
    """Write NAME=VALUE (checked against the version read: a concurrent change is a conflict)."""
    _lookup(name)
    read = store.read_options()
    try:
        changed = read.value.with_value(name, value)
    except ModelError as exc:
        raise AdminError(str(exc), USER_ERROR) from None
    before = read.value.get(name)
    if changed != read.value:
        store.write_options(changed, read.version)
    return {"name": name, "value": value, "previous": before}
