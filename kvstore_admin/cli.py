"""kvstore-admin: the click wiring of the admin commands (the work is in groups, status, local, kvstore_cluster.ops)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import click

from kvstore_admin import check as checking
from kvstore_admin import groups as ops
from kvstore_admin import keyrules as rules_cmd
from kvstore_admin import local, reshard_report, status
from kvstore_admin import options as opts
from kvstore_admin import users as users_ops
from kvstore_admin.errors import (
    DIFFERENT,
    EXIT_CODES_HELP,
    MISPLACED,
    SETTINGS_DIFFER,
    USER_ERROR,
    AdminError,
    LocalStateError,
    as_admin_error,
)
from kvstore_admin.importing.progress import Bar, Progress
from kvstore_cluster import clickopts, logs, paths
from kvstore_cluster.keyrules import from_text, parse_prefixes
from kvstore_cluster.model import parse_address
from kvstore_cluster.node import NODE_TIMEOUT
from kvstore_cluster.ops import cache, rebalance, reshard, rule_change, switchover
from kvstore_cluster.ops.context import Context
from kvstore_cluster.ops.fence import NO_FENCE
from kvstore_cluster.slots import parse_slot_ranges
from kvstore_cluster.store import ClusterStore
from kvstore_cluster.zkauth import ZkAccess, ZkCredentials, connect_to_cluster, load_credentials


@dataclass(frozen=True, slots=True)
class Settings:
    zk: str
    cluster: str
    zk_timeout: float
    redis_password: str | None = field(default=None, repr=False)  # for the admin's own Redis calls
    zk_credentials: ZkCredentials | None = None  # --zk-auth-file / KVSTORE_ZK_AUTH (kvstore_cluster.zkauth)


class AdminGroup(click.Group):
    """Turns every known failure into one ``Error: ...`` line and its exit code."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except (click.exceptions.ClickException, click.exceptions.Exit, click.exceptions.Abort):
            raise
        except Exception as exc:
            err = as_admin_error(exc)
            if err is None:
                raise
            click.echo(f"Error: {err}", err=True)
            ctx.exit(err.code)


@contextlib.contextmanager
def open_store(settings: Settings, **kwargs: Any) -> Iterator[ClusterStore]:
    try:
        paths.check_name("cluster", settings.cluster)
    except ValueError as exc:
        raise AdminError(str(exc), USER_ERROR) from None
    client = connect_to_cluster(settings.zk, settings.cluster, settings.zk_credentials, settings.zk_timeout,
                                **kwargs)
    try:
        yield ClusterStore(client, settings.cluster, settings.zk_credentials)
    finally:
        client.stop()
        client.close()


def emit_json(obj: Any) -> None:
    click.echo(json.dumps(obj, indent=2, sort_keys=True))


pass_settings = click.make_pass_decorator(Settings)
json_option = click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts.")


@click.group(cls=AdminGroup, epilog=EXIT_CODES_HELP, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--zk", envvar="KVSTORE_ZK", default="127.0.0.1:2181", show_default=True,
              help="ZooKeeper hosts (HOST:PORT,...[/chroot]); env KVSTORE_ZK.")
@click.option("--cluster", envvar="KVSTORE_CLUSTER", default="default", show_default=True,
              help="Cluster name; env KVSTORE_CLUSTER.")
@click.option("--zk-timeout", type=click.FloatRange(min=0.1), default=5.0, show_default=True,
              help="Seconds to wait for ZooKeeper before giving up.")
@click.option("--redis-password", envvar="KVSTORE_REDIS_PASSWORD", default=None, metavar="PASSWORD",
              help="Password of the Redis nodes (requirepass) for every Redis call the admin makes; "
                   "env KVSTORE_REDIS_PASSWORD (prefer it: a command line is visible to other users).")
@clickopts.zk_auth_file
@clickopts.redis_tls
@click.option("--log-format", type=click.Choice(logs.FORMATS), default="console", show_default=True)
@click.option("-v", "--verbose", is_flag=True, help="Log each change made (to stderr).")
@click.pass_context
def cli(ctx: click.Context, zk: str, cluster: str, zk_timeout: float, redis_password: str | None,
        zk_credentials: ZkCredentials | None, log_format: str, verbose: bool) -> None:
    """Administer a kvstore cluster kept in ZooKeeper."""
    logs.configure(log_format, "info" if verbose else "warning")
    clickopts.apply_redis_tls(ctx)
    # Failures are reported as one line each; kazoo's own connection chatter would only add noise.
    logging.getLogger("kazoo").setLevel(logging.WARNING if verbose else logging.CRITICAL)
    ctx.obj = Settings(zk=zk, cluster=cluster, zk_timeout=zk_timeout, redis_password=redis_password or None,
                       zk_credentials=zk_credentials)


_READER_ENV = "KVSTORE_ZK_READER_AUTH"
reader_option = click.option(
    "--zk-reader-auth-file", "reader_file", default=None, metavar="FILE",
    help=f"A file holding the read-only viewers' ZooKeeper credentials, user:password (default: env "
         f"{_READER_ENV}); only its digest is stored.")


def _access(settings: Settings, reader_file: str | None) -> ZkAccess:
    """The access record for the admin's own credentials as writer and the optional reader."""
    if settings.zk_credentials is None:
        raise AdminError("securing the cluster needs the writer's ZooKeeper credentials (user:password) in "
                         "KVSTORE_ZK_AUTH or a file named by --zk-auth-file", USER_ERROR)
    try:
        reader = load_credentials(reader_file, variable=_READER_ENV)
    except ValueError as exc:
        raise AdminError(str(exc), USER_ERROR) from None
    return ZkAccess(settings.zk_credentials.digest_id, reader.digest_id if reader else None)


