"""numpy: the hand-written reference, and the readable explanation of what
the frameworks hide.

* ``raw``: forward pass and hand-derived backprop, update written out.
* ``module``: tiny Linear / Sigmoid / loss classes with explicit forward and
  backward methods, chained like a framework's Sequential.
* ``optimizer``: the same modules plus a small optimizer object
  (``Optimizer``), which is the harness's textbook rule
  (``harness.recipes.Textbook``) behind a ``step()``: the reference has no
  framework whose formulas could depart.
* ``custom``: a user's model class (``SingleLayerNet``, ``TwoLayerNet``)
  subclassing the reference's own ``Model`` base, as the notebook subclasses
  ``torch.nn.Module``: layers as attributes, ``forward`` written by the
  user, ``backward`` walking the tape of layers the call recorded; trained
  with the SGD object.  Eager only: there is nothing to compile.
* ``perceptron``: Rosenblatt's rule, Heaviside step with g(0) = 0, one row at
  a time (online).  ``perceptron-batch``: the same rule summed over all rows.

Conventions adapted: none; this backend *is* the convention.  Weights are
stored (in, out), so ``logits = x @ W + b``.
"""
from __future__ import annotations

import functools

import numpy as np

from harness.recipes import Textbook, in_effect
from harness.tasks import BatchResult, BatchSpec, TrainResult, TrainSpec, batches, updates

NAME = "numpy"
IMPORTS = ("numpy",)
UNSUPPORTED: dict[str, str] = {}
_SINGLE_ONLY = (("single",), "the perceptron rule has no gradient to pass through a hidden "
                             "layer (Heaviside step); it is single-layer only")
ARCH_LIMITS = {"perceptron": _SINGLE_ONLY, "perceptron-batch": _SINGLE_ONLY}


def framework_version() -> str:
    return np.__version__


def sigmoid(z):
    return 1.0 / (1.0 + np.exp(-z))


def written_out_loss(p, y):
    """The notebook's loss: -sum log(y p + (1 - y)(1 - p))."""
    return -np.sum(np.log(y * p + (1 - y) * (1 - p)))


# ---------------------------------------------------------------- raw level

def forward(params, x):
    """Return (probabilities, hidden activations or None)."""
    if "W" in params:
        return sigmoid(x @ params["W"] + params["b"]), None
    h = sigmoid(x @ params["W1"] + params["b1"])
    return sigmoid(h @ params["W2"] + params["b2"]), h


def backprop(params, x, y, p, h):
    """Gradients of the summed cross-entropy.  For sigmoid + BCE the gradient
    w.r.t. the logits collapses to (p - y), the fact every framework exploits."""
    dz = p - y
    if h is None:
        return {"W": x.T @ dz, "b": dz.sum(axis=0)}
    dh = dz @ params["W2"].T
    dz1 = dh * h * (1 - h)
    return {"W1": x.T @ dz1, "b1": dz1.sum(axis=0), "W2": h.T @ dz, "b2": dz.sum(axis=0)}


def _mean(spec, rows: int):
    """The reduction as a divisor (None for sum): mean divides the batch's
    summed loss, and so its gradient, by the batch's rows."""
    return rows if spec.reduction == "mean" else None


def _batches(spec: TrainSpec) -> list:
    """One epoch's (x, y, divisor) batches, sliced once: every epoch reuses them."""
    return [(spec.x[rows], spec.y[rows], _mean(spec, len(spec.y[rows])))
            for rows in batches(spec.cell)]


def train_raw(spec: TrainSpec) -> TrainResult:
    params = {k: v.copy() for k, v in spec.params.items()}
    start = {k: v.copy() for k, v in spec.params.items()}
    hp = in_effect(spec.cell)
    rule = Textbook(spec.cell, hp, np.sqrt)
    curve = []
    data = _batches(spec)
    for _ in range(spec.epochs):
        for x, y, n in data:
            p, h = forward(params, x)
            loss = written_out_loss(p, y)
            curve.append(float(loss if n is None else loss / n))
            grads = backprop(params, x, y, p, h)
            rule.tick()
            for name in params:
                g = grads[name] if n is None else grads[name] / n
                params[name] = rule.step(name, params[name], g)
    p, _ = forward(params, spec.x)
    n = _mean(spec, len(spec.y))
    loss = written_out_loss(p, spec.y)
    return TrainResult(params_start=start, params_final=params, loss_curve=curve,
                       loss_final=float(loss if n is None else loss / n), probs=p.reshape(-1),
                       hparams=hp)


