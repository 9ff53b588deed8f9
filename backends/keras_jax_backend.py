"""Keras 3 on JAX: the tensorflow row's Keras code with ``KERAS_BACKEND=jax``.

* ``raw``: the canonical parameters as JAX arrays, the notebook's loss in
  ``keras.ops``, JAX's own gradient (``jax.value_and_grad``), the family's
  ``harness.recipes.Textbook`` update written out (a pure function of the
  update count and its state under ``jax.jit``; the cells of one recipe
  share one jitted step).
* ``module``: ``keras.Sequential`` of ``Dense`` and
  ``BinaryCrossentropy(from_logits=True, reduction='sum')``; the gradient of
  ``model.stateless_call`` (Keras' pure-function form of a model on JAX)
  with ``jax.value_and_grad``, the textbook update written out, parameters
  assigned back at the end.
* ``optimizer``, ``custom``: ``compile(<the family's Keras optimizer>)`` +
  ``fit`` exactly as on TensorFlow (backends/keras_common.py: families,
  departures ``eps-hat``, ``eps-inside-sqrt``, ``decoupled-weight-decay``,
  defaults), unshuffled batches.  Unlike the tensorflow row no
  ``float32-casts``: JAX's ``ops.cast`` of a Python float is exact under
  x64 (Adam at the harness's defaults: 6.3e-8 from the textbook here,
  2.2e-6 on TensorFlow).

Modes: ``compiled`` (the default: ``jax.jit`` of the raw and module steps,
``compile(jit_compile=True)`` for ``fit``, which is how Keras runs on JAX
unless told otherwise; that is XLA, unlike the tensorflow row's tf.function)
and ``eager`` (un-jitted steps, ``run_eagerly=True``).

Not adaptable (a finding): Keras 3's type promotion maps float64 to
float32 on every backend but TensorFlow (``keras.backend.result_type``,
``BIT64_TO_BIT32_DTYPE`` in keras/src/backend/common/dtypes.py).  On JAX
most ops keep float64, but eagerly (``run_eagerly=True``, or an un-jitted
step) the value of ``keras.ops.binary_crossentropy(from_logits=True)``
carries float32 round-off (measured: ~2e-8 per row at float64), so the
loss curve of every float64 eager module, optimizer and custom cell leaves
the oracle's band at epoch 0 while the parameters, whose gradient does not
go through that rounding, agree exactly.  Under ``jax.jit`` the same code
agrees with the oracle to the last bit.  ``known_departure`` names it.
The same promotion reaches the gradient of the ``'sum_over_batch_size'``
reduction (``--reduction mean``) even under ``jax.jit``, when a batch's
rows are not a power of two: with ``--batch-size 3`` the gradient of a
3-row batch is off by ~7e-9 (measured on single ``and``, seed 0; the jitted
value is exact, and a sum, or a mean over 1, 2 or 4 rows, is exact), so
those module, optimizer and custom cells leave the oracle's band by ~1e-8;
``known_departure`` names them too.  (TensorFlow's Keras and the raw
level's own mean are exact.)

Conventions adapted: those of backends/keras_common.py, plus JAX's float64
switch: the worker sets ``JAX_ENABLE_X64=1`` and ``KERAS_BACKEND=jax``
before anything imports JAX or Keras (``ENV``); trainers check the arrays
really have the cell's dtype.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from backends import keras_common
from backends.curve import LossCurve
from harness.tasks import TrainResult, TrainSpec, batches

NAME = "keras-jax"
IMPORTS = ("jax", "keras")
ENV = {"KERAS_BACKEND": "jax", "JAX_ENABLE_X64": "1"}
UNSUPPORTED: dict[str, str] = {}


# Keras 3's type promotion (keras/src/backend/common/dtypes.py,
# BIT64_TO_BIT32_DTYPE, "aligned with JAX's default behavior") maps float64
# to float32 on every backend but TensorFlow, whatever floatx says.


def known_departure(cell) -> str | None:
    if cell.dtype != "float64" or cell.level not in ("module", "optimizer", "custom"):
        return None
    if cell.mode == "eager":
        return ("Keras 3 promotes float64 to float32 off TensorFlow (keras.backend.result_type): "
                "un-jitted, keras.ops.binary_crossentropy's value carries float32 round-off")
    if cell.reduction == "mean" and any((rows.stop - rows.start) & (rows.stop - rows.start - 1)
                                        for rows in batches(cell)):
        return ("Keras 3 on JAX: the gradient of the 'sum_over_batch_size' loss reduction "
                "carries float32 round-off when a batch's rows are not a power of two, even "
                "under jax.jit (its value is exact there)")
    return None


departures = keras_common.departures
optimizer_defaults = keras_common.optimizer_defaults


def framework_version() -> str:
    import jax
    import keras
    return f"keras {keras.__version__} (jax {jax.__version__})"


def _check(spec: TrainSpec):
    import jax.numpy as jnp
    import keras

    if keras.backend.backend() != "jax":
        raise RuntimeError(f"Keras runs on {keras.backend.backend()!r} in this process, not jax")
    x = jnp.asarray(spec.x)
    if x.dtype != np.dtype(spec.dtype):
        raise RuntimeError(f"JAX holds {spec.dtype} data as {x.dtype}: JAX_ENABLE_X64 was not "
                           "set before JAX was imported")
    return x, jnp.asarray(spec.y)


def _raw_loss(params, x, y, mean=False):
    import keras
    return keras_common.written_out_loss(keras.ops, params, x, y, mean)[0]


# (family, hyperparameters, reduction, mode) -> the raw level's step: cells
# of one recipe share one jitted function (retraced per shape only).
_RAW_STEPS: dict[tuple, Any] = {}


def _raw_step(spec: TrainSpec, rule):
    key = (spec.optimizer, tuple(rule.hp.items()), spec.reduction, spec.mode)
    if key not in _RAW_STEPS:
        import jax

        mean = spec.reduction == "mean"

        def step(params, state, t, x, y):
            # t, the update count in the cell's dtype, is carried on the
            # device and counted here (exact below 2**24 updates in float32):
            # a new array per update from the host cost as much as the step.
            loss, grads = jax.value_and_grad(_raw_loss)(params, x, y, mean)
            return (loss, *keras_common.textbook_update(rule, t, state, params, grads), t + 1)

        _RAW_STEPS[key] = jax.jit(step) if spec.mode == "compiled" else step
    return _RAW_STEPS[key]


def loss_and_grad(spec: TrainSpec):
    """The raw level's loss and JAX's gradient at ``spec.params``."""
    import jax
    import jax.numpy as jnp

    x, y = _check(spec)
    params = {k: jnp.asarray(v) for k, v in spec.params.items()}
    loss, grads = jax.value_and_grad(_raw_loss)(params, x, y, spec.reduction == "mean")
    return float(loss), {k: np.asarray(grads[k]) for k in spec.params}


def _info(spec: TrainSpec) -> dict:
    import jax
    return {"x64": bool(jax.config.jax_enable_x64)}


def _curve(jax) -> LossCurve:
    """Losses kept on the device, copied to the host a block at a time."""
    return LossCurve(lambda losses: [float(v) for v in jax.device_get(losses)])


def train_raw(spec: TrainSpec) -> TrainResult:
    import jax
    import jax.numpy as jnp
    import keras

    x, y = _check(spec)
    params = {k: jnp.asarray(v) for k, v in spec.params.items()}
    rule = keras_common.textbook(spec, jnp.sqrt)
    step = _raw_step(spec, rule)
    state = keras_common.zero_state(rule, params, jnp.zeros_like)
    data = [(x[rows], y[rows]) for rows in batches(spec.cell)]
    start = {k: np.asarray(v) for k, v in params.items()}
    curve = _curve(jax)
    t = jnp.asarray(1, dtype=spec.dtype)
    for _ in range(spec.epochs):
        for xb, yb in data:
            loss, params, state, t = step(params, state, t, xb, yb)
            curve.append(loss)
    loss, p = keras_common.written_out_loss(keras.ops, params, x, y, spec.reduction == "mean")
    # jax's tree maps return dicts in sorted key order: back to canonical.
    return TrainResult(params_start=start, params_final={k: np.asarray(params[k]) for k in start},
                       loss_curve=curve.floats(), loss_final=float(loss),
                       probs=np.asarray(p).reshape(-1),
                       info=_info(spec), hparams=rule.hp)


def _hand_train(model, loss_fn, data, spec: TrainSpec, rule) -> list[float]:
    import jax
    import jax.numpy as jnp

    _check(spec)
    names = [str(i) for i in range(len(model.trainable_variables))]
    trainable = dict(zip(names, (v.value for v in model.trainable_variables)))
    fixed = [v.value for v in model.non_trainable_variables]

    def loss_of(values, x, y):
        z, _ = model.stateless_call([values[k] for k in names], fixed, x, training=True)
        return loss_fn(y, z)

    def step(values, state, t, x, y):
        # t counted on the device, as in train_raw.
        loss, grads = jax.value_and_grad(loss_of)(values, x, y)
        return (loss, *keras_common.textbook_update(rule, t, state, values, grads), t + 1)

    if spec.mode == "compiled":
        step = jax.jit(step)
    state = keras_common.zero_state(rule, trainable, jnp.zeros_like)
    curve = _curve(jax)
    t = jnp.asarray(1, dtype=spec.dtype)
    for _ in range(spec.epochs):
        for x, y in data:
            loss, trainable, state, t = step(trainable, state, t, x, y)
            curve.append(loss)
    for variable, name in zip(model.trainable_variables, names):
        variable.assign(trainable[name])
    return curve.floats()


def _fit_data(spec: TrainSpec) -> dict:
    _check(spec)
    return keras_common.array_data(spec)


# (reduction, targets) -> the jitted final loss: compiling one per cell cost
# a single-layer cell a third of its time.
_FINAL_LOSSES: dict[tuple, Any] = {}


def _final_loss(loss_fn, y, z, spec: TrainSpec):
    """In compiled mode the final loss is jitted like the training steps
    (eagerly it would carry the float32 round-off ``known_departure`` names),
    once per reduction and targets: the cells that share them build the same
    loss function (``keras_common.train``) on the same constant targets."""
    if spec.mode != "compiled":
        return loss_fn(y, z)
    import jax

    target = np.asarray(y)
    key = (spec.reduction, target.dtype.str, target.shape, target.tobytes())
    if key not in _FINAL_LOSSES:
        _FINAL_LOSSES[key] = jax.jit(lambda z: loss_fn(y, z))
    return _FINAL_LOSSES[key](z)


ROW = keras_common.KerasRow(hand_train=_hand_train, fit_data=_fit_data,
                            jit_compile=lambda mode: mode == "compiled", info=_info,
                            final_loss=_final_loss)
TRAINERS = keras_common.levels(train_raw, ROW)
MODES = dict.fromkeys(TRAINERS, ("compiled", "eager"))
MODE_GAPS = {"graph": "Keras 3 on JAX has no graph-and-session mode; jax.jit is its compiled "
                      "mode"}


# ---------------------------------------------------- raw level, batched

def _raw_step_seeds(spec, rule):
    """``_raw_step`` for a leading seed axis (backends/keras_common.py,
    ``written_out_loss_seeds``): JAX's gradient of the sum of the seeds'
    losses, which is each seed's own (the sum's cotangent is exactly 1 per
    seed)."""
    key = ("seeds", spec.optimizer, tuple(rule.hp.items()), spec.reduction, spec.mode)
    if key not in _RAW_STEPS:
        import jax
        import keras

        mean = spec.reduction == "mean"

        def total(params, x, y):
            loss, _ = keras_common.written_out_loss_seeds(keras.ops, params, x, y, mean)
            return keras.ops.sum(loss), loss

        def step(params, state, t, x, y):
            (_, loss), grads = jax.value_and_grad(total, has_aux=True)(params, x, y)
            return (loss, *keras_common.textbook_update(rule, t, state, params, grads))

        _RAW_STEPS[key] = jax.jit(step) if spec.mode == "compiled" else step
    return _RAW_STEPS[key]


def _train_seeds(spec, params, rule, data):
    """The batched updates; each update's losses stay on JAX's (asynchronous)
    dispatch until the end, copied to the host in one call and stacked there."""
    import jax
    import jax.numpy as jnp

    _check(spec)
    step = _raw_step_seeds(spec, rule)
    state = keras_common.zero_state(rule, params, jnp.zeros_like)
    curve = []
    for _ in range(spec.epochs):
        for xb, yb in data:
            t = jnp.asarray(len(curve) + 1, dtype=spec.dtype)
            loss, params, state = step(params, state, t, xb, yb)
            curve.append(loss)
    return params, np.stack(jax.device_get(curve), axis=1)


def _jnp(a):
    import jax.numpy as jnp
    return jnp.asarray(a)


def _sqrt(v):
    import jax.numpy as jnp
    return jnp.sqrt(v)


RAW_SEEDS = keras_common.RawSeeds(param=_jnp, tensor=_jnp, sqrt=_sqrt, train=_train_seeds,
                                  info=_info)
BATCHED = {"raw": lambda spec: keras_common.train_raw_batch(spec, RAW_SEEDS)}
# Measured (tests/test_batch.py samples, 5 seeds): as the jax row, sgd is
# bit-identical under jit; the jitted adam update is fused differently.
BATCH_BOUNDS = {("raw", "compiled"): ({"float64": 1e-14, "float32": 1e-6},
                                      "XLA fuses the batched adam/rmsprop update differently "
                                      "(measured 6.5e-16 float64; sgd bit-identical)")}
