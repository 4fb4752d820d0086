"""The fault table: one row per fault run, printed at the end of the session and by each test."""

from __future__ import annotations

from dataclasses import dataclass, field

from chaos.checker import DIVERGED, LOST, MISPLACED, UNEXPECTED, Report

CHAOS_ROW = "chaos_row"  # the user property a fault test reports its row under

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


    def rendered(self) -> tuple[list[str], list[str]]:
        """The row's cells and its notes: what the session's table needs, sent from a test worker as is."""
        return self.cells(), [f"- {self.fault}: {n}" for n in self.notes]


ROWS: list[Row] = []  # every row of this process, reported with its test (tests/chaos/conftest.py)


def render_table(rows: list[tuple[list[str], list[str]]]) -> str:
    """A Markdown table (readable on a terminal too) of ``Row.rendered()`` rows."""
    table = [list(COLUMNS)] + [cells for cells, _ in rows]
    widths = [max(len(r[i]) for r in table) for i in range(len(COLUMNS))]

    def line(cells: list[str]) -> str:
        return "| " + " | ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True)) + " |"

    out = [line(table[0]), "|" + "|".join("-" * (w + 2) for w in widths) + "|"]
    out += [line(r) for r in table[1:]]
    notes = [n for _, row_notes in rows for n in row_notes]
    return "\n".join(out + ([""] + notes if notes else []))
