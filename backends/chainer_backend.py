"""Chainer (define-by-run, numpy arrays underneath).

* ``raw``: ``chainer.Variable`` parameters, ``F.matmul`` / ``F.sigmoid`` and
  the notebook's written-out loss with ``F.log`` / ``F.sum`` (``F.mean`` for
  reduction mean), ``loss.backward()``, the update
  (``harness.recipes.Textbook``, every optimizer family, ``numpy.sqrt``)
  written on ``param.array`` in place, ``cleargrad()``.
* ``module``: ``chainer.Sequential(L.Linear, F.sigmoid, L.Linear)`` and
  ``F.sigmoid_cross_entropy``; the same written-out update over
  ``model.params()``.
* ``optimizer``: the same model with Chainer's own optimizer object:
  ``optimizers.SGD``, ``MomentumSGD``, ``NesterovAG``, ``Adam`` (its
  learning rate is ``alpha``), ``RMSprop`` (rho is ``alpha``, eps outside
  the square root by default: the textbook), set up on the model, one
  ``update()`` per batch.
* ``custom``: the notebook's user-style ``chainer.Chain`` subclasses, links
  registered in ``init_scope()`` and the forward pass in ``__call__``,
  trained with the same optimizer objects.  Chainer is define-by-run: eager
  is its only mode.
* ``raw``, batched (``--batch-seeds``, ``BATCHED``): every parameter with a
  leading seed axis (W (S, n, k), biases held as (S, 1, k)), ``F.matmul``
  of the shared x (R, n) against W (S, n, k), which is numpy's matmul
  looping over the seeds, one (R, n) @ (n, k) product each as per seed,
  the loss summed (or averaged) over axes (1, 2), one per seed, and
  ``F.sum`` of the seeds' losses differentiated (its gradient is exactly 1
  per seed).  Bit-identical to per seed (tests/test_batch.py; also
  measured on every family, weight decay, batch sizes 1-3, ``--hparams
  defaults``, zeros init, both dtypes).  1000 seeds of multi xor float64,
  1000 epochs: 2.1 s batched against 0.69 s per seed, ~330x (2 shared
  cores).  Module and optimizer levels run per seed (links hold one set of
  parameters).

Conventions adapted:

* ``L.Linear`` stores W as (out, in): canonical W is transposed on load and
  on read-back.  Parameters are loaded through ``initialW`` /
  ``initial_bias`` arrays, so no random initializer runs.
* ``F.sigmoid_cross_entropy`` cannot sum: ``reduce`` is ``'mean'`` or
  ``'no'``, and with ``reduce='mean'`` it divides by the number of labels
  (``normalize=True``) or, with the notebook's ``normalize=False``, by the
  batch size (``len(x)``) -- still a mean over rows, so each step is a
  quarter of ours on 4 rows: why the notebook's Chainer NAND weights (-2.1)
  trail its PyTorch ones (-4.2) after the same 100 steps.  Reduction
  ``sum``: ``reduce='no'`` and ``F.sum``.  Reduction ``mean``: its default,
  ``F.sigmoid_cross_entropy(z, t)`` (one label per row, so both
  normalizations divide by the batch's rows, exactly).
* ``F.sigmoid_cross_entropy`` wants integer labels (``t.dtype.kind == 'i'``):
  the targets are passed as int32.
* Chainer's default dtype (``chainer.config.dtype``) is float32, and links
  create their parameters in it: even ``initialW=<float64 array>`` yields a
  float32 W.  Training runs inside ``chainer.using_config('dtype', ...)`` set
  to the cell's dtype, a thread-local setting restored on exit.
* Gradients accumulate across ``backward()`` calls: they are cleared every
  step.
* Weight decay is ``chainer.optimizer_hooks.WeightDecay(rate)``, added with
  ``optimizer.add_hook``: before each update it adds ``rate * p`` to the
  gradient, the textbook's L2, for every family.  (Adam's own
  ``weight_decay_rate`` is decoupled, AdamW-style, and is not used: the
  hook is Chainer's idiom for L2 and the same for every family.)
* The record reads the hyperparameters back from the optimizer object
  (``lr`` or Adam's ``alpha``, ``momentum``, ``beta1``, ``beta2``, ``eps``,
  RMSprop's ``alpha`` as rho) and the weight decay from the hook.  With
  ``--hparams defaults`` only the learning rate is passed; Chainer's
  defaults (``optimizer_defaults``, read from a fresh object) are momentum
  0.9 for MomentumSGD and NesterovAG, adam 0.9 / 0.999 / 1e-8, RMSprop
  alpha 0.99 (not the harness's 0.9) and eps 1e-8, no weight decay.
* Hyperparameters are Python floats applied to numpy arrays of the cell's
  dtype: a float64 run uses them unrounded.

How Chainer's optimizer objects depart from the textbook rule
(``departures``; each atom is ``harness.oracle.VARIANTS``' and is judged:
measured on float64 cells of 60 updates, lr 0.125, params_final relative
deviation from the textbook / from the variant):

* ``nesterov-chainer``: ``NesterovAG`` does ``v = mu v - lr g; p += mu^2 v
  - (1 + mu) lr g`` with the updated v (Bengio et al.'s formula, which is
  the textbook's, has the previous one): 1.6e-2 single-layer, 0.29
  multi-layer / 2e-16, 4e-15.
* ``eps-hat``: ``Adam`` steps ``p -= alpha_t m / (sqrt(v) + eps)`` with
  ``alpha_t = alpha sqrt(1 - b2^t) / (1 - b1^t)``: eps before the bias
  correction.  1.3e-7 single-layer, 8e-6 multi-layer / 2e-16, 4e-15.
  (Its moments are updated as ``m += (1 - b1) (g - m)``, the textbook up to
  round-off.)
* SGD, MomentumSGD (``v = mu v - lr g; p += v``: the textbook's velocity
  times -lr) and RMSprop agree with the textbook to round-off.
"""
from __future__ import annotations

