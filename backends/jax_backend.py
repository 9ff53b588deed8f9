"""JAX, with Flax NNX modules and optax.

* ``raw``: a pure function of the canonical parameter dict in ``jax.numpy``,
  the notebook's written-out loss, ``jax.value_and_grad``, the update
  written out as a tree map.
* ``module``: ``nnx.Sequential(nnx.Linear, nnx.sigmoid, nnx.Linear)`` and
  ``optax.sigmoid_binary_cross_entropy`` summed over rows; gradients with
  ``nnx.grad``, the update written out over the ``nnx.Param`` state
  (``nnx.state`` / ``nnx.update``).
* ``optimizer``: the same model with ``nnx.Optimizer(model, optax.sgd(lr))``.
* ``custom``: a user-style ``nnx.Module`` subclass (layers as attributes,
  the forward pass in ``__call__``) with the same optimizer.

Modes: ``compiled`` (the default: the training step under ``jax.jit`` /
``nnx.jit``, traced once per shape and dtype in a worker) and ``eager``
(the same step dispatched op by op).

Conventions adapted:

* float64 needs ``JAX_ENABLE_X64=1`` before JAX is imported; without it
  ``jnp.asarray(float64 array)`` silently gives float32.  ``ENV`` has the
  worker set it, and every trainer checks that its arrays really have the
  cell's dtype (``info['x64']`` records the switch).  With x64 on, JAX's
  default float is float64: every array is created in the cell's dtype
  explicitly.
* ``nnx.Linear`` stores its kernel as (in, out), like the canonical W, and
  draws it from an RNG at construction: the harness's values overwrite the
  draw (``kernel.value = ...``) before anything trains; ``param_dtype`` and
  ``dtype`` are the cell's.
* ``optax.sigmoid_binary_cross_entropy`` returns one loss per element (no
  reduction): we ``.sum()`` it.  ``optax.sgd`` has no momentum unless asked
  (``momentum=None``): plain ``p - lr * g``.
* ``nnx.Optimizer.update(grads)`` applies optax's update to the model in
  place (flax 0.10's API, which takes no model argument).
"""
from __future__ import annotations

import functools

import numpy as np

from harness.tasks import TrainResult, TrainSpec

NAME = "jax"
IMPORTS = ("jax", "flax", "optax")
ENV = {"JAX_ENABLE_X64": "1"}
UNSUPPORTED: dict[str, str] = {}


def framework_version() -> str:
    import flax
    import jax
    import optax
    return f"{jax.__version__} (flax {flax.__version__}, optax {optax.__version__})"


def _arrays(spec: TrainSpec):
    import jax
    import jax.numpy as jnp

    x, y = jnp.asarray(spec.x), jnp.asarray(spec.y)
    if x.dtype != np.dtype(spec.dtype):
        raise RuntimeError(f"JAX holds {spec.dtype} data as {x.dtype}: JAX_ENABLE_X64 was not "
                           "set before JAX was imported")
    return jax, jnp, x, y


def _written_out(params, x, y):
    import jax
    import jax.numpy as jnp

    if "W" in params:
        p = jax.nn.sigmoid(x @ params["W"] + params["b"])
    else:
        h = jax.nn.sigmoid(x @ params["W1"] + params["b1"])
        p = jax.nn.sigmoid(h @ params["W2"] + params["b2"])
    return -jnp.sum(jnp.log(y * p + (1 - y) * (1 - p))), p


def _raw_loss(params, x, y):
    return _written_out(params, x, y)[0]


def _raw_step(params, x, y, lr):
    import jax

    loss, grads = jax.value_and_grad(_raw_loss)(params, x, y)
    return loss, jax.tree_util.tree_map(lambda p, g: p - lr * g, params, grads)


@functools.lru_cache(maxsize=None)
def _jitted(fn):
    import jax
    return jax.jit(fn)


def loss_and_grad(spec: TrainSpec):
    """The raw level's loss and autodiff gradient at ``spec.params``."""
    jax, jnp, x, y = _arrays(spec)
    params = {k: jnp.asarray(v) for k, v in spec.params.items()}
    loss, grads = jax.value_and_grad(_raw_loss)(params, x, y)
    return float(loss), {k: np.asarray(grads[k]) for k in spec.params}


def _info(jax) -> dict:
    return {"x64": bool(jax.config.jax_enable_x64)}


def train_raw(spec: TrainSpec) -> TrainResult:
    jax, jnp, x, y = _arrays(spec)
    params = {k: jnp.asarray(v) for k, v in spec.params.items()}
    lr = jnp.asarray(spec.lr, dtype=spec.dtype)
    step = _jitted(_raw_step) if spec.mode == "compiled" else _raw_step
    start = {k: np.asarray(v) for k, v in params.items()}
    curve = []
    for _ in range(spec.epochs):
        loss, params = step(params, x, y, lr)
        curve.append(float(loss))
    loss, p = _written_out(params, x, y)
    # jax's tree maps return dicts in sorted key order: back to canonical.
    return TrainResult(params_start=start, params_final={k: np.asarray(params[k]) for k in start},
                       loss_curve=curve, loss_final=float(loss), probs=np.asarray(p).reshape(-1),
                       info=_info(jax))


