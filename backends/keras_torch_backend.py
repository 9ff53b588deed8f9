"""Keras 3 on PyTorch: the tensorflow row's Keras code with ``KERAS_BACKEND=torch``.

* ``raw``: the canonical parameters as torch tensors with
  ``requires_grad``, the notebook's loss in ``keras.ops`` (which run as torch
  operations), ``loss.backward()``, the family's textbook update
  (``harness.recipes.Textbook`` with ``torch.sqrt``) copied into each
  parameter under ``torch.no_grad()``; gradients are dropped, not zeroed,
  because the rule may keep a gradient tensor as its state.
* ``module``: ``keras.Sequential`` of ``Dense`` and
  ``BinaryCrossentropy(from_logits=True, reduction='sum')``; on this
  backend a Keras variable's value is a ``torch.nn.Parameter``, so the
  hand-written step is torch's own: ``backward()``, then each parameter
  moved under ``no_grad`` and its gradient cleared.
* ``optimizer``, ``custom``: ``compile(<the family's Keras optimizer>)`` +
  ``fit`` exactly as on TensorFlow (backends/keras_common.py), unshuffled
  batches.  Keras on torch has its own optimizer classes
  (keras/src/backend/torch/optimizers/: ``torch._foreach_*`` forms of the
  same formulas; weight decay as ``p *= 1 - wd lr``), departing as Keras'
  do: ``eps-hat``, ``eps-inside-sqrt``, ``decoupled-weight-decay``.

Modes: ``eager`` only.  Keras can hand its torch train step to
``torch.compile`` (``jit_compile=True``), which this row does not take on:
the torch row measures ``torch.compile`` directly.

Float64 (a finding, explained by oracle variants): Keras 3's type
promotion maps float64 to float32 on every backend but TensorFlow
(``keras.backend.result_type``; keras/src/backend/common/dtypes.py
``BIT64_TO_BIT32_DTYPE``, "aligned with JAX's default behavior"), whatever
floatx says, and on torch three ``keras.ops`` compute in it:

* ``matmul`` casts both operands to that result type and returns a float32
  product; the bias add (torch's promotion) brings it back to float64.
  ``Dense`` uses it, and so does our raw level's written-out loss, so every
  forward product runs in float32, and torch's autograd of it likewise
  computes both gradient products in float32 from the incoming gradient
  rounded to float32 (then cast back).  All of them are ``torch.mm`` of
  2-D float32 tensors (MKL sgemm on the CPU wheel).  Measured (torch 2.13,
  CPU, MKL 2024.2, AVX2): each product rounded to float32 and added in
  float32 in order along the inner axis for inner axes up to 4; past 4, a
  4-row matrix times a column (the output layer, ``--hidden`` >= 5) sums
  the first (K - 1) % 4 + 1 products in order and the rest in 2 or 4 lanes,
  a 2- or 3-row one (batches of 2 or 3 rows) in order up to 11 and in lanes
  from 12, and 4 rows times 12 columns or more (the first layer from
  ``--hidden 12``) is a fused multiply-add chain; all of it bit for bit,
  for hidden units 1 to 16 (harness.oracle._matmul_float32).  Oracle atom
  ``float32-matmul``.
* ``BinaryCrossentropy`` (module, optimizer, custom) takes ``ops.mean``
  over the last axis, a single output, in float32: each row's loss value is
  rounded to float32 (its gradient, 1 per row, is exact); with reduction
  mean, ``ops.divide_no_nan`` divides the sum in float32, which rounds the
  loss again and scales the gradient by float32(1 / rows).  Atoms
  ``float32-row-loss`` and, for mean, ``float32-rescale-grad``.  The raw
  level's ``ops.sum`` and its ``/ rows`` stay float64.

``departures`` names them for every float64 cell with at most 16 hidden
units (with Keras' optimizer atoms).  Measured (seed 0, lr 0.5, 100/1000
steps; final parameters' deviation from the textbook -> from the variant):
sgd single nand 2.1e-8 -> 0, single xor 8.8e-9 -> 8e-17, multi nand 4.3e-9
-> 0, multi xor 2.9e-9 -> 0 at every level (raw, module, optimizer,
custom), loss curves within 2e-15 (raw) and bit-identical (others); all
seven gates x five families single-layer at every level, and multi nand/xor
x five families, reproduced within 1e-15 (loss curves 1e-12) except raw multi RMSprop (nand
1.7e-10, xor 6.8e-10: torch's sigmoid backward p(1 - p), amplified by
RMSprop, within 1e-9); batch size 3 with mean reduction and weight decay
0.01 (sgd, adam, rmsprop), six gates: all explained.  More hidden units
(sgd, multi nand and xor, seeds 0-1, raw and module; textbook -> the
in-order float32 sum -> the variant): ``--hidden 6`` 1.1e-7..3.4e-7 ->
9.3e-8..2.0e-7 -> <= 1.6e-16, ``--hidden 8`` (seed 0: nand 1.0e-6 ->
9.7e-8 -> 3.1e-15 raw, 4.4e-16 module; xor 6.6e-8 -> 3.2e-7 -> 2.1e-16),
``--hidden 16`` 1.0e-7..4.6e-7 -> 1.4e-7..4.1e-7 -> <= 2e-15; batch size 3
with mean reduction at 12 hidden units (xor, raw and module) and batch
size 2 at 16 (nand, raw and optimizer): explained, <= 1.3e-14.  Past 16
hidden units (unmeasured) ``departures`` leaves the cells unnamed, a plain
departure.  The summation orders are the CPU kernel's, so each record names its
kernel (``info["sgemm"]``: ``sgemm_kernel``, a fingerprint of
``torch.mm`` on fixed operands, about 4 ms once per process) and the
variant takes that kernel's orders (harness.oracle.FLOAT32_KERNELS).  On
an AVX-512 Intel Xeon (same wheel, same MKL; ``mkl-avx512``) ``mm`` fuses
multiply-adds from two terms on (4 x 2 times 2 x k: ``fma(a1, b1, a0
b0)``), takes transposed operands (autograd's weight gradients) as a
fused chain, and adds 2- to 4-row products times a column in other
orders; measured up to 4 hidden units (every order of every sum tree,
with and without fused multiply-adds, tried on 200 operand pairs per
shape: exactly one matched each).  There sgd multi xor (seed 0, raw and
module), 6.3e-9 from the textbook and 3.4e-9 from the AVX2 orders, is
within 4.4e-16 of the variant (multi nand and xor, seeds 0-1, every
level).  Past a kernel's measured width, and on a
kernel no fingerprint names (``unmeasured:<hash>``), the cells stay
unexplained (``harness.oracle.departures``), the known departure named.
A record without ``info["sgemm"]`` (written before kernels were
recorded) ran on the AVX2 kernel, the only one modelled then.
``--batch-seeds``' batched raw level runs torch's broadcast
``torch.matmul``, which is ``bmm``, whose float32 sums are not ``mm``'s
(in order past 4 hidden units on the EPYC, ``--hidden 8``: ~1e-7 from the
variant; without fused multiply-adds on the Xeon, 2 hidden units: up to
7.8e-6 from the per-seed record), so ``batch_gap`` runs every float64
cell per seed.  Writing the matmul with
torch would hide what Keras does, so we don't; ``known_departure`` still
names the behaviour for every float64 cell: it departs from the textbook
(and the numpy reference), which the contract suite's checks measure, even
where the variant explains it.  float32 cells are unaffected.  ``fit``'s
own logged loss carries the same float32 round-off; the loss curves are
each batch's loss (``BatchLoss``).

Conventions adapted: those of backends/keras_common.py; the worker sets
``KERAS_BACKEND=torch`` before Keras is imported (``ENV``).
"""
from __future__ import annotations