import functools

import numpy as np

from harness.recipes import Textbook, in_effect
from harness.tasks import (HYPERPARAMETERS, BatchResult, BatchSpec, TrainResult, TrainSpec,
                           batches, hyperparameters, updates)

NAME = "chainer"
IMPORTS = ("chainer",)
UNSUPPORTED: dict[str, str] = {}

# Optimizer family -> (its class in chainer.optimizers, {harness name: the
# class's hyperparameter}).  Weight decay is not among them: it is the
# WeightDecay hook (see the docstring).
_OPTIMIZERS = {
    "sgd": ("SGD", {"lr": "lr"}),
    "momentum": ("MomentumSGD", {"lr": "lr", "momentum": "momentum"}),
    "nesterov": ("NesterovAG", {"lr": "lr", "momentum": "momentum"}),
    "adam": ("Adam", {"lr": "alpha", "beta1": "beta1", "beta2": "beta2", "eps": "eps"}),
    "rmsprop": ("RMSprop", {"lr": "lr", "rho": "alpha", "eps": "eps"}),
}


def optimizer_defaults(family: str) -> dict[str, float]:
    """Chainer's own defaults for the family, read from a fresh optimizer
    object; weight decay is 0 (no WeightDecay hook unless one is added)."""
    import chainer

    cls, translate = _OPTIMIZERS[family]
    opt = getattr(chainer.optimizers, cls)()
    out = {k: float(getattr(opt, m)) for k, m in translate.items() if k != "lr"}
    return {**out, "weight_decay": 0.0}


def departures(cell) -> tuple[str, ...]:
    """How Chainer's optimizer objects compute the cell's rule (see the docstring)."""
    if cell.level not in ("optimizer", "custom"):
        return ()
    return {"nesterov": ("nesterov-chainer",), "adam": ("eps-hat",)}.get(cell.optimizer, ())


def framework_version() -> str:
    import chainer
    return chainer.__version__


def _raw_graph(chainer, spec: TrainSpec, arrays: dict | None = None, axis=None):
    """Variables for the canonical parameters (or ``arrays``), a forward pass
    and the written-out loss for rows ``x``, summed or averaged over ``axis``
    (all of it; the batched level's rows and outputs, one loss per seed)."""
    F = chainer.functions
    arrays = spec.params if arrays is None else arrays
    params = {k: chainer.Variable(v.copy(), requires_grad=True) for k, v in arrays.items()}

    def forward(x):
        if spec.arch == "single":
            return F.sigmoid(F.matmul(x, params["W"]) + params["b"])
        h = F.sigmoid(F.matmul(x, params["W1"]) + params["b1"])
        return F.sigmoid(F.matmul(h, params["W2"]) + params["b2"])

    def loss_of(p, y):
        each = F.log(y * p + (1 - y) * (1 - p))
        return -(F.mean(each, axis=axis) if spec.reduction == "mean" else
                 F.sum(each, axis=axis))

    return params, forward, loss_of


def loss_and_grad(spec: TrainSpec):
    """The raw level's loss and autodiff gradient at ``spec.params``."""
    import chainer

    with chainer.using_config("dtype", np.dtype(spec.dtype)):
        params, forward, loss_of = _raw_graph(chainer, spec)
        loss = loss_of(forward(spec.x), spec.y)
        loss.backward()
    return float(loss.array), {k: v.grad.copy() for k, v in params.items()}


