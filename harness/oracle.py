"""The referee: every cell's trajectory re-computed in float64, independently.

The oracle shares no code with any backend, the numpy reference included: it
is written here from the maths of ``harness.tasks`` alone, so a convention
slip in a backend cannot hide in both.  It starts from the record's own
``params_init`` (the values the backend loaded, float32 casts included) and
runs in float64 whatever the record's dtype.

* Gradient levels (raw, module, optimizer, custom) share one trajectory per
  recipe: the optimizer family's textbook rule (``RULES`` below; the same
  formulas as ``harness.recipes``, written again here) on the binary
  cross-entropy of each batch (rows in table order), summed or averaged,
  written as ``log(1 + exp(z)) - y z`` on the logits z, with the
  closed-form gradient ``dL/dz = sigmoid(z) - y`` back-propagated by hand.
* Variants: a framework's optimizer object may compute its family's rule
  another way (epsilon in another place, hyperparameters held in float32,
  another momentum form), and a framework may compute parts of a float64
  cell in float32 (Keras 3 on torch: its matmuls, its loss's value).  Each
  such departure is a named atom in
  ``VARIANTS``; a backend names the atoms that explain a cell
  (``departures`` in ``harness.contract``), and the cell is judged against
  the textbook first and, when it departs, against the variant: it is
  ``explained_by`` the variant only if the variant's trajectory reproduces
  it within the same tolerance.  So every explanation is itself a tested
  claim.
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
* ``rule``: what the cell was judged against (its optimizer family, or its
  perceptron rule); ``explained_by``: the variant that reproduces a cell
  that departs from the textbook ("+"-joined atoms), else None.
* ``horizon``: on some trajectories round-off is amplified past any
  tolerance (RMSprop at lr 0.125 doubles an error every update once the
  loss is small; an adaptive optimizer on a plateau normalises gradients of
  ~1e-12 into steps of ~lr; past convergence RMSprop carries the rounding
  of 1 - p and 1 - h, relative ulp / (1 - p), whole into every update).  When a cell
  departs, the oracle runs its own trajectory again with round-off-sized
  errors put in at every update, 256 ulps of the cell's dtype into every
  parameter (``JITTER_ULPS``) and one ulp into every sigmoid output the
  gradient reads (``PROBABILITY_JITTER_ULPS``), PROBE_STREAMS times with
  independent signs; the first update where one of them leaves the band is
  the trajectory's horizon (the number of updates: only the final state
  leaves it).  A cell whose departure starts at or past the horizon agrees
  (or is explained) up to it: ``horizon`` records the update,
  ``learned_epoch`` is None (the end state is not the oracle's to vouch
  for).  A variant that reproduces the whole trajectory explains a cell
  before any horizon is considered.  A departure before the horizon is a
  departure.  float64 only: the float32 bounds are measured round-off,
  amplification included (``harness.compare``), so a float32 cell is judged
  to its end.
* ``unjudged``: a float32 cell with more updates than the tolerance table
  has measured is not judged (no tolerance is guessed): its oracle_dev is
  recorded, ``agrees`` is None and ``unjudged`` says why.
* Records that are not ``ok`` get None for every verdict field.
"""
from __future__ import annotations

import dataclasses
import functools
from dataclasses import dataclass

import numpy as np

from harness.compare import (NoTolerance, loss_tolerance, relative_deviation, tolerance)
from harness.tasks import HYPERPARAMETERS, OPTIMIZERS, PERCEPTRON_LEVELS, truth_table

# The oracle's rules: one per optimizer family for the gradient levels, and
# the two perceptron rules.
RULES = (*OPTIMIZERS, "perceptron", "perceptron-batch")


def rule_of(level: str, optimizer: str = "sgd") -> str:
    """The oracle's rule for a cell: the gradient levels share their family's."""
    return level if level in PERCEPTRON_LEVELS else optimizer


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
    # The recipe: hyperparameters other than lr ((name, value), ...),
    # batch size (None: all rows), reduction, and the variant's atoms
    # (() for the textbook rule).
    hp: tuple = ()
    batch_size: int | None = None
    reduction: str = "sum"
    variant: tuple = ()
    # The horizon probe (``perturbed``): after every update each parameter
    # times 1 +- jitter, and in every gradient each sigmoid output moved by
    # PROBABILITY_JITTER_ULPS ulps (signs from fixed random streams), errors
    # injected at every update, as round-off does (0: none).
    jitter: float = 0.0
    # Which of the probe's independent sign streams (PROBE_STREAMS).
    stream: int = 0
    # The float32 matmul kernel whose orders "float32-matmul" takes
    # (FLOAT32_KERNELS; DEFAULT_FLOAT32_KERNEL when the variant names the
    # atom and no kernel is given; "" whenever the variant has no such
    # atom, whatever is given).
    kernel: str = ""

    def __post_init__(self):
        # One spelling per computation: the cache keys on it.
        if "float32-matmul" in self.variant and not self.kernel:
            object.__setattr__(self, "kernel", DEFAULT_FLOAT32_KERNEL)
        elif "float32-matmul" not in self.variant and self.kernel:
            object.__setattr__(self, "kernel", "")

    @classmethod
    def of(cls, record, variant: tuple = ()) -> "Problem":
        rule = rule_of(record.level, record.optimizer)
        params = tuple((name, np.shape(v), tuple(np.asarray(v, dtype=np.float64).ravel().tolist()))
                       for name, v in record.params_init.items())
        hp = ()
        if rule in OPTIMIZERS:
            # --hparams explicit: the values the harness passed; `defaults`:
            # the framework's own, as its record read them back.
            source = (record.hparams_used or {}) if record.hparams == "defaults" else {
                name: getattr(record.cell, name) for name in HYPERPARAMETERS[rule]}
            hp = tuple(sorted((k, float(v)) for k, v in source.items()
                              if k != "lr" and v is not None))
        lr = float(record.lr)
        return cls(record.arch, record.gate, rule, lr, int(record.epochs), params, hp,
                   record.batch_size, record.reduction, tuple(variant),
                   kernel=float32_kernel(record))

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


