"""Write docs/commands.md and README.md's supported-commands list from kvstore_proxy.commands.

Usage: .venv/bin/python tools/gen_readme_commands.py [--output docs/commands.md] [--stdout]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from kvstore_proxy.commands import FORWARD_ANY, REDIS_VERSION, CommandSpec, Kind, all_specs  # noqa: E402

DEFAULT_OUTPUT = ROOT / "docs" / "commands.md"

_SECTIONS = {
    Kind.KEYED: (
        "Single-key commands",
        "Routed to the group that owns the slot of their key.",
    ),
    Kind.MULTI: (
        "Multi-key commands split across groups",
        "Split by group, sent in parallel, and the replies merged: MGET keeps request order, "
        "MSET answers +OK when every part did, the others add up the integers.",
    ),
    Kind.SAME_SLOT: (
        "Multi-key commands whose keys must share a slot",
        "Forwarded whole when every key hashes to the same slot (use `{hash tags}`, or key rules: "
        "`kvstore-admin keyrule`), refused with `-CROSSSLOT` otherwise. EVAL, EVALSHA and FCALL (and "
        "their _RO forms) with no key run on the group owning the slot of the `keyless-tag` option "
        "(default: slot 0). Every script seen is kept cluster-wide: EVALSHA works on every group, "
        "groups added later and new masters included. See [design](design.md#script-and-function-registry).",
    ),
    Kind.BLOCKING: (
        "Blocking commands",
        "Keys in one slot. Each waiting client has a backend connection of its own (leased from a pool); "
        "timeouts are Redis's own (0 waits forever) and `--timeout` never cuts them short. When the slot "
        "moves or its group fails over, the client is unblocked there and blocked again where the slot "
        "is served, with the time it has left. XREAD and XREADGROUP without BLOCK are plain same-slot "
        "commands. See [contracts](contracts.md#blocking-commands).",
    ),
    Kind.TRANSACTION: (
        "Transactions",
        "MULTI/EXEC with Redis's replies and errors; every key, WATCHed keys included, in one slot "
        "(`-CROSSSLOT` when queued, then `-EXECABORT`), run atomically on the slot's master. The cluster "
        "option `transactions per-group` lets a transaction without WATCH span groups (one MULTI/EXEC per "
        "group). See [contracts](contracts.md#transactions).",
    ),
    Kind.PUBSUB: (
        "Pub/sub",
        "Channels live in the group of their slot (keyspace notifications with their key); patterns and "
        "`__keyevent@*` channels on every group. A message published through any proxy reaches each "
        "subscriber once. See [contracts](contracts.md#pubsub).",
    ),
    Kind.PROXY: (
        "Commands the proxy answers itself",
        "Answered by the proxy, or fanned out to every group and combined (DBSIZE, KEYS, SCAN, FLUSHDB, "
        "FLUSHALL, SCRIPT LOAD/EXISTS/FLUSH/KILL). HELP subcommands are passed to any group. INFO, MONITOR and "
        "LATENCY answer for the whole proxy, all its workers; INFO's memory, persistence and keyspace "
        "figures, MEMORY STATS/DOCTOR and LASTSAVE (the oldest) combine every group's master. FUNCTION "
        "LOAD/DELETE/FLUSH/RESTORE act on every group and on the cluster's registry (a group added later "
        "gets every library); FUNCTION LIST/DUMP/STATS are answered by one group, the libraries being the "
        "same everywhere. CONFIG GET asks every group's master (a value that differs between groups is "
        "logged, and flagged by `kvstore-admin check`); CONFIG SET sets data-path tunables (encodings, "
        "eviction, keyspace notifications, lazy freeing, slow log, hz...) on every node of every group and "
        "keeps them for nodes added later, and refuses with the reason any parameter that would break the "
        "cluster (addresses, files, replication, passwords, persistence); CONFIG RESETSTAT and REWRITE "
        "reach every node. CLIENT KILL (ID, ADDR, LADDR, USER, TYPE, SKIPME filters and the legacy "
        "form), CLIENT REPLY ON/OFF/SKIP, CLIENT NO-EVICT and CLIENT UNPAUSE act on the proxy's own "
        "clients, those of the worker the client is connected to.",
    ),
    Kind.REFUSED: (
        "Refused commands",
        "Answered with one error, `-ERR <reason>`; the connection stays usable.",
    ),
}

_MERGE_TEXT = {"ORDERED": "values in request order", "OK": "+OK if all OK", "SUM": "sum of integers"}


def _anchor(title: str) -> str:
    """GitHub's anchor for a heading: lowercase, spaces to dashes, punctuation dropped."""
    return "".join(c for c in title.lower().replace(" ", "-") if c.isalnum() or c == "-")


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


