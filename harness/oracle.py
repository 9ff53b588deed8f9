"""The referee: every cell's trajectory re-computed in float64, independently.

The oracle shares no code with any backend, the numpy reference included: it
is written here from the maths of ``harness.tasks`` alone, so a convention
slip in a backend cannot hide in both.  It starts from the record's own
``params_init`` (the values the backend loaded, float32 casts included) and
runs in float64 whatever the record's dtype.

* Gradient levels (raw, module, optimizer) share one trajectory: full-batch
  gradient descent on the summed binary cross-entropy, written as
  ``sum(log(1 + exp(z)) - y z)`` on the logits z, with the closed-form
  gradient ``dL/dz = sigmoid(z) - y`` back-propagated by hand.
* ``perceptron``: Rosenblatt's rule with g(0) = 0, row by row in table
  order; ``perceptron-batch``: the same rule summed over all rows.  Their
  "loss" is the number of misclassified rows.
* Trajectories are vectorised over a batch of problems (seeds, gates) that
  share arch, input width, rule, lr and epochs, so checking a hundred seeds
  costs about as much as checking one.

A verdict (``judge``) compares a record with its trajectory:

* ``oracle_dev``: ``harness.compare.relative_deviation`` of params_final from
  the oracle's; ``tolerance``: ``harness.compare.tolerance(dtype, epochs)``;
  ``agrees``: oracle_dev <= tolerance and the loss curve never leaves the band.
* The band: loss entry t (t = 0 .. epochs - 1 from ``loss_curve``, t = epochs
  from ``loss_final``) leaves it when
  ``|loss_t - oracle_t| / max(|oracle_t|, 1) >
  harness.compare.loss_tolerance(dtype, epochs)`` (or is not finite);
  ``first_departure`` is the first such t, else None.  A cell can
  disagree on parameters while its losses stay in the band (e.g. hidden
  units swapped, or a learning rate skewed by 0.1% on a multi-layer
  float32 cell): ``departed`` names the bands a cell left,
  ``params_final`` and/or ``loss_curve``, so a disagreement always says how.
* ``learned_epoch``: the number of updates after which every row first came
  out right, read from the oracle's trajectory, which the cell follows when
  it agrees; None when the cell disagrees or does not end learned.
* Records that are not ``ok`` get None for every verdict field.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np

from harness.compare import loss_tolerance, relative_deviation, tolerance
from harness.tasks import PERCEPTRON_LEVELS, truth_table

RULES = ("gradient", "perceptron", "perceptron-batch")


def rule_of(level: str) -> str:
    """The oracle's rule for a level: the gradient levels share one."""
    return level if level in PERCEPTRON_LEVELS else "gradient"


@dataclass(frozen=True)
class Problem:
    """What the oracle needs to know about a cell; hashable, so it caches."""

    arch: str
    gate: str
    rule: str
    lr: float
    epochs: int
    # ((name, shape, flat values), ...) in canonical order.
    params: tuple

    @classmethod
    def of(cls, record) -> "Problem":
        rule = rule_of(record.level)
        params = tuple((name, np.shape(v), tuple(np.asarray(v, dtype=np.float64).ravel().tolist()))
                       for name, v in record.params_init.items())
        return cls(record.arch, record.gate, rule, float(record.lr), int(record.epochs), params)

    def arrays(self) -> dict[str, np.ndarray]:
        return {name: np.array(flat, dtype=np.float64).reshape(shape)
                for name, shape, flat in self.params}


@dataclass(frozen=True)
class Trajectory:
    params_final: dict[str, np.ndarray]
    # Loss at the parameters before update t, t = 0 .. epochs - 1.
    loss_curve: np.ndarray
    loss_final: float
    probs: np.ndarray
    # all_right[t]: every row predicted right after t updates, t = 0 .. epochs.
    all_right: np.ndarray

    @property
    def learned(self) -> bool:
        return bool(self.all_right[-1])

    @property
    def learned_epoch(self) -> int | None:
        """First t with every row right, for trajectories that end learned."""
        return int(np.argmax(self.all_right)) if self.learned else None


# ------------------------------------------------------------------ maths
# Every function takes batched parameters: a leading axis B over problems.

def _sigmoid(z):
    with np.errstate(over="ignore"):
        return 1.0 / (1.0 + np.exp(-z))


