"""The compact table printed at the end of a run: backend x level counts."""
from __future__ import annotations

from collections import Counter

from harness import registry
from harness.results import STATUSES, Record
from harness.tasks import LEVELS


def counts(records: list[Record]) -> dict[tuple[str, str], Counter]:
    table: dict[tuple[str, str], Counter] = {}
    for rec in records:
        c = table.setdefault((rec.backend, rec.level), Counter())
        c[rec.status] += 1
        c["learned"] += bool(rec.learned)
        c["cells"] += 1
    return table


def summary_table(records: list[Record]) -> str:
    table = counts(records)
    order = list(registry.BACKENDS)
    keys = sorted(table, key=lambda k: (order.index(k[0]) if k[0] in order else len(order),
                                        LEVELS.index(k[1]) if k[1] in LEVELS else len(LEVELS)))
    extra = sorted({s for c in table.values() for s in c} - set(STATUSES) - {"learned", "cells"})
    cols = ["cells", "ok", "learned", "unsupported", "skipped", "error", *extra]
    header = ["backend", "level", *cols]
    rows = [[b, lv, *(str(table[(b, lv)][c]) for c in cols)] for b, lv in keys]
    total = Counter()
    for c in table.values():
        total.update(c)
    rows.append(["total", "", *(str(total[c]) for c in cols)])
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]

    def fmt(r):
        return "  ".join(v.ljust(w) if i < 2 else v.rjust(w) for i, (v, w) in enumerate(zip(r, widths)))

    lines = [fmt(header), fmt(["-" * w for w in widths]), *map(fmt, rows[:-1]),
             fmt(["-" * w for w in widths]), fmt(rows[-1])]
    return "\n".join(lines)