def _fma32(x, y, acc):
    """float32 fused multiply-add x * y + acc, rounded once: the float32
    product is exact in float64, the float64 sum is corrected where it lands
    on a float32 halfway point that the exact sum is not on (TwoSum)."""
    p = x.astype(np.float64) * y.astype(np.float64)
    c = acc.astype(np.float64)
    s = p + c
    bb = s - p
    err = (p - (s - bb)) + (c - bb)
    r = s.astype(np.float32)
    d = s - r.astype(np.float64)
    away = np.where(d > 0, np.float32(np.inf), np.float32(-np.inf)).astype(np.float32)
    other = np.nextafter(r, away)
    tie = (d != 0) & (err != 0) & (2 * s == r.astype(np.float64) + other.astype(np.float64))
    return np.where(tie & ((err > 0) == (d > 0)), other, r)


def _lanes_float32(prods):
    """The sum of the float32 products ``prods`` (k = 0..K-1) in the order
    torch's float32 CPU matmul takes for a 4-row matrix times a column:
    the first P = (K - 1) % 4 + 1 products added in order, then the other
    K - P in lanes (W = 2 lanes for K - P = 4, else 4 lanes; lane j takes
    products P + j, P + j + W, ...; lane 0 continues the first P's sum), the
    lanes added as (l0 + l2) + (l1 + l3) (W = 4) or l0 + l1 (W = 2)."""
    K = len(prods)
    P = (K - 1) % 4 + 1
    acc = prods[0]
    for k in range(1, P):
        acc = acc + prods[k]
    if K == P:
        return acc
    W = 2 if K - P == 4 else 4
    lanes = [acc + prods[P]] + list(prods[P + 1:P + W])
    for k in range(P + W, K):
        lanes[(k - P) % W] = lanes[(k - P) % W] + prods[k]
    if W == 2:
        return lanes[0] + lanes[1]
    return (lanes[0] + lanes[2]) + (lanes[1] + lanes[3])


# The CPU float32 matmul kernels whose summation orders ``_matmul_float32``
# reproduces, each with the widest hidden layer (inner axis) it was measured
# on.  A keras-torch record names its kernel (``info["sgemm"]``, from a
# fingerprint of torch.mm); a record that names none was written before
# kernels were recorded, on the AVX2 kernel, the only one modelled then.
FLOAT32_KERNELS = {"mkl-avx2": 16, "mkl-avx512": 4}
DEFAULT_FLOAT32_KERNEL = "mkl-avx2"


def float32_kernel(record) -> str:
    """The float32 matmul kernel ``record``'s cell ran on (its name, or
    ``unmeasured:<fingerprint>``)."""
    return (record.info or {}).get("sgemm", DEFAULT_FLOAT32_KERNEL)


def float32_orders_measured(kernel: str, hidden: int | None) -> bool:
    """Whether ``_matmul_float32`` has ``kernel``'s summation orders for a
    layer of ``hidden`` units (None: single-layer)."""
    return (hidden or 0) <= FLOAT32_KERNELS.get(kernel, -1)


def _matmul64(a, b, ta: bool = False):
    """``a @ b`` in float64 (numpy); ``ta``: ``a`` is the transposed view that
    autograd's backward pass hands the kernel (the same numbers here)."""
    return np.matmul(a, b)


def _chain_float32(prods, fma_terms):
    """p0, then each later product added in order: with one rounding (a fused
    multiply-add) where ``fma_terms`` holds its (a_k, b_k), else rounded first."""
    out = prods[0]
    for k in range(1, len(prods)):
        out = _fma32(*fma_terms(k), out) if fma_terms else out + prods[k]
    return out


