"""Keras 3 code shared by the three Keras rows: ``tensorflow`` (Keras on
TensorFlow), ``keras-jax`` and ``keras-torch``.

The model, its loss and the optimizer level are the same Keras code on
every Keras backend; what differs per backend is passed in as a
``KerasRow``: how a hand-written gradient step is taken (the module level),
how ``fit`` gets its batches and hands back its loss curve, and whether
"compiled" means XLA.  Keras picks its backend from ``KERAS_BACKEND`` when
it is first imported, once per process: each Keras row runs in a worker of
its own, whose environment its backend module declares (``ENV``).

Conventions adapted, for all three rows (measured on each):

* ``Dense`` stores its kernel as (in, out), like the canonical W: loaded and
  read back without transposing.  Layers are created with ``'zeros'``
  initializers (no random draw) and then assigned the harness's values.
* Keras losses average by default (``reduction='sum_over_batch_size'``; the
  notebook's ``'binary_crossentropy'`` string): we pass ``reduction='sum'``.
  ``BinaryCrossentropy`` first takes the mean over the last axis, a single
  output here, which is exact.
* Keras 3 takes float32 from ``keras.config.floatx()`` in many places a
  ``dtype`` argument does not reach (losses, ``fit``'s data adapter, the
  compiled total loss and loss tracker, ``SGD``'s learning-rate variable):
  training runs inside ``floatx(keras, dtype)``, which also unsets the
  global dtype policy and restores both exactly on exit.
* ``model.fit`` shuffles by default and uses batches of 32: every row gets
  ``shuffle=False`` and batches of the cell's ``batch_size`` (default: all
  rows, one batch per epoch) in truth-table order.
* Reduction: ``BinaryCrossentropy(reduction='sum')`` for ``--reduction sum``,
  Keras' own default ``'sum_over_batch_size'`` (the sum divided by the
  batch's rows) for ``mean``.

Recipes (``--optimizer``, ``--batch-size``, ``--reduction``):

* ``raw`` and ``module`` write every family out by hand
  (``harness.recipes.Textbook``, with the backend's own ``sqrt``).  Inside
  ``tf.function`` and ``jax.jit`` the rule runs as a pure function
  (``textbook_update``): the update count and the rule's state go in as
  tensors and come out again, so one trace serves every step.
* ``optimizer`` and ``custom`` use Keras' own optimizer objects, every family
  Keras has: ``sgd`` is ``SGD(learning_rate)``, ``momentum``
  ``SGD(momentum=mu)``, ``nesterov`` ``SGD(momentum=mu, nesterov=True)``,
  ``adam`` ``Adam(beta_1, beta_2, epsilon)``, ``rmsprop`` ``RMSprop(rho,
  epsilon)`` (momentum 0, not centered), with ``--hparams explicit`` every
  hyperparameter of the cell under Keras' name (``KERAS_NAMES``), with
  ``defaults`` only the learning rate.  The record's ``hparams_used`` is
  read back from the optimizer object (the learning rate from its variable,
  which Keras keeps in ``floatx``: the cell's dtype here).
  Read in keras/src/optimizers/ (Keras 3.15.1) and measured at float64
  (``departures``):

  - ``SGD`` with momentum keeps ``m = mu m - lr g`` and adds it (nesterov:
    ``p += mu m - lr g``): the textbook's ``v = mu v + g; p -= lr v`` with
    ``m = -lr v``, equal up to round-off (agrees with the textbook).
  - ``Adam`` adds epsilon to ``sqrt(v)`` and folds both bias corrections
    into ``alpha = lr sqrt(1 - b2^t) / (1 - b1^t)``: atom ``eps-hat``.
  - ``RMSprop`` divides by ``sqrt(velocity + epsilon)``, the velocity
    starting at zeros: atom ``eps-inside-sqrt``.
  - ``weight_decay=`` is decoupled: ``variable - variable * wd * lr`` before
    the update, the gradient taken at the undecayed parameters (every
    optimizer, keras/src/optimizers/base_optimizer.py
    ``_apply_weight_decay``): atom ``decoupled-weight-decay``.  (L2 added to
    the gradient would be a ``kernel_regularizer``, whose penalty ``fit``
    adds to the loss it reports.)
  - Keras' defaults (``optimizer_defaults``): SGD momentum 0.0 (so
    ``momentum`` and ``nesterov`` with ``--hparams defaults`` are plain
    gradient descent), Adam epsilon 1e-7 (not 1e-8), RMSprop rho 0.9 and
    epsilon 1e-7, no weight decay.
  - Hyperparameters other than the learning rate are Python floats, used
    as they are or through ``ops.cast(value, variable.dtype)`` (the
    momentum, Adam's betas for ``b^t``, the weight decay): exact at float64
    on JAX, but TensorFlow's cast makes a float32 tensor first (atom
    ``float32-casts``, the tensorflow row only; backends/tensorflow_backend.py).
  - Measured on keras-jax (float64, compiled, single ``and``, seed 0, 100
    epochs; deviation of the final parameters from the textbook, then from
    the named variant): momentum 0.9, lr 0.3: 2.0e-16 (the textbook); Adam
    at the harness's defaults: 6.3e-8, ``eps-hat`` 1.1e-16; RMSprop: 1.8e-5,
    ``eps-inside-sqrt`` 7.9e-16; Adam, lr 0.3, weight decay 0.01: 4.3e-1,
    ``eps-hat+decoupled-weight-decay`` 2.0e-16.  Plain SGD with weight decay
    agrees with the textbook (3.0e-16): decoupled and L2 decay differ only by
    round-off without a rule state; with momentum they do not (9.0e-1).

* Seed batches (``--batch-seeds``): the ``raw`` level of keras-jax and
  keras-torch trains S seeds at once with the code below
  (``train_raw_batch``, ``written_out_loss_seeds``): every parameter with a
  leading seed axis (W (S, n, k), biases held as (S, 1, k)),
  ``keras.ops.matmul`` of the shared x (R, n) against W broadcasting x over
  the seeds, the notebook's loss summed (or averaged) over axes (1, 2), one
  per seed, and the row's own gradient of the sum of the seeds' losses
  (each seed's own: the sum's gradient is exactly 1 per seed).  The rows
  pass their arrays, their ``sqrt`` and their update loop (``RawSeeds``);
  each update's losses stay on the device and are read once at the end.
  The module, optimizer and custom levels run per seed (a Keras model
  holds one set of weights).  The tensorflow row's raw level is written in
  TensorFlow, not ``keras.ops``: it has its own batched form.

* ``fit`` runs every update of the cell as one epoch (``_fit``): the
  notebook's ``fit(x, y, epochs=1000)`` pays Keras' work per epoch (a
  fresh data iterator, callbacks, logs: 1 to 2 ms an epoch, most of a
  1000-epoch cell), so the row's ``fit_data`` gives the truth table's
  batches once per harness epoch, in order, and ``fit`` takes them all as
  steps of one epoch.  The same batches in the same order are the same
  updates: tests/test_backends.py trains sample cells both ways on every
  Keras row (full batch, batch sizes 2 and 3, Adam and RMSprop, both
  modes) and finds the parameters and loss curves bit-identical.  Measured
  on 2 cores, the multi-layer xor cell (1000 updates, float32): tensorflow
  2.6 to 0.6 s, keras-jax 1.3 to 0.4 s, keras-torch 3.5 to 2.5 s.
* Each ``loss_curve`` entry is the loss of that update's batch before the
  update, exactly: ``fit``'s logged ``loss`` is the epoch's running mean of
  its loss tracker, weighted by batch size (``(loss * 3) / 3`` is not
  ``loss`` in one case in six), so the optimizer level compiles one more
  metric, ``BatchLoss``: the compiled loss function on the step's own
  ``y_pred``, which ``fit`` computes before it applies the update, kept as
  is (no averaging).  How the curve leaves the step is the row's
  (``KerasRow.curve_in_graph``): on TensorFlow the metric also writes each
  step's loss into a vector of the run's updates, and ``fit`` runs all
  updates in one call (``steps_per_execution``); on JAX and torch a
  callback keeps every step's value, declared ``async_safe`` so that Keras
  hands the logs to a thread instead of waiting for each step.  (On JAX
  the vector write changes what XLA compiles: measured, Adam with batch
  size 3 moved float32 round-off by an ulp against the notebook's ``fit``,
  as any extra consumer of the loss may.  Keras on torch runs one step per
  call.)
"""
from __future__ import annotations

