"""autograd (HIPS): numpy code, differentiated.

* ``raw``: the forward pass and the notebook's written-out loss in
  ``autograd.numpy``, gradients from ``autograd.value_and_grad`` over the
  parameter dict, the update written out with ``harness.recipes.Textbook``
  (every optimizer family, ``np.sqrt`` for its square roots).
* ``optimizer``: the same objective handed to autograd's own optimizer
  functions, ``autograd.misc.optimizers.sgd`` (sgd, momentum), ``adam`` and
  ``rmsprop``.
* ``module``: unsupported: autograd differentiates functions and has no layer
  modules.  ``custom``: unsupported: no model base class to subclass.

Conventions adapted:

* Weights are canonical (in, out) arrays: nothing to transpose.
* The optimizers are plain functions, ``opt(grad, x0, callback, num_iters,
  step_size, ...)``, not objects: "the hyperparameters in effect" are the
  arguments of the call, read back from its bound signature with the
  function's own defaults applied (``inspect.signature(...).bind(...)`` on
  the flat-vector function the public wrapper closes over),
  translated to the harness's names (``step_size`` -> lr, ``mass`` ->
  momentum, ``b1``/``b2`` -> beta1/beta2, rmsprop's ``gamma`` -> rho).
* They work on one flat vector (``autograd.misc.flatten``, parameters in
  sorted-key order) and call ``grad(params, i)`` once per iteration ``i``,
  then ``callback(params, i, g)``, then update: ``num_iters`` is the number
  of updates (``updates(cell)``), and ``grad`` picks update i's batch,
  ``batches(cell)[i % updates_per_epoch]`` (rows in table order, no
  shuffling), and records the batch's loss before the update from its
  ``value_and_grad`` call, so no extra forward pass.  The objective returns
  the batch's summed loss, or its mean with ``--reduction mean`` (divided by
  the batch's rows): the optimizers never divide by anything themselves.
* ``sgd(step_size, mass=0.9)`` is a *dampened* heavy-ball momentum:
  ``v = mass v - (1 - mass) g; x += step_size v``, and it defaults to
  mass 0.9 (and ``step_size=0.1``, ``num_iters=200``).  With v = -(1 - mass) V
  this is the textbook ``V = mu V + g; p -= lr V`` exactly when
  ``mass = mu`` and ``step_size = lr / (1 - mu)``: the backend passes that
  translation for the momentum family and reads lr back as
  ``step_size * (1 - mass)`` (equal to the cell's lr up to one rounding;
  exactly for e.g. lr 0.125, mu 0.875).  The plain ``sgd`` family passes
  ``mass=0``, with which the update ``x + step_size * (0 * v - 1 * g)`` is
  bit-for-bit ``x - lr * g`` in the flat vector's dtype.  Measured (float64,
  lr 0.125, momentum 0.875, seeds 0-2, every gate and arch): the
  translated call agrees with the textbook momentum rule to oracle_dev
  <= ~1e-13; no departure atom is needed.
* ``rmsprop`` starts its average of squared gradients at ONES
  (``avg_sq_grad = np.ones(len(x))``), not zeros; epsilon is outside the
  square root as in the textbook: departure ``ones-init``.  Measured at
  float64, single ``and``, seed 0, 60 updates, lr 0.125: textbook dev
  2.1e-1 (eps 1e-8) / 2.0e-1 (eps 1e-2), variant dev 1.5e-16 / 4.0e-16.
  Caveat: rmsprop divides g by sqrt(s), so it turns the large relative
  round-off of a tiny gradient (a saturated row: sigmoid(z) - y cancels)
  into an O(1) relative error of the step; with eps 1e-8 many float64
  cells leave the 1e-9 band through gradient round-off alone (autograd's
  chain-rule gradient of the written-out loss rounds differently from the
  oracle's closed form), raw level included.
* ``adam`` is the textbook rule: bias correction ``1 - b ** (i + 1)`` with
  the 0-based iteration i, epsilon added to ``sqrt(vhat)``.
* Nesterov momentum: autograd has none (``OPTIMIZER_GAPS``); the raw level
  writes it out.
* Weight decay: no optimizer takes one; the backend adds L2 to the gradient
  its ``grad`` function returns (``g + wd * p``, the textbook's), and
  records the value it added.
* The optimizers keep their state in ``np.zeros(len(x))`` / ``np.ones``,
  float64 whatever the parameters' dtype, so for float32 cells the flat
  parameter vector becomes float64 at the first update and the updates are
  carried in float64.  ``unflatten`` casts back to the parameters' dtype,
  so every forward and backward pass (and the returned parameters) is
  float32; only the update arithmetic and the state carried between steps
  are wider.  ``info['<optimizer>_state_dtype']`` records it
  (``sgd_state_dtype`` for the sgd and momentum families).
"""
from __future__ import annotations