@cli.command()
@click.option("--mode", type=click.Choice(["cache", "datastore"]), required=True,
              help="cache: a failed group's slots go to the others; datastore: a replica is promoted.")
@click.option("--zk-auth", "secure_it", is_flag=True,
              help="Secure the cluster with ZooKeeper ACLs: only this command's credentials (--zk-auth-file / "
                   "KVSTORE_ZK_AUTH) may change it, the --zk-reader-auth-file ones may read it, nobody else.")
@reader_option
@pass_settings
def init(settings: Settings, mode: str, secure_it: bool, reader_file: str | None) -> None:
    """Create the cluster in ZooKeeper (no groups, no slot owned yet)."""
    if reader_file and not secure_it:
        raise click.UsageError("--zk-reader-auth-file goes with --zk-auth")
    access = _access(settings, reader_file) if secure_it else None
    with open_store(settings) as store:
        ops.init_cluster(store, mode, access)
    secured = " secured with ZooKeeper ACLs" if access else ""
    click.echo(f"created cluster {settings.cluster!r} in {mode} mode{secured}; add groups with "
               "'kvstore-admin group add'")


@cli.command()
@reader_option
@json_option
@pass_settings
def secure(settings: Settings, reader_file: str | None, as_json: bool) -> None:
    """Secure an existing cluster with ZooKeeper ACLs (again: to change the reader).

    Only this command's credentials (--zk-auth-file / KVSTORE_ZK_AUTH) may change the cluster
    afterwards, the --zk-reader-auth-file ones may read it, nobody else. Give every proxy,
    sentinel and admin the credentials first: a process without them loses access at once.
    """
    access = _access(settings, reader_file)
    with open_store(settings) as store:
        changed = store.secure(access)
    out = {"cluster": settings.cluster, "znodes": changed, "writer": access.writer.partition(":")[0],
           "reader": access.reader.partition(":")[0] if access.reader else None}
    if as_json:
        emit_json(out)
    else:
        reader = f", readable by {out['reader']!r}" if out["reader"] else ""
        click.echo(f"secured cluster {settings.cluster!r}: {changed} znodes writable by {out['writer']!r} "
                   f"only{reader}")


@cli.group("group", cls=AdminGroup)
def group_cmd() -> None:
    """Add, list and remove groups (one master plus replicas)."""


@group_cmd.command("add")
@click.option("--id", "group_id", help="Group id (default: the next free gN).")
@click.option("--master", required=True, metavar="HOST:PORT")
@click.option("--replica", "replicas", multiple=True, metavar="HOST:PORT", help="Repeat for several.")
@click.option("--repl-timeout", type=click.FloatRange(min=0.1), default=30.0, show_default=True,
              help="Seconds to wait for each replica's link to its master.")
@click.option("--tls", "use_tls", is_flag=True,
              help="The nodes speak TLS (their tls-port): every kvstore process connects to them with TLS "
                   "(--redis-tls-ca-cert-file ... on each).")
@pass_settings
def group_add(settings: Settings, group_id: str | None, master: str, replicas: tuple[str, ...],
              repl_timeout: float, use_tls: bool) -> None:
    """Add a group of running redis-servers; replicas are made to replicate the master (REPLICAOF).

    The new group owns no slot until 'rebalance' gives it unowned ones.
    """
    with open_store(settings) as store:
        g = ops.add_group(store, master, list(replicas), group_id=group_id, repl_timeout=repl_timeout,
                          password=settings.redis_password, use_tls=use_tls)
        mode = store.read_meta().value.mode
    reps = f", replicas {', '.join(g.replicas)} (replicating)" if g.replicas else ""
    click.echo(f"added group {g.id}: master {g.master}{reps}; it owns no slots yet ('kvstore-admin rebalance')")
    if mode == "datastore" and not g.replicas:
        click.echo(f"warning: group {g.id} has no replica, so it cannot fail over "
                   "('kvstore-admin group add-replica')", err=True)


@group_cmd.command("add-replica")
@click.argument("group_id", metavar="GROUP")
@click.argument("address", metavar="HOST:PORT")
@click.option("--repl-timeout", type=click.FloatRange(min=0.1), default=30.0, show_default=True)
@pass_settings
def group_add_replica(settings: Settings, group_id: str, address: str, repl_timeout: float) -> None:
    """Add a running redis-server to GROUP as a replica of its master."""
    with open_store(settings) as store:
        g = ops.add_replica(store, group_id, address, repl_timeout=repl_timeout, password=settings.redis_password)
    click.echo(f"added replica {address} to group {g.id} (replicating {g.master})")


@group_cmd.command("remove-replica")
@click.argument("group_id", metavar="GROUP")
@click.argument("address", metavar="HOST:PORT")
@click.option("--node-timeout", type=click.FloatRange(min=0.05), default=NODE_TIMEOUT, show_default=True,
              help="Seconds to wait for the node's answer.")