import contextlib
import copy
import functools
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from harness.recipes import Textbook, in_effect
from harness.tasks import (HYPERPARAMETERS, TrainResult, TrainSpec, batches, hyperparameters,
                           updates)

# Each optimizer family's Keras class, and the harness's hyperparameter
# names as Keras' constructors spell them.
KERAS_CLASSES = {"sgd": "SGD", "momentum": "SGD", "nesterov": "SGD", "adam": "Adam",
                 "rmsprop": "RMSprop"}
KERAS_NAMES = {"momentum": "momentum", "beta1": "beta_1", "beta2": "beta_2", "eps": "epsilon",
               "rho": "rho", "weight_decay": "weight_decay"}


@dataclass(frozen=True)
class KerasRow:
    """What one Keras backend does its own way."""

    # (model, loss_fn, data, spec, rule) -> loss curve: the module level's
    # hand-written updates (rule: harness.recipes.Textbook) with this
    # backend's gradient, over ``data``, one epoch's (x, y) batches.
    hand_train: Callable[..., list[float]]
    # spec -> keyword arguments of model.fit giving every update's batch, in
    # order, as one epoch (``_fit``).
    fit_data: Callable[[TrainSpec], dict[str, Any]]
    # mode -> jit_compile for model.compile (TensorFlow's compiled mode is a
    # tf.function without XLA; JAX's is jax.jit, which is XLA).
    jit_compile: Callable[[str], bool]
    # (spec) -> info recorded with every result.
    info: Callable[[TrainSpec], dict[str, Any]]
    # (loss_fn, y, z, spec) -> the final loss, computed in the cell's mode
    # (None: called as it is).
    final_loss: Callable[..., Any] | None = None
    # Whether fit's loss curve is written inside the compiled step (a
    # vector, all updates in one call: steps_per_execution) or kept by a
    # callback per step.  Not on JAX: XLA compiles the step differently with
    # the vector write, which moved float32 round-off (Adam, batch size 3);
    # not on torch: Keras on torch runs one step per call.
    curve_in_graph: bool = False


