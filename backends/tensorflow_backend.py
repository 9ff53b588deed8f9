"""TensorFlow 2 with Keras 3.

* ``raw``: ``tf.Variable`` parameters, the notebook's written-out loss under
  ``tf.GradientTape``, update written with ``assign_sub``.
* ``module``: ``keras.Sequential`` of ``Dense`` layers (hidden layer with
  ``activation='sigmoid'``, output layer linear: logits) and
  ``keras.losses.BinaryCrossentropy(from_logits=True, reduction='sum')``;
  update written with ``assign_sub`` over ``model.trainable_variables``.
* ``optimizer``: the same model, ``model.compile(keras.optimizers.SGD(lr),
  that loss)`` and ``model.fit`` over one full, unshuffled batch per epoch
  (see below); the loss curve is ``history.history['loss']``.
* ``custom``: user-style ``keras.Model`` subclasses (``SingleLayerNN``,
  ``ThreeLayerNN``: layers as attributes, the forward pass in ``call``),
  compiled and fitted like the optimizer level.  A subclassed model's
  ``build()`` cannot infer its layers' input widths, so each layer is built
  explicitly before the harness's values are assigned.

Modes:

* ``compiled`` (the default, as before modes existed): the raw and module
  training steps are one ``tf.function`` each; ``fit`` runs Keras' own
  ``tf.function`` train step.
* ``eager``: the same steps as plain Python over eager tensors;
  ``compile(run_eagerly=True)`` for ``fit``.
* ``graph``: the notebook's TensorFlow 1, a graph of placeholders and
  variables run in ``tf.compat.v1.Session`` (single-threaded).  Raw level:
  the written-out loss, ``tf.gradients`` and ``assign_sub`` (the update ops
  are built once, under a control dependency on the loss and gradients, so
  every step reads the parameters before it moves them; the notebook built
  new assign ops every step).  Optimizer level:
  ``tf.compat.v1.train.GradientDescentOptimizer(lr).minimize`` of the summed
  ``sigmoid_cross_entropy_with_logits``, on plain variables, because Keras
  3 layers do not exist in TF1 graphs (``tf.compat.v1.layers.dense`` raises
  "not available with Keras 3"): the module and custom levels have no graph
  mode.

In compiled mode the tf.functions are traced once per cell with
``jit_compile=False`` (no XLA; Keras' ``'auto'`` would pick XLA on a
machine with a GPU).  ``info['mode']`` records what really ran:
``'tf.function'``, ``'eager'`` (also when
``tf.config.run_functions_eagerly(True)`` is in force) or
``'tf.compat.v1.Session'``.

Conventions adapted (the Keras code, and its conventions, are shared with
the keras-jax and keras-torch rows: backends/keras_common.py):

* ``Dense`` stores its kernel as (in, out), like the canonical W: loaded and
  read back without transposing.  Layers are created with ``'zeros'``
  initializers (no random draw) and then assigned the harness's values.
* Keras losses average by default (``reduction='sum_over_batch_size'``; the
  notebook's ``'binary_crossentropy'`` string): we pass ``reduction='sum'``.
  ``BinaryCrossentropy`` first takes the mean over the last axis, a single
  output here, which is exact.
* Keras 3 takes float32 from ``keras.config.floatx()`` in many places a
  ``dtype`` argument does not reach: losses compute in floatx unless given
  ``dtype=`` (we pass the cell's), and ``compile``/``fit`` cast the inputs
  (``model.fit``'s data adapter), the compiled total loss and the loss
  tracker to floatx and keep ``SGD``'s learning rate in a floatx variable
  (0.1 would become float32(0.1)).  Training therefore runs with floatx set
  to the cell's dtype and the global dtype policy unset (so it follows
  floatx), both restored exactly on exit: ``set_floatx`` is process-global,
  and the first ``keras.config.dtype_policy()`` call stores the policy of
  the floatx of the moment for good.  Layers also get ``dtype=``
  explicitly.
* ``keras.optimizers.SGD`` defaults to momentum 0, no weight decay, no
  clipping, no EMA: plain ``v -= lr * g``.
* ``model.fit`` shuffles by default and uses batches of 32; one epoch must be
  one full-batch step.  ``model.fit(x, y, batch_size=<all rows>,
  shuffle=False)`` does that, but costs ~50 ms per epoch on a 2-core
  machine (about a minute per 1000-epoch cell), nearly all of it creating
  the iterators of Keras' tf.data pipeline, twice per epoch.  We hand ``fit``
  the same single batch as ``tf.data.Dataset.from_tensors((x, y)).repeat()``
  with ``steps_per_epoch=1``: ~2 ms per epoch, and bit-identical parameters
  and loss curves (tests/test_backends.py checks it).
  ``history.history['loss']`` holds the loss computed inside each step before
  its update, as our ``loss_curve`` requires.
* TensorFlow's CPU graphs are rewritten for oneDNN (``TF_ENABLE_ONEDNN_OPTS``,
  on by default on x86), which can change float32 round-off.  The rewrite
  does not handle float64: each trace of a float64 Keras step logs ``Not
  handling type DT_DOUBLE`` (gone with ``TF_ENABLE_ONEDNN_OPTS=0``); float64
  results match the reference either way.
* Keras names layers from a process-wide counter (``dense``, ``dense_1``,
  ...); names only, nothing numeric carries over between cells.
"""
from __future__ import annotations