import inspect

import numpy as np

from harness.recipes import Textbook, in_effect
from harness.tasks import (BatchResult, BatchSpec, TrainResult, TrainSpec, batches,
                           hyperparameters, updates, updates_per_epoch)

NAME = "autograd"
IMPORTS = ("autograd",)
UNSUPPORTED = {
    "module": "autograd differentiates plain numpy functions and has no layer modules "
              "(no Linear/Sequential/loss objects)",
    "custom": "autograd has no model base class to subclass: a model is a plain function "
              "of a parameter dict",
}
OPTIMIZER_GAPS = {
    "nesterov": "autograd.misc.optimizers has sgd (dampened heavy-ball momentum), adam and "
                "rmsprop only: no Nesterov momentum",
}
# The optimizer function of each family, and its arguments' harness names.
_FUNCTIONS = {"sgd": "sgd", "momentum": "sgd", "adam": "adam", "rmsprop": "rmsprop"}
_HARNESS_NAMES = {"mass": "momentum", "b1": "beta1", "b2": "beta2", "eps": "eps", "gamma": "rho"}
_FRAMEWORK_NAMES = {v: k for k, v in _HARNESS_NAMES.items()}


def framework_version() -> str:
    from importlib.metadata import version
    return version("autograd")


def _signature(function: str) -> inspect.Signature:
    """The signature of autograd's optimizer function.  The public name is
    the ``unflatten_optimizer`` wrapper, whose own signature is ``(grad, x0,
    callback=None, *args, **kwargs)`` (its ``wraps`` copies name and doc,
    not ``__wrapped__``): the defaults live on the flat-vector function it
    closes over, ``optimize``."""
    from autograd.misc import optimizers
    public = getattr(optimizers, function)
    inner = inspect.getclosurevars(public).nonlocals.get("optimize", public)
    return inspect.signature(inner)


def _signature_defaults(function: str) -> dict[str, float]:
    params = _signature(function).parameters
    return {k: p.default for k, p in params.items() if p.default is not inspect.Parameter.empty}


def optimizer_defaults(family: str) -> dict[str, float]:
    """autograd's own defaults for the family, from its optimizer function's
    signature (harness names).  The sgd family is mass 0 by definition (plain
    gradient descent), not a default; nesterov has no function (empty: the
    harness's defaults); no function takes a weight decay (0)."""
    if family not in _FUNCTIONS:
        return {}
    got = _signature_defaults(_FUNCTIONS[family])
    out = {_HARNESS_NAMES[k]: float(v) for k, v in got.items() if k in _HARNESS_NAMES}
    if family == "sgd":
        out.pop("momentum")
    return {**out, "weight_decay": 0.0}


