"""The INFO sections and MEMORY STATS of the groups' masters combined into the figures of one server.

Counters and byte counts add up; flags, timestamps and durations take the worst (an in-progress
save anywhere is a save in progress, LASTSAVE is the oldest); ratios, percentages and the
``*_human`` forms are computed again from the sums, as Redis computes them from its own figures.
Pure functions over parsed replies, so they are tested without servers.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

# --- reading Redis's INFO text ---------------------------------------------------------------------


def parse_info(text: str) -> dict[str, dict[str, str]]:
    """``{section: {field: value}}`` (section names lowercased, fields in Redis's order)."""
    sections: dict[str, dict[str, str]] = {}
    current: dict[str, str] = sections.setdefault("", {})
    for line in text.splitlines():
        if line.startswith("# "):
            current = sections.setdefault(line[2:].strip().lower(), {})
        elif line and not line.startswith("#"):
            field, sep, value = line.partition(":")
            if sep:
                current[field] = value
    sections.pop("", None)
    return sections


def parse_pairs(value: str) -> dict[str, str]:
    """``keys=1,expires=0,avg_ttl=0`` -> a dict."""
    out = {}
    for part in value.split(","):
        k, _, v = part.partition("=")
        out[k] = v
    return out


def _number(value: str) -> int | float | None:
    try:
        return int(value)
    except ValueError:
        pass
    try:
        return float(value)
    except ValueError:
        return None


def human(n: float) -> str:
    """Redis's bytesToHuman (server.c): ``919.30K``, ``6.21M``, ``512B``."""
    n = int(n)
    for unit, scale in (("B", 1), ("K", 1 << 10), ("M", 1 << 20), ("G", 1 << 30), ("T", 1 << 40), ("P", 1 << 50)):
        if n < scale << 10:
            return f"{n}B" if unit == "B" else f"{n / scale:.2f}{unit}"
    return f"{n}B"


def _ratio(a: float, b: float) -> str:
    return f"{a / b:.2f}" if b else "0.00"


def _perc(a: float, b: float) -> str:
    return f"{a * 100 / b:.2f}%" if b else "0.00%"


# --- how each field combines --------------------------------------------------------------------------

SUM, MIN, MAX, ALL_OK, SAME = "sum", "min", "max", "all_ok", "same"

_RULES: dict[str, dict[str, str]] = {
    "memory": {
        "maxmemory": "maxmemory", "total_system_memory": "per_host", "active_defrag_running": MAX,
        "mem_allocator": SAME, "maxmemory_policy": SAME,
    },
    "persistence": {
        **dict.fromkeys(["loading", "async_loading", "rdb_bgsave_in_progress", "aof_enabled",
                         "aof_rewrite_in_progress", "aof_rewrite_scheduled", "module_fork_in_progress",
                         "current_cow_size_age", "current_fork_perc", "rdb_last_bgsave_time_sec",
                         "rdb_current_bgsave_time_sec", "aof_last_rewrite_time_sec",
                         "aof_current_rewrite_time_sec", "aof_rewrites_consecutive_failures",
                         "aof_delayed_fsync", "loading_eta_seconds", "loading_loaded_perc",
                         "loading_start_time"], MAX),
        "rdb_last_save_time": MIN,
        **dict.fromkeys(["rdb_last_bgsave_status", "aof_last_bgrewrite_status", "aof_last_write_status"], ALL_OK),
    },
    "stats": dict.fromkeys(["expired_stale_perc", "latest_fork_usec", "current_eviction_exceeded_time",
                            "current_active_defrag_time"], MAX),
}

# Fields computed again from the combined ones: name -> (function of the combined fields).
_Derived = Callable[[dict[str, float]], str]
_DERIVED: dict[str, dict[str, _Derived]] = {
    "memory": {
        "used_memory_peak_perc": lambda f: _perc(f["used_memory"], f["used_memory_peak"]),
        "used_memory_dataset_perc": lambda f: _perc(f["used_memory_dataset"],
                                                    f["used_memory"] - f["used_memory_startup"]),
        "allocator_frag_ratio": lambda f: _ratio(f["allocator_active"], f["allocator_allocated"]),
        "allocator_rss_ratio": lambda f: _ratio(f["allocator_resident"], f["allocator_active"]),
        "rss_overhead_ratio": lambda f: _ratio(f["used_memory_rss"], f["allocator_resident"]),
        # Redis divides the RSS by what its allocator counts as used: RSS minus the fragmentation bytes.
        "mem_fragmentation_ratio": lambda f: _ratio(f["used_memory_rss"],
                                                    f["used_memory_rss"] - f["mem_fragmentation_bytes"]),
    },
}


def _combine(rule: str, values: list[str], hosts: list[str]) -> str:
    if rule == SAME:
        # One value or "mixed": a list (a,b) would be read as several values by INFO parsers.
        return values[0] if len(set(values)) == 1 else "mixed"
    if rule == ALL_OK:
        return "ok" if all(v == "ok" for v in values) else "err"
    parsed = [_number(v) for v in values]
    nums = [n for n in parsed if n is not None]
    if len(nums) != len(values):
        return _combine(SAME, values, hosts)
    total: float
    if rule == "maxmemory":  # one group without a limit: the whole has none
        total = 0 if 0 in nums else sum(nums)
    elif rule == "per_host":  # groups sharing a machine share its memory
        total = sum(dict(zip(hosts, nums, strict=True)).values())
    elif rule == MIN:
        total = min(nums)
    elif rule == MAX:
        total = max(nums)
    else:
        total = sum(nums)
    return f"{total:.2f}" if any("." in v for v in values) else str(int(total))


def merge_section(section: str, parts: list[dict[str, str]], hosts: list[str]) -> dict[str, str]:
    """One section of several masters' INFO as one server's: ``parts[i]`` came from ``hosts[i]``.

    Fields keep the order of the first part that has them (Redis's order); a field some masters
    lack (another Redis version, an AOF-only field) combines the masters that have it.
    """
    rules = _RULES.get(section, {})
    order: list[str] = []
    seen: set[str] = set()
    for part in parts:
        for field in part:
            if field not in seen:
                seen.add(field)
                order.append(field)
    out: dict[str, str] = {}
    for field in order:
        having = [(p[field], h) for p, h in zip(parts, hosts, strict=True) if field in p]
        out[field] = _combine(rules.get(field, SUM), [v for v, _ in having], [h for _, h in having])
    numbers = {k: float(n) for k, v in out.items() if (n := _number(v)) is not None}
    for field, derive in _DERIVED.get(section, {}).items():
        if field in out:
            try:
                out[field] = derive(numbers)
            except KeyError:  # a master too old to report what it is made of: keep the combination
                pass
    for field in out:
        if field.endswith("_human") and field[: -len("_human")] in numbers:
            out[field] = human(numbers[field[: -len("_human")]])
    return out


def merge_keyspace(parts: list[dict[str, str]], db: str = "db0") -> dict[str, str]:
    """``db0:keys=...,expires=...,avg_ttl=...`` summed; the average TTL weighted by the keys that expire.

    Only ``db`` counts: the proxy serves database 0, whatever else a master holds. No line at all
    when there are no keys, as Redis prints none for an empty database.
    """
    keys = expires = weighted = 0
    for part in parts:
        if db not in part:
            continue
        f = parse_pairs(part[db])
        k, e, t = int(f.get("keys", 0)), int(f.get("expires", 0)), int(f.get("avg_ttl", 0))
        keys += k
        expires += e
        weighted += t * e
    if not keys:
        return {}
    return {db: f"keys={keys},expires={expires},avg_ttl={weighted // expires if expires else 0}"}


# --- MEMORY STATS -------------------------------------------------------------------------------------


def _pairs(value: Any) -> list[tuple[str, Any]]:
    """A reply map (RESP3: a dict; RESP2: a flat array) as (name, value) pairs with str names."""
    items: Iterable[Any] = value.items() if isinstance(value, dict) else zip(value[::2], value[1::2], strict=True)
    return [(k.decode() if isinstance(k, bytes) else str(k), v) for k, v in items]


def _as_number(v: Any) -> int | float:
    if isinstance(v, int | float):
        return v
    n = _number(v.decode() if isinstance(v, bytes) else str(v))
    if n is None:
        raise ValueError(f"MEMORY STATS value {v!r} is not a number")
    return n


def merge_memory_stats(replies: list[Any]) -> list[tuple[str, int | float | list[tuple[str, int]]]]:
    """MEMORY STATS of every master as one: bytes and counts summed, ``db.N`` maps summed field by
    field, ratios and percentages computed again from the sums (memory.c's definitions)."""
    order: list[str] = []
    sums: dict[str, Any] = {}
    for reply in replies:
        for name, value in _pairs(reply):
            if name not in sums:
                order.append(name)
                sums[name] = {} if name.startswith("db.") else 0
            if name.startswith("db."):
                for k, v in _pairs(value):
                    sums[name][k] = sums[name].get(k, 0) + int(_as_number(v))
            else:
                sums[name] += _as_number(value)
    s = sums
    get = s.get
    net = get("total.allocated", 0) - get("startup.allocated", 0)
    rss = get("allocator.resident", 0) + get("rss-overhead.bytes", 0)
    derived = {
        "keys.bytes-per-key": (net // s["keys.count"]) if get("keys.count") else 0,
        "dataset.percentage": get("dataset.bytes", 0) * 100 / net if net > 0 else 0.0,
        "peak.percentage": get("total.allocated", 0) * 100 / s["peak.allocated"] if get("peak.allocated") else 0.0,
        "allocator-fragmentation.ratio": _div(get("allocator.active", 0), get("allocator.allocated", 0)),
        "allocator-rss.ratio": _div(get("allocator.resident", 0), get("allocator.active", 0)),
        "rss-overhead.ratio": _div(rss, get("allocator.resident", 0)),
        "fragmentation": _div(rss, rss - get("fragmentation.bytes", 0)),
    }
    out: list[tuple[str, Any]] = []
    for name in order:
        value = derived.get(name, s[name])
        out.append((name, list(value.items()) if name.startswith("db.") else value))
    return out


def _div(a: float, b: float) -> float:
    return a / b if b else 0.0