def to_numpy(t) -> np.ndarray:
    import keras
    return np.array(keras.ops.convert_to_numpy(t))


@contextlib.contextmanager
def floatx(keras, dtype: str):
    """Keras' float defaults set to ``dtype`` inside, restored exactly on exit.

    Besides floatx, the global dtype policy: it is unset until something asks
    for it, and then ``keras.config.dtype_policy()`` stores
    ``DTypePolicy(floatx())`` for good, so asking inside would leave the
    cell's dtype behind as every later layer's default.  Inside it is unset
    (it follows floatx, even if the caller had set one); on exit it is put
    back as it was, unset or not.
    """
    from keras.src.backend.common import global_state  # no public way to unset it

    saved = keras.config.floatx(), global_state.get_global_attribute("dtype_policy")
    keras.config.set_floatx(dtype)
    global_state.set_global_attribute("dtype_policy", None)
    try:
        yield
    finally:
        keras.config.set_floatx(saved[0])
        global_state.set_global_attribute("dtype_policy", saved[1])


@functools.lru_cache(maxsize=None)
def custom_classes():
    """The notebook's user-style models as ``keras.Model`` subclasses (layers
    as attributes, the forward pass in ``call``), defined once per process."""
    import keras

    def dense(units, dtype):
        return keras.layers.Dense(units, dtype=dtype, kernel_initializer="zeros",
                                  bias_initializer="zeros")

    class SingleLayerNN(keras.Model):
        def __init__(self, dtype):
            super().__init__(dtype=dtype)
            self.linear1 = dense(1, dtype)

        def call(self, x):
            return self.linear1(x)

    class ThreeLayerNN(keras.Model):
        def __init__(self, hidden, dtype):
            super().__init__(dtype=dtype)
            self.linear1 = dense(hidden, dtype)
            self.linear2 = dense(1, dtype)

        def call(self, x):
            return self.linear2(keras.ops.sigmoid(self.linear1(x)))

    return SingleLayerNN, ThreeLayerNN