@pass_settings
def group_remove_replica(settings: Settings, group_id: str, address: str, node_timeout: float) -> None:
    """Remove the replica HOST:PORT from GROUP; if it answers, it stops replicating (REPLICAOF NO ONE).

    A node that does not answer is removed all the same (replacing a failed node). The group's
    master cannot be removed: switch it over with 'kvstore-admin failover GROUP' first.
    """
    with open_store(settings) as store:
        removed = ops.remove_replica(store, group_id, address, timeout=node_timeout,
                                     password=settings.redis_password)
        mode = store.read_meta().value.mode
    g = removed.group
    if removed.stopped:
        click.echo(f"removed replica {address} from group {g.id}; it no longer replicates {g.master} "
                   "(REPLICAOF NO ONE) and keeps running with its data")
    else:
        click.echo(f"removed replica {address} from group {g.id}; it could not be reached, so it was not told "
                   f"to stop replicating {g.master}")
        click.echo(f"warning: {removed.error}; if {address} comes back it still replicates {g.master}: "
                   "stop it, or run REPLICAOF NO ONE on it", err=True)
    if mode == "datastore" and not g.replicas:
        click.echo(f"warning: group {g.id} has no replica left, so it cannot fail over "
                   "('kvstore-admin group add-replica')", err=True)


@group_cmd.command("remove")
@click.argument("group_id", metavar="GROUP")
@pass_settings
def group_remove(settings: Settings, group_id: str) -> None:
    """Remove GROUP from the cluster; refused while it owns slots. Its redis-servers keep running."""
    with open_store(settings) as store:
        ops.remove_group(store, group_id)
    click.echo(f"removed group {group_id}")


@group_cmd.command("rejoin")
@click.argument("group_id", metavar="GROUP")
@click.option("--node-timeout", type=click.FloatRange(min=0.05), default=5.0, show_default=True,
              help="Seconds to wait for each Redis node's answer.")
@click.option("--rebalance/--no-rebalance", "and_rebalance", default=True, show_default=True,
              help="Then move a fair share of slots, with their keys, to it.")
@pass_settings
def group_rejoin(settings: Settings, group_id: str, node_timeout: float, and_rebalance: bool) -> None:
    """Bring a recovered cache-mode GROUP marked down back: FLUSHALL its nodes, mark it ok, rebalance.

    Its old keys are flushed on purpose: they may be stale, since its slots were served by other
    groups meanwhile. Slots come back through the data-moving rebalance, so no healthy group
    loses keys. A sentinel started with --auto-rejoin does the flush by itself; the rebalance is
    then this command with the group already ok, or 'kvstore-admin rebalance'.
    """
    with open_store(settings) as store:
        ctx = Context(store, node_timeout=node_timeout, password=settings.redis_password)
        asyncio.run(cache.rejoin(ctx, NO_FENCE, group_id))
        click.echo(f"group {group_id} flushed and back in state ok")
        if and_rebalance:
            out = rebalance.run_rebalance(store, reshard.Options(password=settings.redis_password),
                                          reporter=reshard_report.ProgressBar())
            click.echo(reshard_report.render_result(out))


@group_cmd.command("list")
@json_option
@pass_settings
def group_list(settings: Settings, as_json: bool) -> None:
    """List the groups with their nodes and slots (from ZooKeeper only; 'status' probes the nodes)."""
    with open_store(settings) as store:
        rows = ops.list_groups(store)
    if as_json:
        emit_json(rows)
    elif not rows:
        click.echo("no groups")
    else:
        click.echo(status.table(
            ["GROUP", "STATE", "MASTER", "REPLICAS", "SLOTS", "RANGES"],
            [[g["id"], g["state"], g["master"], ",".join(g["replicas"]) or "-", g["slots"], g["ranges"] or "-"]
             for g in rows],
        ))


move_options = [
    click.option("--batch", type=click.IntRange(min=1), default=reshard.DEFAULTS.batch, show_default=True,
                 help="Keys per MIGRATE call (also at most --batch-bytes)."),
    click.option("--batch-bytes", type=click.IntRange(min=1024), default=reshard.DEFAULTS.batch_bytes,
                 show_default=True, help="Bytes (MEMORY USAGE) per MIGRATE call."),
    click.option("--parallel", type=click.IntRange(1, 64), default=reshard.DEFAULTS.parallel, show_default=True,
                 help="MIGRATE connections per source group."),
    click.option("--big-key-bytes", type=click.IntRange(min=1024), default=reshard.DEFAULTS.big_key_bytes,
                 show_default=True, help="Keys bigger than this (MEMORY USAGE) move in pieces, not by one MIGRATE."),
    click.option("--busy-rate", type=click.IntRange(min=0), default=reshard.DEFAULTS.busy_rate, show_default=True,
                 metavar="KEYS",
                 help="Keys/s at most while clients use the source groups (full speed while they do not); "
                      "0: always full speed."),
    click.option("--timeout", type=click.FloatRange(min=0.1), default=30.0, show_default=True,
                 help="Seconds to wait for every proxy to apply each slots change (barrier)."),
    click.option("--slots-per-step", type=click.IntRange(min=1), default=reshard.DEFAULT_SLOTS_PER_STEP,
                 show_default=True, help="Slots marked migrating at once while no client uses the source groups."),
    click.option("--busy-slots-per-step", type=click.IntRange(min=1), default=reshard.BUSY_SLOTS_PER_STEP,
                 show_default=True,
                 help="Slots marked migrating at once while clients use the source groups (each request for a "
                      "key not moved yet costs a MIGRATE)."),
    click.option("--no-data", is_flag=True,
                 help="Reassign without moving keys; the old owners' keys of those slots are DELETED."),
    click.option("--yes-lose-data", is_flag=True, help="Confirm --no-data in datastore mode."),
    json_option,
]


def with_options(options: list[Any]) -> Any:
    """A decorator adding every one of ``options`` to a command."""
    def decorate(f: Any) -> Any:
        for option in reversed(options):
            f = option(f)
        return f

    return decorate


with_move_options = with_options(move_options)