def _matmul_float32(a, b, kernel: str = DEFAULT_FLOAT32_KERNEL, ta: bool = False):
    """``a @ b`` as torch's float32 CPU matmul (``torch.mm``, which Keras'
    ``ops.matmul`` and autograd's gradient products call; MKL sgemm)
    computes it on the harness's sizes (variant "float32-matmul"): both
    operands rounded to float32, each product rounded to float32 (or not,
    inside a fused multiply-add), the sum taken in float32 in the order the
    CPU's kernel picks for the shape, the result back in float64.  With a
    (M, K) and b (K, N); ``ta``: autograd passes ``a`` as a transposed view
    (the weight gradients x^T dz, h^T dz), which the AVX-512 kernel sums
    otherwise.

    ``mkl-avx2`` (torch 2.13 CPU wheel, MKL 2024.2, AVX2 on an AMD EPYC):

    * M = 4 rows, N = 1 column (a truth table's hidden layer times the
      output weights, K = hidden units): ``_lanes_float32``, the first
      (K - 1) % 4 + 1 products in order, the rest in 2 or 4 lanes;
      for K <= 4 that is in order.
    * M = 2 or 3 rows, N = 1: in order for K <= 11; for K >= 12 the first
      12 products as ``_lanes_float32`` takes them, the rest added in order.
    * M = 4 rows, N >= 12 columns (the first layer's x @ W1 for 12 hidden
      units or more, K = 2): a fused multiply-add chain, p0 then
      acc = fma(a_k, b_k, acc), rounded once each.
    * any other shape: in order along the inner axis, no fused
      multiply-add; transposed or not.

    Measured bit-exact from freshly allocated (64-byte aligned) float32
    tensors as Keras' casts give them, 1000 to 2000 random normal operand
    pairs per shape: 4 x K times K x 1 for K = 1..33, 2 or 3 rows for K =
    1..17 (not 20: there rows differ), 1 row for K = 1..20; and every
    product of the forward and backward pass for hidden units 1..16 and 1 to
    4 rows (with transposed operands as autograd passes them).  Unaligned
    operands change the 2- and 3-row order for K = 9..11.

    ``mkl-avx512`` (the same wheel on an AVX-512 Intel Xeon), K <= 4:

    * a transposed (``ta``), and 1 row times a column: the fused
      multiply-add chain, p0 then fma(a_k, b_k, acc).
    * N >= 2 columns (the first layer's x @ W, K <= 2): the same chain.
    * N = 1, 4 rows: p0 + fma, then the third and fourth products as
      (fma(a1, b1, p0) + p3) + p2 (K = 3: fma(a1, b1, p0) + p2).
    * N = 1, 2 or 3 rows: no fused multiply-add; p0 + p1, p0 + (p1 + p2),
      p0 + ((p1 + p3) + p2).

    Measured bit-exact on 200 random operand pairs per shape and output
    element, every order of every sum tree (with and without fused
    multiply-adds) tried, for every product of the forward and backward
    pass with 1 to 4 rows and hidden units 1..4: each shape matched exactly
    one order.  Other shapes raise ValueError (not measured)."""
    a, b = np.asarray(a).astype(np.float32), np.asarray(b).astype(np.float32)
    rows, inner, cols = a.shape[-2], a.shape[-1], b.shape[-1]
    prods = [a[..., :, k:k + 1] * b[..., k:k + 1, :] for k in range(inner)]

    def fma_terms(k):
        return np.broadcast_arrays(a[..., :, k:k + 1], b[..., k:k + 1, :])
    if kernel == "mkl-avx2":
        if rows == 4 and cols >= 12:
            out = _chain_float32(prods, fma_terms)
        elif cols == 1 and (rows == 4 or (rows in (2, 3) and inner >= 12)):
            head = inner if rows == 4 else 12
            out = _lanes_float32(prods[:head])
            for k in range(head, inner):
                out = out + prods[k]
        else:
            out = _chain_float32(prods, None)
    elif kernel == "mkl-avx512" and inner <= 4 and rows <= 4 and (cols == 1 or inner <= 2 or ta):
        if ta or rows == 1 or cols > 1 or inner <= 1:
            out = _chain_float32(prods, fma_terms)
        elif rows == 4:
            out = _fma32(*fma_terms(1), prods[0])
            if inner == 4:
                out = out + prods[3]
            if inner >= 3:
                out = out + prods[2]
        else:
            out = prods[0] + prods[1] if inner == 2 else prods[0] + (
                prods[1] + prods[2] if inner == 3 else (prods[1] + prods[3]) + prods[2])
    else:
        raise ValueError(f"no measured float32 summation orders for kernel {kernel!r} "
                         f"on {rows} x {inner} times {inner} x {cols}"
                         f"{' (a transposed)' if ta else ''}")
    return out.astype(np.float64)


def forward(params: dict[str, np.ndarray], x: np.ndarray, matmul=np.matmul):
    """(logits (B, R, 1), hidden activations (B, R, H) or None) for rows x (R, n)."""
    if "W" in params:
        return matmul(x, params["W"]) + params["b"][:, None, :], None
    h = _sigmoid(matmul(x, params["W1"]) + params["b1"][:, None, :])
    return matmul(h, params["W2"]) + params["b2"][:, None, :], h


def _sum_rows(a):
    """``a.sum(axis=1)`` of (B, rows, k), added row after row: for fewer than
    8 rows (a truth table has at most 4) the order, and so the bits, of
    numpy's own reduction, at a quarter of its time on large B."""
    out = a[:, 0]
    for i in range(1, a.shape[1]):
        out = out + a[:, i]
    return out


def _row_losses(z, y, rows32: bool = False):
    """Each problem's cross-entropy summed over the rows (B,); ``rows32``:
    each row's rounded to float32 first ("float32-row-loss")."""
    rows = np.logaddexp(0.0, z) - y * z
    if rows32:
        rows = rows.astype(np.float32).astype(np.float64)
    return _sum_rows(rows)[:, 0]


def loss_and_grad_batch(params, x, y, matmul=_matmul64, rows32: bool = False,
                        scale=None, nudge=None):
    """(summed cross-entropy (B,), its closed-form gradient, logits,
    probabilities) per problem.
    ``matmul``: how every product of the forward and backward pass is taken
    (``_matmul_float32`` for "float32-matmul"; ``ta=True`` on the products
    whose first operand autograd passes transposed); ``rows32``: the loss's rows
    rounded to float32 ("float32-row-loss", the value only); ``scale``: a
    factor on dL/dz before it is back-propagated (a mean's 1 / rows, where
    the products round: the caller then leaves the gradient as it is);
    ``nudge``: what the gradient sees of the sigmoids' outputs, p and the
    hidden activations (the horizon probe's, ``perturbed``)."""
    z, h = forward(params, x, matmul)
    loss = _row_losses(z, y, rows32)
    p = _sigmoid(z)
    dz = (p if nudge is None else nudge(p)) - y
    if scale is not None:
        dz = dz * scale
    if h is None:
        return loss, {"W": matmul(x.T, dz, ta=True), "b": _sum_rows(dz)}, z, p
    dh = matmul(dz, np.swapaxes(params["W2"], 1, 2))
    if nudge is not None:
        h = nudge(h)
    da = dh * h * (1.0 - h)
    return loss, {"W1": matmul(x.T, da, ta=True), "b1": _sum_rows(da),
                  "W2": matmul(np.swapaxes(h, 1, 2), dz, ta=True), "b2": _sum_rows(dz)}, z, p


