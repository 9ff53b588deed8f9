"""Check a run folder: every ok cell against the numpy reference.

float64 cells are compared with the numpy ``raw`` record of the same cell in
the run (run numpy too); float32 cells with ``float64_reference`` (numpy in
float64 from the cell's own float32 start).  Tolerances come from
harness.compare.  Prints one line per cell outside tolerance, a count per
status, and the worst deviation per backend and level; exits 1 when any ok
cell is outside tolerance or has no reference.

    PYTHONPATH=. .venv/bin/python scripts/check_agreement.py results/<run>
"""
from __future__ import annotations

import dataclasses
import sys
from collections import Counter, defaultdict

from harness.compare import float64_reference, relative_deviation, tolerance
from harness.results import load_run


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print(__doc__.strip().splitlines()[-1], file=sys.stderr)
        return 2
    _, records = load_run(argv[0])
    reference = {dataclasses.replace(r.cell, backend="numpy", level="raw"): r
                 for r in records if r.backend == "numpy" and r.level == "raw" and r.status == "ok"}
    statuses = Counter(r.status for r in records)
    worst: dict[tuple[str, str], float] = defaultdict(float)
    bad = 0
    for rec in records:
        if rec.status != "ok" or rec.level.startswith("perceptron"):
            continue
        cell = rec.cell
        if cell.dtype == "float64":
            ref = reference.get(dataclasses.replace(cell, backend="numpy", level="raw"))
            if ref is None:
                print(f"no numpy raw record for {cell}")
                bad += 1
                continue
            ref_params = ref.params_final
        else:
            ref_params = float64_reference(cell).params_final
        dev = relative_deviation(rec.params_final, ref_params)
        worst[(rec.backend, rec.level)] = max(worst[(rec.backend, rec.level)], dev)
        if dev > tolerance(cell.dtype, cell.epochs):
            bad += 1
            print(f"OUTSIDE {tolerance(cell.dtype, cell.epochs):.0e}: {rec.backend} {rec.level} "
                  f"{rec.arch} {rec.gate} seed {rec.seed} {rec.dtype} init {rec.init}: {dev:.2e}")
    others = Counter((r.status, r.backend, r.level, r.message) for r in records if r.status != "ok")
    for (status, backend, level, message), n in others.items():
        print(f"{n:>4} {status}: {backend} {level}: {message}")
    print(f"statuses: {dict(statuses)}")
    for (backend, level), dev in worst.items():
        print(f"  {backend:<11} {level:<10} worst deviation {dev:.2e}")
    print(f"{bad} ok cell(s) outside tolerance" if bad else "every ok cell within tolerance")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