import functools

import numpy as np

from backends import keras_common
from harness.oracle import FLOAT32_KERNELS
from harness.tasks import TrainResult, TrainSpec, batches

NAME = "keras-torch"
IMPORTS = ("torch", "keras")
ENV = {"KERAS_BACKEND": "torch"}
UNSUPPORTED: dict[str, str] = {}


# Keras 3's type promotion (keras/src/backend/common/dtypes.py,
# BIT64_TO_BIT32_DTYPE, "aligned with JAX's default behavior") maps float64
# to float32 on every backend but TensorFlow, whatever floatx says.


# The widest inner axis on which ``float32-matmul`` reproduces some CPU
# kernel's float32 products bit for bit (measured per kernel:
# harness.oracle.FLOAT32_KERNELS, which also decides per record).
FLOAT32_MATMUL_MAX_HIDDEN = max(FLOAT32_KERNELS.values())


def known_departure(cell) -> str | None:
    if cell.dtype == "float64":
        return ("Keras 3 promotes float64 to float32 off TensorFlow (keras.backend.result_type), "
                "so keras.ops.matmul, and Dense with it, computes float64 inputs in float32 on "
                "torch (oracle variant float32-matmul, the CPU kernel's summation orders: "
                + ", ".join(f"{name} up to {width} hidden units"
                            for name, width in FLOAT32_KERNELS.items()) + ")")
    return None


