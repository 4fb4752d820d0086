"""The PNG: grouped bars of median ops/s per test, one panel per pipeline depth, ratio on top."""

from __future__ import annotations

import textwrap
from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402 - the backend must be chosen first
from matplotlib.ticker import FuncFormatter  # noqa: E402

from bench.report import TARGETS, Row, fmt_ratio, ops_target  # noqa: E402

COLORS = {"direct": "#9e9e9e", "nutcracker": "#f28e2b", "kvstore": "#4e79a7", "kvstore2": "#a0cbe8",
          "kvstore-tls": "#76b7b2", "base": "#bab0ac", "rules": "#59a14f"}
LABELS = {"direct": "direct Redis (one backend)", "nutcracker": "nutcracker (twemproxy)",
          "kvstore": "kvstore-proxy (1 worker)", "kvstore2": "kvstore-proxy (2 workers)",
          "kvstore-tls": "kvstore-proxy (1 worker) over TLS", "base": "kvstore-proxy, baseline commit",
          "rules": "kvstore-proxy with key rules"}


def _kops(v: float, _pos: object) -> str:
    return f"{v / 1000:,.0f}k"


def draw(rows: Sequence[Row], path: Path, title: str, subtitle: str) -> None:
    pipelines = sorted({r.pipeline for r in rows})
    targets = [t for t in TARGETS if any(r.ops.get(t) is not None for r in rows)]
    fig, axes = plt.subplots(len(pipelines), 1, figsize=(12, 4.2 * len(pipelines) + 0.8), squeeze=False)
    width = 0.8 / max(1, len(targets))
    for ax, pipeline in zip(axes[:, 0], pipelines, strict=True):
        prow = [r for r in rows if r.pipeline == pipeline]
        xs = range(len(prow))
        top = max(max(r.rounds_ops.get(t) or [0]) for r in prow for t in targets) or 1
        for i, t in enumerate(targets):
            vals = [r.ops.get(t) or 0 for r in prow]
            # whiskers: the slowest and the fastest round, so the noise is visible
            lo = [v - min(r.rounds_ops.get(t) or [v]) for v, r in zip(vals, prow, strict=True)]
            hi = [max(r.rounds_ops.get(t) or [v]) - v for v, r in zip(vals, prow, strict=True)]
            ax.bar([x + (i - (len(targets) - 1) / 2) * width for x in xs], vals, width,
                   color=COLORS[t], label=LABELS[t], yerr=[lo, hi],
                   error_kw={"elinewidth": 0.8, "capsize": 2, "ecolor": "#333333", "alpha": 0.6})
        for x, r in zip(xs, prow, strict=True):
            if r.ops_ratio is None:
                continue
            peak = max(max(r.rounds_ops.get(t) or [0]) for t in targets)
            color = "#1b7837" if r.ops_ratio >= ops_target(r.test) else "#b2182b"
            ax.annotate(f"kv/nc {fmt_ratio(r.ops_ratio)}", (x, peak + top * 0.02), ha="center",
                        va="bottom", fontsize=9, color=color, fontweight="bold")
        ax.set_xticks(list(xs), [r.test for r in prow])
        ax.set_ylim(0, top * 1.15)
        ax.yaxis.set_major_formatter(FuncFormatter(_kops))
        ax.set_ylabel("ops/s (median; whiskers: min–max of rounds)")
        ax.set_title(f"pipeline {pipeline}", loc="left", fontsize=11)
        ax.grid(axis="y", alpha=0.3)
        ax.set_axisbelow(True)
    handles, labels = axes[0, 0].get_legend_handles_labels()
    fig.suptitle(title, fontsize=13, x=0.01, ha="left")
    fig.legend(handles, labels, loc="upper right", fontsize=9, ncols=len(targets), frameon=False,
               bbox_to_anchor=(0.995, 0.965))
    fig.text(0.01, 0.005, textwrap.fill(subtitle, 190), fontsize=8, color="#555555", ha="left", va="bottom")
    fig.tight_layout(rect=(0, 0.045, 1, 0.95))
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
