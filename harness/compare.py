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

# float32: round-off of ~6e-8 per operation, amplified by the training
# dynamics, so the bounds grow with the number of steps.  Rows are (max
# steps, final parameters, loss curve), first match wins; beyond the last row
# nothing was measured and both functions raise.
#
# Measured by scripts/calibrate_float32.py: every ok float32 cell of a run
# against the oracle's float64 trajectory from the cell's own float32 start
# (harness.oracle), at the defaults lr 0.5, hidden 2, init_scale 1, init
# normal; each bound is 10x the worst deviation, rounded up to the 1-2-5
# series.  Worst deviations, parameters / loss curve:
#   100 steps:   3.2e-7 / 1.3e-6  over 665 cells: all 6 backends x every
#                level x 7 gates x seeds 0-4 (single arch)
#   1000 steps:  7.2e-6 / 5.2e-4  over 595 cells: the same, multi arch
#   10000 steps: 3.9e-5 / 5.2e-4  over 350 cells (--epochs 10000): numpy and
#                torch raw and optimizer, tensorflow raw, both archs, 7 gates
#                x seeds 0-4
# Parameters and loss curve need separate bounds: in the worst loss-curve
# cell (multi xor, seed 2, worst in every framework) the loss leaves a long
# plateau in a sharp drop (0.055 per step around step 627), and round-off
# gathered on the plateau moves the drop by under 1/100 of a step: a gap of
# up to 5e-4 in the curve there, while the parameters meet again afterwards.
# The worst parameter cell at 1000 steps is also one cell (multi `or`, seed
# 1) in five of the six frameworks: the dynamics amplify round-off, not a
# backend.
FLOAT32_TOLERANCES = (
    (100, 5e-6, 2e-5),
    (1000, 1e-4, 1e-2),
    (10000, 5e-4, 1e-2),
)
# The other optimizer families (issue 9), measured the same way (each cell
# against the rule it is judged by: the textbook, or the variant its backend
# names), at the harness's default hyperparameters, lr 0.5: all 9 backends x
# raw and optimizer levels x 7 gates x seeds 0-2, both archs (756 cells per
# family; 100 updates single, 1000 multi).  Worst deviations, parameters /
# loss curve, and where:
#   momentum   100: 8.9e-7 / 2.6e-6     1000: 4.4e-5 (chainer raw multi and)
#                                              / 3.0e-6
#   nesterov   100: 6.9e-7 / 2.4e-6     1000: 4.2e-5 / 1.3e-5 (chainer
#                                              optimizer multi)
#   adam       100: 3.1e-6 / 9.5e-6     1000: 1.2e-4 (chainer multi xor)
#                                              / 6.2e-3 (multi xor, every Keras
#                                              row and TF raw: the plateau drop)
#   rmsprop    100: 5.0e-1 / 4.8e-1     1000: 5.5 / 1.9, numpy's hand-written
#              rule included (2.6 / 0.78): at lr 0.5 RMSprop's normalised
#              steps amplify float32 round-off to O(1), so no bound
#              describes its float32 cells and the family has no rows: they
#              are unjudged (float64 cells are judged, with a horizon where
#              the trajectory amplifies round-off, harness.oracle).
# A family without rows of its own has no float32 bound: its float32 cells
# are unjudged (never judged against another family's bound), and so is a
# cell with more updates than its family's last row (mini-batches multiply
# the updates: only sgd is measured past 1000).
FLOAT32_FAMILY_TOLERANCES: dict[str, tuple[tuple[int, float, float], ...]] = {
    "sgd": FLOAT32_TOLERANCES,
    "momentum": ((100, 1e-5, 5e-5), (1000, 5e-4, 5e-5)),
    "nesterov": ((100, 1e-5, 5e-5), (1000, 5e-4, 2e-4)),
    "adam": ((100, 5e-5, 1e-4), (1000, 2e-3, 1e-1)),
}


class NoTolerance(ValueError):
    """No bound was measured for this many steps: the cell is not judged
    (``harness.oracle``: ``unjudged``), and no tolerance is guessed."""


def _row(dtype: str, steps: int, family: str = "sgd") -> tuple[float, float]:
    if dtype == "float64":
        return FLOAT64_TOLERANCE, FLOAT64_TOLERANCE
    rows = FLOAT32_FAMILY_TOLERANCES.get(family)
    if rows is None:
        raise NoTolerance(f"unjudged: no float32 tolerance is measured for optimizer {family} "
                          "(harness/compare.py); the oracle_dev is recorded, no bound is guessed")
    for max_steps, params, curve in rows:
        if steps <= max_steps:
            return params, curve
    raise NoTolerance(f"unjudged: the float32 tolerance of optimizer {family} "
                      f"(harness/compare.py) is measured up to {rows[-1][0]} updates and this "
                      f"cell made {steps}; the oracle_dev is recorded, no bound is guessed")


def tolerance(dtype: str, steps: int, family: str = "sgd") -> float:
    """Bound on ``relative_deviation`` of final parameters after ``steps``
    updates of an optimizer family (the perceptron rules use sgd's)."""
    return _row(dtype, steps, family)[0]


def loss_tolerance(dtype: str, steps: int, family: str = "sgd") -> float:
    """Bound on ``curve_deviation`` of a loss curve."""
    return _row(dtype, steps, family)[1]


def curve_deviation(curve, reference) -> float:
    """Largest deviation of a loss curve from a reference curve, with the
    same unit floor as ``relative_deviation``; inf where not finite."""
    a = np.array([np.nan if v is None else v for v in curve], dtype=np.float64)
    b = np.asarray(reference, dtype=np.float64)
    with np.errstate(invalid="ignore"):
        dev = np.abs(a - b) / np.maximum(np.abs(b), 1.0)
    return float(np.max(np.where(np.isfinite(dev), dev, np.inf), initial=0.0))


def relative_deviation(a: dict, b: dict) -> float:
    """Largest element-wise deviation of params ``a`` from reference ``b``.

    Both are {name: array-like}; names and shapes must match.
    """
    if list(a) != list(b):
        raise ValueError(f"parameter names differ: {list(a)} vs {list(b)}")
    xs, ys = [], []
    for name in b:
        x, y = np.asarray(a[name], dtype=np.float64), np.asarray(b[name], dtype=np.float64)
        if x.shape != y.shape:
            raise ValueError(f"parameter {name} shapes differ: {x.shape} vs {y.shape}")
        xs.append(x.ravel())
        ys.append(y.ravel())
    if not xs:
        return 0.0
    # One pass over every parameter: the largest of all elements is the
    # largest of the per-parameter largest, and a few calls instead of a few
    # per parameter (judging 10,000 batched seeds calls this 10,000 times).
    x, y = np.concatenate(xs), np.concatenate(ys)
    if not (np.isfinite(x).all() and np.isfinite(y).all()):
        return float("inf")
    return float(np.max(np.abs(x - y) / np.maximum(np.abs(y), 1.0), initial=0.0))


# The oracle's analytic gradient against a float64 central difference with
# step 1e-6: truncation error ~1e-13 and round-off ~1e-10 * |loss|, so any
# gap above this is a wrong derivative, not the estimate's error.
FINITE_DIFFERENCE_TOLERANCE = 1e-7
