"""Users at the proxy against real ZooKeeper and redis-server: AUTH, HELLO, ACL rules, live changes, limits."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from kvstore_admin.processes import LocalProcess, ProcessError, wait_until
from kvstore_cluster.users import hash_password

from .security_helpers import SecuredCluster

NOPERM_KEY = "this user has no permissions to access one of the keys used as arguments"
NOPERM_CHANNEL = "this user has no permissions to access one of the channels used as arguments"


@pytest.fixture(scope="module")
def proxy(secured_cluster: SecuredCluster) -> Iterator[LocalProcess]:
    c = secured_cluster
    for args in (
        ("app1", "s3cret-app1", "~app1:*", "&app1:*", "+@all", "-@dangerous"),
        ("ro", "s3cret-ro", "allkeys", "+@read", "+@connection"),
        ("admin", "s3cret-admin", "allkeys", "allchannels", "allcommands"),
    ):
        result = c.admin("user", "add", args[0], "--password-file", c.password_file(args[1]), *args[2:])
        assert result.exit_code == 0, result.output
    yield c.start_proxy("--requirepass", "s3cret-default")


def client(proxy: LocalProcess, user: str | None = None, password: str = "", **kwargs) -> redis.Redis:  # type: ignore[no-untyped-def]
    kwargs.setdefault("protocol", 2)
    return redis.Redis(port=proxy.port, username=user, password=password or None, socket_timeout=10, **kwargs)


def exchange(proxy: LocalProcess, requests: bytes, expected: bytes) -> bool:
    """Send raw ``requests`` on a fresh connection; whether the replies are exactly ``expected``."""
    with socket.create_connection(("127.0.0.1", proxy.port), timeout=5) as raw:
        raw.sendall(requests)
        got = b""
        while len(got) < len(expected):
            chunk = raw.recv(4096)
            if not chunk:
                break
            got += chunk
    assert got == expected
    return True


def noperm(call, text: str) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(redis.exceptions.NoPermissionError) as info:
        call()
    assert str(info.value) == text


def test_auth_users_wrong_passwords_and_the_default_user(proxy: LocalProcess) -> None:
    with pytest.raises(redis.exceptions.AuthenticationError, match="invalid username-password pair"):
        client(proxy, "app1", "wrong").ping()
    with pytest.raises(redis.exceptions.AuthenticationError, match="invalid username-password pair"):
        client(proxy, "nobody", "s3cret-app1").ping()
    with pytest.raises(redis.exceptions.AuthenticationError):
        client(proxy).ping()  # no AUTH: NOAUTH
    assert exchange(proxy, b"AUTH app1 wrong\r\nGET app1:x\r\nAUTH s3cret-default\r\nACL WHOAMI\r\n",
                    b"-WRONGPASS invalid username-password pair or user is disabled.\r\n"
                    b"-NOAUTH Authentication required.\r\n+OK\r\n$7\r\ndefault\r\n")
    assert client(proxy, "default", "s3cret-default").acl_whoami() == "default"
    assert client(proxy, "app1", "s3cret-app1").acl_whoami() == "app1"
    # HELLO 3 AUTH, as redis-py sends it with protocol=3
    r3 = client(proxy, "app1", "s3cret-app1", protocol=3)
    assert r3.acl_whoami() in ("app1", b"app1") and r3.set("app1:h", "1")


def test_key_and_command_refusals_change_nothing(proxy: LocalProcess, secured_cluster: SecuredCluster) -> None:
    app1 = client(proxy, "app1", "s3cret-app1")
    assert app1.set("app1:k", "v") and app1.get("app1:k") == b"v"
    noperm(lambda: app1.set("other:k", "v"), NOPERM_KEY)
    noperm(lambda: app1.get("other:k"), NOPERM_KEY)
    noperm(lambda: app1.mset({"app1:a": "1", "other:b": "2"}), NOPERM_KEY)
    noperm(lambda: app1.delete("app1:k", "other:k"), NOPERM_KEY)
    noperm(lambda: app1.flushall(), "this user has no permissions to run the 'flushall' command")
    noperm(lambda: app1.keys("*"), "this user has no permissions to run the 'keys' command")
    noperm(lambda: app1.eval("return redis.call('set', KEYS[1], 'x')", 1, "other:e"), NOPERM_KEY)
    noperm(lambda: app1.blpop(["other:list"], timeout=1), NOPERM_KEY)
    for gid in secured_cluster.nodes:
        direct = secured_cluster.direct(gid)
        assert direct.exists("other:k", "other:b", "app1:a", "other:e") == 0
    assert app1.get("app1:k") == b"v"  # the refused DEL deleted nothing
    assert app1.mget("app1:k", "app1:none") == [b"v", None]


def test_command_restricted_user_does_not_borrow_the_shared_fast_path(proxy: LocalProcess) -> None:
    admin = client(proxy, "admin", "s3cret-admin")
    ro = client(proxy, "ro", "s3cret-ro")
    for _ in range(3):
        admin.set("shared:k", "admin")  # the worker learns SET's fast route
        assert ro.get("shared:k") == b"admin"
        noperm(lambda: ro.set("shared:k", "ro"), "this user has no permissions to run the 'set' command")
        noperm(lambda: ro.execute_command("SET", "shared:k", "ro"),
               "this user has no permissions to run the 'set' command")
    assert admin.get("shared:k") == b"admin"
    pipe = ro.pipeline(transaction=False)
    pipe.get("shared:k").incr("shared:n").get("shared:k")
    out = pipe.execute(raise_on_error=False)
    assert out[0] == out[2] == b"admin" and isinstance(out[1], redis.exceptions.NoPermissionError)


def test_transactions_and_pubsub_are_checked(proxy: LocalProcess) -> None:
    app1 = client(proxy, "app1", "s3cret-app1")
    assert exchange(proxy, b"AUTH app1 s3cret-app1\r\nMULTI\r\nSET app1:t 1\r\nSET other:t 1\r\nEXEC\r\n",
                    b"+OK\r\n+OK\r\n+QUEUED\r\n-NOPERM " + NOPERM_KEY.encode() + b"\r\n"
                    b"-EXECABORT Transaction discarded because of previous errors.\r\n")
    assert app1.exists("app1:t") == 0
    noperm(lambda: app1.execute_command("WATCH", "other:w"), NOPERM_KEY)
    noperm(lambda: app1.publish("other:c", "x"), NOPERM_CHANNEL)
    assert app1.publish("app1:c", "x") == 0
    p = app1.pubsub()
    p.subscribe("app1:c")
    assert p.get_message(timeout=5)["type"] == "subscribe"
    with pytest.raises(redis.exceptions.NoPermissionError):
        p.subscribe("other:c")
        p.get_message(timeout=5)
    p.close()
    p = app1.pubsub()
    p.psubscribe("app1:*")  # one of the user's patterns, literally
    assert p.get_message(timeout=5)["type"] == "psubscribe"
    p.close()
    p = app1.pubsub()
    with pytest.raises(redis.exceptions.NoPermissionError):
        p.psubscribe("app1:x*")
        p.get_message(timeout=5)
    p.close()


def test_acl_whoami_cat_list_and_the_rest_refused(proxy: LocalProcess) -> None:
    app1 = client(proxy, "app1", "s3cret-app1")
    assert app1.acl_whoami() == "app1"
    assert "dangerous" in app1.acl_cat() and "flushall" in app1.acl_cat("dangerous")
    noperm(app1.acl_list, "this user has no permissions to run the 'acl|list' command")  # @admin
    admin = client(proxy, "admin", "s3cret-admin")
    lines = [line.decode() if isinstance(line, bytes) else line for line in admin.acl_list()]
    assert f"user app1 on #{hash_password(b's3cret-app1')} ~app1:* resetchannels &app1:* +@all -@dangerous" in lines
    assert f"user default on #{hash_password(b's3cret-default')} ~* &* +@all" in lines
    with pytest.raises(redis.exceptions.ResponseError, match="users are managed with kvstore-admin user"):
        admin.execute_command("ACL", "SETUSER", "x", "on")


def test_rule_changes_apply_to_connected_sessions(proxy: LocalProcess, secured_cluster: SecuredCluster) -> None:
    c = secured_cluster
    assert c.admin("user", "add", "live", "--password-file", c.password_file("pw-live"), "allkeys",
                   "+get", "+set").exit_code == 0
    live = client(proxy, "live", "pw-live")
    wait_until(lambda: _works(lambda: live.get("live:k")), 10, "the new user at the proxy")
    assert live.set("live:k", "1")
    assert c.admin("user", "set", "live", "-set").exit_code == 0
    # Probed on a key of its own: a SET that still went through before the change arrived must
    # not be mistaken for one that got through after it.
    wait_until(lambda: _refused(lambda: live.set("live:probe", "2")), 10, "the rule change to reach the session")
    noperm(lambda: live.set("live:k", "2"), "this user has no permissions to run the 'set' command")
    assert live.get("live:k") == b"1"
    assert c.admin("user", "set", "live", "resetkeys", "~live:*", "+set").exit_code == 0
    wait_until(lambda: _works(lambda: live.set("live:k", "3")), 10, "the second change")
    noperm(lambda: live.set("else:k", "3"), NOPERM_KEY)
    assert c.admin("user", "passwd", "live", "--password-file", c.password_file("pw-new")).exit_code == 0
    wait_until(lambda: _refused_auth(proxy, "live", "pw-live"), 10, "the new password")
    assert live.get("live:k") == b"3"  # already authenticated: stays, as in Redis
    assert c.admin("user", "remove", "live").exit_code == 0
    wait_until(lambda: not _works(lambda: live.get("live:k")) and not _works(lambda: live.get("live:k")), 10,
               "the removed user's session to be closed")


def _works(call) -> bool:  # type: ignore[no-untyped-def]
    try:
        call() if not isinstance(call, redis.Redis) else call.ping()
        return True
    except redis.exceptions.RedisError:
        return False


def _refused(call) -> bool:  # type: ignore[no-untyped-def]
    try:
        call()
        return False
    except redis.exceptions.NoPermissionError:
        return True


def _refused_auth(proxy: LocalProcess, user: str, password: str) -> bool:
    try:
        client(proxy, user, password).ping()
        return False
    except redis.exceptions.AuthenticationError:
        return True


def test_user_limits_answer_with_an_error(proxy: LocalProcess, secured_cluster: SecuredCluster) -> None:
    c = secured_cluster
    assert c.admin("user", "add", "lim", "--password-file", c.password_file("pw-lim"), "--max-connections", "2",
                   "--max-rps", "20", "allkeys", "+@all").exit_code == 0
    first = client(proxy, "lim", "pw-lim")
    wait_until(lambda: _works(first), 10, "the new user at the proxy")
    second = client(proxy, "lim", "pw-lim")
    second.ping()
    with pytest.raises(redis.exceptions.ResponseError, match="max number of clients reached for user .lim."):
        client(proxy, "lim", "pw-lim").ping()
    second.close()
    wait_until(lambda: _works(client(proxy, "lim", "pw-lim")), 10, "a slot to free up")
    time.sleep(1.1)  # a full bucket: 20 requests in this second
    pipe = first.pipeline(transaction=False)
    for i in range(60):
        pipe.set(f"lim:{i}", i)
    out = pipe.execute(raise_on_error=False)
    refused = [r for r in out if isinstance(r, redis.exceptions.ResponseError)]
    assert len(out) == 60 and 20 <= 60 - len(refused) <= 22
    assert all("max requests per second reached for user 'lim'" in str(r) for r in refused)
    wait_until(lambda: first.ping(), 5, "the rate to allow requests again on the same connection")


def test_admin_user_commands_and_bad_input(secured_cluster: SecuredCluster) -> None:
    c = secured_cluster
    pw = c.password_file("x")
    for args, message in (
        (("user", "add", "app1", "--password-file", pw), "already exists"),
        (("user", "add", "bad name", "--password-file", pw), "bad user name"),
        (("user", "add", "u2", "--password-file", pw, "+@nosuch"), "unknown ACL category"),
        (("user", "add", "u2", "--password-file", pw, ">inline"), "passwords are set with --password-file"),
        (("user", "add", "u2", "--password-file", pw, "%R~x"), "not supported"),
        (("user", "add", "u2", "--password-file", str(c.base / "missing")), "cannot read the password file"),
        (("user", "set", "nosuch", "+get"), "no user 'nosuch'"),
        (("user", "remove", "nosuch"), "no user 'nosuch'"),
    ):
        result = c.admin(*args)
        assert result.exit_code == 1, result.output
        assert message in result.stderr, result.stderr
    listed = c.admin("user", "list", "--json")
    assert listed.exit_code == 0 and "s3cret" not in listed.stdout
    assert hash_password(b"s3cret-app1") not in listed.stdout


def test_processes_without_credentials_get_one_clear_error(secured_cluster: SecuredCluster) -> None:
    c = secured_cluster
    with pytest.raises(ProcessError):
        c.start_proxy(auth=False)
    assert "no credentials were given" in Path(c.procs[-1].log).read_text()
    wrong = c.base / "wrong-auth"
    wrong.write_text("kvstore:guess")
    for argv in ([sys.executable, "-m", "kvstore_sentinel"], [sys.executable, "-m", "kvstore_proxy", "--workers", "1"]):
        done = subprocess.run([*argv, "--zk", c.zk_hosts, "--cluster", c.name, "--zk-auth-file", str(wrong)],
                              capture_output=True, text=True, timeout=60)
        assert done.returncode in (1, 2), done
        assert "wrong user or password" in done.stderr, done.stderr


def test_connections_per_address_are_limited_with_an_error(secured_cluster: SecuredCluster) -> None:
    proxy = secured_cluster.start_proxy("--max-clients-per-address", "2")
    held = [socket.create_connection(("127.0.0.1", proxy.port), timeout=5) for _ in range(2)]
    for s in held:
        s.sendall(b"PING\r\n")
        assert s.recv(100) == b"+PONG\r\n"
    extra = socket.create_connection(("127.0.0.1", proxy.port), timeout=5)
    got = b""
    while not got.endswith(b"\r\n"):
        chunk = extra.recv(200)
        assert chunk, got
        got += chunk
    assert got.startswith(b"-ERR max number of clients reached for address 127.0.0.1")
    assert extra.recv(100) == b""  # then closed
    held[0].close()
    wait_until(lambda: redis.Redis(port=proxy.port, socket_timeout=2).ping(), 10, "a free connection")
    held[1].close()