# ------------------------------------------------------------- module level

# ``np.sum(a, axis)`` and ``a.sum(axis)`` are this reduction behind a
# Python wrapper; the module levels' classes call it directly (the same
# call, so the same bits): np.sum's wrapper was 1 µs of a 14 µs update on
# a single-layer cell.
_sum = np.add.reduce

# The model being called (``Model.__call__``) records each layer it runs on
# this tape, in order, so that ``Model.backward`` can walk it back: a
# define-by-run tape, which is what autodiff frameworks keep for you.
_TAPE: list | None = None


class Layer:
    params: dict = {}
    grads: dict = {}

    def __call__(self, x):
        if _TAPE is not None:
            _TAPE.append(self)
        return self.forward(x)


class Linear(Layer):
    def __init__(self, W, b):
        self.params = {"weight": W.copy(), "bias": b.copy()}
        self.grads = {}

    def forward(self, x):
        self.x = x
        return x @ self.params["weight"] + self.params["bias"]

    def backward(self, grad_out, input_grad: bool = True):
        self.grads = {"weight": self.x.T @ grad_out, "bias": _sum(grad_out, 0)}
        return grad_out @ self.params["weight"].T if input_grad else None


class Sigmoid(Layer):
    def forward(self, z):
        self.out = sigmoid(z)
        return self.out

    def backward(self, grad_out, input_grad: bool = True):
        return grad_out * self.out * (1 - self.out) if input_grad else None


class Sequential:
    def __init__(self, *layers):
        self.layers = layers

    def forward(self, x):
        for layer in self.layers:
            x = layer.forward(x)
        return x

    def backward(self, grad):
        _backward(self.layers, grad)

    def parameters(self):
        """(layer, key) pairs, so an optimizer can update each array in place."""
        return [(layer, key) for layer in self.layers for key in layer.params]


class Model:
    """A base class for user models, as ``torch.nn.Module`` is: a subclass
    assigns its layers as attributes and writes ``forward``; calling the
    model records the layers it ran, and ``backward`` back-propagates
    through them in reverse."""

    @property
    def layers(self) -> list[Layer]:
        return [v for v in vars(self).values() if isinstance(v, Layer)]

    def parameters(self):
        return [(layer, key) for layer in self.layers for key in layer.params]

    def __call__(self, x):
        global _TAPE
        _TAPE = self._tape = []
        try:
            return self.forward(x)
        finally:
            _TAPE = None

    def forward(self, x):
        raise NotImplementedError

    def backward(self, grad):
        _backward(self._tape, grad)


def _backward(layers, grad) -> None:
    """Back-propagate ``grad`` through ``layers`` in reverse.  The first
    layer's input is the data, which needs no gradient (frameworks skip it
    too): that layer computes its parameters' gradients only."""
    for layer in layers[:0:-1]:
        grad = layer.backward(grad)
    layers[0].backward(grad, False)


# The custom level's user-style models (the notebook's SingleLayerNN and
# ThreeLayerNN, in the reference's own classes).
class SingleLayerNet(Model):
    def __init__(self, W, b):
        self.linear1 = Linear(W, b)

    def forward(self, x):
        return self.linear1(x)


class TwoLayerNet(Model):
    def __init__(self, W1, b1, W2, b2):
        self.linear1 = Linear(W1, b1)
        self.sigmoid = Sigmoid()
        self.linear2 = Linear(W2, b2)

    def forward(self, x):
        return self.linear2(self.sigmoid(self.linear1(x)))


