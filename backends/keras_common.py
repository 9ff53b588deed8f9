"""Keras 3 code shared by the three Keras rows: ``tensorflow`` (Keras on
TensorFlow), ``keras-jax`` and ``keras-torch``.

The model, its loss and the optimizer level are the same Keras code on
every Keras backend; what differs per backend is passed in as a
``KerasRow``: how a hand-written gradient step is taken (the module level),
how ``fit`` gets its one full batch per epoch, and whether "compiled" means
XLA.  Keras picks its backend from ``KERAS_BACKEND`` when it is first
imported, once per process: each Keras row runs in a worker of its own,
whose environment its backend module declares (``ENV``).

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
* ``keras.optimizers.SGD`` defaults to momentum 0, no weight decay, no
  clipping, no EMA: plain ``v -= lr * g``.
* ``model.fit`` shuffles by default and uses batches of 32: every row gets
  ``shuffle=False`` and one full batch per epoch.
"""
from __future__ import annotations

import contextlib
import functools
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from harness.tasks import TrainResult, TrainSpec


@dataclass(frozen=True)
class KerasRow:
    """What one Keras backend does its own way."""

    # (model, loss_fn, x, y, spec) -> loss curve: the module level's
    # hand-written gradient descent with this backend's gradient.
    hand_train: Callable[..., list[float]]
    # spec -> keyword arguments of model.fit giving one full batch per epoch.
    fit_data: Callable[[TrainSpec], dict[str, Any]]
    # mode -> jit_compile for model.compile (TensorFlow's compiled mode is a
    # tf.function without XLA; JAX's is jax.jit, which is XLA).
    jit_compile: Callable[[str], bool]
    # (spec) -> info recorded with every result.
    info: Callable[[TrainSpec], dict[str, Any]]
    # (loss_fn, y, z, spec) -> the final loss, computed in the cell's mode
    # (None: called as it is).
    final_loss: Callable[..., Any] | None = None


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
    """fit's arrays as one unshuffled batch per epoch."""
    return {"x": spec.x, "y": spec.y, "batch_size": len(spec.x)}


def train(spec: TrainSpec, use_optimizer: bool, row: KerasRow) -> TrainResult:
    """The module, optimizer and custom levels on the current Keras backend."""
    import keras

    with floatx(keras, spec.dtype):
        model, read = build(keras, spec)
        x, y = keras.ops.convert_to_tensor(spec.x), keras.ops.convert_to_tensor(spec.y)
        loss_fn = keras.losses.BinaryCrossentropy(from_logits=True, reduction="sum",
                                                  dtype=spec.dtype)
        start = read()
        if use_optimizer:
            model.compile(optimizer=keras.optimizers.SGD(learning_rate=spec.lr), loss=loss_fn,
                          jit_compile=row.jit_compile(spec.mode), run_eagerly=spec.mode == "eager")
            history = model.fit(**row.fit_data(spec), epochs=spec.epochs, shuffle=False,
                                verbose=0)
            curve = [float(v) for v in history.history["loss"]]
        else:
            curve = row.hand_train(model, loss_fn, x, y, spec)
        z = model(x, training=False)
        loss = row.final_loss(loss_fn, y, z, spec) if row.final_loss else loss_fn(y, z)
        return TrainResult(params_start=start, params_final=read(), loss_curve=curve,
                           loss_final=float(to_numpy(loss)),
                           probs=to_numpy(keras.ops.sigmoid(z)).reshape(-1), info=row.info(spec))


def written_out_loss(ops, params, x, y):
    """The raw level's forward pass and the notebook's loss in ``keras.ops``:
    (loss, probabilities)."""
    if "W" in params:
        p = ops.sigmoid(ops.matmul(x, params["W"]) + params["b"])
    else:
        h = ops.sigmoid(ops.matmul(x, params["W1"]) + params["b1"])
        p = ops.sigmoid(ops.matmul(h, params["W2"]) + params["b2"])
    return -ops.sum(ops.log(y * p + (1 - y) * (1 - p))), p


def levels(raw, row: KerasRow) -> dict:
    """A Keras row's TRAINERS: its own raw level, and the shared ones."""
    return {"raw": raw,
            "module": functools.partial(train, use_optimizer=False, row=row),
            "optimizer": functools.partial(train, use_optimizer=True, row=row),
            "custom": functools.partial(train, use_optimizer=True, row=row)}