def train_raw(spec: TrainSpec) -> TrainResult:
    import chainer

    with chainer.using_config("dtype", np.dtype(spec.dtype)):
        return _train_raw(chainer, spec)


def _train_raw(chainer, spec: TrainSpec) -> TrainResult:
    params, forward, loss_of = _raw_graph(chainer, spec)
    hp = in_effect(spec.cell, optimizer_defaults)
    rule = Textbook(spec.cell, hp, np.sqrt)
    start = {k: v.array.copy() for k, v in params.items()}
    curve = []
    for _ in range(spec.epochs):
        for rows in batches(spec.cell):
            loss = loss_of(forward(spec.x[rows]), spec.y[rows])
            curve.append(float(loss.array))
            loss.backward()
            rule.tick()
            for name, p in params.items():
                p.array[...] = rule.step(name, p.array, p.grad)
                p.cleargrad()
    with chainer.no_backprop_mode():
        p = forward(spec.x)
        loss = loss_of(p, spec.y)
    return TrainResult(params_start=start, params_final={k: v.array.copy() for k, v in params.items()},
                       loss_curve=curve, loss_final=float(loss.array),
                       probs=np.asarray(p.array).reshape(-1), hparams=hp)


def _custom_classes(chainer):
    """The notebook's user-style Chain subclasses: links registered in
    ``init_scope``, the forward pass in ``__call__``."""
    F, L = chainer.functions, chainer.links

    class SingleLayerNet(chainer.Chain):
        def __init__(self, n_in, W, b):
            super().__init__()
            with self.init_scope():
                self.l1 = L.Linear(n_in, 1, initialW=W.T.copy(), initial_bias=b.copy())

        def __call__(self, x):
            return self.l1(x)

    class TwoLayerNet(chainer.Chain):
        def __init__(self, n_in, hidden, W1, b1, W2, b2):
            super().__init__()
            with self.init_scope():
                self.l1 = L.Linear(n_in, hidden, initialW=W1.T.copy(), initial_bias=b1.copy())
                self.l2 = L.Linear(hidden, 1, initialW=W2.T.copy(), initial_bias=b2.copy())

        def __call__(self, x):
            return self.l2(F.sigmoid(self.l1(x)))

    return SingleLayerNet, TwoLayerNet


def _build(chainer, spec: TrainSpec):
    L = chainer.links
    n_in = spec.x.shape[1]
    p = spec.params
    if spec.level == "custom":
        single, two = _custom_classes(chainer)
        model = (single(n_in, p["W"], p["b"]) if spec.arch == "single" else
                 two(n_in, spec.hidden, p["W1"], p["b1"], p["W2"], p["b2"]))
        layers = [model.l1] if spec.arch == "single" else [model.l1, model.l2]
        names = [("W", "b")] if spec.arch == "single" else [("W1", "b1"), ("W2", "b2")]
    elif spec.arch == "single":
        layers = [L.Linear(n_in, 1, initialW=p["W"].T.copy(), initial_bias=p["b"].copy())]
        names = [("W", "b")]
        model = chainer.Sequential(*layers)
    else:
        layers = [L.Linear(n_in, spec.hidden, initialW=p["W1"].T.copy(),
                           initial_bias=p["b1"].copy()),
                  L.Linear(spec.hidden, 1, initialW=p["W2"].T.copy(), initial_bias=p["b2"].copy())]
        names = [("W1", "b1"), ("W2", "b2")]
        model = chainer.Sequential(layers[0], chainer.functions.sigmoid, layers[1])

    def read():
        out = {}
        for link, (w, b) in zip(layers, names):
            out[w] = link.W.array.T.copy()
            out[b] = link.b.array.copy()
        return out

    return model, read


def _train_module(spec: TrainSpec, use_optimizer: bool) -> TrainResult:
    import chainer

    with chainer.using_config("dtype", np.dtype(spec.dtype)):
        return _train_links(chainer, spec, use_optimizer)


def _optimizer(chainer, model, cell):
    """The cell's optimizer object set up on the model (weight decay as the
    WeightDecay hook), and the hyperparameters it holds, in harness names."""
    cls, translate = _OPTIMIZERS[cell.optimizer]
    given = hyperparameters(cell)
    if cell.hparams == "defaults":
        given = {"lr": given["lr"]}
    wd = given.pop("weight_decay", 0.0)
    opt = getattr(chainer.optimizers, cls)(**{translate[k]: v for k, v in given.items()})
    opt.setup(model)
    hook = chainer.optimizer_hooks.WeightDecay(wd) if wd else None
    if hook:
        opt.add_hook(hook)  # called before each update: g += rate * p
    hp = {k: float(getattr(opt, m)) for k, m in translate.items()}
    if "weight_decay" in HYPERPARAMETERS[cell.optimizer]:
        hp["weight_decay"] = float(hook.rate) if hook else 0.0
    return opt, hp