# ------------------------------------------------------------ NNX levels

@functools.lru_cache(maxsize=None)
def _custom_classes():
    """The notebook's user-style models as ``nnx.Module`` subclasses."""
    from flax import nnx

    class SingleLayerNN(nnx.Module):
        def __init__(self, d_in, dtype, rngs):
            self.linear1 = nnx.Linear(d_in, 1, dtype=dtype, param_dtype=dtype, rngs=rngs)

        def __call__(self, x):
            return self.linear1(x)

    class ThreeLayerNN(nnx.Module):
        def __init__(self, d_in, d_hidden, dtype, rngs):
            self.linear1 = nnx.Linear(d_in, d_hidden, dtype=dtype, param_dtype=dtype, rngs=rngs)
            self.linear2 = nnx.Linear(d_hidden, 1, dtype=dtype, param_dtype=dtype, rngs=rngs)

        def __call__(self, x):
            return self.linear2(nnx.sigmoid(self.linear1(x)))

    return SingleLayerNN, ThreeLayerNN


def _build(spec: TrainSpec):
    import jax.numpy as jnp
    from flax import nnx

    rngs = nnx.Rngs(0)  # its draw is overwritten below
    n_in = spec.x.shape[1]
    dt = dict(dtype=spec.dtype, param_dtype=spec.dtype)
    if spec.level == "custom":
        single, three = _custom_classes()
        model = (single(n_in, spec.dtype, rngs) if spec.arch == "single" else
                 three(n_in, spec.hidden, spec.dtype, rngs))
        layers = [model.linear1] if spec.arch == "single" else [model.linear1, model.linear2]
    elif spec.arch == "single":
        layers = [nnx.Linear(n_in, 1, rngs=rngs, **dt)]
        model = nnx.Sequential(*layers)
    else:
        layers = [nnx.Linear(n_in, spec.hidden, rngs=rngs, **dt),
                  nnx.Linear(spec.hidden, 1, rngs=rngs, **dt)]
        model = nnx.Sequential(layers[0], nnx.sigmoid, layers[1])
    names = [("W", "b")] if spec.arch == "single" else [("W1", "b1"), ("W2", "b2")]
    for layer, (w, b) in zip(layers, names):
        layer.kernel.value = jnp.asarray(spec.params[w])
        layer.bias.value = jnp.asarray(spec.params[b])

    def read():
        out = {}
        for layer, (w, b) in zip(layers, names):
            out[w] = np.asarray(layer.kernel.value)
            out[b] = np.asarray(layer.bias.value)
        return out

    return model, read


def _bce_sum(model, x, y):
    import optax
    return optax.sigmoid_binary_cross_entropy(model(x), y).sum()


def _hand_step(model, x, y, lr):
    import jax
    from flax import nnx

    loss, grads = nnx.value_and_grad(_bce_sum)(model, x, y)
    params = nnx.state(model, nnx.Param)
    nnx.update(model, jax.tree_util.tree_map(lambda p, g: p - lr * g, params, grads))
    return loss


def _optimizer_step(model, optimizer, x, y):
    from flax import nnx

    loss, grads = nnx.value_and_grad(_bce_sum)(model, x, y)
    optimizer.update(grads)
    return loss


@functools.lru_cache(maxsize=None)
def _nnx_jitted(fn):
    from flax import nnx
    return nnx.jit(fn)


def _train_nnx(spec: TrainSpec, use_optimizer: bool) -> TrainResult:
    jax, jnp, x, y = _arrays(spec)
    import optax
    from flax import nnx

    model, read = _build(spec)
    start = read()
    jit = spec.mode == "compiled"
    curve = []
    if use_optimizer:
        optimizer = nnx.Optimizer(model, optax.sgd(spec.lr))
        step = _nnx_jitted(_optimizer_step) if jit else _optimizer_step
        for _ in range(spec.epochs):
            curve.append(float(step(model, optimizer, x, y)))
    else:
        lr = jnp.asarray(spec.lr, dtype=spec.dtype)
        step = _nnx_jitted(_hand_step) if jit else _hand_step
        for _ in range(spec.epochs):
            curve.append(float(step(model, x, y, lr)))
    z = model(x)
    loss = _bce_sum(model, x, y)
    return TrainResult(params_start=start, params_final=read(), loss_curve=curve,
                       loss_final=float(loss), probs=np.asarray(jax.nn.sigmoid(z)).reshape(-1),
                       info=_info(jax))


TRAINERS = {
    "raw": train_raw,
    "module": functools.partial(_train_nnx, use_optimizer=False),
    "optimizer": functools.partial(_train_nnx, use_optimizer=True),
    "custom": functools.partial(_train_nnx, use_optimizer=True),
}
MODES = dict.fromkeys(TRAINERS, ("compiled", "eager"))
MODE_GAPS = {"graph": "JAX has no graph-and-session mode; jax.jit is its compiled mode"}