class BCEWithLogits:
    """Binary cross-entropy on logits, summed or averaged over the rows, in
    the overflow-safe form max(z, 0) - z y + log(1 + exp(-|z|)) that
    frameworks use."""

    def __init__(self, reduction: str = "sum"):
        self.reduction = reduction

    def forward(self, z, y):
        self.z, self.y = z, y
        total = _sum(np.maximum(z, 0) - z * y + np.log1p(np.exp(-np.abs(z))), None)
        return total if self.reduction == "sum" else total / len(y)

    def backward(self):
        dz = sigmoid(self.z) - self.y
        return dz if self.reduction == "sum" else dz / len(self.y)


class Optimizer:
    """An optimizer object over (layer, key) parameters: the textbook rule
    of the cell's family, one ``step()`` per update."""

    def __init__(self, parameters, rule: Textbook):
        self.parameters, self.rule = parameters, rule

    def step(self):
        _update(self.rule, self.parameters)


def _update(rule: Textbook, parameters) -> None:
    """One update of every (layer, key) parameter by ``rule``; plain SGD in
    place (``p -= lr * g``, the same arithmetic without a new array)."""
    rule.tick()
    if rule.plain:
        lr = rule.hp["lr"]
        for layer, key in parameters:
            layer.params[key] -= lr * layer.grads[key]
        return
    for i, (layer, key) in enumerate(parameters):
        layer.params[key] = rule.step(i, layer.params[key], layer.grads[key])


def _build_model(spec: TrainSpec):
    p = spec.params
    if spec.arch == "single":
        return Sequential(Linear(p["W"], p["b"]))
    return Sequential(Linear(p["W1"], p["b1"]), Sigmoid(), Linear(p["W2"], p["b2"]))


def _custom_model(spec: TrainSpec) -> Model:
    net = SingleLayerNet if spec.arch == "single" else TwoLayerNet
    return net(*spec.params.values())  # canonical order: W, b or W1, b1, W2, b2


def _model_params(model):
    linears = [layer for layer in model.layers if isinstance(layer, Linear)]
    names = [("W", "b")] if len(linears) == 1 else [("W1", "b1"), ("W2", "b2")]
    out = {}
    for layer, (w, b) in zip(linears, names):
        out[w] = layer.params["weight"].copy()
        out[b] = layer.params["bias"].copy()
    return out


def train_custom(spec: TrainSpec) -> TrainResult:
    model = _custom_model(spec)
    return _train_module(spec, use_optimizer=True, model=model, call=model)


def _train_module(spec: TrainSpec, use_optimizer: bool, model=None, call=None) -> TrainResult:
    model = model or _build_model(spec)
    call = call or model.forward
    loss_fn = BCEWithLogits(spec.reduction)
    hp = in_effect(spec.cell)
    rule = Textbook(spec.cell, hp, np.sqrt)
    optimizer = Optimizer(model.parameters(), rule) if use_optimizer else None
    parameters = model.parameters()
    start = _model_params(model)
    curve = []
    data = _batches(spec)
    for _ in range(spec.epochs):
        for x, y, _n in data:
            loss = loss_fn.forward(call(x), y)
            curve.append(float(loss))
            model.backward(loss_fn.backward())
            if optimizer:
                optimizer.step()
            else:
                _update(rule, parameters)
    z = call(spec.x)
    return TrainResult(params_start=start, params_final=_model_params(model), loss_curve=curve,
                       loss_final=float(loss_fn.forward(z, spec.y)),
                       probs=sigmoid(z).reshape(-1), hparams=hp)


# --------------------------------------------------------- perceptron levels

def heaviside(z):
    return np.heaviside(z, 0).astype(z.dtype)  # g(0) = 0, as in the notebook


def _train_perceptron(spec: TrainSpec, online: bool) -> TrainResult:
    start = {k: v.copy() for k, v in spec.params.items()}
    W, b = spec.params["W"].copy(), spec.params["b"].copy()
    x, y = spec.x, spec.y
    curve = []
    for _ in range(spec.epochs):
        curve.append(float(np.sum(heaviside(x @ W + b) != y)))
        if online:
            for i in range(len(x)):
                err = y[i] - heaviside(x[i] @ W + b)
                W += spec.lr * np.outer(x[i], err)
                b += spec.lr * err
        else:
            err = y - heaviside(x @ W + b)
            W += spec.lr * x.T @ err
            b += spec.lr * err.sum(axis=0)
    out = heaviside(x @ W + b)
    return TrainResult(params_start=start, params_final={"W": W, "b": b}, loss_curve=curve,
                       loss_final=float(np.sum(out != y)), probs=out.reshape(-1))