import functools

import numpy as np

from backends import keras_common
from harness.tasks import TrainResult, TrainSpec

NAME = "tensorflow"
IMPORTS = ("tensorflow", "keras")
UNSUPPORTED: dict[str, str] = {}


def framework_version() -> str:
    import keras
    import tensorflow as tf
    return f"{tf.__version__} (keras {keras.__version__})"


def _np(t) -> np.ndarray:
    return np.array(t.numpy())


def _raw_graph(tf, spec: TrainSpec):
    """Variables for the canonical parameters, a forward pass, the written-out loss."""
    x, y = tf.constant(spec.x), tf.constant(spec.y)
    params = {k: tf.Variable(v, name=k) for k, v in spec.params.items()}

    def forward():
        if spec.arch == "single":
            return tf.sigmoid(tf.matmul(x, params["W"]) + params["b"])
        h = tf.sigmoid(tf.matmul(x, params["W1"]) + params["b1"])
        return tf.sigmoid(tf.matmul(h, params["W2"]) + params["b2"])

    def loss_of(p):
        return -tf.reduce_sum(tf.math.log(y * p + (1 - y) * (1 - p)))

    return params, forward, loss_of


def loss_and_grad(spec: TrainSpec):
    """The raw level's loss and autodiff gradient at ``spec.params``."""
    import tensorflow as tf

    params, forward, loss_of = _raw_graph(tf, spec)
    with tf.GradientTape() as tape:
        loss = loss_of(forward())
    grads = tape.gradient(loss, list(params.values()))
    return float(loss), {k: _np(g) for k, g in zip(params, grads)}


def _sgd_step(tf, variables, loss_fn, lr, mode: str):
    """One full-batch step of hand-written gradient descent: a tf.function
    (compiled) or plain Python over eager tensors (eager)."""
    def step():
        with tf.GradientTape() as tape:
            loss = loss_fn()
        for v, g in zip(variables, tape.gradient(loss, variables)):
            v.assign_sub(lr * g)
        return loss

    return tf.function(step, jit_compile=False) if mode == "compiled" else step


def train_raw(spec: TrainSpec) -> TrainResult:
    import tensorflow as tf

    if spec.mode == "graph":
        return _train_session(tf, spec)
    params, forward, loss_of = _raw_graph(tf, spec)
    step = _sgd_step(tf, list(params.values()), lambda: loss_of(forward()), spec.lr, spec.mode)
    start = {k: _np(v) for k, v in params.items()}
    curve = [float(step()) for _ in range(spec.epochs)]
    p = forward()
    final = {k: _np(v) for k, v in params.items()}
    return _result(tf, spec, start, final, curve, float(loss_of(p)), _np(p))


def _result(tf, spec, start, final, curve, loss, probs) -> TrainResult:
    if spec.mode == "graph":
        info = {"mode": "tf.compat.v1.Session"}
    elif spec.mode == "compiled" and not tf.config.functions_run_eagerly():
        info = {"mode": "tf.function", "jit_compile": False}
    else:
        info = {"mode": "eager"}
    return TrainResult(params_start=start, params_final=final, loss_curve=curve, loss_final=loss,
                       probs=probs.reshape(-1), info=info)