def _train_links(chainer, spec: TrainSpec, use_optimizer: bool) -> TrainResult:
    F = chainer.functions
    model, read = _build(chainer, spec)
    t = spec.y.astype(np.int32)

    def loss_fn(z, t):
        if spec.reduction == "mean":
            return F.sigmoid_cross_entropy(z, t)  # the mean over the rows
        return F.sum(F.sigmoid_cross_entropy(z, t, reduce="no"))

    if use_optimizer:
        optimizer, hp = _optimizer(chainer, model, spec.cell)
    else:
        optimizer, hp = None, in_effect(spec.cell, optimizer_defaults)
        rule = Textbook(spec.cell, hp, np.sqrt)
    start = read()
    curve = []
    for _ in range(spec.epochs):
        for rows in batches(spec.cell):
            loss = loss_fn(model(spec.x[rows]), t[rows])
            curve.append(float(loss.array))
            model.cleargrads()
            loss.backward()
            if optimizer:
                optimizer.update()
            else:
                rule.tick()
                for i, param in enumerate(model.params()):
                    param.array[...] = rule.step(i, param.array, param.grad)
    with chainer.no_backprop_mode():
        z = model(spec.x)
        loss = loss_fn(z, t)
        probs = F.sigmoid(z).array
    return TrainResult(params_start=start, params_final=read(), loss_curve=curve,
                       loss_final=float(loss.array), probs=np.asarray(probs).reshape(-1),
                       hparams=hp)


TRAINERS = {
    "raw": train_raw,
    "module": functools.partial(_train_module, use_optimizer=False),
    "optimizer": functools.partial(_train_module, use_optimizer=True),
    "custom": functools.partial(_train_module, use_optimizer=True),
}


# ---------------------------------------------------- raw level, batched

def _raw_graph_seeds(chainer, spec: BatchSpec):
    """``_raw_graph`` with a leading seed axis: W (S, n, k) and b stored as
    (S, 1, k), so ``F.matmul(x, W)`` of x (R, n) is numpy's matmul looping
    over the seeds (one (R, n) @ (n, k) product each, as per seed) and the
    bias broadcasts over the rows; the loss is one per seed, (S,)."""
    arrays = {k: v[:, None, :] if v.ndim == 2 else v for k, v in spec.params.items()}
    return _raw_graph(chainer, spec, arrays, axis=(1, 2))


def train_raw_batch(spec: BatchSpec) -> BatchResult:
    """``train_raw`` for S seeds at once (bit-identical per seed:
    tests/test_batch.py)."""
    import chainer

    with chainer.using_config("dtype", np.dtype(spec.dtype)):
        return _train_raw_batch(chainer, spec)


def _train_raw_batch(chainer, spec: BatchSpec) -> BatchResult:
    F = chainer.functions
    params, forward, loss_of = _raw_graph_seeds(chainer, spec)
    shapes = {k: v.shape for k, v in spec.params.items()}
    hp = in_effect(spec.cell, optimizer_defaults)
    rule = Textbook(spec.cell, hp, np.sqrt)
    start = {k: v.array.reshape(shapes[k]).copy() for k, v in params.items()}
    curve = np.empty((spec.seeds, updates(spec.cell)), dtype=spec.dtype)
    u = 0
    for _ in range(spec.epochs):
        for rows in batches(spec.cell):
            loss = loss_of(forward(spec.x[rows]), spec.y[rows])
            curve[:, u] = loss.array
            # The seeds' losses are independent: the gradient of their sum is
            # each seed's own (the sum's gradient is exactly 1 per seed).
            F.sum(loss).backward()
            rule.tick()
            for name, p in params.items():
                p.array[...] = rule.step(name, p.array, p.grad)
                p.cleargrad()
            u += 1
    with chainer.no_backprop_mode():
        p = forward(spec.x)
        loss = loss_of(p, spec.y)
    return BatchResult(params_start=start,
                       params_final={k: v.array.reshape(shapes[k]).copy()
                                     for k, v in params.items()},
                       loss_curve=curve, loss_final=np.asarray(loss.array),
                       probs=np.asarray(p.array).reshape(spec.seeds, -1), hparams=hp)


BATCHED = {"raw": train_raw_batch}