def _options(settings: Settings, batch: int, batch_bytes: int, parallel: int, big_key_bytes: int, busy_rate: int,
             timeout: float, slots_per_step: int, busy_slots_per_step: int) -> reshard.Options:
    return reshard.Options(batch=batch, batch_bytes=batch_bytes, parallel=parallel, big_key_bytes=big_key_bytes,
                           busy_rate=busy_rate, timeout=timeout, slots_per_step=slots_per_step,
                           busy_slots_per_step=busy_slots_per_step, password=settings.redis_password)


def _emit(out: dict[str, Any], as_json: bool) -> None:
    if as_json:
        emit_json(out)
    else:
        click.echo(out.get("text") or reshard_report.render_result(out))


@cli.command(epilog=reshard_report.EXIT_CODES_HELP)
@click.option("--slots", "slots_text", metavar="RANGES", help="Slots to move, e.g. 0-999,2000.")
@click.option("--to", "target", metavar="GROUP", help="The group that gets them.")
@click.option("--resume", is_flag=True, help="Continue the reshard in progress.")
@click.option("--abort", is_flag=True, help="Stop the reshard in progress (a marked step is finished first).")
@with_move_options
@pass_settings
def reshard_cmd(settings: Settings, slots_text: str | None, target: str | None, resume: bool, abort: bool,
                batch: int, batch_bytes: int, parallel: int, big_key_bytes: int, busy_rate: int, timeout: float,
                slots_per_step: int, busy_slots_per_step: int, no_data: bool, yes_lose_data: bool,
                as_json: bool) -> None:
    """Move slots (and their keys) to GROUP while proxies keep serving; resumable.

    Keys move with SCAN + MIGRATE (TTLs kept, never REPLACE: a key already on the target stops
    the reshard). One reshard at a time; running the same command again resumes it.
    """
    if resume and abort:
        raise click.UsageError("--resume and --abort exclude each other")
    if not (resume or abort) and not (slots_text and target):
        raise click.UsageError("give --slots and --to (or --resume / --abort)")
    options = _options(settings, batch, batch_bytes, parallel, big_key_bytes, busy_rate, timeout, slots_per_step,
                       busy_slots_per_step)
    reporter = None if as_json else reshard_report.ProgressBar()
    with open_store(settings) as store:
        if resume or abort:
            out = rebalance.resume_or_abort(store, options, abort=abort, reporter=reporter)
        else:
            assert slots_text and target
            try:
                ranges = parse_slot_ranges(slots_text)
            except ValueError as exc:
                raise AdminError(f"--slots: {exc}") from None
            out = rebalance.run_reshard(store, ranges, target, options, no_data=no_data,
                                        yes_lose_data=yes_lose_data, reporter=reporter)
    _emit(out, as_json)


reshard_cmd.name = "reshard"


@cli.command("rebalance", epilog=reshard_report.EXIT_CODES_HELP)
@click.option("--dry-run", is_flag=True, help="Print the plan; change nothing.")
@click.option("--drain", metavar="GROUP", help="Move all of GROUP's slots to the others (then 'group remove').")
@with_move_options
@pass_settings
def rebalance_cmd(settings: Settings, dry_run: bool, drain: str | None, batch: int, batch_bytes: int, parallel: int,
                  big_key_bytes: int, busy_rate: int, timeout: float, slots_per_step: int,
                  busy_slots_per_step: int, no_data: bool,
                  yes_lose_data: bool, as_json: bool) -> None:
    """Even out slot ownership among the groups in state ok, moving the fewest slots (with their keys).

    Unowned slots are assigned first (no data to move). Then slots move from the groups holding
    the most to those holding the least, as a reshard (resumable, one at a time).
    """
    options = _options(settings, batch, batch_bytes, parallel, big_key_bytes, busy_rate, timeout, slots_per_step,
                       busy_slots_per_step)
    with open_store(settings) as store:
        if dry_run:
            plan = rebalance.plan_rebalance(store, drain)
            out = {"status": "dry run", "request": plan.request, "plan": plan.to_json(),
                   "text": reshard_report.render_plan(plan)}
        else:
            out = rebalance.run_rebalance(store, options, drain=drain, no_data=no_data, yes_lose_data=yes_lose_data,
                                          reporter=None if as_json else reshard_report.ProgressBar())
    _emit(out, as_json)


@cli.command("check", epilog=checking.EXIT_CODES_HELP)
@json_option
@pass_settings
def check_cmd(settings: Settings, as_json: bool) -> None:
    """Scan every group's master for keys living in a group that does not own their slot."""
    with open_store(settings) as store:
        found = checking.check(store, password=settings.redis_password)
    if as_json:
        emit_json(found)
    else:
        click.echo(checking.render(found))
    if not found["ok"]:
        raise SystemExit(MISPLACED)
    if not found["consistent"]:
        raise SystemExit(SETTINGS_DIFFER)


@cli.command("status")
@json_option
@click.option("--node-timeout", type=click.FloatRange(min=0.05), default=NODE_TIMEOUT, show_default=True,
              help="Seconds to wait for each Redis node's answer.")
@pass_settings
def status_cmd(settings: Settings, as_json: bool, node_timeout: float) -> None:
    """Groups, slot owners, and the live health and role of every node (PING + INFO replication)."""
    with open_store(settings) as store:
        found = status.collect(store, node_timeout, password=settings.redis_password)
    if as_json:
        emit_json(found)
    else:
        click.echo(status.render(found))


@cli.command("web")
@click.option("--listen", default="127.0.0.1:8380", show_default=True, callback=clickopts.address,
              metavar="HOST:PORT", help="Where to serve the page (/) and the JSON API (/api/).")