def build(keras, spec: TrainSpec):
    def dense(units, **kw):
        return keras.layers.Dense(units, dtype=spec.dtype, kernel_initializer="zeros",
                                  bias_initializer="zeros", **kw)

    n_in = spec.x.shape[1]
    if spec.level == "custom":
        single, three = custom_classes()
        model = single(spec.dtype) if spec.arch == "single" else three(spec.hidden, spec.dtype)
        layers = [model.linear1] if spec.arch == "single" else [model.linear1, model.linear2]
        # A subclassed model's build() cannot see its layers' inputs: build each.
        for layer, width in zip(layers, (n_in, spec.hidden)):
            layer.build((None, width))
        names = [("W", "b")] if spec.arch == "single" else [("W1", "b1"), ("W2", "b2")]
    elif spec.arch == "single":
        layers = [dense(1)]
        names = [("W", "b")]
    else:
        layers = [dense(spec.hidden, activation="sigmoid"), dense(1)]
        names = [("W1", "b1"), ("W2", "b2")]
    if spec.level != "custom":
        model = keras.Sequential([keras.Input(shape=(n_in,), dtype=spec.dtype), *layers])
    for layer, (w, b) in zip(layers, names):
        layer.kernel.assign(spec.params[w])
        layer.bias.assign(spec.params[b])

    def read():
        out = {}
        for layer, (w, b) in zip(layers, names):
            out[w] = to_numpy(layer.kernel)
            out[b] = to_numpy(layer.bias)
        return out

    return model, read


def array_data(spec: TrainSpec) -> dict[str, Any]:
    """fit's data for the whole run as one epoch (``_fit``): the
    truth table repeated once per epoch, in unshuffled batches of the cell's
    size (default: all rows).  A size that does not divide the rows leaves a
    short last batch in every pass, which one long array cannot give: then a
    generator yields the same batches."""
    size = spec.batch_size or len(spec.x)
    if len(spec.x) % size == 0:
        return {"x": np.tile(spec.x, (spec.epochs, 1)), "y": np.tile(spec.y, (spec.epochs, 1)),
                "batch_size": size}

    def passes():
        while True:
            for rows in batches(spec.cell):
                yield spec.x[rows], spec.y[rows]

    return {"x": passes(), "steps_per_epoch": updates(spec.cell)}


# ------------------------------------------------------------------ recipes

def optimizer_defaults(family: str) -> dict[str, float]:
    """Keras' own defaults for a family's hyperparameters, read from the
    signature of its optimizer class (weight_decay None: 0)."""
    import inspect

    import keras

    params = inspect.signature(getattr(keras.optimizers, KERAS_CLASSES[family])).parameters
    return {name: float(params[KERAS_NAMES[name]].default or 0.0)
            for name in HYPERPARAMETERS[family]}


def make_optimizer(keras, spec: TrainSpec):
    """The family's Keras optimizer: the learning rate and, with --hparams
    explicit, every other hyperparameter of the cell."""
    hp = hyperparameters(spec.cell)
    kwargs = {"learning_rate": hp.pop("lr")}
    kwargs.update({KERAS_NAMES[name]: value for name, value in hp.items()})
    if spec.optimizer == "nesterov":
        kwargs["nesterov"] = True
    return getattr(keras.optimizers, KERAS_CLASSES[spec.optimizer])(**kwargs)