def departures(cell) -> tuple[str, ...]:
    """rmsprop's average of squared gradients starts at ones (its source:
    ``avg_sq_grad = np.ones(len(x))``); every other family is textbook.
    Both levels differentiate the written-out loss through sigmoids
    written as ``1 / (1 + exp(-z))``, primitive by primitive, which keeps
    the digits of 1 - p that the textbook's p - y loses
    ("autodiff-written-out"): invisible at sgd, a measured 1e-9 to 1e-7 in
    the final parameters of multi-layer RMSprop cells at lr 0.5 (float64),
    whose g / sqrt(s) normalises gradients of ~1e-8."""
    atoms = ("autodiff-written-out",) if cell.optimizer in ("adam", "rmsprop") else ()
    if cell.level == "optimizer" and cell.optimizer == "rmsprop":
        return ("ones-init", *atoms)
    return atoms


def _objective(spec: TrainSpec):
    """The written-out loss as a function of a canonical parameter dict and
    the rows of a batch: summed, or averaged over the batch's rows."""
    import autograd.numpy as anp

    def forward(params, x=spec.x):
        if spec.arch == "single":
            return 1.0 / (1.0 + anp.exp(-(anp.dot(x, params["W"]) + params["b"])))
        h = 1.0 / (1.0 + anp.exp(-(anp.dot(x, params["W1"]) + params["b1"])))
        return 1.0 / (1.0 + anp.exp(-(anp.dot(h, params["W2"]) + params["b2"])))

    def loss(params, rows=slice(None)):
        x, y = spec.x[rows], spec.y[rows]
        p = forward(params, x)
        total = -anp.sum(anp.log(y * p + (1 - y) * (1 - p)))
        return total if spec.reduction == "sum" else total / len(y)

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


def _result(spec: TrainSpec, forward, loss, params, curve, hp, info=None) -> TrainResult:
    final = _canonical(spec, params)
    return TrainResult(params_start=_canonical(spec, spec.params), params_final=final,
                       loss_curve=curve, loss_final=float(loss(final)),
                       probs=np.asarray(forward(final)).reshape(-1), info=info or {},
                       hparams=hp)


def train_raw(spec: TrainSpec) -> TrainResult:
    from autograd import value_and_grad

    forward, loss = _objective(spec)
    value_grad = value_and_grad(loss)
    hp = in_effect(spec.cell, optimizer_defaults)
    rule = Textbook(spec.cell, hp, np.sqrt)
    params = {k: v.copy() for k, v in spec.params.items()}
    curve: list[float] = []
    for _ in range(spec.epochs):
        for rows in batches(spec.cell):
            value, grads = value_grad(params, rows)
            curve.append(float(value))
            rule.tick()
            params = {k: rule.step(k, params[k], grads[k]) for k in params}
    return _result(spec, forward, loss, params, curve, hp)


def _call(spec: TrainSpec) -> tuple[str, dict]:
    """The optimizer function and the keyword arguments the cell passes:
    the learning rate always, the family's other hyperparameters with
    ``--hparams explicit``; momentum translated (module docstring)."""
    family = spec.optimizer
    function = _FUNCTIONS[family]
    hp = hyperparameters(spec.cell)
    kw = {_FRAMEWORK_NAMES[k]: v for k, v in hp.items() if k in _FRAMEWORK_NAMES}
    kw["step_size"] = hp["lr"]
    if family == "sgd":
        kw["mass"] = 0.0  # what makes it plain gradient descent
    elif family == "momentum":
        mass = kw.get("mass", _signature_defaults(function)["mass"])
        kw["step_size"] = hp["lr"] / (1.0 - mass)
    return function, kw


def _read_back(spec: TrainSpec, function: str, bound: dict, wd: float) -> dict[str, float]:
    """The hyperparameters in effect, from the call's bound arguments."""
    hp = {"lr": float(bound["step_size"])}
    if function == "sgd":
        hp["lr"] = float(bound["step_size"] * (1.0 - bound["mass"]))
        if spec.optimizer == "momentum":
            hp["momentum"] = float(bound["mass"])
    else:
        hp.update({_HARNESS_NAMES[k]: float(v) for k, v in bound.items()
                   if k in _HARNESS_NAMES})
    hp["weight_decay"] = wd
    return hp


