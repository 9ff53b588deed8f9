"""How two sets of parameters are compared, and how close is close enough.

Deviation is element-wise relative with a unit floor:
``max_i |a_i - b_i| / max(|b_i|, 1)``.  Relative for weights of magnitude
above 1, absolute below, so parameters that start at or pass through zero do
not turn round-off into huge ratios.

Tolerances live in one table, by dtype and number of update steps: every
test, verdict and report reads them from here, never from a local constant.
"""
from __future__ import annotations

import numpy as np

# float64: every cell must agree with the reference to this, whatever the
# step count; any larger gap is a convention that differs, not round-off.
FLOAT64_TOLERANCE = 1e-9

# float32: round-off of ~6e-8 per operation accumulates with the number of
# steps.  (max steps, tolerance) rows, first match wins.
FLOAT32_TOLERANCES = (
    (100, 1e-4),
    (1000, 1e-3),
    (10**9, 1e-2),
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