def forward(params: dict[str, np.ndarray], x: np.ndarray):
    """(logits (B, R, 1), hidden activations (B, R, H) or None) for rows x (R, n)."""
    if "W" in params:
        return x @ params["W"] + params["b"][:, None, :], None
    h = _sigmoid(x @ params["W1"] + params["b1"][:, None, :])
    return h @ params["W2"] + params["b2"][:, None, :], h


def loss_and_grad_batch(params, x, y):
    """(summed cross-entropy (B,), its closed-form gradient, logits) per problem."""
    z, h = forward(params, x)
    loss = np.sum(np.logaddexp(0.0, z) - y * z, axis=(1, 2))
    dz = _sigmoid(z) - y
    if h is None:
        return loss, {"W": x.T @ dz, "b": dz.sum(axis=1)}, z
    dh = dz @ np.swapaxes(params["W2"], 1, 2)
    da = dh * h * (1.0 - h)
    return loss, {"W1": x.T @ da, "b1": da.sum(axis=1),
                  "W2": np.swapaxes(h, 1, 2) @ dz, "b2": dz.sum(axis=1)}, z


def _batched(params):
    return {k: np.asarray(v, dtype=np.float64)[None] for k, v in params.items()}


def loss_and_grad(params: dict, x, y) -> tuple[float, dict[str, np.ndarray]]:
    """One problem's loss and analytic gradient, canonical layout, float64."""
    loss, grad, _ = loss_and_grad_batch(_batched(params), np.asarray(x, np.float64),
                                        np.asarray(y, np.float64)[None])
    return float(loss[0]), {k: v[0] for k, v in grad.items()}


def finite_difference(params: dict, x, y, step: float = 1e-6) -> dict[str, np.ndarray]:
    """Central-difference estimate of the gradient, one coordinate at a time."""
    base = {k: np.array(v, dtype=np.float64) for k, v in params.items()}
    out = {}
    for name, value in base.items():
        grad = np.zeros_like(value)
        for i in np.ndindex(value.shape):
            loss = []
            for sign in (1.0, -1.0):
                moved = {k: v.copy() for k, v in base.items()}
                moved[name][i] += sign * step
                loss.append(loss_and_grad(moved, x, y)[0])
            grad[i] = (loss[0] - loss[1]) / (2 * step)
        out[name] = grad
    return out


def probability(params: dict, points: np.ndarray, rule: str = "gradient") -> np.ndarray:
    """The trained unit's output at arbitrary points (N, n): the sigmoid
    probability, or the Heaviside output for the perceptron rules."""
    z, _ = forward(_batched(params), np.asarray(points, np.float64))
    z = z[0, :, 0]
    return (z > 0).astype(np.float64) if rule != "gradient" else _sigmoid(z)


def _gradient_descent(params, x, y, lr, epochs):
    curve = np.empty((y.shape[0], epochs))
    right = np.empty((y.shape[0], epochs + 1), dtype=bool)
    for t in range(epochs):
        curve[:, t], grad, z = loss_and_grad_batch(params, x, y)
        right[:, t] = np.all((_sigmoid(z) > 0.5) == (y > 0.5), axis=(1, 2))
        params = {k: v - lr * grad[k] for k, v in params.items()}
    loss, _, z = loss_and_grad_batch(params, x, y)
    right[:, epochs] = np.all((_sigmoid(z) > 0.5) == (y > 0.5), axis=(1, 2))
    return params, curve, loss, _sigmoid(z)[:, :, 0], right


def _perceptron(params, x, y, lr, epochs, online):
    W, b = params["W"].copy(), params["b"].copy()
    curve = np.empty((y.shape[0], epochs))
    right = np.empty((y.shape[0], epochs + 1), dtype=bool)

    def step(rows):
        return ((x[rows] @ W + b[:, None, :]) > 0).astype(np.float64)

    every = slice(None)
    for t in range(epochs):
        wrong = np.sum(step(every) != y, axis=(1, 2))
        curve[:, t], right[:, t] = wrong, wrong == 0
        if online:
            for i in range(x.shape[0]):
                err = y[:, i:i + 1] - step(slice(i, i + 1))  # (B, 1, 1)
                W += lr * x[i][None, :, None] * err
                b += lr * err[:, 0, :]
        else:
            err = y - step(every)
            W += lr * (x.T @ err)
            b += lr * err.sum(axis=1)
    out = step(every)
    wrong = np.sum(out != y, axis=(1, 2))
    right[:, epochs] = wrong == 0
    return {"W": W, "b": b}, curve, wrong.astype(np.float64), out[:, :, 0], right