def _train_session(tf, spec: TrainSpec) -> TrainResult:
    """The notebook's TensorFlow 1: a graph of placeholders and variables run
    in a ``tf.compat.v1.Session``.  Raw level: the written-out loss and
    ``tf.gradients`` with ``assign_sub`` updates; optimizer level:
    ``sigmoid_cross_entropy_with_logits`` summed and
    ``tf.compat.v1.train.GradientDescentOptimizer(lr).minimize``."""
    v1 = tf.compat.v1
    graph = tf.Graph()
    with graph.as_default():
        x = v1.placeholder(spec.dtype, spec.x.shape)
        y = v1.placeholder(spec.dtype, spec.y.shape)
        params = {k: v1.Variable(v, name=k) for k, v in spec.params.items()}
        if spec.arch == "single":
            z = tf.matmul(x, params["W"]) + params["b"]
        else:
            h = tf.sigmoid(tf.matmul(x, params["W1"]) + params["b1"])
            z = tf.matmul(h, params["W2"]) + params["b2"]
        p = tf.sigmoid(z)
        if spec.level == "raw":
            loss = -tf.reduce_sum(tf.math.log(y * p + (1 - y) * (1 - p)))
            grads = tf.gradients(loss, list(params.values()))
            # The loss and every gradient are read before any variable moves.
            with tf.control_dependencies([loss, *grads]):
                train = tf.group(*(v.assign_sub(spec.lr * g)
                                   for v, g in zip(params.values(), grads)))
        else:
            loss = tf.reduce_sum(tf.nn.sigmoid_cross_entropy_with_logits(labels=y, logits=z))
            train = v1.train.GradientDescentOptimizer(spec.lr).minimize(loss)
        init = v1.global_variables_initializer()
    config = v1.ConfigProto(intra_op_parallelism_threads=1, inter_op_parallelism_threads=1)
    feed = {x: spec.x, y: spec.y}
    with v1.Session(graph=graph, config=config) as sess:
        sess.run(init)
        start = sess.run(params)
        curve = [float(sess.run([loss, train], feed)[0]) for _ in range(spec.epochs)]
        final, loss_final, probs = sess.run([params, loss, p], feed)
    return _result(tf, spec, start, final, curve, float(loss_final), probs)


def full_batch(tf, spec: TrainSpec):
    """Every row, unshuffled, as one batch per epoch (see the docstring)."""
    return tf.data.Dataset.from_tensors((spec.x, spec.y)).repeat()


def _hand_train(model, loss_fn, x, y, spec: TrainSpec) -> list[float]:
    import tensorflow as tf

    step = _sgd_step(tf, model.trainable_variables,
                     lambda: loss_fn(y, model(x, training=True)), spec.lr, spec.mode)
    return [float(step()) for _ in range(spec.epochs)]


def _info(spec: TrainSpec) -> dict:
    import tensorflow as tf

    if spec.mode == "compiled" and not tf.config.functions_run_eagerly():
        return {"mode": "tf.function", "jit_compile": False}
    return {"mode": "eager"}


def _fit_data(spec: TrainSpec) -> dict:
    import tensorflow as tf
    return {"x": full_batch(tf, spec), "steps_per_epoch": 1}


# Keras on TensorFlow: compiled is a tf.function without XLA.
ROW = keras_common.KerasRow(hand_train=_hand_train, fit_data=_fit_data,
                            jit_compile=lambda mode: False, info=_info)


def _train_module(spec: TrainSpec, use_optimizer: bool) -> TrainResult:
    import keras
    import tensorflow as tf

    if spec.mode == "graph":
        return _train_session(tf, spec)
    if keras.backend.backend() != "tensorflow":
        raise RuntimeError(f"Keras runs on {keras.backend.backend()!r} in this process "
                           "(KERAS_BACKEND); the tensorflow row needs Keras on TensorFlow")
    return keras_common.train(spec, use_optimizer, ROW)


TRAINERS = {
    "raw": train_raw,
    "module": functools.partial(_train_module, use_optimizer=False),
    "optimizer": functools.partial(_train_module, use_optimizer=True),
    "custom": functools.partial(_train_module, use_optimizer=True),
}
MODES = {"raw": ("compiled", "eager", "graph"), "module": ("compiled", "eager"),
         "optimizer": ("compiled", "eager", "graph"), "custom": ("compiled", "eager")}
MODE_GAPS = {
    ("module", "graph"): "Keras 3 layers cannot be built into a TF1 graph "
                         "(tf.compat.v1.layers.dense: 'not available with Keras 3')",
    ("custom", "graph"): "a keras.Model subclass runs eagerly or as a tf.function, not in a "
                         "TF1 graph session",
}