def read_hparams(optimizer, family: str) -> dict[str, float]:
    """The hyperparameters in effect, read back from a Keras optimizer."""
    out = {"lr": float(to_numpy(optimizer.learning_rate))}
    for name in HYPERPARAMETERS[family]:
        value = getattr(optimizer, KERAS_NAMES[name])
        out[name] = 0.0 if value is None else float(value)
    return out


def departures(cell, float32_casts: bool = False) -> tuple[str, ...]:
    """How Keras' optimizer objects depart from the textbook rule (module
    docstring); the hand-written levels do not.  ``float32_casts``: the
    Keras backend's ``ops.cast`` of a Python float goes through float32
    (TensorFlow's), which reaches the momentum, adam's bias-correction
    powers and the weight decay."""
    if cell.level not in ("optimizer", "custom"):
        return ()
    atoms = {"adam": ("eps-hat",), "rmsprop": ("eps-inside-sqrt",)}.get(cell.optimizer, ())
    if cell.weight_decay:
        atoms += ("decoupled-weight-decay",)
    if float32_casts and (cell.optimizer in ("momentum", "nesterov", "adam")
                          or cell.weight_decay):
        atoms += ("float32-casts",)
    return atoms


def textbook(spec: TrainSpec, sqrt) -> Textbook:
    """The cell's hand-written rule with the hyperparameters in effect
    (--hparams defaults: Keras')."""
    return Textbook(spec.cell, in_effect(spec.cell, optimizer_defaults), sqrt)


def zero_state(rule: Textbook, params: dict, zeros_like) -> dict:
    """The rule's state for ``params`` before the first update: as many
    zeros per parameter as the family keeps (its first step from zeros is
    the same as from no state), so a traced step has one signature."""
    probe = copy.copy(rule)
    probe.state, probe.t, probe.sqrt = {}, 1, np.sqrt
    probe.step("p", np.zeros(()), np.ones(()))
    count = len(probe.state.get("p", ()))
    return {k: tuple(zeros_like(v) for _ in range(count)) for k, v in params.items()}


def textbook_update(rule: Textbook, t, state: dict, params: dict, grads: dict):
    """``rule.step`` as a pure function, for tf.function and jax.jit: the
    update count ``t`` (a tensor) and the state go in, the new parameters
    and state come out."""
    rule.t, rule.state = t, dict(state)
    new = {k: rule.step(k, params[k], grads[k]) for k in params}
    return new, {k: rule.state.get(k, ()) for k in state}


@functools.lru_cache(maxsize=None)
def batch_loss_class():
    """``BatchLoss``: a metric holding the loss of the step's batch at the
    parameters before its update (``fit`` computes metrics on the step's
    ``y_pred``), not averaged over the epoch's batches like ``fit``'s own
    ``loss``.  Given the run's number of updates it also writes each step's
    loss into a vector, in order (``KerasRow.curve_in_graph``).  Defined
    once per process."""
    import keras

    class BatchLoss(keras.metrics.Metric):
        def __init__(self, loss_fn, dtype, updates=None):
            super().__init__(name="batch_loss", dtype=dtype)
            self.loss_fn = loss_fn
            self.last = self.add_variable(shape=(), initializer="zeros", dtype=dtype,
                                          name="last")
            self.curve = self.count = None
            if updates:
                self.curve = self.add_variable(shape=(updates,), initializer="zeros",
                                               dtype=dtype, name="curve")
                self.count = self.add_variable(shape=(), initializer="zeros", dtype="int32",
                                               name="count")

        def update_state(self, y_true, y_pred, sample_weight=None):
            loss = self.loss_fn(y_true, y_pred)
            self.last.assign(loss)
            if self.curve is not None:
                # where, not an indexed update: the same on every Keras
                # backend, exact, and a NaN loss stays in its own entry.
                ops = keras.ops
                at = ops.arange(self.curve.shape[0], dtype="int32") == self.count
                self.curve.assign(ops.where(at, loss, ops.convert_to_tensor(self.curve)))
                self.count.assign(self.count + 1)

        def result(self):
            # A copy: on torch the variable's own tensor would be overwritten
            # in place by the next step before a callback thread reads it.
            return keras.ops.copy(self.last)

        def reset_state(self):
            # fit resets its metrics at every epoch; the run is one epoch
            # (_fit), and nothing here accumulates.
            pass

    return BatchLoss