def train_optimizer(spec: TrainSpec) -> TrainResult:
    from autograd import value_and_grad
    from autograd.misc import optimizers

    forward, loss = _objective(spec)
    value_grad = value_and_grad(loss)
    function, kw = _call(spec)
    optimize = getattr(optimizers, function)
    # autograd has no weight decay: L2 added to the gradient here (textbook).
    wd = float(spec.weight_decay or 0.0)
    slices, per_epoch = batches(spec.cell), updates_per_epoch(spec.cell)
    curve: list[float] = []

    def grad(p, i):
        value, g = value_grad(p, slices[i % per_epoch])
        curve.append(float(value))
        if wd:
            g = {k: g[k] + wd * p[k] for k in g}
        return g

    x0 = {k: v.copy() for k, v in spec.params.items()}
    kw["num_iters"] = updates(spec.cell)
    # The arguments in effect: the call's, with the function's defaults.
    bound = _signature(function).bind(grad, x0, **kw)
    bound.apply_defaults()
    hp = _read_back(spec, function, bound.arguments, wd)
    params = optimize(grad, x0, **kw)
    # np.result_type(dtype, the state's float64): see the docstring.
    info = {f"{function}_state_dtype": str(np.result_type(spec.dtype, np.float64))}
    return _result(spec, forward, loss, params, curve, hp, info)


# ---------------------------------------------------- raw level, batched

def _objective_seeds(spec: BatchSpec):
    """``_objective`` with a leading seed axis S on every parameter:
    ``anp.matmul`` of x (R, n) and W (S, n, k) is one matrix product per
    seed (numpy loops over the leading axis), biases (S, k) become
    (S, 1, k), and the loss is one value per seed, shape (S,)."""
    import autograd.numpy as anp

    def forward(params, x=spec.x):
        if spec.arch == "single":
            return 1.0 / (1.0 + anp.exp(-(anp.matmul(x, params["W"]) + params["b"][:, None, :])))
        h = 1.0 / (1.0 + anp.exp(-(anp.matmul(x, params["W1"]) + params["b1"][:, None, :])))
        return 1.0 / (1.0 + anp.exp(-(anp.matmul(h, params["W2"]) + params["b2"][:, None, :])))

    def loss(params, rows=slice(None)):
        x, y = spec.x[rows], spec.y[rows]
        p = forward(params, x)
        total = -anp.sum(anp.log(y * p + (1 - y) * (1 - p)), axis=(1, 2))
        return total if spec.reduction == "sum" else total / len(y)

    return forward, loss


def train_raw_batch(spec: BatchSpec) -> BatchResult:
    """``train_raw`` for S seeds at once: ``make_vjp`` of the per-seed loss
    vector, pulled back with a vector of ones, is each seed's own gradient
    (what ``value_and_grad`` pulls back with 1 per seed)."""
    from autograd import make_vjp

    forward, loss = _objective_seeds(spec)
    hp = in_effect(spec.cell, optimizer_defaults)
    rule = Textbook(spec.cell, hp, np.sqrt)
    params = {k: v.copy() for k, v in spec.params.items()}
    curve = np.empty((spec.seeds, updates(spec.cell)))
    u = 0
    for _ in range(spec.epochs):
        for rows in batches(spec.cell):
            vjp, value = make_vjp(loss)(params, rows)
            grads = vjp(np.ones_like(value))
            curve[:, u] = value
            rule.tick()
            params = {k: rule.step(k, params[k], grads[k]) for k in params}
            u += 1
    final = {k: np.asarray(params[k]).astype(spec.dtype) for k in spec.params}
    return BatchResult(params_start={k: v.copy() for k, v in spec.params.items()},
                       params_final=final, loss_curve=curve, loss_final=loss(final),
                       probs=np.asarray(forward(final)).reshape(spec.seeds, -1), hparams=hp)


TRAINERS = {"raw": train_raw, "optimizer": train_optimizer}
BATCHED = {"raw": train_raw_batch}