@click.option("--refresh", type=click.FloatRange(min=0.2), default=2.0, show_default=True,
              help="Seconds between re-reads of node health and the sentinels' views; changes of the "
                   "tables, proxies, failovers and reshards show at once (ZooKeeper watches).")
@click.option("--node-timeout", type=click.FloatRange(min=0.05), default=NODE_TIMEOUT, show_default=True,
              help="Seconds to wait for each Redis node's answer.")
@click.option("--zk-session-timeout", type=click.FloatRange(min=1.0), default=10.0, show_default=True,
              help="ZooKeeper session timeout; the page shows its data as stale after about 2/3 of it "
                   "without ZooKeeper.")
@pass_settings
def web(settings: Settings, listen: tuple[str, int], refresh: float, node_timeout: float,
        zk_session_timeout: float) -> None:
    """Serve a live, read-only status page of the cluster and the same data as JSON under /api/."""
    from kvstore_admin.web import app

    with open_store(settings, session_timeout=zk_session_timeout) as store:
        store.read_meta()  # a missing cluster is an error here, not an empty page

        def ready(port: int) -> None:
            click.echo(f"serving the status of cluster {settings.cluster!r} at http://{listen[0]}:{port}/ "
                       "(API: /api/; Ctrl-C stops)")

        try:
            asyncio.run(app.serve(store.client, settings.cluster, listen[0], listen[1], refresh, node_timeout,
                                  settings.redis_password, ready))
        except OSError as exc:
            raise AdminError(f"cannot listen on {listen[0]}:{listen[1]}: {exc.strerror or exc}", USER_ERROR) from None


@cli.command()
@json_option
@pass_settings
def proxies(settings: Settings, as_json: bool) -> None:
    """The proxies registered in ZooKeeper, with the table versions each has applied."""
    with open_store(settings) as store:
        store.read_meta()  # a missing cluster is an error, not "no proxies"
        found = status.records_json(store.proxies())
    if as_json:
        emit_json(found)
    else:
        click.echo(status.render_proxies(found))


@cli.command("failover")
@click.argument("group_id", metavar="GROUP")
@click.option("--to", "target", metavar="HOST:PORT", help="The replica to promote (default: the most up to date).")
@click.option("--pause", type=click.FloatRange(min=0.1), default=5.0, show_default=True,
              help="Longest time writes stay paused while the replica catches up.")
@click.option("--node-timeout", type=click.FloatRange(min=0.05), default=5.0, show_default=True,
              help="Seconds to wait for each Redis node's answer.")
@pass_settings
def failover_cmd(settings: Settings, group_id: str, target: str | None, pause: float, node_timeout: float) -> None:
    """Switch GROUP's master over to a replica without losing an acknowledged write.

    Pauses writes on the master (CLIENT PAUSE WRITE), waits until the replica has the master's
    replication offset, promotes it, commits the new master to ZooKeeper and re-attaches the old
    master as a replica. Clients of the proxy see a short pause. Refused on an unhealthy group
    (the sentinel handles failed masters).
    """
    with open_store(settings) as store:
        ctx = Context(store, node_timeout=node_timeout, password=settings.redis_password)
        new_master = asyncio.run(switchover.switchover(ctx, NO_FENCE, group_id, to=target, pause=pause))
    click.echo(f"group {group_id}: master is now {new_master}")


@cli.group("option", cls=AdminGroup)
def option_cmd() -> None:
    """Cluster options kept in ZooKeeper; every proxy applies a change within moments."""


@option_cmd.command("list")
@json_option
@pass_settings
def option_list(settings: Settings, as_json: bool) -> None:
    """Every option with its value, its default and its choices."""
    with open_store(settings) as store:
        rows = opts.list_options(store)
    if as_json:
        emit_json(rows)
        return
    click.echo(status.table(["OPTION", "VALUE", "DEFAULT", "CHOICES"],
                            [[o["name"], o["value"], o["default"], ", ".join(o["choices"])] for o in rows]))
    for o in rows:
        click.echo(f"\n{o['name']}: {o['help']}")


@option_cmd.command("get")
@click.argument("name")
@json_option
@pass_settings
def option_get(settings: Settings, name: str, as_json: bool) -> None:
    """Print the value of option NAME."""
    with open_store(settings) as store:
        row = opts.get_option(store, name)
    if as_json:
        emit_json(row)
    else:
        click.echo(row["value"])


@option_cmd.command("set")
@click.argument("name")
@click.argument("value")
@json_option
@pass_settings
def option_set(settings: Settings, name: str, value: str, as_json: bool) -> None:
    """Set option NAME to VALUE ('kvstore-admin option list' shows the choices)."""
    with open_store(settings) as store:
        out = opts.set_option(store, name, value)
    if as_json:
        emit_json(out)
    else:
        click.echo(f"{name} = {value} (was {out['previous']}); proxies apply it within moments")


@cli.group("keyrule", cls=AdminGroup)
def keyrule_cmd() -> None:
    """Key rules: keys starting with PREFIX hash as if their hash tag were TAG (one slot, one group).

    Multi-key commands, transactions and scripts over keys of one slot work through the proxy;
    a rule puts an application's keys in one slot without renaming them. The longest matching
    prefix wins; keys matching no rule hash as in Redis Cluster. Changing the rules of a cluster
    that holds matching keys moves them to their new group online (their requests wait meanwhile).
    """


keyrule_timeout = click.option("--timeout", type=click.FloatRange(min=0.1), default=30.0, show_default=True,
                               help="Seconds to wait for every proxy to apply the change.")


def _keyrule_options(settings: Settings, timeout: float) -> rule_change.Options:
    return rule_change.Options(timeout=timeout, password=settings.redis_password)


