"""Measure float32 round-off: the numbers behind harness.compare.FLOAT32_TOLERANCES.

Reads float32 run folders and compares every ok cell with the oracle's
float64 trajectory from the cell's own float32 start (harness.oracle):
final parameters with ``relative_deviation``, the loss curve (and final
loss) with ``curve_deviation``.  Prints the worst of each per backend, level
and arch, then per optimizer family and number of updates with the bound
it would need at the margin, next to the table's.  The table's measurement:

    harness run --dtype float32 --seeds 0-4 --out /tmp/f32
    harness run --dtype float32 --seeds 0-4 --epochs 10000 --backends numpy,torch \\
        --levels raw,optimizer --out /tmp/f32-10k
    PYTHONPATH=. .venv/bin/python scripts/calibrate_float32.py /tmp/f32 /tmp/f32-10k

and for the other families (issue 9), per family F:

    harness run --dtype float32 --seeds 0-4 --optimizer F --levels raw,optimizer \\
        --out /tmp/f32-F
"""
from __future__ import annotations

import argparse
import math
import sys
from collections import defaultdict

from harness import oracle
from harness.compare import (FLOAT32_FAMILY_TOLERANCES, FLOAT32_TOLERANCES, curve_deviation,
                             relative_deviation)
from harness.results import load_run
from harness.tasks import GRADIENT_LEVELS


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", help="run folders of float32 cells")
    parser.add_argument("--margin", type=float, default=10.0)
    args = parser.parse_args()

    records = [r for run in args.runs for r in load_run(run)[1]
               if r.status == "ok" and r.dtype == "float32"]
    if not records:
        print("no ok float32 cells in " + ", ".join(args.runs), file=sys.stderr)
        return 1
    by_group: dict[tuple, list[float]] = defaultdict(lambda: [0.0, 0.0])
    by_steps: dict[tuple, list] = defaultdict(lambda: [0, 0.0, "", 0.0, ""])
    # Each cell against the rule it is judged by: the textbook, or the
    # variant its backend names (a framework whose formula departs is
    # measured against that formula, not against the textbook's).
    problems = [oracle.Problem.of(r, oracle.departures(r)) for r in records]
    for rec, traj in zip(records, oracle.solve(problems)):
        steps = len(rec.loss_curve)
        family = rec.optimizer if rec.level in GRADIENT_LEVELS else rec.level
        params = relative_deviation(rec.params_final, traj.params_final)
        curve = curve_deviation([*rec.loss_curve, rec.loss_final],
                                [*traj.loss_curve, traj.loss_final])
        group = by_group[(family, rec.backend, rec.level, rec.arch, steps)]
        group[:] = max(group[0], params), max(group[1], curve)
        name = f"{rec.backend} {rec.level} {rec.arch} {rec.gate} seed {rec.seed}"
        row = by_steps[(family, steps)]
        row[0] += 1
        if params >= row[1]:
            row[1:3] = params, name
        if curve >= row[3]:
            row[3:5] = curve, name

    print(f"{'family':<17} {'backend':<11} {'level':<9} {'arch':<7} {'steps':>6}  params   "
          "loss curve")
    for (family, backend, level, arch, steps), (params, curve) in sorted(by_group.items()):
        print(f"{family:<17} {backend:<11} {level:<9} {arch:<7} {steps:>6}  {params:.1e}  "
              f"{curve:.1e}")
    print(f"\nworst per family and number of updates; bound = x{args.margin:g}, next of the "
          "1-2-5 series")
    for (family, steps), (n, params, p_name, curve, c_name) in sorted(by_steps.items()):
        rows = FLOAT32_FAMILY_TOLERANCES.get(family, FLOAT32_TOLERANCES
                                             if family.startswith("perceptron") else ())
        row = next((r for r in rows if steps <= r[0]), None)
        table = f"{row[1]:.0e} / {row[2]:.0e}" if row else "none"
        print(f"{family} {steps} updates, {n} cells: params {params:.1e} ({p_name}), "
              f"loss curve {curve:.1e} "
              f"({c_name})\n    bound {_ceil_125(params * args.margin):.0e} / "
              f"{_ceil_125(curve * args.margin):.0e}; table now {table}")
    return 0


def _ceil_125(x: float) -> float:
    """Smallest value of the 1-2-5 series >= x."""
    if x <= 0:
        return 0.0
    decade = 10 ** math.floor(math.log10(x))
    return next(m * decade for m in (1, 2, 5, 10) if m * decade >= x * (1 - 1e-12))


if __name__ == "__main__":
    sys.exit(main())