def departures(cell) -> tuple[str, ...]:
    """Keras' optimizer atoms (backends/keras_common.py) and, at float64, at
    every level, "float32-matmul": every matmul of the forward and backward
    pass computed in float32; with BinaryCrossentropy (module, optimizer,
    custom) "float32-row-loss" and, for a mean, "float32-rescale-grad"
    (module docstring).  None of them past FLOAT32_MATMUL_MAX_HIDDEN hidden
    units, where no kernel's summation orders are measured (the oracle
    drops them past the record's own kernel's width)."""
    atoms = keras_common.departures(cell)
    if cell.dtype != "float64" or (cell.hidden or 0) > FLOAT32_MATMUL_MAX_HIDDEN:
        return atoms
    if cell.level == "raw":
        # The written-out loss sums its rows with ops.sum, in float64, and
        # divides a mean by the rows in float64.
        return (*atoms, "float32-matmul")
    # BinaryCrossentropy's ops.mean over the last axis runs in float32: each
    # row's loss is rounded, and a mean's 1 / rows reaches the gradient
    # through that float32 cast.
    rescale = ("float32-rescale-grad",) if cell.reduction == "mean" else ()
    return (*atoms, "float32-matmul", "float32-row-loss", *rescale)
optimizer_defaults = keras_common.optimizer_defaults


def framework_version() -> str:
    import keras
    import torch
    return f"keras {keras.__version__} (torch {torch.__version__})"


def _check():
    import keras

    if keras.backend.backend() != "torch":
        raise RuntimeError(f"Keras runs on {keras.backend.backend()!r} in this process, not torch")


def _np(t) -> np.ndarray:
    return t.detach().cpu().numpy().copy()


def _raw(spec: TrainSpec):
    import keras
    import torch

    _check()
    params = {k: torch.from_numpy(v.copy()).requires_grad_() for k, v in spec.params.items()}
    mean = spec.reduction == "mean"
    return params, lambda x, y: keras_common.written_out_loss(keras.ops, params, x, y, mean)


def _data(spec: TrainSpec, rows=slice(None)):
    import torch
    return torch.from_numpy(spec.x[rows]), torch.from_numpy(spec.y[rows])


def loss_and_grad(spec: TrainSpec):
    """The raw level's loss and torch's gradient at ``spec.params``."""
    params, loss_of = _raw(spec)
    loss, _ = loss_of(*_data(spec))
    loss.backward()
    return loss.item(), {k: _np(v.grad) for k, v in params.items()}


def _textbook_step(rule, params: dict) -> None:
    """One hand-written update: each parameter replaced in place by the
    rule's step from its gradient, which is then dropped (not zeroed: the
    rule may keep the gradient tensor as its state)."""
    import torch

    rule.tick()
    with torch.no_grad():
        for name, p in params.items():
            p.copy_(rule.step(name, p, p.grad))
            p.grad = None


def train_raw(spec: TrainSpec) -> TrainResult:
    import torch

    params, loss_of = _raw(spec)
    rule = keras_common.textbook(spec, torch.sqrt)
    data = [_data(spec, rows) for rows in batches(spec.cell)]
    start = {k: _np(v) for k, v in params.items()}
    curve = []
    for _ in range(spec.epochs):
        for x, y in data:
            loss, _ = loss_of(x, y)
            curve.append(loss.item())
            loss.backward()
            _textbook_step(rule, params)
    with torch.no_grad():
        loss, p = loss_of(*_data(spec))
    return TrainResult(params_start=start, params_final={k: _np(v) for k, v in params.items()},
                       loss_curve=curve, loss_final=loss.item(), probs=_np(p).reshape(-1),
                       info=_info(spec), hparams=rule.hp)


def _hand_train(model, loss_fn, data, spec: TrainSpec, rule) -> list[float]:
    _check()
    params = {str(i): v.value for i, v in enumerate(model.trainable_variables)}
    curve = []
    for _ in range(spec.epochs):
        for x, y in data:
            loss = loss_fn(y, model(x, training=True))
            curve.append(loss.item())
            for p in params.values():
                p.grad = None
            loss.backward()
            _textbook_step(rule, params)
    return curve


# torch.mm's float32 results on fixed operands (4 x 6 and 4 x 9 times a
# column, 4 x 2 times 2 x 12, 3 x 13 times a column; 64 draws each), hashed:
# which CPU kernel's summation orders this process gets, by the name the
# oracle's float32-matmul variant models it under (harness.oracle
# FLOAT32_KERNELS).  Both measured on the torch 2.13 CPU wheel (MKL 2024.2).
SGEMM_KERNELS = {
    "0b02bfc6876430077ffca54d0b45083fe3e51efa3308ccab7a7c83cc6f127869": "mkl-avx2",  # AMD EPYC
    "b71b77842753046b5ba0da4f811d229bcfed41bf22429f4342d81e0447ae6d54": "mkl-avx512",  # Xeon
}


