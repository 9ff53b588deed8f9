"""The task contract every backend implements: gates, archs, levels, cells.

Conventions (identical for every backend and level):

* Inputs are truth-table rows in the order (0,0), (0,1), (1,0), (1,1); `not`
  has one input, rows (0), (1).  Targets are a column of shape (rows, 1).
* Canonical parameters, named and shaped the same everywhere:
  ``single``: W (n_in, 1), b (1,);
  ``multi``:  W1 (n_in, H), b1 (H,), W2 (H, 1), b2 (1,).
  A backend converts to and from its own layout (torch stores Linear weights
  as (out, in)).
* Initial parameters come from the harness, never from a framework:
  ``numpy.random.default_rng(seed).standard_normal(shape) * init_scale`` drawn
  in the order above, or zeros.  They are drawn in float64 and cast once to
  the run's dtype, so two backends given the same cell start bit-identical.
* Loss = SUM over rows of binary cross-entropy; full-batch gradient descent.
  ``loss_curve[t]`` is the loss at the parameters *before* update t, so it has
  ``epochs`` entries; ``loss_final`` is the loss at the final parameters.
* The perceptron levels have no cross-entropy: their "loss" is the number of
  misclassified rows, and their "probs" are the Heaviside outputs (0 or 1).
* A row is predicted 1 when its probability is > 0.5.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import numpy as np

# Outputs for rows (0,0), (0,1), (1,0), (1,1); `not` for rows (0), (1).
GATES: dict[str, tuple[int, ...]] = {
    "and": (0, 0, 0, 1),
    "or": (0, 1, 1, 1),
    "nand": (1, 1, 1, 0),
    "nor": (1, 0, 0, 0),
    "xor": (0, 1, 1, 0),
    "xnor": (1, 0, 0, 1),
    "not": (1, 0),
}
ARCHS = ("single", "multi")
LEVELS = ("raw", "module", "optimizer", "perceptron", "perceptron-batch")
# Levels that train by gradient descent on the summed cross-entropy; the
# perceptron levels are Rosenblatt's rule and belong to the numpy reference.
GRADIENT_LEVELS = ("raw", "module", "optimizer")
PERCEPTRON_LEVELS = ("perceptron", "perceptron-batch")
DTYPES = ("float32", "float64")
INITS = ("normal", "zeros")

# Gates no single threshold unit can represent: a single-layer cell that
# learns one of these is a finding, not a success.
NOT_LINEARLY_SEPARABLE = frozenset({"xor", "xnor"})

DEFAULT_LR = 0.5
DEFAULT_EPOCHS = {"single": 100, "multi": 1000}
DEFAULT_HIDDEN = 2


def truth_table(gate: str, dtype: str = "float64") -> tuple[np.ndarray, np.ndarray]:
    """Return (x, y): x of shape (rows, n_in), y of shape (rows, 1)."""
    outputs = GATES[gate]
    if len(outputs) == 2:
        x = np.array([[0], [1]])
    else:
        x = np.array([[0, 0], [0, 1], [1, 0], [1, 1]])
    y = np.array(outputs).reshape(-1, 1)
    return x.astype(dtype), y.astype(dtype)


def n_inputs(gate: str) -> int:
    return 1 if len(GATES[gate]) == 2 else 2


def param_shapes(arch: str, n_in: int, hidden: int | None) -> list[tuple[str, tuple[int, ...]]]:
    """Canonical parameter names and shapes, in initialization order."""
    if arch == "single":
        return [("W", (n_in, 1)), ("b", (1,))]
    assert hidden is not None
    return [("W1", (n_in, hidden)), ("b1", (hidden,)), ("W2", (hidden, 1)), ("b2", (1,))]


@dataclass(frozen=True, order=True)
class Cell:
    """One point of the matrix: a plain, serializable spec.

    Field order is the sort order of result files (backend first, so one
    backend's cells sit together).
    """

    backend: str
    level: str
    arch: str
    gate: str
    seed: int
    dtype: str = "float32"
    init: str = "normal"
    init_scale: float = 1.0
    lr: float = DEFAULT_LR
    epochs: int = 100
    # None for `single`, which has no hidden layer.
    hidden: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Cell":
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})

    @property
    def key(self) -> tuple:
        """A total order over cells (None hidden sorts before any number)."""
        return (self.backend, self.level, self.arch, self.gate, self.seed, self.dtype,
                self.init, self.init_scale, self.lr, self.epochs,
                -1 if self.hidden is None else self.hidden)


def init_params(cell: Cell) -> dict[str, np.ndarray]:
    """The harness's initial parameters for a cell, already cast to its dtype."""
    shapes = param_shapes(cell.arch, n_inputs(cell.gate), cell.hidden)
    rng = np.random.default_rng(cell.seed)
    params = {}
    for name, shape in shapes:
        if cell.init == "zeros":
            value = np.zeros(shape)
        else:
            value = rng.standard_normal(shape) * cell.init_scale
        params[name] = value.astype(cell.dtype)
    return params


@dataclass(frozen=True)
class TrainSpec:
    """What a backend receives: the cell's math, with data and parameters ready.

    Arrays are numpy arrays in the cell's dtype; ``params`` is canonical.
    """

    level: str
    arch: str
    gate: str
    dtype: str
    lr: float
    epochs: int
    hidden: int | None
    x: np.ndarray
    y: np.ndarray
    params: dict[str, np.ndarray]

    @classmethod
    def from_cell(cls, cell: Cell) -> "TrainSpec":
        x, y = truth_table(cell.gate, cell.dtype)
        return cls(level=cell.level, arch=cell.arch, gate=cell.gate, dtype=cell.dtype,
                   lr=cell.lr, epochs=cell.epochs, hidden=cell.hidden, x=x, y=y,
                   params=init_params(cell))


@dataclass(frozen=True)
class TrainResult:
    """What a backend returns, in canonical layout, as numpy arrays.

    ``params_start`` is read back from the framework's own objects right after
    loading, before any update: the runner checks it is bit-identical to the
    harness's initial parameters, which catches layout and cast mistakes.
    """

    params_start: dict[str, np.ndarray]
    params_final: dict[str, np.ndarray]
    loss_curve: list[float]
    loss_final: float
    probs: np.ndarray
    # Backend-specific facts worth recording (e.g. TensorFlow's execution mode).
    info: dict[str, Any] = dataclasses.field(default_factory=dict)
