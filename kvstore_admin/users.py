"""``kvstore-admin user add/set/passwd/remove/list``: the proxy's users (kvstore_cluster.users)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

from kvstore_admin.errors import USER_ERROR, AdminError
from kvstore_cluster.model import ModelError
from kvstore_cluster.store import ClusterStore
from kvstore_cluster.users import User, check_user_name, hash_password

KEEP = object()  # a limit not given on the command line stays as it is


def read_password(path: Path) -> str:
    """The password in ``path`` (its first line, without the newline): its SHA-256 hex."""
    try:
        lines = path.read_bytes().splitlines()
    except OSError as exc:
        raise AdminError(f"cannot read the password file {path}: {exc.strerror or exc}", USER_ERROR) from None
    if not lines or not lines[0]:
        raise AdminError(f"the password file {path} is empty: its first line is the password", USER_ERROR)
    return hash_password(lines[0])


def _change(store: ClusterStore, name: str, build: Any) -> User:
    """Apply ``build(old user or None) -> new user`` to the record, version-checked."""
    try:
        check_user_name(name)
        read = store.read_users()
        user = build(read.value.get(name))
        store.write_users(read.value.put(user), read.version)
    except ModelError as exc:
        raise AdminError(str(exc), USER_ERROR) from None
    return user


def _limits(user: User, max_connections: Any, max_rps: Any) -> User:
    if max_connections is not KEEP:
        user = replace(user, max_connections=max_connections or None)
    if max_rps is not KEEP:
        user = replace(user, max_rps=max_rps or None)
    return user


def add_user(store: ClusterStore, name: str, password_file: Path, rules: list[str],
             max_connections: Any = KEEP, max_rps: Any = KEEP) -> User:
    digest = read_password(password_file)

    def build(old: User | None) -> User:
        if old is not None:
            raise AdminError(f"user {name!r} already exists ('kvstore-admin user set' changes it)", USER_ERROR)
        return _limits(User(name, passwords=(digest,)).with_rules(rules), max_connections, max_rps)

    return _change(store, name, build)


def set_user(store: ClusterStore, name: str, rules: list[str], max_connections: Any = KEEP,
             max_rps: Any = KEEP) -> User:
    def build(old: User | None) -> User:
        if old is None:
            raise AdminError(f"no user {name!r} ('kvstore-admin user list' shows them)", USER_ERROR)
        return _limits(old.with_rules(rules), max_connections, max_rps)

    return _change(store, name, build)


def apply_user(store: ClusterStore, name: str, password_file: Path, rules: list[str], max_connections: int | None,
               max_rps: int | None, update_password: bool = False) -> bool:
    """Make user NAME exactly this (rules applied to a new user; the password only when the user is
    new, or with ``update_password``); whether anything changed. What deployment tools call."""
    digest = read_password(password_file)
    changed = False

    def build(old: User | None) -> User:
        nonlocal changed
        passwords = old.passwords if old is not None and not update_password else (digest,)
        user = replace(User(name, passwords=passwords).with_rules(rules), max_connections=max_connections or None,
                       max_rps=max_rps or None)
        changed = user != old
        return user

    read = store.read_users()
    try:
        check_user_name(name)
        user = build(read.value.get(name))
    except ModelError as exc:
        raise AdminError(str(exc), USER_ERROR) from None
    if changed:
        store.write_users(read.value.put(user), read.version)
    return changed


def set_password(store: ClusterStore, name: str, password_file: Path) -> User:
    digest = read_password(password_file)

    def build(old: User | None) -> User:
        if old is None:
            raise AdminError(f"no user {name!r} ('kvstore-admin user list' shows them)", USER_ERROR)
        return replace(old, passwords=(digest,))

    return _change(store, name, build)


def remove_user(store: ClusterStore, name: str) -> None:
    read = store.read_users()
    if read.value.get(name) is None:
        raise AdminError(f"no user {name!r} ('kvstore-admin user list' shows them)", USER_ERROR)
    store.write_users(read.value.without(name), read.version)


def list_users(store: ClusterStore) -> list[dict[str, Any]]:
    """Each user without its password hashes: name, on/off, rules, limits, and its ACL LIST line."""
    users = store.read_users().value
    out = []
    for name in sorted(users.users):
        u = users.users[name]
        rules = " ".join(u.describe().split()[3 + len(u.passwords):])
        out.append({"name": name, "enabled": u.enabled, "commands": list(u.commands), "keys": list(u.keys),
                    "channels": list(u.channels), "max_connections": u.max_connections, "max_rps": u.max_rps,
                    "rules": rules})
    return out