def _keyrule_emit(out: dict[str, Any], as_json: bool) -> None:
    if as_json:
        emit_json(out)
    else:
        click.echo(rules_cmd.render_result(out))


@keyrule_cmd.command("list")
@json_option
@pass_settings
def keyrule_list(settings: Settings, as_json: bool) -> None:
    """The key rules, each with the slot its keys go to."""
    with open_store(settings) as store:
        listed = rules_cmd.list_rules(store)
    if as_json:
        emit_json(listed)
    else:
        click.echo(rules_cmd.render_list(listed))


@keyrule_cmd.command("add", epilog=rules_cmd.EXIT_CODES_HELP)
@click.option("--tag", required=True, help="The hash tag the keys of these prefixes hash as (CRC16(TAG) mod 16384).")
@click.argument("prefixes", nargs=-1, required=True, metavar="PREFIX...")
@keyrule_timeout
@json_option
@pass_settings
def keyrule_add(settings: Settings, tag: str, prefixes: tuple[str, ...], timeout: float, as_json: bool) -> None:
    """Keys starting with each PREFIX hash as TAG (a PREFIX that has a rule gets this tag)."""
    with open_store(settings) as store:
        wanted = rule_change.added(store.read_keyrules().value.rules, from_text(tag),
                                   parse_prefixes(prefixes))
        out = rules_cmd.change(store, wanted, " ".join(["add", "--tag", tag, *prefixes]),
                               _keyrule_options(settings, timeout), rules_cmd.progress_line(not as_json))
    _keyrule_emit(out, as_json)


@keyrule_cmd.command("remove", epilog=rules_cmd.EXIT_CODES_HELP)
@click.argument("prefixes", nargs=-1, required=True, metavar="PREFIX...")
@keyrule_timeout
@json_option
@pass_settings
def keyrule_remove(settings: Settings, prefixes: tuple[str, ...], timeout: float, as_json: bool) -> None:
    """Remove the rules of these prefixes (their keys hash by their own name or hash tag again)."""
    with open_store(settings) as store:
        wanted = rule_change.removed(store.read_keyrules().value.rules, parse_prefixes(prefixes))
        out = rules_cmd.change(store, wanted, " ".join(["remove", *prefixes]),
                               _keyrule_options(settings, timeout), rules_cmd.progress_line(not as_json))
    _keyrule_emit(out, as_json)


@keyrule_cmd.command("resume", epilog=rules_cmd.EXIT_CODES_HELP)
@keyrule_timeout
@json_option
@pass_settings
def keyrule_resume(settings: Settings, timeout: float, as_json: bool) -> None:
    """Finish a rule change that stopped part-way (a crash, a proxy that did not apply it)."""
    with open_store(settings) as store:
        out = rules_cmd.finish(store, _keyrule_options(settings, timeout), rules_cmd.progress_line(not as_json))
    _keyrule_emit(out, as_json)


# --- users of the proxies -------------------------------------------------------------------------------

_RULES_HELP = ("RULE: Redis ACL rules: on, off, +@category, -@category, +command, -command, allcommands, nocommands, "
               "~keypattern, allkeys, resetkeys, &channelpattern, allchannels, resetchannels.")
_RULE_ARGS = {"ignore_unknown_options": True}  # -@all, -flushall are rules, not options
password_file_option = click.option(
    "--password-file", type=click.Path(dir_okay=False, path_type=Path), required=True,
    help="A file whose first line is the password (only its SHA-256 is stored).")
limit_options = [
    click.option("--max-connections", type=click.IntRange(min=0), default=None,
                 help="Connections this user may hold at once on each proxy (0: no limit)."),
    click.option("--max-rps", type=click.IntRange(min=0), default=None,
                 help="Requests per second this user may send to each proxy (0: no limit)."),
]

with_limit_options = with_options(limit_options)


def _given(value: int | None) -> Any:
    return users_ops.KEEP if value is None else value


@cli.group("user", cls=AdminGroup)
def user_cmd() -> None:
    """The proxies' users (AUTH username password) and their ACL rules; every proxy applies changes live."""


@user_cmd.command("add", context_settings=_RULE_ARGS, epilog=_RULES_HELP)
@click.argument("name")
@password_file_option
@with_limit_options
@click.argument("rules", nargs=-1, metavar="[RULE]...")
@pass_settings
def user_add(settings: Settings, name: str, password_file: Path, max_connections: int | None,
             max_rps: int | None, rules: tuple[str, ...]) -> None:
    """Add user NAME, on, with RULEs (none: it may run nothing, as a new Redis user).

    Example: kvstore-admin user add app1 --password-file pw '~app1:*' '&app1:*' +@all -@dangerous
    """
    with open_store(settings) as store:
        user = users_ops.add_user(store, name, password_file, list(rules), _given(max_connections), _given(max_rps))
    click.echo(f"added user {name}: {_rules_text(user)}")


@user_cmd.command("set", context_settings=_RULE_ARGS, epilog=_RULES_HELP)
@click.argument("name")
@with_limit_options
@click.argument("rules", nargs=-1, metavar="[RULE]...")
@pass_settings
def user_set(settings: Settings, name: str, max_connections: int | None, max_rps: int | None,
             rules: tuple[str, ...]) -> None:
    """Apply RULEs to user NAME, in order (as ACL SETUSER); connected clients of NAME follow at once."""
    with open_store(settings) as store:
        user = users_ops.set_user(store, name, list(rules), _given(max_connections), _given(max_rps))
    click.echo(f"user {name}: {_rules_text(user)}")


