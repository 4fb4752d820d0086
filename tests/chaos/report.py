"""The fault table: one row per fault run, printed at the end of the session and by each test."""

from __future__ import annotations

from dataclasses import dataclass, field

from chaos.checker import DIVERGED, LOST, MISPLACED, UNEXPECTED, Report

COLUMNS = ("fault", "mode", "rounds", "ok", "failed", "unknown", "lost", "unexpected", "misplaced", "diverged",
           "seconds", "verdict")


@dataclass
class Row:
    fault: str
    mode: str
    rounds: int
    report: Report
    seconds: float
    verdict: str
    notes: list[str] = field(default_factory=list)

    def cells(self) -> list[str]:
        r = self.report
        lost = str(r.total(LOST))
        return [self.fault, self.mode, str(self.rounds), str(r.counts.get("ok", 0)), str(r.counts.get("failed", 0)),
                str(r.counts.get("unknown", 0)), lost, str(r.total(UNEXPECTED)), str(r.total(MISPLACED)),
                str(r.total(DIVERGED)), f"{self.seconds:.0f}", self.verdict]


ROWS: list[Row] = []  # every row of this session, for pytest_terminal_summary


def render_table(rows: list[Row]) -> str:
    """A Markdown table (readable on a terminal too)."""
    table = [list(COLUMNS)] + [row.cells() for row in rows]
    widths = [max(len(r[i]) for r in table) for i in range(len(COLUMNS))]

    def line(cells: list[str]) -> str:
        return "| " + " | ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True)) + " |"

    out = [line(table[0]), "|" + "|".join("-" * (w + 2) for w in widths) + "|"]
    out += [line(r) for r in table[1:]]
    notes = [f"- {row.fault}: {n}" for row in rows for n in row.notes]
    return "\n".join(out + ([""] + notes if notes else []))