def _sigmoid_primitives_grad(g, a):
    """The gradient through p = 1 / (1 + exp(-a)) as an autodiff tape of its
    primitives computes it (divide, add, exp, negate): g exp(-a) / (1 +
    exp(-a))^2, which keeps every digit of 1 - p where p(1 - p) from a
    rounded p loses them as p nears 1."""
    e = np.exp(-a)
    d = 1.0 + e
    return -(-g * 1.0 / (d * d) * e)


def loss_and_grad_written_out(params, x, y, matmul=_matmul64, rows32: bool = False,
                              scale=None, nudge=None):
    """``loss_and_grad_batch``'s gradient as an autodiff framework computes it
    through the notebook's written-out loss -log(y p + (1 - y)(1 - p)) and
    sigmoids written as 1 / (1 + exp(-z)) (variant "autodiff-written-out"):
    dL/dp = -(y - (1 - y)) / u, then each sigmoid by its primitives."""
    z, h = forward(params, x, matmul)
    loss = _row_losses(z, y, rows32)
    p = _sigmoid(z)
    q = p if nudge is None else nudge(p)
    u = y * q + (1 - y) * (1 - q)
    gu = -1.0 / u if scale is None else -scale / u
    dz = _sigmoid_primitives_grad(gu * y - gu * (1 - y), z)
    if h is None:
        return loss, {"W": matmul(x.T, dz, ta=True), "b": _sum_rows(dz)}, z, p
    dh = matmul(dz, np.swapaxes(params["W2"], 1, 2))
    a = matmul(x, params["W1"]) + params["b1"][:, None, :]
    da = _sigmoid_primitives_grad(dh, a)
    return loss, {"W1": matmul(x.T, da, ta=True), "b1": _sum_rows(da),
                  "W2": matmul(np.swapaxes(h, 1, 2), dz, ta=True), "b2": _sum_rows(dz)}, z, p


def _batched(params):
    return {k: np.asarray(v, dtype=np.float64)[None] for k, v in params.items()}


