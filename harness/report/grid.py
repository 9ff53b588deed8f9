"""The report's grid: rows backend x level, columns arch x gate, each cell
holding its records over every seed.

The verdict matrix and the oracle_dev heatmap draw it (``figures``); here
are the model, the category a cell's records fall into (its colour in the
verdict matrix) and the text written in it.  Rows whose cells a framework
lacks (all ``unsupported``) are left out and named once instead.
"""
from __future__ import annotations

from dataclasses import dataclass

from harness.analysis import went_wrong
from harness.records import Record, Status
from harness.registry import cell_order
from harness.tasks import ARCHS, GATES, NOT_LINEARLY_SEPARABLE

CATEGORIES = {  # name: (colour, meaning)
    "agree": ("#a5d6a7", "ok, agrees with the oracle"),
    "finding": ("#ffb74d", "agrees, but learned single-layer xor/xnor"),
    "disagree": ("#e53935", "disagrees with the oracle"),
    "failed": ("#6a1b9a", "error or other failure"),
    "skipped": ("#fff59d", "skipped: framework not usable"),
    "unsupported": ("#e0e0e0", "unsupported: the framework lacks the level"),
}
DARK = {"disagree", "failed"}


@dataclass
class Grid:
    rows: list[tuple[str, str]]
    cols: list[tuple[str, str]]
    cells: dict[tuple[str, str, str, str], list[Record]]
    # Rows left out because the backend lacks the level: (backend, level, reason).
    hidden: list[tuple[str, str, str]]

    @classmethod
    def of(cls, records: list[Record]) -> "Grid":
        cells: dict = {}
        by_row: dict = {}
        for r in sorted(records, key=cell_order):
            cells.setdefault((r.backend, r.level, r.arch, r.gate), []).append(r)
            by_row.setdefault((r.backend, r.level), []).append(r)
        rows = list(by_row)
        hidden = [(*row, by_row[row][0].message) for row in rows
                  if all(r.status == Status.UNSUPPORTED for r in by_row[row])]
        rows = [row for row in rows if (*row, by_row[row][0].message) not in hidden]
        cols = sorted({(r.arch, r.gate) for r in records},
                      key=lambda k: (ARCHS.index(k[0]), list(GATES).index(k[1])))
        return cls(rows, cols, cells, hidden)

    def get(self, row, col) -> list[Record]:
        return self.cells.get((*row, *col), [])


def category(recs: list[Record]) -> str | None:
    if not recs:
        return None
    ok = [r for r in recs if r.status == Status.OK]
    if any(map(went_wrong, recs)):
        return "failed"
    if any(r.agrees is False for r in ok):
        return "disagree"
    if any(r.learned and r.arch == "single" and r.gate in NOT_LINEARLY_SEPARABLE for r in ok):
        return "finding"
    if ok:
        return "agree"
    return "skipped" if any(r.status == Status.SKIPPED for r in recs) else "unsupported"


def cell_text(recs: list[Record], cat: str) -> str:
    if cat in ("skipped", "unsupported"):
        return "skip" if cat == "skipped" else "n/a"
    if cat == "failed":
        bad = [r.status for r in recs if went_wrong(r)]
        return f"{bad[0]}" + (f" x{len(bad)}" if len(bad) > 1 else "")
    ok = [r for r in recs if r.status == Status.OK]
    return f"{sum(bool(r.learned) for r in ok)}/{len(ok)}"


def hidden_note(grid: Grid) -> str:
    if not grid.hidden:
        return ""
    return (" Not shown (the framework lacks the level): "
            + ", ".join(f"{b} {lv}" for b, lv, _ in grid.hidden) + ".")
