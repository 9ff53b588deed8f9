"""Chainer (define-by-run, numpy arrays underneath).

* ``raw``: ``chainer.Variable`` parameters, ``F.matmul`` / ``F.sigmoid`` and
  the notebook's written-out loss with ``F.log`` / ``F.sum``,
  ``loss.backward()``, update written on ``param.array``, ``cleargrad()``.
* ``module``: ``chainer.Sequential(L.Linear, F.sigmoid, L.Linear)`` and
  ``F.sigmoid_cross_entropy`` summed; update written over ``model.params()``.
* ``optimizer``: the same model with ``chainer.optimizers.SGD`` (plain
  ``param -= lr * grad``; no weight decay or momentum unless hooked in).
* ``custom``: the notebook's user-style ``chainer.Chain`` subclasses, links
  registered in ``init_scope()`` and the forward pass in ``__call__``,
  trained with ``chainer.optimizers.SGD``.  Chainer is define-by-run: eager
  is its only mode.

Conventions adapted:

* ``L.Linear`` stores W as (out, in): canonical W is transposed on load and
  on read-back.  Parameters are loaded through ``initialW`` /
  ``initial_bias`` arrays, so no random initializer runs.
* ``F.sigmoid_cross_entropy`` cannot sum: ``reduce`` is ``'mean'`` or
  ``'no'``, and with ``reduce='mean'`` it divides by the number of labels
  (``normalize=True``) or, with the notebook's ``normalize=False``, by the
  batch size (``len(x)``) -- still a mean over rows, so each step is a
  quarter of ours on 4 rows: why the notebook's Chainer NAND weights (-2.1)
  trail its PyTorch ones (-4.2) after the same 100 steps.  We use
  ``reduce='no'`` and ``F.sum``.
* ``F.sigmoid_cross_entropy`` wants integer labels (``t.dtype.kind == 'i'``):
  the targets are passed as int32.
* Chainer's default dtype (``chainer.config.dtype``) is float32, and links
  create their parameters in it: even ``initialW=<float64 array>`` yields a
  float32 W.  Training runs inside ``chainer.using_config('dtype', ...)`` set
  to the cell's dtype, a thread-local setting restored on exit.
* Gradients accumulate across ``backward()`` calls: they are cleared every
  step.
"""
from __future__ import annotations

import functools

import numpy as np

from harness.tasks import TrainResult, TrainSpec

NAME = "chainer"
IMPORTS = ("chainer",)
UNSUPPORTED: dict[str, str] = {}


def framework_version() -> str:
    import chainer
    return chainer.__version__


def _raw_graph(chainer, spec: TrainSpec):
    """Variables for the canonical parameters, a forward pass, the written-out loss."""
    F = chainer.functions
    x, y = spec.x, spec.y
    params = {k: chainer.Variable(v.copy(), requires_grad=True) for k, v in spec.params.items()}

    def forward():
        if spec.arch == "single":
            return F.sigmoid(F.matmul(x, params["W"]) + params["b"])
        h = F.sigmoid(F.matmul(x, params["W1"]) + params["b1"])
        return F.sigmoid(F.matmul(h, params["W2"]) + params["b2"])

    def loss_of(p):
        return -F.sum(F.log(y * p + (1 - y) * (1 - p)))

    return params, forward, loss_of


def loss_and_grad(spec: TrainSpec):
    """The raw level's loss and autodiff gradient at ``spec.params``."""
    import chainer

    with chainer.using_config("dtype", np.dtype(spec.dtype)):
        params, forward, loss_of = _raw_graph(chainer, spec)
        loss = loss_of(forward())
        loss.backward()
    return float(loss.array), {k: v.grad.copy() for k, v in params.items()}


def train_raw(spec: TrainSpec) -> TrainResult:
    import chainer

    with chainer.using_config("dtype", np.dtype(spec.dtype)):
        return _train_raw(chainer, spec)


def _train_raw(chainer, spec: TrainSpec) -> TrainResult:
    params, forward, loss_of = _raw_graph(chainer, spec)
    start = {k: v.array.copy() for k, v in params.items()}
    curve = []
    for _ in range(spec.epochs):
        loss = loss_of(forward())
        curve.append(float(loss.array))
        loss.backward()
        for p in params.values():
            p.array -= spec.lr * p.grad
            p.cleargrad()
    with chainer.no_backprop_mode():
        p = forward()
        loss = loss_of(p)
    return TrainResult(params_start=start, params_final={k: v.array.copy() for k, v in params.items()},
                       loss_curve=curve, loss_final=float(loss.array),
                       probs=np.asarray(p.array).reshape(-1))


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


def _train_links(chainer, spec: TrainSpec, use_optimizer: bool) -> TrainResult:
    F = chainer.functions
    model, read = _build(chainer, spec)
    t = spec.y.astype(np.int32)

    def loss_fn(z):
        return F.sum(F.sigmoid_cross_entropy(z, t, reduce="no"))

    optimizer = chainer.optimizers.SGD(lr=spec.lr).setup(model) if use_optimizer else None
    start = read()
    curve = []
    for _ in range(spec.epochs):
        loss = loss_fn(model(spec.x))
        curve.append(float(loss.array))
        model.cleargrads()
        loss.backward()
        if optimizer:
            optimizer.update()
        else:
            for param in model.params():
                param.array -= spec.lr * param.grad
    with chainer.no_backprop_mode():
        z = model(spec.x)
        loss = loss_fn(z)
        probs = F.sigmoid(z).array
    return TrainResult(params_start=start, params_final=read(), loss_curve=curve,
                       loss_final=float(loss.array), probs=np.asarray(probs).reshape(-1))


TRAINERS = {
    "raw": train_raw,
    "module": functools.partial(_train_module, use_optimizer=False),
    "optimizer": functools.partial(_train_module, use_optimizer=True),
    "custom": functools.partial(_train_module, use_optimizer=True),
}
