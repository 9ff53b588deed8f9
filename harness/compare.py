"""How two sets of parameters are compared, and how close is close enough.

Deviation is element-wise relative with a unit floor:
``max_i |a_i - b_i| / max(|b_i|, 1)``.  Relative for weights of magnitude
above 1, absolute below, so parameters that start at or pass through zero do
not turn round-off into huge ratios.

Tolerances live in one table, by dtype and number of update steps: every
test, verdict and report reads them from here, never from a local constant.
"""
from __future__ import annotations

import dataclasses

import numpy as np

from harness.tasks import Cell, TrainResult, TrainSpec, init_params

# float64: every cell must agree with the reference to this, whatever the
# step count; any larger gap is a convention that differs, not round-off.
FLOAT64_TOLERANCE = 1e-9

# float32: round-off of ~6e-8 per operation, amplified by the training
# dynamics, so the bound grows with the number of steps.  (max steps,
# tolerance) rows, first match wins; beyond the last row there is no measured
# bound and ``tolerance`` raises.
#
# Measured by scripts/calibrate_float32.py: each float32 cell against
# ``float64_reference(cell)`` (numpy in float64 from the same float32-cast
# start), at the defaults lr 0.5, hidden 2, init_scale 1, init normal.  Worst
# deviation found, and the row set at 10x it rounded up to the 1-2-5 series:
#   100 steps:   3.2e-7 over 665 cells: all 6 backends x every level x 7 gates
#                x seeds 0-4 (single arch)
#   1000 steps:  7.2e-6 over 595 cells: the same, multi arch
#   10000 steps: 3.9e-5 over 280 cells: numpy and torch, raw and optimizer,
#                both archs, 7 gates x seeds 0-4 (--epochs 10000)
# At 1000 steps the worst cell is the same (multi `or`, seed 1) in five of the
# six frameworks: the dynamics amplify round-off, not one backend.
FLOAT32_TOLERANCES = (
    (100, 5e-6),
    (1000, 1e-4),
    (10000, 5e-4),
)


def tolerance(dtype: str, steps: int) -> float:
    if dtype == "float64":
        return FLOAT64_TOLERANCE
    for max_steps, tol in FLOAT32_TOLERANCES:
        if steps <= max_steps:
            return tol
    raise ValueError(f"no tolerance for {dtype} at {steps} steps")


def relative_deviation(a: dict, b: dict) -> float:
    """Largest element-wise deviation of params ``a`` from reference ``b``.

    Both are {name: array-like}; names and shapes must match.
    """
    if list(a) != list(b):
        raise ValueError(f"parameter names differ: {list(a)} vs {list(b)}")
    worst = 0.0
    for name in b:
        x, y = np.asarray(a[name], dtype=np.float64), np.asarray(b[name], dtype=np.float64)
        if x.shape != y.shape:
            raise ValueError(f"parameter {name} shapes differ: {x.shape} vs {y.shape}")
        if not (np.all(np.isfinite(x)) and np.all(np.isfinite(y))):
            return float("inf")
        if x.size:
            worst = max(worst, float(np.max(np.abs(x - y) / np.maximum(np.abs(y), 1.0))))
    return worst


# The oracle's analytic gradient against a float64 central difference with
# step 1e-6: truncation error ~1e-13 and round-off ~1e-10 * |loss|, so any
# gap above this is a wrong derivative, not the estimate's error.
FINITE_DIFFERENCE_TOLERANCE = 1e-7


def float64_reference(cell: Cell) -> TrainResult:
    """The numpy reference's run of ``cell`` in float64, started from the
    cell's own initial parameters: for a float32 cell, its float32-cast values
    (exactly representable in float64), so the comparison measures float32
    training round-off alone, not the rounding of the start."""
    from backends import numpy_backend

    spec = TrainSpec.from_cell(dataclasses.replace(cell, backend="numpy", dtype="float64"))
    start = {k: v.astype(np.float64) for k, v in init_params(cell).items()}
    return numpy_backend.train(dataclasses.replace(spec, params=start))
