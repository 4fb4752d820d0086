"""The text ``import`` prints at the end (``--json`` prints the same as JSON)."""

from __future__ import annotations

from typing import Any

from kvstore_admin.importing.verify import TYPES


def render(summary: dict[str, Any]) -> str:
    lines = [f"import from {summary['source']} (Redis {summary['source_version']}, {summary['role']}, db "
             f"{summary['db']}: {summary['source_keys']:,} keys): {summary['result']}"]
    if summary.get("start"):
        lines.append(f"  start: {summary['start']} ({summary['start_reason']})")
    snap = summary.get("snapshot")
    if snap:
        rate = f", {snap['keys_per_second']:,} keys/s" if snap.get("keys_per_second") else ""
        lines.append(f"  snapshot: {snap['keys']:,} keys ({snap['big_keys']} big) in {snap['seconds']:.1f}s{rate}; "
                     f"{snap['rdb_bytes']:,} bytes received in {snap['receive_seconds']:.1f}s, loaded in "
                     f"{snap['load_seconds']:.1f}s")
        if snap.get("stale_keys_deleted"):
            lines.append(f"  deleted {snap['stale_keys_deleted']:,} keys the source no longer has")
    stream = summary.get("stream") or {}
    if stream:
        lines.append(f"  stream: {stream['commands']:,} commands applied up to offset {stream['applied_offset']:,}"
                     + (f", {stream['skipped_already_applied']:,} already applied before the resume"
                        if stream.get("skipped_already_applied") else ""))
        if stream.get("errors"):
            lines.append(f"  {stream['errors']:,} commands failed on the cluster, e.g. "
                         + "; ".join(stream["error_examples"][:3]))
        for name, n in sorted((stream.get("unsupported") or {}).items()):
            lines.append(f"  skipped {n:,} x {name} (not applicable to the cluster)")
    cut = summary.get("cutover")
    if cut:
        lines.append(f"  cutover: in sync at offset {cut['offset']:,}, {cut['in_sync_seconds']:.2f}s after the "
                     f"pause; the source's writes stay paused for {cut['pause_seconds']:g}s in all")
    if summary.get("verify"):
        lines.append(render_verify(summary["verify"]))
    lines.append(f"  took {summary['seconds']:.1f}s")
    return "\n".join(lines)


def render_verify(v: dict[str, Any]) -> str:
    verdict = "OK, no difference" if v["ok"] else f"{v['differences']:,} DIFFERENCES"
    lines = [f"verify: {verdict} "
             f"({v['keys_compared']:,} keys compared in {v['seconds']:.1f}s"
             + (f", {v['expiring']} expiring ignored" if v.get("expiring") else "") + ")"]
    counts = ", ".join(f"{t} {v['counts_source'].get(t, 0):,}"
                       + ("" if v['counts_source'].get(t) == v['counts_cluster'].get(t)
                          else f" (cluster {v['counts_cluster'].get(t, 0):,})") for t in TYPES)
    lines.append(f"  keys per type: {counts}")
    for d in v["examples"]:
        lines.append(f"  {d['what']}: {d['key']!r}: source {d['source']}; cluster {d['cluster']}")
    if v.get("note"):
        lines.append(f"  note: {v['note']}")
    return "\n".join(lines)