def _solve_group(problems: list[Problem]) -> list[Trajectory]:
    """Problems sharing arch, input width, rule, lr and epochs, in one batch."""
    first = problems[0]
    x = truth_table(first.gate, "float64")[0]
    y = np.stack([truth_table(p.gate, "float64")[1] for p in problems])
    arrays = [p.arrays() for p in problems]
    params = {name: np.stack([a[name] for a in arrays]) for name in arrays[0]}
    if first.rule == "gradient":
        final, curve, loss, probs, right = _gradient_descent(params, x, y, first.lr, first.epochs)
    else:
        final, curve, loss, probs, right = _perceptron(params, x, y, first.lr, first.epochs,
                                                       online=first.rule == "perceptron")
    return [Trajectory({k: v[i] for k, v in final.items()}, curve[i], float(loss[i]), probs[i],
                       right[i]) for i in range(len(problems))]


# Trajectories computed in this process; cells of the same seed share one
# across backends and gradient levels.  Bounded: a long run does not grow it.
_CACHE: dict[Problem, Trajectory] = {}
_CACHE_MAX = 20_000


def solve(problems: list[Problem]) -> list[Trajectory]:
    """Trajectories for many problems, batched by shape and settings."""
    todo: dict[tuple, list[Problem]] = {}
    for p in dict.fromkeys(problems):
        if p not in _CACHE:
            shapes = tuple((name, shape) for name, shape, _ in p.params)
            todo.setdefault((p.arch, shapes, p.rule, p.lr, p.epochs), []).append(p)
    if len(_CACHE) + sum(map(len, todo.values())) > _CACHE_MAX:
        _CACHE.clear()
    for group in todo.values():
        _CACHE.update(zip(group, _solve_group(group)))
    return [_CACHE[p] for p in problems]


def trajectory(record) -> Trajectory:
    return solve([Problem.of(record)])[0]


# ---------------------------------------------------------------- verdicts

VERDICT_FIELDS = ("oracle_dev", "tolerance", "agrees", "first_departure", "departed",
                  "learned_epoch")


def first_departure(curve, oracle_curve, tol: float) -> int | None:
    """First index where curve leaves the band around oracle_curve (see module doc)."""
    got = np.array([np.nan if v is None else v for v in curve], dtype=np.float64)
    want = np.asarray(oracle_curve, dtype=np.float64)
    with np.errstate(invalid="ignore"):
        outside = ~(np.abs(got - want) / np.maximum(np.abs(want), 1.0) <= tol)
    return int(np.argmax(outside)) if outside.any() else None


def verdict(record, traj: Trajectory) -> dict:
    tol = tolerance(record.dtype, record.epochs)
    dev = relative_deviation(record.params_final, traj.params_final)
    first = first_departure([*record.loss_curve, record.loss_final],
                            [*traj.loss_curve, traj.loss_final],
                            loss_tolerance(record.dtype, record.epochs))
    departed = [*(["params_final"] if not dev <= tol else []),
                *(["loss_curve"] if first is not None else [])]
    agrees = not departed
    return {"oracle_dev": dev, "tolerance": tol, "agrees": agrees, "first_departure": first,
            "departed": departed, "learned_epoch": traj.learned_epoch if agrees else None}


def judge(record, traj: Trajectory | None = None):
    """The record with its verdict fields filled (None unless status is ok)."""
    if record.status != "ok":
        return dataclasses.replace(record, **dict.fromkeys(VERDICT_FIELDS))
    return dataclasses.replace(record, **verdict(record, traj or trajectory(record)))


def judge_all(records: list) -> list:
    """``judge`` for many records, their trajectories computed in batches."""
    ok = [r for r in records if r.status == "ok"]
    trajs = dict(zip(map(id, ok), solve([Problem.of(r) for r in ok])))
    return [judge(r, trajs.get(id(r))) for r in records]
