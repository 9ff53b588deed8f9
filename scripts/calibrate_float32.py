"""Measure float32 round-off: the numbers behind harness.compare.FLOAT32_TOLERANCES.

For every backend x level x gate x arch x seed (default seeds 0-4) that the
installed frameworks can run, train the cell in float32 and compare its final
parameters with ``harness.compare.float64_reference(cell)``: the numpy
reference in float64 started from the same float32-cast initial parameters.
Prints the worst deviation per backend/level/arch and per number of steps,
and the table row each bucket would need at the given margin.

    PYTHONPATH=. .venv/bin/python scripts/calibrate_float32.py [--seeds 0-4] [--json out.json]
        [--backends ...] [--levels ...] [--archs ...] [--epochs N]
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import time
from collections import defaultdict

from harness import registry
from harness.compare import FLOAT32_TOLERANCES, float64_reference, relative_deviation
from harness.config import parse_seeds
from harness.runner import run_cell
from harness.tasks import ARCHS, DEFAULT_EPOCHS, DEFAULT_HIDDEN, GATES, LEVELS, Cell


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", default="0-4")
    parser.add_argument("--backends", default=",".join(registry.BACKENDS))
    parser.add_argument("--levels", default=",".join(LEVELS))
    parser.add_argument("--archs", default=",".join(ARCHS))
    parser.add_argument("--epochs", type=int, help="default: 100 single, 1000 multi")
    parser.add_argument("--margin", type=float, default=10.0)
    parser.add_argument("--json", help="write every cell's deviation here")
    args = parser.parse_args()

    rows = []
    by_group: dict[tuple, float] = defaultdict(float)
    by_steps: dict[int, tuple[float, str]] = {}
    t0 = time.perf_counter()
    # Registry order: torch is imported before tensorflow.
    for backend in [b for b in registry.BACKENDS if b in args.backends.split(",")]:
        avail = registry.probe(backend)
        if not avail.ok:
            print(f"{backend}: {avail.state} ({avail.detail}), not measured")
            continue
        for level in [lv for lv in LEVELS if lv in args.levels.split(",")]:
            for arch in [a for a in ARCHS if a in args.archs.split(",")]:
                if registry.gap(backend, level, arch):
                    continue
                for gate in GATES:
                    for seed in parse_seeds(args.seeds):
                        cell = Cell(backend=backend, level=level, arch=arch, gate=gate, seed=seed,
                                    dtype="float32", epochs=args.epochs or DEFAULT_EPOCHS[arch],
                                    hidden=DEFAULT_HIDDEN if arch == "multi" else None)
                        rec = run_cell(cell, avail.version)
                        if rec.status != "ok":
                            print(f"{backend} {level} {arch} {gate} seed {seed}: {rec.status} "
                                  f"{rec.message}", file=sys.stderr)
                            return 1
                        dev = relative_deviation(rec.params_final,
                                                 float64_reference(cell).params_final)
                        rows.append({**cell.to_dict(), "deviation": dev, "seconds": rec.seconds})
                        key = (backend, level, arch)
                        by_group[key] = max(by_group[key], dev)
                        name = f"{backend} {level} {arch} {gate} seed {seed}"
                        if dev >= by_steps.get(cell.epochs, (-1.0, ""))[0]:
                            by_steps[cell.epochs] = (dev, name)

    print(f"{len(rows)} float32 cells in {time.perf_counter() - t0:.0f} s\n")
    print(f"{'backend':<11} {'level':<17} {'arch':<7} max deviation")
    for (backend, level, arch), dev in by_group.items():
        print(f"{backend:<11} {level:<17} {arch:<7} {dev:.2e}")
    print("\nsteps   max deviation  worst cell                              "
          f"x{args.margin:g} -> next 1-2-5   table now")
    for steps, (dev, name) in sorted(by_steps.items()):
        need = _ceil_125(dev * args.margin)
        table = next((f"{tol:.0e}" for max_steps, tol in FLOAT32_TOLERANCES if steps <= max_steps),
                     "none")
        print(f"{steps:<7} {dev:<14.2e} {name:<40} {need:<17.0e} {table}")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(rows, fh)
    return 0


def _ceil_125(x: float) -> float:
    """Smallest value of the 1-2-5 series >= x."""
    if x <= 0:
        return 0.0
    decade = 10 ** math.floor(math.log10(x))
    return next(m * decade for m in (1, 2, 5, 10) if m * decade >= x * (1 - 1e-12))


if __name__ == "__main__":
    sys.exit(main())