@user_cmd.command("apply", context_settings=_RULE_ARGS, epilog=_RULES_HELP)
@click.argument("name")
@password_file_option
@with_limit_options
@click.option("--update-password", is_flag=True, help="Set the password of an existing user too.")
@click.argument("rules", nargs=-1, metavar="[RULE]...")
@json_option
@pass_settings
def user_apply(settings: Settings, name: str, password_file: Path, max_connections: int | None,
               max_rps: int | None, update_password: bool, rules: tuple[str, ...], as_json: bool) -> None:
    """Make user NAME exactly RULEs and limits, creating it if missing (for deployment tools: idempotent).

    The password is set when the user is created (or with --update-password); --json says whether
    anything changed.
    """
    with open_store(settings) as store:
        changed = users_ops.apply_user(store, name, password_file, list(rules), max_connections, max_rps,
                                       update_password)
    if as_json:
        emit_json({"name": name, "changed": changed})
    else:
        click.echo(f"user {name}: {'changed' if changed else 'unchanged'}")


@user_cmd.command("passwd")
@click.argument("name")
@password_file_option
@pass_settings
def user_passwd(settings: Settings, name: str, password_file: Path) -> None:
    """Replace user NAME's password (clients already authenticated stay so, as in Redis)."""
    with open_store(settings) as store:
        users_ops.set_password(store, name, password_file)
    click.echo(f"password of user {name} changed")


@user_cmd.command("remove")
@click.argument("name")
@pass_settings
def user_remove(settings: Settings, name: str) -> None:
    """Remove user NAME; its connected clients are disconnected."""
    with open_store(settings) as store:
        users_ops.remove_user(store, name)
    click.echo(f"removed user {name}")


@user_cmd.command("list")
@json_option
@pass_settings
def user_list(settings: Settings, as_json: bool) -> None:
    """The users with their rules and limits (never their password hashes)."""
    with open_store(settings) as store:
        rows = users_ops.list_users(store)
    if as_json:
        emit_json(rows)
    elif not rows:
        click.echo("no users (only 'default', whose password is the proxies' --requirepass)")
    else:
        click.echo(status.table(
            ["USER", "STATE", "MAX CONN", "MAX RPS", "RULES"],
            [[u["name"], "on" if u["enabled"] else "off", u["max_connections"] or "-", u["max_rps"] or "-",
              u["rules"]] for u in rows]))


def _rules_text(user: Any) -> str:
    return " ".join(user.describe().split()[2:3] + user.describe().split()[3 + len(user.passwords):])


# --- moving in ---------------------------------------------------------------------------------------


def _verify_keys(value: str) -> int | None:
    if value == "all":
        return None
    if value.isdigit() and int(value) > 0:
        return int(value)
    raise click.BadParameter(f"{value!r}: give a positive number of keys, or 'all'")


@cli.command("import")
@click.option("--from", "source", metavar="HOST:PORT", help="The standalone Redis to import.")
@click.option("--password", envvar="KVSTORE_SOURCE_PASSWORD", metavar="PASSWORD",
              help="The source's password; env KVSTORE_SOURCE_PASSWORD (prefer it: a command line is visible).")
@click.option("--db", type=click.IntRange(min=0), default=0, show_default=True,
              help="The source's database to import (the cluster has one, database 0).")
@click.option("--cutover", is_flag=True,
              help="Once in sync, pause the source's writes (CLIENT PAUSE WRITE), apply the rest, report, exit.")
@click.option("--pause", type=click.FloatRange(min=1, max=3600), default=30.0, show_default=True,
              help="Seconds the cutover pauses the source's writes, in all: the time to repoint the application.")
@click.option("--verify", is_flag=True,
              help="Compare source and cluster (counts per type, keys with values and TTLs); with --cutover, "
                   "while the source is paused; alone, compare only.")
@click.option("--verify-keys", default="10000", show_default=True, metavar="N|all",
              help="Keys --verify compares one by one: a random sample of N, or all.")
@click.option("--ttl-tolerance", type=click.IntRange(min=0), default=0, show_default=True, metavar="MS",
              help="--verify: largest difference of expire times taken as equal (sources before Redis 7 "
                   "replicate relative TTLs).")
@click.option("--work-dir", type=click.Path(file_okay=False, exists=True, path_type=Path), default=None,
              help="Where the snapshot (an RDB file as big as the source's data) and the spilled stream go "
                   "[default: the temp dir].")
@click.option("--big-key-bytes", type=click.IntRange(min=1024), default=64 << 20, show_default=True,
              help="Keys whose DUMP is larger are rebuilt in chunks instead of one RESTORE.")
@click.option("--disk-snapshot", is_flag=True,
              help="Ask the source to save its snapshot to its own disk first: it starts at once, where a diskless "
                   "snapshot waits the source's repl-diskless-sync-delay (5s by default).")