@functools.lru_cache(maxsize=None)
def keep_batch_losses_class():
    """``KeepBatchLosses``: a callback that stores each step's ``batch_loss``
    at its step's index.  ``async_safe``: Keras on JAX and on torch then
    hand the logs to a thread instead of waiting for every step (the entry
    is the step's own, so the threads' order does not matter)."""
    import keras

    class KeepBatchLosses(keras.callbacks.Callback):
        async_safe = True

        def __init__(self, updates):
            super().__init__()
            self.curve = [None] * updates

        def on_train_batch_end(self, batch, logs=None):
            self.curve[batch] = float(logs["batch_loss"])

    return KeepBatchLosses


def _fit(keras, model, loss_fn, spec: TrainSpec, row: KerasRow):
    """compile + fit with the family's optimizer: (loss curve, hparams).
    Every update of the run is a step of one epoch, and the loss curve
    leaves the step as ``row.curve_in_graph`` says (module docstring)."""
    optimizer = make_optimizer(keras, spec)
    n = updates(spec.cell)
    batch_loss = batch_loss_class()(loss_fn, spec.dtype, n if row.curve_in_graph else None)
    model.compile(optimizer=optimizer, loss=loss_fn, metrics=[batch_loss],
                  jit_compile=row.jit_compile(spec.mode), run_eagerly=spec.mode == "eager",
                  steps_per_execution=n if row.curve_in_graph else 1)
    keep = [] if row.curve_in_graph else [keep_batch_losses_class()(n)]
    model.fit(**row.fit_data(spec), epochs=1, shuffle=False, verbose=0, callbacks=keep)
    if row.curve_in_graph:
        steps = int(to_numpy(batch_loss.count))
        curve = [float(v) for v in to_numpy(batch_loss.curve)]
    else:
        curve = keep[0].curve
        steps = sum(v is not None for v in curve)
    if steps != n:
        raise RuntimeError(f"fit took {steps} steps, not the cell's {n} updates")
    return curve, read_hparams(optimizer, spec.optimizer)


def train(spec: TrainSpec, use_optimizer: bool, row: KerasRow) -> TrainResult:
    """The module, optimizer and custom levels on the current Keras backend."""
    import keras

    with floatx(keras, spec.dtype):
        model, read = build(keras, spec)
        x, y = keras.ops.convert_to_tensor(spec.x), keras.ops.convert_to_tensor(spec.y)
        reduction = "sum" if spec.reduction == "sum" else "sum_over_batch_size"
        loss_fn = keras.losses.BinaryCrossentropy(from_logits=True, reduction=reduction,
                                                  dtype=spec.dtype)
        start = read()
        if use_optimizer:
            curve, hp = _fit(keras, model, loss_fn, spec, row)
        else:
            rule = textbook(spec, keras.ops.sqrt)
            data = [(keras.ops.convert_to_tensor(spec.x[rows]),
                     keras.ops.convert_to_tensor(spec.y[rows])) for rows in batches(spec.cell)]
            curve, hp = row.hand_train(model, loss_fn, data, spec, rule), rule.hp
        z = model(x, training=False)
        loss = row.final_loss(loss_fn, y, z, spec) if row.final_loss else loss_fn(y, z)
        return TrainResult(params_start=start, params_final=read(), loss_curve=curve,
                           loss_final=float(to_numpy(loss)),
                           probs=to_numpy(keras.ops.sigmoid(z)).reshape(-1), info=row.info(spec),
                           hparams=hp)