README = ROOT / "README.md"
README_START = "<!-- commands:start (tools/gen_readme_commands.py) -->"
README_END = "<!-- commands:end -->"


def _rows() -> tuple[dict[Kind, list[CommandSpec]], set[str], dict[Kind, int]]:
    data = json.loads((ROOT / "kvstore_proxy" / "command_data.json").read_text())["commands"]
    containers = {name for name, entry in data.items() if "subcommands" in entry}
    specs = {s.name.decode(): s for s in all_specs()}
    # A container refused whole is one row; otherwise each subcommand is listed in its own section.
    refused_whole = {
        c for c in containers if all(specs[s].kind is Kind.REFUSED for s in data[c]["subcommands"])
    }
    rows: dict[Kind, list[CommandSpec]] = {kind: [] for kind in Kind}
    for name, spec in specs.items():
        if name in containers and name not in refused_whole and name != "command":
            continue
        if "|" in name and name.split("|", 1)[0] in refused_whole:
            continue
        rows[spec.kind].append(spec)

    # Counted like Redis's COMMAND COUNT would if it listed subcommands: containers aren't commands.
    counted = [s for name, s in specs.items() if name not in containers or name == "command"]
    counts = {kind: sum(1 for s in counted if s.kind is kind) for kind in Kind}
    return rows, refused_whole, counts


def render() -> str:
    """The whole of docs/commands.md."""
    rows, refused_whole, counts = _rows()
    out = [
        "# Commands supported by kvstore-proxy",
        "",
        f"<!-- Generated by tools/gen_readme_commands.py from the Redis {REDIS_VERSION} command table; "
        "do not edit. -->",
        "",
        f"Every command of Redis {REDIS_VERSION} has one of {len(_SECTIONS)} treatments "
        f"({sum(counts.values())} commands and subcommands in all):",
        "",
    ]
    for kind in _SECTIONS:
        title, _ = _SECTIONS[kind]
        out.append(f"- [{title}](#{_anchor(title)}): {counts[kind]}")
    for kind in _SECTIONS:
        title, text = _SECTIONS[kind]
        out += ["", f"## {title}", "", text, ""]
        if kind is Kind.MULTI:
            out += ["| Command | Merge | Summary |", "|---|---|---|"]
        elif kind is Kind.REFUSED:
            out += ["| Command | Error |", "|---|---|"]
        else:
            out += ["| Command | Summary |", "|---|---|"]
        for spec in rows[kind]:
            name = f"`{spec.display_name}`"
            if spec.name.decode() in refused_whole:
                name = f"`{spec.display_name}` (all subcommands)"
            if kind is Kind.MULTI:
                assert spec.merge is not None
                out.append(f"| {name} | {_MERGE_TEXT[spec.merge.name]} | {_cell(spec.summary)} |")
            elif kind is Kind.REFUSED:
                out.append(f"| {name} | {_cell(spec.reason)} |")
            else:
                note = " (passed to any group)" if spec.name in FORWARD_ANY else ""
                out.append(f"| {name} | {_cell(spec.summary)}{note} |")
    return "\n".join(out) + "\n"


def render_readme_block() -> str:
    """The README's compact list: every command name, by treatment, between the markers."""
    rows, refused_whole, counts = _rows()
    out = [README_START, ""]
    for kind in _SECTIONS:
        title, _ = _SECTIONS[kind]
        names = ", ".join(
            f"{spec.display_name}{' *' if spec.name.decode() in refused_whole else ''}" for spec in rows[kind]
        )
        out += [f"**{title}** ({counts[kind]}, [details](docs/commands.md#{_anchor(title)})): {names}", ""]
    out += ["`*` all subcommands.", "", README_END]
    return "\n".join(out)


def readme_with_block(readme: str) -> str:
    start, end = readme.index(README_START), readme.index(README_END) + len(README_END)
    return readme[:start] + render_readme_block() + readme[end:]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT)
    parser.add_argument("--stdout", action="store_true", help="print instead of writing the file")
    args = parser.parse_args(argv)
    text = render()
    if args.stdout:
        sys.stdout.write(text)
    else:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(text)
        README.write_text(readme_with_block(README.read_text()))
        print(f"wrote {args.output} and the command list in {README}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
