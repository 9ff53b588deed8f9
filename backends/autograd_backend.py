"""autograd (HIPS): numpy code, differentiated.

* ``raw``: the forward pass and the notebook's written-out loss in
  ``autograd.numpy``, gradients from ``autograd.value_and_grad`` over the
  parameter dict, update written out.
* ``optimizer``: the same objective handed to ``autograd.misc.optimizers.sgd``.
* ``module``: unsupported: autograd differentiates functions and has no layer
  modules.

Conventions adapted:

* Weights are canonical (in, out) arrays: nothing to transpose.
* ``sgd`` defaults to momentum ``mass=0.9`` (and ``step_size=0.1``,
  ``num_iters=200``): plain gradient descent needs ``mass=0``, with which its
  update ``x + step_size * (0 * v - 1 * g)`` is bit-for-bit ``x - lr * g`` in
  the flat vector's dtype.
* ``sgd`` works on one flat vector (``autograd.misc.flatten``, parameters in
  sorted-key order) and calls ``grad(params, i)`` once per iteration, then
  ``callback(params, i, g)``, then updates: ``num_iters`` is the number of
  updates, and the loss at the parameters before update ``i`` is recorded
  from the gradient call (``value_and_grad``), so no extra forward pass.
* ``sgd`` keeps its velocity in ``np.zeros(len(x))``, float64 whatever the
  parameters' dtype, so for float32 cells its flat parameter vector becomes
  float64 at the first update and the updates are carried in float64.
  ``unflatten`` casts back to the parameters' dtype, so every forward and
  backward pass (and the returned parameters) is float32; only the update
  arithmetic and the state carried between steps are wider.
  ``info['sgd_state_dtype']`` records it.
"""
from __future__ import annotations

import numpy as np

from harness.tasks import TrainResult, TrainSpec

NAME = "autograd"
IMPORTS = ("autograd",)
UNSUPPORTED = {
    "module": "autograd differentiates plain numpy functions and has no layer modules "
              "(no Linear/Sequential/loss objects)",
    "custom": "autograd has no model base class to subclass: a model is a plain function "
              "of a parameter dict",
}


def framework_version() -> str:
    from importlib.metadata import version
    return version("autograd")


def _objective(spec: TrainSpec):
    """The written-out loss as a function of a canonical parameter dict."""
    import autograd.numpy as anp

    x, y = spec.x, spec.y

    def forward(params):
        if spec.arch == "single":
            return 1.0 / (1.0 + anp.exp(-(anp.dot(x, params["W"]) + params["b"])))
        h = 1.0 / (1.0 + anp.exp(-(anp.dot(x, params["W1"]) + params["b1"])))
        return 1.0 / (1.0 + anp.exp(-(anp.dot(h, params["W2"]) + params["b2"])))

    def loss(params):
        p = forward(params)
        return -anp.sum(anp.log(y * p + (1 - y) * (1 - p)))

    return forward, loss


def loss_and_grad(spec: TrainSpec):
    """The raw level's loss and autodiff gradient at ``spec.params``."""
    from autograd import value_and_grad

    _, loss = _objective(spec)
    value, grads = value_and_grad(loss)(dict(spec.params))
    return float(value), {k: np.asarray(grads[k]) for k in spec.params}


def _canonical(spec: TrainSpec, params) -> dict[str, np.ndarray]:
    """Canonical order (``unflatten`` returns sorted keys) and dtype."""
    return {k: np.asarray(params[k]).astype(spec.dtype) for k in spec.params}


def _result(spec: TrainSpec, forward, loss, params, curve, info=None) -> TrainResult:
    final = _canonical(spec, params)
    return TrainResult(params_start=_canonical(spec, spec.params), params_final=final,
                       loss_curve=curve, loss_final=float(loss(final)),
                       probs=np.asarray(forward(final)).reshape(-1), info=info or {})


def train_raw(spec: TrainSpec) -> TrainResult:
    from autograd import value_and_grad

    forward, loss = _objective(spec)
    value_grad = value_and_grad(loss)
    params = {k: v.copy() for k, v in spec.params.items()}
    curve: list[float] = []
    for _ in range(spec.epochs):
        value, grads = value_grad(params)
        curve.append(float(value))
        params = {k: params[k] - spec.lr * grads[k] for k in params}
    return _result(spec, forward, loss, params, curve)


def train_optimizer(spec: TrainSpec) -> TrainResult:
    from autograd import value_and_grad
    from autograd.misc.optimizers import sgd

    forward, loss = _objective(spec)
    value_grad = value_and_grad(loss)
    curve: list[float] = []

    def grad(p, i):
        value, g = value_grad(p)
        curve.append(float(value))
        return g

    params = sgd(grad, {k: v.copy() for k, v in spec.params.items()}, num_iters=spec.epochs,
                 step_size=spec.lr, mass=0.0)
    # np.result_type(dtype, velocity's float64): see the docstring.
    info = {"sgd_state_dtype": str(np.result_type(spec.dtype, np.float64))}
    return _result(spec, forward, loss, params, curve, info)


TRAINERS = {"raw": train_raw, "optimizer": train_optimizer}