# ---------------------------------------------------- raw level, batched

def _forward_seeds(params, x):
    """``forward`` with a leading seed axis on every parameter: x (R, n) @
    W (S, n, k) is one matmul per seed, the same as per seed, bit for bit
    (numpy's matmul loops over the leading axis; einsum would not)."""
    if "W" in params:
        return sigmoid(x @ params["W"] + params["b"][:, None, :]), None
    h = sigmoid(x @ params["W1"] + params["b1"][:, None, :])
    return sigmoid(h @ params["W2"] + params["b2"][:, None, :]), h


def _sum_rows(a):
    """``a.sum(axis=1)`` for (S, rows, k), added row after row: the same
    order numpy's reduction takes for fewer than 8 rows (a truth table has
    at most 4), so the same bits, at a quarter of the time."""
    out = a[:, 0]
    for i in range(1, a.shape[1]):
        out = out + a[:, i]
    return out


def _backprop_seeds(params, x, y, p, h):
    dz = p - y
    if h is None:
        return {"W": x.T @ dz, "b": _sum_rows(dz)}
    dh = dz @ np.swapaxes(params["W2"], 1, 2)
    dz1 = dh * h * (1 - h)
    return {"W1": x.T @ dz1, "b1": _sum_rows(dz1), "W2": np.swapaxes(h, 1, 2) @ dz,
            "b2": _sum_rows(dz)}


def _loss_seeds(p, y):
    return -_sum_rows(np.log(y * p + (1 - y) * (1 - p)))[:, 0]


def train_raw_batch(spec: BatchSpec) -> BatchResult:
    """``train_raw`` for S seeds at once; each seed's record is bit-identical
    to its own cell's (tests/test_batch.py)."""
    params = {k: v.copy() for k, v in spec.params.items()}
    start = {k: v.copy() for k, v in spec.params.items()}
    hp = in_effect(spec.cell)
    rule = Textbook(spec.cell, hp, np.sqrt)
    curve = np.empty((spec.seeds, updates(spec.cell)))
    u = 0
    for _ in range(spec.epochs):
        for rows in batches(spec.cell):
            x, y = spec.x[rows], spec.y[rows]
            p, h = _forward_seeds(params, x)
            n = _mean(spec, len(y))
            loss = _loss_seeds(p, y)
            curve[:, u] = loss if n is None else loss / n
            grads = _backprop_seeds(params, x, y, p, h)
            rule.tick()
            for name in params:
                g = grads[name] if n is None else grads[name] / n
                params[name] = rule.step(name, params[name], g)
            u += 1
    p, _ = _forward_seeds(params, spec.x)
    n = _mean(spec, len(spec.y))
    loss = _loss_seeds(p, spec.y)
    return BatchResult(params_start=start, params_final=params, loss_curve=curve,
                       loss_final=loss if n is None else loss / n,
                       probs=p.reshape(spec.seeds, -1), hparams=hp)


# ------------------------------------------------------------------ contract

def loss_and_grad(spec: TrainSpec):
    """The raw level's loss and hand-derived gradient at ``spec.params``."""
    p, h = forward(spec.params, spec.x)
    return float(written_out_loss(p, spec.y)), backprop(spec.params, spec.x, spec.y, p, h)


TRAINERS = {
    "raw": train_raw,
    "module": functools.partial(_train_module, use_optimizer=False),
    "optimizer": functools.partial(_train_module, use_optimizer=True),
    "custom": train_custom,
    "perceptron": functools.partial(_train_perceptron, online=True),
    "perceptron-batch": functools.partial(_train_perceptron, online=False),
}
BATCHED = {"raw": train_raw_batch}