@click.option("--forget", is_flag=True, help="Drop the recorded import and the groups' markers (keys stay).")
@json_option
@pass_settings
def import_cmd(settings: Settings, source: str | None, password: str | None, db: int, cutover: bool, pause: float,
               verify: bool, verify_keys: str, ttl_tolerance: int, work_dir: Path | None, big_key_bytes: int,
               disk_snapshot: bool, forget: bool, as_json: bool) -> None:
    """Copy a running standalone Redis into the cluster, then follow its writes until --cutover (or Ctrl-C).

    On a terminal, once the cluster has caught up, Enter starts the cutover.

    Every key goes to the group owning its slot, with its TTL, by writing to the groups' masters.
    The import follows the source as a replica (PSYNC): a snapshot (loaded by a scratch
    redis-server), then the stream of writes. Interrupted or crashed, the same command resumes
    without a write lost or applied twice. The cluster must be empty at the first run.
    """
    from kvstore_admin.importing import report
    from kvstore_admin.importing import run as importing

    if forget:
        if source or cutover or verify:
            raise click.UsageError("--forget takes no other option")
        with open_store(settings) as store:
            dropped = importing.forget(store, settings.redis_password)
        click.echo("no import recorded" if dropped is None else
                   f"forgot the import from {dropped.source} (db {dropped.db}); the imported keys stay")
        return
    if not source:
        raise click.UsageError("give the source with --from HOST:PORT")
    try:
        parse_address(source)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--from") from None
    opts = importing.Options(source=source, password=password or None, db=db, cutover=cutover, pause=pause,
                             verify=verify, verify_keys=_verify_keys(verify_keys), ttl_tolerance_ms=ttl_tolerance,
                             work_dir=work_dir, big_key_bytes=big_key_bytes, disk_snapshot=disk_snapshot,
                             cluster_password=settings.redis_password)
    with open_store(settings) as store:
        if verify and not cutover:
            found = importing.run_verify(store, opts).to_json()
            emit_json(found) if as_json else click.echo(report.render_verify(found))
            if not found["ok"]:
                raise SystemExit(DIFFERENT)
            return
        stop = threading.Event()
        with _stop_on_signals(stop):
            progress = Progress() if as_json else Bar()
            interactive = not as_json and sys.stdin.isatty() and sys.stderr.isatty()
            summary = importing.Importer(store, opts, progress, stop, prompt=interactive).run().to_json()
    emit_json(summary) if as_json else click.echo(report.render(summary))
    if summary["exit_code"]:
        raise SystemExit(summary["exit_code"])


@contextlib.contextmanager
def _stop_on_signals(stop: threading.Event) -> Iterator[None]:
    """SIGINT/SIGTERM end a long command cleanly (state saved) instead of killing it."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    for sig in previous:
        signal.signal(sig, lambda *_: stop.set())
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


# --- local cluster -------------------------------------------------------------------------------

dir_option = click.option(
    "--dir", "directory", type=click.Path(file_okay=False, path_type=Path),
    default=lambda: os.environ.get("KVSTORE_LOCAL_DIR", ".kvstore-local"), show_default=".kvstore-local",
    help="State dir (state.json, logs, data); env KVSTORE_LOCAL_DIR.",
)


@cli.group("local", cls=AdminGroup)
def local_cmd() -> None:
    """A whole cluster on this machine, for trying kvstore out and for tests."""


@local_cmd.command("up")
@dir_option
@click.option("--mode", type=click.Choice(["cache", "datastore"]), default="datastore", show_default=True,
              help="datastore keeps your data (replicas, failover); cache drops a failed group's keys.")
@click.option("--groups", "n_groups", type=click.IntRange(min=1), default=3, show_default=True)
@click.option("--replicas", type=click.IntRange(min=0), default=None,
              help="Replicas per group [default: 1 in datastore mode, 0 in cache mode].")
@click.option("--zk", "zk_hosts", default=None, help="Use this ZooKeeper instead of starting one.")
@click.option("--proxy-port", type=click.IntRange(1, 65535), default=None, help="[default: a free port]")
@click.option("--proxy-workers", type=click.IntRange(min=1), default=1, show_default=True)
@click.option("--sentinels", type=click.IntRange(min=0), default=1, show_default=True)
@pass_settings
def local_up(settings: Settings, directory: Path, mode: str, n_groups: int, replicas: int | None,
             zk_hosts: str | None, proxy_port: int | None, proxy_workers: int, sentinels: int) -> None:
    """Start ZooKeeper (unless --zk), redis-servers, the cluster, the proxy and the sentinels."""
    try:
        paths.check_name("cluster", settings.cluster)
    except ValueError as exc:
        raise AdminError(str(exc)) from None
    opts = local.UpOptions(
        directory=directory, cluster=settings.cluster, mode=mode, groups=n_groups, replicas=replicas,
        zk=zk_hosts, zk_timeout=settings.zk_timeout, proxy_port=proxy_port, proxy_workers=proxy_workers,
        sentinels=sentinels,
    )
    state = local.up(opts, click.echo)
    click.echo("\nkvstore local cluster is up")
    for line in local.connect_lines(state):
        click.echo(f"  {line}")


@local_cmd.command("down")
@dir_option
@pass_settings
def local_down(settings: Settings, directory: Path) -> None:
    """Stop exactly the processes 'local up' recorded (logs and data stay under --dir)."""
    stopped = local.down(directory, click.echo, settings.zk_timeout)
    if stopped is None:
        click.echo(f"no local cluster recorded in {directory.resolve()}; nothing to stop")
    else:
        click.echo(f"local cluster down ({len(stopped)} processes stopped)")


@local_cmd.command("status")
@dir_option
@json_option
def local_status(directory: Path, as_json: bool) -> None:
    """Each recorded process, alive or not, and how to connect."""
    found = local.status(directory)
    if found is None:
        raise LocalStateError(f"no local cluster recorded in {directory.resolve()}")
    if as_json:
        emit_json(found)
        return
    click.echo(f"local cluster in {found['dir']}: {found['running']}/{found['recorded']} processes running")
    click.echo(status.table(
        ["NAME", "PID", "PORT", "STATE", "LOG"],
        [[p["name"], p["pid"], p["port"] or "-", "running" if p["alive"] else "DEAD", p["log"]]
         for p in found["processes"]],
    ))
    for line in found["connect"]:
        click.echo(line)


def main() -> None:
    cli(prog_name="kvstore-admin")