def written_out_loss(ops, params, x, y, mean: bool = False):
    """The raw level's forward pass and the notebook's loss in ``keras.ops``,
    summed over the rows or (``mean``) divided by their number:
    (loss, probabilities)."""
    if "W" in params:
        p = ops.sigmoid(ops.matmul(x, params["W"]) + params["b"])
    else:
        h = ops.sigmoid(ops.matmul(x, params["W1"]) + params["b1"])
        p = ops.sigmoid(ops.matmul(h, params["W2"]) + params["b2"])
    loss = -ops.sum(ops.log(y * p + (1 - y) * (1 - p)))
    return (loss / x.shape[0] if mean else loss), p


def levels(raw, row: KerasRow) -> dict:
    """A Keras row's TRAINERS: its own raw level, and the shared ones."""
    return {"raw": raw,
            "module": functools.partial(train, use_optimizer=False, row=row),
            "optimizer": functools.partial(train, use_optimizer=True, row=row),
            "custom": functools.partial(train, use_optimizer=True, row=row)}


# ------------------------------------------------------ raw level, batched
# ``--batch-seeds`` (harness.tasks.BatchSpec): the raw level for S seeds at
# once, written once here for every Keras row; each row passes its arrays
# and its own gradient (``RawSeeds``).

def written_out_loss_seeds(ops, params, x, y, mean: bool = False):
    """``written_out_loss`` with a leading seed axis on every parameter (W
    (S, n, k), biases held as (S, 1, k)): ``ops.matmul`` of x (R, n) (or h
    (S, R, H)) and W broadcasts x over the seeds.  Returns (the seeds'
    losses (S,), probabilities (S, R, 1))."""
    if "W" in params:
        p = ops.sigmoid(ops.matmul(x, params["W"]) + params["b"])
    else:
        h = ops.sigmoid(ops.matmul(x, params["W1"]) + params["b1"])
        p = ops.sigmoid(ops.matmul(h, params["W2"]) + params["b2"])
    loss = -ops.sum(ops.log(y * p + (1 - y) * (1 - p)), axis=(1, 2))
    return (loss / x.shape[0] if mean else loss), p


@dataclass(frozen=True)
class RawSeeds:
    """What one Keras row does its own way in the batched raw level."""

    # numpy array -> the row's parameter (differentiable where it must be).
    param: Callable[[np.ndarray], Any]
    # numpy array -> the row's data tensor.
    tensor: Callable[[np.ndarray], Any]
    # The row's sqrt, for the textbook rule.
    sqrt: Callable[[Any], Any]
    # (spec, params, rule, data) -> (final params, the seeds' loss curves as
    # a numpy array (S, updates)): the updates, with this row's gradient,
    # over ``data``, one epoch's (x, y) batches.
    train: Callable[..., tuple[dict, np.ndarray]]
    # (spec) -> info recorded with every result.
    info: Callable[[Any], dict[str, Any]]


def train_raw_batch(spec, raw: RawSeeds):
    """The raw level for the S seeds of a ``BatchSpec`` on the current
    Keras backend: the per-seed raw level's loss, rule and final pass with a
    leading seed axis."""
    import keras

    from harness.tasks import BatchResult

    shapes = {k: v.shape for k, v in spec.params.items()}
    params = {k: raw.param(v[:, None, :] if v.ndim == 2 else v) for k, v in spec.params.items()}

    def canonical(values):
        return {k: to_numpy(values[k]).reshape(shapes[k]) for k in shapes}

    rule = textbook(spec, raw.sqrt)
    start = canonical(params)
    data = [(raw.tensor(spec.x[rows]), raw.tensor(spec.y[rows])) for rows in batches(spec.cell)]
    params, curve = raw.train(spec, params, rule, data)
    loss, p = written_out_loss_seeds(keras.ops, params, raw.tensor(spec.x),
                                     raw.tensor(spec.y), spec.reduction == "mean")
    return BatchResult(params_start=start, params_final=canonical(params), loss_curve=curve,
                       loss_final=to_numpy(loss), probs=to_numpy(p).reshape(spec.seeds, -1),
                       info=raw.info(spec), hparams=rule.hp)