@functools.lru_cache(maxsize=None)
def sgemm_kernel() -> str:
    """The name of this CPU's float32 matmul kernel, or
    ``unmeasured:<fingerprint>`` (recorded as ``info["sgemm"]``; about 4 ms,
    once per process)."""
    import hashlib

    import torch

    rng = np.random.default_rng(2026)
    out = []
    for shape_a, shape_b in (((4, 6), (6, 1)), ((4, 9), (9, 1)), ((4, 2), (2, 12)),
                             ((3, 13), (13, 1))):
        for _ in range(64):
            a = torch.tensor(rng.normal(size=shape_a), dtype=torch.float32)
            b = torch.tensor(rng.normal(size=shape_b), dtype=torch.float32)
            out.append(torch.mm(a, b).numpy().tobytes())
    digest = hashlib.sha256(b"".join(out)).hexdigest()
    return SGEMM_KERNELS.get(digest, f"unmeasured:{digest[:16]}")


def _info(spec: TrainSpec) -> dict:
    import torch
    return {"threads": torch.get_num_threads(), "sgemm": sgemm_kernel()}


def _fit_data(spec: TrainSpec) -> dict:
    _check()
    return keras_common.array_data(spec)


ROW = keras_common.KerasRow(hand_train=_hand_train, fit_data=_fit_data,
                            jit_compile=lambda mode: False, info=_info)
TRAINERS = keras_common.levels(train_raw, ROW)
MODE_GAPS = {"compiled": "Keras can hand its torch train step to torch.compile "
                         "(jit_compile=True); this row does not take that on (the torch row "
                         "measures torch.compile directly)",
             "graph": "Keras 3 on PyTorch has no graph-and-session mode"}


# ---------------------------------------------------- raw level, batched

def _train_seeds(spec, params, rule, data):
    """The batched updates, as ``train_raw``'s: ``backward()`` of the sum of
    the seeds' losses (each seed's own gradient: the sum's is exactly 1 per
    seed), the rule in place; each update's losses are kept as tensors and
    read once at the end."""
    import keras
    import torch

    _check()
    mean = spec.reduction == "mean"
    curve = []
    for _ in range(spec.epochs):
        for x, y in data:
            loss, _ = keras_common.written_out_loss_seeds(keras.ops, params, x, y, mean)
            curve.append(loss.detach())
            loss.sum().backward()
            _textbook_step(rule, params)
    return params, torch.stack(curve, dim=1).numpy()


def _param(a):
    import torch
    return torch.from_numpy(a.copy()).requires_grad_()


def _tensor(a):
    import torch
    return torch.from_numpy(a.copy())


def _sqrt(v):
    import torch
    return torch.sqrt(v)


RAW_SEEDS = keras_common.RawSeeds(param=_param, tensor=_tensor, sqrt=_sqrt, train=_train_seeds,
                                  info=_info)
BATCHED = {"raw": lambda spec: keras_common.train_raw_batch(spec, RAW_SEEDS)}

def batch_gap(cell) -> str | None:
    """The batched raw level's broadcast matmul runs ``bmm``, whose float32
    sums are not the per-seed ``mm``'s on every CPU: on an AVX2 EPYC both
    sum in order up to 4 hidden units and ``mm`` in lanes past them, on an
    AVX-512 Xeon ``mm`` fuses multiply-adds from 2 terms on (measured: up
    to 7.8e-6 between batched and per-seed float64 multi xor, 2 hidden
    units).  The float64 cells, whose matmuls are float32 (module
    docstring), run per seed, as a user's would; float32 cells' products
    agree (bit-identical on both CPUs)."""
    if cell.dtype == "float64":
        return ("keras-torch computes float64 matmuls in float32, and its batched matmul (bmm) "
                "does not sum float32 products as the per-seed matmul (mm) does on every CPU: "
                "float64 cells run per seed")
    return None
# Measured (tests/test_batch.py samples, 5 seeds): torch's batched matmul
# (x broadcast over the seed axis) rounds a few sums differently.  Float64
# cells never batch (``batch_gap``): their bound is float32's.
BATCH_BOUNDS = {"raw": ({"float64": 1e-6, "float32": 1e-6},
                        "torch's broadcast matmul rounds differently from one seed's "
                        "(measured 2.4e-7 float32 on an AVX2 EPYC, bit-identical on an AVX-512 "
                        "Xeon); float64 cells run per seed (batch_gap)")}
