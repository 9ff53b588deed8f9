"""The compact table printed at the end of a run: backend x level counts.

`diverged` and `timeout` columns appear when some cell has that status; a
`not-identical` column, and one line per backend, when --repeat found cells
whose runs were not bit-identical.
"""
from __future__ import annotations

from collections import Counter

from harness import registry
from harness.records import Record, Status
from harness.tasks import LEVELS

ALWAYS = ("ok", "unsupported", "skipped", "error")


def counts(records: list[Record]) -> dict[tuple[str, str], Counter]:
    table: dict[tuple[str, str], Counter] = {}
    for rec in records:
        c = table.setdefault((rec.backend, rec.level), Counter())
        c[rec.status] += 1
        c["learned"] += bool(rec.learned)
        c["not-identical"] += bool(rec.repeat_mismatch)
        c["cells"] += 1
    return table


def summary_table(records: list[Record]) -> str:
    table = counts(records)
    order = list(registry.BACKENDS)
    keys = sorted(table, key=lambda k: (order.index(k[0]) if k[0] in order else len(order),
                                        LEVELS.index(k[1]) if k[1] in LEVELS else len(LEVELS)))
    total = Counter()
    for c in table.values():
        total.update(c)
    statuses = [s for s in Status if s in ALWAYS or total[s]]
    statuses += sorted(s for s in total if s not in set(Status) and s not in
                       ("learned", "cells", "not-identical"))
    cols = ["cells", "ok", "learned", *statuses[1:]]
    if total["not-identical"]:
        cols.append("not-identical")
    header = ["backend", "level", *cols]
    # A level a framework lacks fills whole rows with `unsupported`; those
    # rows are named once below the table instead of drowning the real ones.
    lacking = [k for k in keys if table[k]["unsupported"] == table[k]["cells"]]
    rows = [[b, lv, *(str(table[(b, lv)][c]) for c in cols)] for b, lv in keys if (b, lv) not in lacking]
    rows.append(["total", "", *(str(total[c]) for c in cols)])
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]

    def fmt(r):
        return "  ".join(v.ljust(w) if i < 2 else v.rjust(w) for i, (v, w) in enumerate(zip(r, widths)))

    lines = [fmt(header), fmt(["-" * w for w in widths]), *map(fmt, rows[:-1]),
             fmt(["-" * w for w in widths]), fmt(rows[-1])]
    return "\n".join(lines + unsupported_rows(lacking) + nondeterminism(records))


def unsupported_rows(lacking: list[tuple[str, str]]) -> list[str]:
    """One line naming every (backend, level) whose cells are all unsupported."""
    if not lacking:
        return []
    by_level: dict[str, list[str]] = {}
    for backend, level in lacking:
        by_level.setdefault(level, []).append(backend)
    groups: dict[tuple[str, ...], list[str]] = {}
    for level, backends in by_level.items():
        groups.setdefault(tuple(backends), []).append(level)
    parts = [f"{', '.join(levels)} on {', '.join(backends)}" for backends, levels in groups.items()]
    return [f"unsupported, not shown (reasons in each record's message): {'; '.join(parts)}"]


def nondeterminism(records: list[Record]) -> list[str]:
    """Per backend: how many repeated cells were not bit-identical, and the first."""
    lines = []
    for backend in dict.fromkeys(r.backend for r in records):
        repeated = [r for r in records if r.backend == backend and r.repeat_mismatch is not None]
        differing = [r for r in repeated if r.repeat_mismatch]
        if differing:
            r = differing[0]
            lines.append(f"not bit-identical across repeats: {backend} {len(differing)} of "
                         f"{len(repeated)} cells (e.g. {r.level}/{r.arch}/{r.gate}/seed {r.seed}: "
                         f"{', '.join(r.repeat_mismatch)})")
    return lines
