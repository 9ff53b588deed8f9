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
* The recipe (``harness.recipes``): loss = binary cross-entropy over a
  batch's rows, SUMMED (``reduction`` sum, the default) or averaged
  (``mean``); batches of ``batch_size`` rows in truth-table order, no
  shuffling (default: all rows, full-batch); an epoch is one pass over the
  table, so it makes ``updates_per_epoch(cell)`` updates; the update rule is
  the ``optimizer`` family's (default ``sgd``: plain gradient descent) with
  its hyperparameters.
* ``loss_curve[t]`` is the loss of update t's batch at the parameters
  *before* update t, so it has ``epochs * updates_per_epoch`` entries (one
  per epoch with the default full batch); ``loss_final`` is the loss over
  all rows (with the cell's reduction) at the final parameters.
* The perceptron levels have no cross-entropy: their "loss" is the number of
  misclassified rows, and their "probs" are the Heaviside outputs (0 or 1).
* A row is predicted 1 when its probability is > 0.5.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Callable

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
LEVELS = ("raw", "module", "optimizer", "custom", "perceptron", "perceptron-batch")
# Levels that train by gradient descent on the summed cross-entropy; the
# perceptron levels are Rosenblatt's rule and belong to the numpy reference.
GRADIENT_LEVELS = ("raw", "module", "optimizer", "custom")
PERCEPTRON_LEVELS = ("perceptron", "perceptron-batch")
DTYPES = ("float32", "float64")
# How the framework executes the training step: op by op (eager), traced and
# compiled (tf.function, torch.compile, hybridize, jax.jit), or as a TF1
# graph run in a session.  Each backend declares which of these each level
# has and which it uses by default (harness.contract).
MODES = ("eager", "compiled", "graph")
INITS = ("normal", "zeros")

# Gates no single threshold unit can represent: a single-layer cell that
# learns one of these is a finding, not a success.
NOT_LINEARLY_SEPARABLE = frozenset({"xor", "xnor"})

# Optimizer families and their hyperparameters (harness.recipes has the
# rules, harness.oracle the referee's own).  Every family also takes
# ``weight_decay``: L2, added to the gradient (g + wd * p) before the rule.
OPTIMIZERS = ("sgd", "momentum", "nesterov", "adam", "rmsprop")
HYPERPARAMETERS: dict[str, tuple[str, ...]] = {
    "sgd": ("weight_decay",),
    "momentum": ("momentum", "weight_decay"),
    "nesterov": ("momentum", "weight_decay"),
    "adam": ("beta1", "beta2", "eps", "weight_decay"),
    "rmsprop": ("rho", "eps", "weight_decay"),
}
# The harness's one default per hyperparameter, passed to every framework
# with --hparams explicit (the default).
HPARAM_DEFAULTS = {"momentum": 0.9, "beta1": 0.9, "beta2": 0.999, "eps": 1e-8, "rho": 0.9,
                   "weight_decay": 0.0}
HPARAMS_MODES = ("explicit", "defaults")
REDUCTIONS = ("sum", "mean")

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


def _backend_names() -> list[str]:
    from harness import registry  # the registry imports this module
    return list(registry.BACKENDS)


@dataclass(frozen=True)
class Axis:
    """One axis of the matrix, declared once on its Cell field.

    The config key, the ``harness run`` flag (``--`` + key, dashes for
    underscores), the default and the validation all come from here, so a
    new axis is one field on Cell plus its use in the backends that need it.
    ``kind``: ``choices`` (a list, crossed; 'all' means every choice),
    ``seeds`` (ranges like '0,3,5-9', crossed), ``choice`` (one of
    ``choices``), ``int`` or ``float`` (bounded below by ``minimum``, strictly
    when ``above``).  A default of None means "derived per cell" (epochs).
    """

    key: str
    kind: str
    default: Any
    help: str
    choices: Callable[[], list[str]] | tuple[str, ...] | None = None
    minimum: float | None = None
    above: bool = False

    @property
    def crossed(self) -> bool:
        return self.kind in ("choices", "seeds")

    @property
    def flag(self) -> str:
        return "--" + self.key.replace("_", "-")

    def valid(self) -> list[str]:
        return list(self.choices() if callable(self.choices) else self.choices or ())


def _axis(**kw) -> dict:
    return {"axis": Axis(**kw)}


@dataclass(frozen=True)
class Cell:
    """One point of the matrix: a plain, serializable spec, and the one
    declaration of the matrix's axes (each field's ``axis`` metadata).

    ``epochs`` left None becomes the arch's default; ``hidden`` is None for
    ``single``, which has no hidden layer; ``mode`` left None (or
    "default") becomes the backend's default mode for the level.
    """

    backend: str = field(metadata=_axis(
        key="backends", kind="choices", default="all", choices=_backend_names,
        help="comma list, or 'all'"))
    level: str = field(metadata=_axis(
        key="levels", kind="choices", default="all", choices=LEVELS, help="comma list, or 'all'"))
    arch: str = field(metadata=_axis(
        key="archs", kind="choices", default="all", choices=ARCHS, help="comma list, or 'all'"))
    gate: str = field(metadata=_axis(
        key="gates", kind="choices", default="all", choices=tuple(GATES),
        help="comma list, or 'all'"))
    seed: int = field(metadata=_axis(key="seeds", kind="seeds", default="0", help="e.g. 0,3,5-9"))
    dtype: str = field(default="float32", metadata=_axis(
        key="dtype", kind="choice", default="float32", choices=DTYPES,
        help="float32 (default) or float64"))
    init: str = field(default="normal", metadata=_axis(
        key="init", kind="choice", default="normal", choices=INITS,
        help="normal (default) or zeros"))
    init_scale: float = field(default=1.0, metadata=_axis(
        key="init_scale", kind="float", default=1.0, minimum=0,
        help="multiplies normal draws (default 1)"))
    lr: float = field(default=DEFAULT_LR, metadata=_axis(
        key="lr", kind="float", default=DEFAULT_LR, minimum=0, above=True,
        help=f"learning rate (default {DEFAULT_LR})"))
    epochs: int | None = field(default=None, metadata=_axis(
        key="epochs", kind="int", default=None, minimum=1,
        help="default: %s" % ", ".join(f"{n} for {a}" for a, n in DEFAULT_EPOCHS.items())))
    hidden: int | None = field(default=None, metadata=_axis(
        key="hidden", kind="int", default=DEFAULT_HIDDEN, minimum=1,
        help=f"hidden units of the multi arch (default {DEFAULT_HIDDEN})"))
    mode: str | None = field(default=None, metadata=_axis(
        key="modes", kind="choices", default="default", choices=("default", *MODES),
        help="comma list of execution modes, or 'all'; 'default' (the default) is each "
             "backend's usual mode for the level"))
    optimizer: str = field(default="sgd", metadata=_axis(
        key="optimizer", kind="choices", default="sgd", choices=OPTIMIZERS,
        help="optimizer families, comma list or 'all' (default sgd: plain gradient descent)"))
    hparams: str = field(default="explicit", metadata=_axis(
        key="hparams", kind="choice", default="explicit", choices=HPARAMS_MODES,
        help="explicit (default): pass every hyperparameter to every framework; defaults: "
             "pass only the learning rate, leave the rest at each framework's defaults"))
    momentum: float | None = field(default=None, metadata=_axis(
        key="momentum", kind="float", default=None, minimum=0, help=(
            f"momentum and nesterov (default {HPARAM_DEFAULTS['momentum']}), in [0, 1)")))
    beta1: float | None = field(default=None, metadata=_axis(
        key="beta1", kind="float", default=None, minimum=0,
        help=f"adam (default {HPARAM_DEFAULTS['beta1']}), in [0, 1)"))
    beta2: float | None = field(default=None, metadata=_axis(
        key="beta2", kind="float", default=None, minimum=0,
        help=f"adam (default {HPARAM_DEFAULTS['beta2']}), in [0, 1)"))
    eps: float | None = field(default=None, metadata=_axis(
        key="eps", kind="float", default=None, minimum=0, above=True,
        help=f"adam and rmsprop (default {HPARAM_DEFAULTS['eps']:g}), > 0"))
    rho: float | None = field(default=None, metadata=_axis(
        key="rho", kind="float", default=None, minimum=0,
        help=f"rmsprop's decay of the squared-gradient average (default "
             f"{HPARAM_DEFAULTS['rho']}), in [0, 1)"))
    weight_decay: float | None = field(default=None, metadata=_axis(
        key="weight_decay", kind="float", default=None, minimum=0,
        help="L2 coefficient added to the gradient, every family (default 0)"))
    batch_size: int | None = field(default=None, metadata=_axis(
        key="batch_size", kind="int", default=None, minimum=1,
        help="rows per update, in truth-table order (default: all rows; 1 = online)"))
    reduction: str = field(default="sum", metadata=_axis(
        key="reduction", kind="choice", default="sum", choices=REDUCTIONS,
        help="sum (default) or mean of the loss over a batch's rows"))

    def __post_init__(self):
        if self.epochs is None and self.arch in DEFAULT_EPOCHS:
            object.__setattr__(self, "epochs", DEFAULT_EPOCHS[self.arch])
        # A hyperparameter is held only by the cells whose family uses it, and
        # only with --hparams explicit (with `defaults` the framework's own
        # values are in effect, and the record reads them back).
        uses = HYPERPARAMETERS.get(self.optimizer, ())
        for name in HPARAM_DEFAULTS:
            value = getattr(self, name)
            if name not in uses or self.hparams == "defaults":
                value = None
            elif value is None:
                value = HPARAM_DEFAULTS[name]
            object.__setattr__(self, name, None if value is None else float(value))
        if self.batch_size is not None and self.gate in GATES and (
                self.batch_size >= len(GATES[self.gate])):
            object.__setattr__(self, "batch_size", None)  # all rows: one full batch
        if self.arch == "single":
            object.__setattr__(self, "hidden", None)
        if self.mode in (None, "default"):
            from harness import registry  # the registry imports this module
            object.__setattr__(self, "mode", registry.default_mode(self.backend, self.level))

    def to_dict(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in CELL_FIELDS}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Cell":
        return cls(**{k: d[k] for k in CELL_FIELDS if k in d})


CELL_FIELDS = tuple(f.name for f in dataclasses.fields(Cell))


def reads_cell_fields(cls):
    """Class decorator: ``obj.seed`` reads ``obj.cell.seed`` for every Cell
    field, so a class that holds a Cell never re-declares its fields."""
    for name in CELL_FIELDS:
        setattr(cls, name, property(lambda self, _n=name: getattr(self.cell, _n)))
    return cls
# (Cell field, its axis), in field order.
AXES: tuple[tuple[str, Axis], ...] = tuple((f.name, f.metadata["axis"])
                                           for f in dataclasses.fields(Cell))


def updates_per_epoch(cell: Cell) -> int:
    """Updates in one pass over the truth table."""
    rows = len(GATES[cell.gate])
    return -(-rows // (cell.batch_size or rows))


def batches(cell: Cell) -> list[slice]:
    """The row slices of one epoch's updates, in truth-table order."""
    rows = len(GATES[cell.gate])
    size = cell.batch_size or rows
    return [slice(i, min(i + size, rows)) for i in range(0, rows, size)]


def updates(cell: Cell) -> int:
    """Updates in the whole run: the length of ``loss_curve``."""
    return cell.epochs * updates_per_epoch(cell)


def hyperparameters(cell: Cell) -> dict[str, float]:
    """The hyperparameters the cell passes (lr first), as with --hparams
    explicit; with ``defaults`` only the learning rate."""
    out = {"lr": float(cell.lr)}
    for name in HYPERPARAMETERS.get(cell.optimizer, ()):
        if getattr(cell, name) is not None:
            out[name] = getattr(cell, name)
    return out


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


@reads_cell_fields
@dataclass(frozen=True)
class TrainSpec:
    """What a backend receives: its cell (``spec.lr`` is ``spec.cell.lr``),
    with data and parameters ready.

    Arrays are numpy arrays in the cell's dtype; ``params`` is canonical.
    """

    cell: Cell
    x: np.ndarray
    y: np.ndarray
    params: dict[str, np.ndarray]

    @classmethod
    def from_cell(cls, cell: Cell) -> "TrainSpec":
        x, y = truth_table(cell.gate, cell.dtype)
        return cls(cell, x, y, init_params(cell))


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
    # The hyperparameters in effect ({"lr": ..., ...}), read back from the
    # framework's optimizer object where it exposes them; None for the
    # perceptron levels.  ``harness.recipes.in_effect`` for the hand-written
    # levels.
    hparams: dict[str, float] | None = None


# ------------------------------------------------------------ seed batches
# ``harness run --batch-seeds``: the cells of one family (every axis but the
# seed) trained in one batched computation, parameters with a leading seed
# axis.  The per-seed cell stays the canonical record; a batched one is
# judged like any other and says it was batched (``info["batched"]``).

def family_key(cell: Cell) -> Cell:
    """The cell with its seed blanked: cells with equal keys batch together."""
    return dataclasses.replace(cell, seed=-1)


@reads_cell_fields
@dataclass(frozen=True)
class BatchSpec:
    """What a batched trainer receives: S cells that differ only in their
    seed (``spec.lr`` etc. read the first, which all share), the truth table,
    and each canonical parameter stacked over seeds, shape (S, *shape)."""

    cells: tuple[Cell, ...]
    x: np.ndarray
    y: np.ndarray
    params: dict[str, np.ndarray]

    @property
    def cell(self) -> Cell:
        return self.cells[0]

    @property
    def seeds(self) -> int:
        return len(self.cells)

    @classmethod
    def from_cells(cls, cells) -> "BatchSpec":
        cells = tuple(cells)
        if len({family_key(c) for c in cells}) != 1:
            raise ValueError("a seed batch's cells must differ in their seed only")
        x, y = truth_table(cells[0].gate, cells[0].dtype)
        each = [init_params(c) for c in cells]
        return cls(cells, x, y, {k: np.stack([p[k] for p in each]) for k in each[0]})


@dataclass(frozen=True)
class BatchResult:
    """What a batched trainer returns: TrainResult's fields stacked over the
    batch's seeds (leading axis S, canonical layout): ``loss_curve`` (S,
    updates), ``loss_final`` (S,), ``probs`` (S, rows).  ``hparams`` and
    ``info`` are shared by every seed."""

    params_start: dict[str, np.ndarray]
    params_final: dict[str, np.ndarray]
    loss_curve: np.ndarray
    loss_final: np.ndarray
    probs: np.ndarray
    info: dict[str, Any] = dataclasses.field(default_factory=dict)
    hparams: dict[str, float] | None = None

    def split(self) -> list[TrainResult]:
        curve = np.asarray(self.loss_curve)
        return [TrainResult({k: v[i] for k, v in self.params_start.items()},
                            {k: v[i] for k, v in self.params_final.items()},
                            curve[i], float(self.loss_final[i]), np.asarray(self.probs)[i],
                            dict(self.info), self.hparams)
                for i in range(curve.shape[0])]
