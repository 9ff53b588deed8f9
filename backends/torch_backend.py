"""PyTorch.

* ``raw``: leaf tensors with ``requires_grad``, the notebook's written-out
  loss, ``loss.backward()``, update under ``torch.no_grad()``.
* ``module``: ``nn.Sequential(Linear, Sigmoid, Linear)`` and
  ``BCEWithLogitsLoss(reduction='sum')``; update written over
  ``model.parameters()``.
* ``optimizer``: the same model with ``torch.optim.SGD`` (momentum 0,
  dampening 0, weight decay 0, which are its defaults).

Conventions adapted:

* ``nn.Linear`` stores its weight as (out, in): canonical W is transposed on
  load and on read-back.
* ``BCEWithLogitsLoss`` averages by default (``reduction='mean'``); the
  notebook's ``size_average=False`` is the removed spelling of
  ``reduction='sum'``, which we use.
* torch's default dtype is float32: every tensor and module is created in the
  cell's dtype explicitly (``torch.from_numpy`` keeps it, ``module.to(dtype)``).
* Gradients accumulate across ``backward()`` calls: they are zeroed every step.
"""
from __future__ import annotations

import functools

import numpy as np

from harness.tasks import TrainResult, TrainSpec

NAME = "torch"
IMPORTS = ("torch",)
UNSUPPORTED: dict[str, str] = {}


def framework_version() -> str:
    import torch
    return torch.__version__


def _np(t) -> np.ndarray:
    return t.detach().cpu().numpy().copy()


def _raw_graph(torch, spec: TrainSpec):
    """Leaf tensors for the canonical parameters, a forward pass, the written-out loss."""
    x, y = torch.from_numpy(spec.x), torch.from_numpy(spec.y)
    params = {k: torch.from_numpy(v.copy()).requires_grad_() for k, v in spec.params.items()}

    def forward():
        if spec.arch == "single":
            return (x @ params["W"] + params["b"]).sigmoid()
        h = (x @ params["W1"] + params["b1"]).sigmoid()
        return (h @ params["W2"] + params["b2"]).sigmoid()

    def loss_of(p):
        return -(y * p + (1 - y) * (1 - p)).log().sum()

    return params, forward, loss_of


def loss_and_grad(spec: TrainSpec):
    """The raw level's loss and autodiff gradient at ``spec.params``."""
    import torch

    params, forward, loss_of = _raw_graph(torch, spec)
    loss = loss_of(forward())
    loss.backward()
    return loss.item(), {k: _np(v.grad) for k, v in params.items()}


def train_raw(spec: TrainSpec) -> TrainResult:
    import torch

    params, forward, loss_of = _raw_graph(torch, spec)

    start = {k: _np(v) for k, v in params.items()}
    curve = []
    for _ in range(spec.epochs):
        loss = loss_of(forward())
        curve.append(loss.item())
        loss.backward()
        with torch.no_grad():
            for p in params.values():
                p -= spec.lr * p.grad
                p.grad.zero_()
    with torch.no_grad():
        p = forward()
        loss = loss_of(p)
    return _result(torch, start, {k: _np(v) for k, v in params.items()}, curve, loss, p)


def _result(torch, start, final, curve, loss, probs) -> TrainResult:
    return TrainResult(params_start=start, params_final=final, loss_curve=curve,
                       loss_final=loss.item(), probs=_np(probs).reshape(-1),
                       info={"threads": torch.get_num_threads()})


def _build(torch, spec: TrainSpec):
    dtype = getattr(torch, spec.dtype)
    n_in = spec.x.shape[1]
    p = spec.params
    if spec.arch == "single":
        model = torch.nn.Sequential(torch.nn.Linear(n_in, 1))
        pairs = [(model[0], "W", "b")]
    else:
        model = torch.nn.Sequential(torch.nn.Linear(n_in, spec.hidden), torch.nn.Sigmoid(),
                                    torch.nn.Linear(spec.hidden, 1))
        pairs = [(model[0], "W1", "b1"), (model[2], "W2", "b2")]
    model.to(dtype)
    with torch.no_grad():
        for layer, w, b in pairs:
            layer.weight.copy_(torch.from_numpy(p[w].T.copy()))
            layer.bias.copy_(torch.from_numpy(p[b]))

    def read():
        out = {}
        for layer, w, b in pairs:
            out[w] = _np(layer.weight).T.copy()
            out[b] = _np(layer.bias)
        return out

    return model, read


def _train_module(spec: TrainSpec, use_optimizer: bool) -> TrainResult:
    import torch

    model, read = _build(torch, spec)
    x, y = torch.from_numpy(spec.x), torch.from_numpy(spec.y)
    loss_fn = torch.nn.BCEWithLogitsLoss(reduction="sum")
    optimizer = torch.optim.SGD(model.parameters(), lr=spec.lr) if use_optimizer else None
    start = read()
    curve = []
    for _ in range(spec.epochs):
        loss = loss_fn(model(x), y)
        curve.append(loss.item())
        model.zero_grad()
        loss.backward()
        if optimizer:
            optimizer.step()
        else:
            with torch.no_grad():
                for param in model.parameters():
                    param -= spec.lr * param.grad
    with torch.no_grad():
        z = model(x)
        loss = loss_fn(z, y)
    return _result(torch, start, read(), curve, loss, z.sigmoid())


TRAINERS = {
    "raw": train_raw,
    "module": functools.partial(_train_module, use_optimizer=False),
    "optimizer": functools.partial(_train_module, use_optimizer=True),
}