def loss_and_grad(params: dict, x, y) -> tuple[float, dict[str, np.ndarray]]:
    """One problem's loss and analytic gradient, canonical layout, float64."""
    loss, grad, *_ = loss_and_grad_batch(_batched(params), np.asarray(x, np.float64),
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


def probability(params: dict, points: np.ndarray, rule: str = "sgd") -> np.ndarray:
    """The trained unit's output at arbitrary points (N, n): the sigmoid
    probability, or the Heaviside output for the perceptron rules."""
    z, _ = forward(_batched(params), np.asarray(points, np.float64))
    z = z[0, :, 0]
    return (z > 0).astype(np.float64) if rule in PERCEPTRON_LEVELS else _sigmoid(z)


# ------------------------------------------------------------------ rules
# The textbook rule of each optimizer family (the module docstring of
# harness.recipes writes them out), and the named departures from it that
# frameworks' optimizer objects make.  Each atom is a sentence and a few
# lines below; a variant is a set of atoms.

VARIANTS: dict[str, str] = {
    "eps-hat": "adam with epsilon added to sqrt(s) before the bias correction: "
               "p -= lr_t m / (sqrt(s) + eps), lr_t = lr sqrt(1 - b2^t) / (1 - b1^t) "
               "(Kingma & Ba's 'efficient version'; so eps is effectively eps / "
               "sqrt(1 - b2^t) of the textbook's)",
    "eps-inside-sqrt": "rmsprop with epsilon inside the square root: p -= lr g / sqrt(s + eps)",
    "ones-init": "rmsprop's average of squared gradients starts at 1, not 0",
    "float32-hparams": "every hyperparameter (lr, momentum, betas, eps, rho, weight decay) "
                       "is rounded to float32 before use (a C++ kernel taking them as float), "
                       "the arithmetic stays in the parameters' dtype; with eps-hat, adam's "
                       "step lr_t = lr sqrt(1 - b2^t) / (1 - b1^t) is computed from the "
                       "unrounded hyperparameters (in the caller, in float64) and rounded to "
                       "float32 as a whole",
    "decoupled-weight-decay": "weight decay applied to the parameter, p -= lr wd p, before the "
                              "update, instead of wd p added to the gradient (AdamW-style)",
    "nesterov-chainer": "nesterov as v = mu v - lr g; p += mu^2 v - (1 + mu) lr g, with the "
                        "updated v (Bengio et al. 2013's formula uses the previous one)",
    "nesterov-wd-updated-weight": "nesterov whose stored momentum takes its weight-decay term "
                                  "at the already updated parameter: p' = p - lr (g + wd p + "
                                  "mu (mu v + g + wd p)), then v = mu v + g + wd p' (a kernel "
                                  "writing p' in place before it reads p for the momentum)",
    "float32-rescale-grad": "with reduction mean, the batch's summed-loss gradient is "
                            "multiplied by 1 / rows rounded to float32 (a gradient scale the "
                            "kernel takes as a C float), instead of divided by rows; the loss "
                            "itself is still the exact mean",
    "float32-beta-powers": "adam's bias-correction powers b1^t, b2^t kept as float32 running "
                           "products (b^1 = float32(b), b^t = float32(b^(t-1) b)), lr_t = lr "
                           "sqrt(1 - b2^t) / (1 - b1^t) computed from them in the parameters' "
                           "dtype and not rounded, even with float32-hparams (TF1's "
                           "AdamOptimizer: float32 beta-power variables, the ApplyAdam kernel "
                           "computes lr_t)",
    "float32-casts": "the momentum, the weight decay and the betas of adam's bias-correction "
                     "powers b1^t, b2^t are rounded to float32; the learning rate, adam's "
                     "(1 - b) factors, eps and rho stay exact (Keras 3 on TensorFlow: its "
                     "optimizers pass those through ops.cast(python float, dtype), i.e. "
                     "tf.cast, which makes a float32 tensor first)",
    "autodiff-written-out": "the gradient is autodiff's through the notebook's written-out "
                            "loss -log(y p + (1 - y)(1 - p)) and sigmoids written as 1 / (1 + "
                            "exp(-z)), each differentiated by its primitives: exact where the "
                            "textbook's closed form p - y, from a rounded p, loses the digits "
                            "of 1 - p as p nears 1 (a relative error eps / (1 - p), which an "
                            "adaptive optimizer's g / sqrt(s) turns into a step error once the "
                            "loss is ~1e-8)",
    "float32-matmul": "every matrix product of the forward and backward pass is computed in "
                      "float32: both operands rounded to float32, each product rounded and "
                      "added in float32 in the order torch's CPU kernel takes for the shape, "
                      "the kernel the record names (AVX2: in order along the inner axis up "
                      "to 4; past it, for a truth table's rows times a column, in lanes; 4 "
                      "rows times 12 columns or more, fused multiply-adds; AVX-512: fused "
                      "multiply-adds from 2 terms on, some sums in other orders: "
                      "_matmul_float32), the result back in "
                      "float64 (the gradient reaching a product rounded to float32 with it); "
                      "biases, sigmoids, the loss and the update stay float64 (Keras 3 on "
                      "torch: keras.ops.matmul, and Dense with it, computes float64 operands "
                      "in Keras' promoted dtype, float32 off TensorFlow)",
    "float32-row-loss": "the loss's value (not its gradient) is the sum of each row's "
                        "cross-entropy rounded to float32, and with reduction mean that "
                        "sum rounded to float32 and divided by the rows in float32 (Keras 3 "
                        "on torch: BinaryCrossentropy takes ops.mean over the last axis, a "
                        "single output, and a mean's ops.divide_no_nan, both computed in "
                        "float32 off TensorFlow; the mean's gradient is "
                        "float32-rescale-grad's)",
    "float64-weight-decay": "with float32-hparams, the weight decay stays exact (L2 written "
                            "into the loss in the parameters' dtype, not passed to the "
                            "optimizer)",
}


def _f32(v: float) -> float:
    return float(np.float32(v))


class _Rule:
    """One problem group's update rule: the textbook family, with the atoms
    of ``variant`` applied."""

    def __init__(self, family: str, lr: float, hp: dict, variant: tuple):
        unknown = set(variant) - set(VARIANTS)
        if unknown:
            raise ValueError(f"unknown oracle variant {sorted(unknown)[0]!r}")
        self.family, self.variant = family, frozenset(variant)
        self.exact = (lr, hp)  # as given, for float32-hparams' lr_t
        if "float32-hparams" in self.variant:
            exact = ("weight_decay",) if "float64-weight-decay" in self.variant else ()
            lr, hp = _f32(lr), {k: v if k in exact else _f32(v) for k, v in hp.items()}
        if "float32-casts" in self.variant:
            hp = {k: _f32(v) if k in ("momentum", "weight_decay") else v for k, v in hp.items()}
        self.lr, self.hp, self.t, self.state = lr, hp, 0, {}
        self.powers: list[tuple[float, float]] = []  # float32-beta-powers, by t

    def step(self, name, p, g):
        lr, hp, family, var = self.lr, self.hp, self.family, self.variant
        wd = hp.get("weight_decay", 0.0)
        g_own = g  # without weight decay
        if wd and "decoupled-weight-decay" in var:
            p = p - p * wd * lr
        elif wd:
            g = g + wd * p
        if family == "sgd":
            return p - lr * g
        if family in ("momentum", "nesterov"):
            mu = hp["momentum"]
            if "nesterov-chainer" in var:
                v = mu * self.state.get(name, 0.0) - lr * g
                self.state[name] = v
                return p + mu * mu * v - (1 + mu) * lr * g
            v_old = self.state.get(name, 0.0)
            v = mu * v_old + g
            self.state[name] = v
            if family == "nesterov" and "nesterov-wd-updated-weight" in var:
                p = p - lr * (g + mu * v)
                self.state[name] = mu * v_old + g_own + wd * p
                return p
            return p - lr * (g + mu * v) if family == "nesterov" else p - lr * v
        if family == "adam":
            b1, b2, eps = hp["beta1"], hp["beta2"], hp["eps"]
            m, s = self.state.get(name, (0.0, 0.0))
            m = b1 * m + (1 - b1) * g
            s = b2 * s + (1 - b2) * g * g
            self.state[name] = (m, s)
            if "float32-beta-powers" in var:
                pow1, pow2 = self._f32_powers(b1, b2)
            elif "float32-casts" in var:
                pow1, pow2 = _f32(b1) ** self.t, _f32(b2) ** self.t
            else:
                pow1, pow2 = b1 ** self.t, b2 ** self.t
            if "eps-hat" in var:
                if "float32-hparams" in var and "float32-beta-powers" not in var:
                    # lr_t from the unrounded hyperparameters, rounded as a whole
                    # (MXNet's Adam.update computes it in Python).
                    lr0, hp0 = self.exact
                    lr_t = _f32(lr0 * np.sqrt(1 - hp0["beta2"] ** self.t)
                                / (1 - hp0["beta1"] ** self.t))
                else:
                    lr_t = lr * np.sqrt(1 - pow2) / (1 - pow1)
                return p - lr_t * m / (np.sqrt(s) + eps)
            return p - lr * (m / (1 - pow1)) / (np.sqrt(s / (1 - pow2)) + eps)
        if family == "rmsprop":
            rho, eps = hp["rho"], hp["eps"]
            s = self.state.get(name, 1.0 if "ones-init" in var else 0.0)
            s = rho * s + (1 - rho) * g * g
            self.state[name] = s
            if "eps-inside-sqrt" in var:
                return p - lr * g / np.sqrt(s + eps)
            return p - lr * g / (np.sqrt(s) + eps)
        raise ValueError(f"no oracle rule {family!r}")

    def _f32_powers(self, b1: float, b2: float) -> tuple[float, float]:
        """b1^t and b2^t as float32 running products ("float32-beta-powers"):
        a product of two float32 values is exact in float64, so rounding it
        once is float32 multiplication."""
        powers = self.powers
        if not powers:
            powers.append((_f32(b1), _f32(b2)))
        while len(powers) < self.t:
            q1, q2 = powers[-1]
            powers.append((_f32(q1 * _f32(b1)), _f32(q2 * _f32(b2))))
        return powers[self.t - 1]


def _all_right(params, x, y, matmul=np.matmul):
    z, _ = forward(params, x, matmul)
    return np.all((_sigmoid(z) > 0.5) == (y > 0.5), axis=(1, 2))


def _gradient_descent(params, x, y, problem: "Problem"):
    """The trajectory of a group of problems sharing a recipe: one update
    per batch, batches of rows in table order, one pass per epoch."""
    rows = x.shape[0]
    size = problem.batch_size or rows
    slices = [slice(i, min(i + size, rows)) for i in range(0, rows, size)]
    n = problem.epochs * len(slices)
    rule = _Rule(problem.rule, problem.lr, dict(problem.hp), problem.variant)
    full = len(slices) == 1
    float32_products = "float32-matmul" in problem.variant
    matmul = (functools.partial(_matmul_float32, kernel=problem.kernel) if float32_products
              else _matmul64)
    written_out = "autodiff-written-out" in problem.variant
    rows32 = "float32-row-loss" in problem.variant
    wanted = y > 0.5

    def mean(loss, count):
        if rows32:  # the sum rounded to float32 and divided in float32
            return (loss.astype(np.float32) / np.float32(count)).astype(np.float64)
        return loss / count

    # The horizon probe's streams, when it runs: fixed per stream, so a
    # probe's trajectory does not depend on what else is solved with it.
    signs = np.random.default_rng(2 * problem.stream)
    nudges = np.random.default_rng(2 * problem.stream + 1)

    def nudge(p):
        """Each sigmoid output moved by PROBABILITY_JITTER_ULPS ulps, either way."""
        return p + nudges.choice((-1.0, 1.0), p.shape) * PROBABILITY_JITTER_ULPS * np.spacing(p)

    def gradient(params, x, y, scale=None):
        return (loss_and_grad_written_out if written_out else loss_and_grad_batch)(
            params, x, y, matmul, rows32, scale, nudge if problem.jitter else None)
    curve = np.empty((y.shape[0], n))
    right = np.empty((y.shape[0], n + 1), dtype=bool)
    u = 0
    for _ in range(problem.epochs):
        for sl in slices:
            count = sl.stop - sl.start
            rescale = "float32-rescale-grad" in problem.variant
            if problem.reduction == "mean" and float32_products:
                # float32 products: the mean's 1 / rows reaches dL/dz before
                # they round it, as autodiff of loss / rows carries it.
                loss, grad, z, p = gradient(params, x[sl], y[:, sl],
                                            _f32(1 / count) if rescale else 1 / count)
                loss = mean(loss, count)
            else:
                loss, grad, z, p = gradient(params, x[sl], y[:, sl])
                if problem.reduction == "mean":
                    loss, grad = mean(loss, count), {
                        k: v * _f32(1 / count) if rescale else v / count
                        for k, v in grad.items()}
            curve[:, u] = loss
            right[:, u] = (np.all((p > 0.5) == wanted, axis=(1, 2)) if full
                           else _all_right(params, x, y, matmul))
            rule.t += 1
            params = {k: rule.step(k, v, grad[k]) for k, v in params.items()}
            if problem.jitter:
                params = {k: v * (1 + problem.jitter * signs.choice((-1.0, 1.0), v.shape))
                          for k, v in params.items()}
            u += 1
    loss, _, z, p = loss_and_grad_batch(params, x, y, matmul, rows32)
    if problem.reduction == "mean":
        loss = mean(loss, rows)
    right[:, n] = np.all((p > 0.5) == wanted, axis=(1, 2))
    return params, curve, loss, p[:, :, 0], right


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
    if first.rule in OPTIMIZERS:
        final, curve, loss, probs, right = _gradient_descent(params, x, y, first)
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
            todo.setdefault((p.arch, shapes, p.rule, p.lr, p.epochs, p.hp, p.batch_size,
                             p.reduction, p.variant, p.jitter, p.stream, p.kernel),
                            []).append(p)
    if len(_CACHE) + sum(map(len, todo.values())) > _CACHE_MAX:
        _CACHE.clear()
    for group in todo.values():
        _CACHE.update(zip(group, _solve_group(group)))
    return [_CACHE[p] for p in problems]


def trajectory(record) -> Trajectory:
    return solve([Problem.of(record)])[0]


# ---------------------------------------------------------------- verdicts

VERDICT_FIELDS = ("oracle_dev", "tolerance", "agrees", "first_departure", "departed",
                  "learned_epoch", "rule", "explained_by", "unjudged", "horizon")


# The horizon probe's error per update: every parameter times 1 +- 256 ulps
# of the cell's dtype (~6e-14 at float64), signs from a fixed random stream.
# It has to exceed what one update's round-off puts into any implementation
# (a few operations, half an ulp each; the notebook's written-out loss
# -log(y p + (1 - y)(1 - p)) loses more of its gradient in 1 - p as p nears
# 1), or a framework's own round-off is amplified sooner than the probe's
# and an honest cell is called a departure.  Measured on RMSprop (lr 0.125,
# rho 0.875, float64, single layer, 7 gates x seeds 0-2), whose trajectories
# amplify round-off ~2x per update once the loss falls below ~0.2: a 1-ulp
# probe leaves the band within a step or two of where torch and chainer do,
# 16 ulps sooner but not on every cell, 256 ulps before all 23 departing
# cells.  A parameter perturbation, not a gradient one: RMSprop and Adam
# divide each gradient by its own running size, so an error proportional to
# the gradient cancels.  Formula departures are far larger (a hyperparameter
# rounded to float32 is ~1e-8) and show from the first updates.
JITTER_ULPS = 2.0 ** 8
# ... and every sigmoid output the gradient reads (the probabilities p, the
# hidden activations h) moved by this many ulps (float64), either way.  The
# textbook gradient takes 1 - p (in p - y) and 1 - h (in h (1 - h)) from a
# rounded p or h: as they near 1 their low digits are those of the
# framework's exp and division (Eigen's, torch's, numpy's differ by an
# ulp), a relative error of ulp / (1 - p) in a row's gradient (1e-6 at
# 1 - p = 1e-10).  SGD moves by the gradient, so that error stays ~1e-16 of
# a step; RMSprop and Adam divide by the gradient's own running size, so an
# update carries it whole, and over hundreds of updates past convergence
# the final parameters differ by up to ~1e-7 while the loss curve holds.
# Measured (RMSprop lr 0.5, multi-layer, float64, seeds 0-2): with rho 0.9,
# eps 1e-8, optax's, MXNet's and Keras-on-JAX's logits losses (exact
# 1 - p) 9.3e-8 from the oracle, TensorFlow 9.2e-9; with rho 0.875, eps
# 2^-27, multi xor seed 1, torch's, TensorFlow's and Chainer's sigmoid
# (their h) 4e-8 to 1.8e-7.  The parameter probe alone stays inside the
# band there (final state 1.6e-12 from the oracle's); with one ulp in p and
# h the four streams end 4e-8 to 4e-7 from it.
PROBABILITY_JITTER_ULPS = 1.0


# The probe runs this many times, with independent sign streams, and the
# horizon is the earliest: one stream's errors can cancel along the
# direction round-off is amplified in, and then it leaves the band steps
# after an implementation does.  Measured: RMSprop lr 0.5, rho 0.99, eps
# 1e-8, multi and seed 1 (float64): torch.optim's loss curve leaves the
# band at update 172, stream 0 at 173 (the amplification is ~3x per update
# there); the earliest of 4 streams is at or before it.
PROBE_STREAMS = 4


def perturbed(problem: Problem, dtype: str, stream: int = 0) -> Problem:
    """The same problem with an error of JITTER_ULPS ulps of ``dtype`` put
    into every parameter after every update, and PROBABILITY_JITTER_ULPS
    into every sigmoid output its gradient reads."""
    return dataclasses.replace(problem, jitter=float(JITTER_ULPS * np.finfo(dtype).eps),
                               stream=stream)


def horizon(problem: Problem, traj: Trajectory, curve_tol: float,
            dtype: str = "float64", params_tol: float | None = None) -> int | None:
    """The first loss-curve index where the oracle's own trajectory, with
    round-off-sized errors put in at every update (``perturbed``: every
    parameter, every sigmoid output the gradient reads), leaves the band
    around it, the earliest of PROBE_STREAMS probes: past it, round-off is
    amplified beyond the tolerance (a plateau an adaptive optimizer
    normalises its way across, chaotic dynamics, a gradient whose 1 - p or
    1 - h is decided by the rounding of p or h), so no implementation can be judged
    there.  None when the trajectory is well-conditioned to its end."""
    found = []
    for other in solve([perturbed(problem, dtype, k) for k in range(PROBE_STREAMS)]):
        first = first_departure([*other.loss_curve, other.loss_final],
                                [*traj.loss_curve, traj.loss_final], curve_tol)
        if first is None and params_tol is not None and not (
                relative_deviation(other.params_final, traj.params_final) <= params_tol):
            # The curve holds, but the end state is amplified past its
            # band: the horizon is the final state (index ``updates``).
            first = len(traj.loss_curve)
        if first is not None:
            found.append(first)
    return min(found, default=None)


def first_departure(curve, oracle_curve, tol: float) -> int | None:
    """First index where curve leaves the band around oracle_curve (see module doc)."""
    got = (curve.astype(np.float64) if isinstance(curve, np.ndarray) else
           np.array([np.nan if v is None else v for v in curve], dtype=np.float64))
    want = np.asarray(oracle_curve, dtype=np.float64)
    with np.errstate(invalid="ignore"):
        outside = ~(np.abs(got - want) / np.maximum(np.abs(want), 1.0) <= tol)
    return int(np.argmax(outside)) if outside.any() else None


def _with_final(curve, final) -> np.ndarray:
    """A loss curve with its final loss appended (None, as read from strict
    JSON, is NaN)."""
    if isinstance(curve, np.ndarray):
        return np.append(curve.astype(np.float64), np.nan if final is None else final)
    return np.array([np.nan if v is None else v for v in (*curve, final)], dtype=np.float64)


def _bands(record, traj: Trajectory, tol: float, curve_tol: float):
    dev = relative_deviation(record.params_final, traj.params_final)
    first = first_departure(_with_final(record.loss_curve, record.loss_final),
                            _with_final(traj.loss_curve, traj.loss_final), curve_tol)
    departed = [*(["params_final"] if not dev <= tol else []),
                *(["loss_curve"] if first is not None else [])]
    return dev, first, departed


def departures(record) -> tuple[str, ...]:
    """The variant atoms the record's backend names for its cell (none for
    a backend this process does not know, nor where "float32-matmul" is
    named and the record's kernel is not one whose orders were measured
    up to its hidden width: the cell then stays unexplained)."""
    from harness import registry  # registry imports the contract, not this module
    atoms = registry.departures(record.cell)
    if "float32-matmul" in atoms and not float32_orders_measured(float32_kernel(record),
                                                                  record.hidden):
        return ()
    return atoms


def verdict(record, traj: Trajectory, variant: Trajectory | None = None,
            atoms: tuple[str, ...] = ()) -> dict:
    """The verdict fields against the textbook trajectory ``traj`` and, for a
    cell that departs from it, against ``variant`` (the trajectory of the
    atoms its backend names).  A departure that starts only past the
    trajectory's ``horizon`` is not one: the cell agrees up to its horizon,
    which the verdict records."""
    steps = len(record.loss_curve)
    rule = rule_of(record.level, record.optimizer)
    try:
        tol = tolerance(record.dtype, steps, record.optimizer)
        curve_tol = loss_tolerance(record.dtype, steps, record.optimizer)
    except NoTolerance as exc:
        dev = relative_deviation(record.params_final, traj.params_final)
        return {"oracle_dev": dev, "tolerance": None, "agrees": None, "first_departure": None,
                "departed": None, "learned_epoch": None, "rule": rule, "explained_by": None,
                "unjudged": str(exc), "horizon": None}
    def within_horizon(t: Trajectory, first, departed, problem_atoms) -> tuple[bool, int | None]:
        if not departed:
            return True, None
        if record.dtype != "float64":
            # float32 bounds are measured round-off (compare.py), amplification
            # included: no horizon is needed, and none is granted.
            return False, None
        h = horizon(Problem.of(record, problem_atoms), t, curve_tol, record.dtype, tol)
        return (h is not None and (first is None or first >= h)), h

    dev, first, departed = _bands(record, traj, tol, curve_tol)
    vfirst = vdeparted = None
    if departed and variant is not None:
        _, vfirst, vdeparted = _bands(record, variant, tol, curve_tol)
    # A variant that reproduces the whole trajectory explains a departure
    # before a horizon is considered: "agrees up to where round-off takes
    # over" says less than the named formula that reproduces every update.
    if departed and vdeparted == []:
        agrees, h = False, None
    else:
        agrees, h = within_horizon(traj, first, departed, ())
    explained, learned = None, traj if agrees and h is None else None
    if agrees:
        departed = []
    elif vdeparted is not None:
        ok, vh = within_horizon(variant, vfirst, vdeparted, atoms)
        if ok:
            explained, h = "+".join(atoms), vh
            learned = variant if vh is None else None
    return {"oracle_dev": dev, "tolerance": tol, "agrees": agrees,
            "first_departure": None if agrees else first, "departed": departed,
            "learned_epoch": learned.learned_epoch if learned else None, "rule": rule,
            "explained_by": explained, "unjudged": None,
            "horizon": h if agrees or explained else None}


def judge(record, traj: Trajectory | None = None, variant: Trajectory | None = None):
    """The record with its verdict fields filled (None unless status is ok)."""
    if record.status != "ok":
        return dataclasses.replace(record, **dict.fromkeys(VERDICT_FIELDS))
    atoms = departures(record)
    traj = traj or trajectory(record)
    if atoms and variant is None:
        variant = solve([Problem.of(record, atoms)])[0]
    return dataclasses.replace(record, **verdict(record, traj, variant, atoms))


def judge_all(records: list) -> list:
    """``judge`` for many records, their trajectories computed in batches."""
    ok = [r for r in records if r.status == "ok"]
    atoms = {id(r): departures(r) for r in ok}
    problems = [Problem.of(r) for r in ok]
    variants = [Problem.of(r, atoms[id(r)]) for r in ok if atoms[id(r)]]
    solved = solve(problems + variants)
    trajs = dict(zip(map(id, ok), solved))
    extra = iter(solved[len(problems):])
    var = {id(r): next(extra) for r in ok if atoms[id(r)]}
    return [judge(r, trajs.get(id(r)), var.get(id(r))) for r in records]
