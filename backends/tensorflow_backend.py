"""TensorFlow 2 with Keras 3.

* ``raw``: ``tf.Variable`` parameters, the notebook's written-out loss under
  ``tf.GradientTape``, the family's textbook update written out
  (``harness.recipes.Textbook`` with ``tf.sqrt``) and ``assign``-ed.
* ``module``: ``keras.Sequential`` of ``Dense`` layers (hidden layer with
  ``activation='sigmoid'``, output layer linear: logits) and
  ``keras.losses.BinaryCrossentropy(from_logits=True, reduction='sum')``;
  the textbook update written out over ``model.trainable_variables``.
* ``optimizer``: the same model, ``model.compile(<the family's Keras
  optimizer>, that loss)`` and ``model.fit`` over the cell's unshuffled
  batches (default one full batch per pass over the table, every update a
  step of one ``fit`` epoch, see below); the loss curve is
  each step's batch loss (``BatchLoss`` in backends/keras_common.py, not
  ``history.history['loss']``, an average over the epoch's batches).
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
  the written-out loss, ``tf.gradients`` and the rule's ``assign`` (the
  update ops are built once, under a control dependency on the loss and
  gradients, so every step reads the parameters before it moves them; the
  notebook built new assign ops every step).  Optimizer level: the family's
  ``tf.compat.v1.train`` optimizer (``GradientDescentOptimizer(lr)`` for
  sgd) ``.minimize`` of the summed (or averaged)
  ``sigmoid_cross_entropy_with_logits``, on plain variables, because Keras
  3 layers do not exist in TF1 graphs (``tf.compat.v1.layers.dense`` raises
  "not available with Keras 3"): the module and custom levels have no graph
  mode.  Every recipe runs in every mode; in graph mode the raw level's
  textbook rule keeps its state in variables and is fed the update count,
  and the optimizer level uses the family's TF1 optimizer (below).

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
* Keras' optimizers: the families, their departures from the textbook and
  their defaults are in backends/keras_common.py.  One more on this row
  only: Keras' optimizers pass the momentum, Adam's betas (for the
  bias-correction powers ``b^t``) and the weight decay through
  ``ops.cast(python_float, variable.dtype)``, which on TensorFlow is
  ``tf.cast``: the Python float becomes a float32 tensor first, so at
  float64 they are float32-rounded while the learning rate (a float64
  variable), Adam's ``1 - b`` factors, epsilon and rho stay exact (atom
  ``float32-casts``; JAX's cast is exact, keras-jax has no such atom).
  Measured (float64, single ``and``, seed 0, 100 epochs; deviation of the
  final parameters from the textbook, then from the named variant):
  momentum 0.9, lr 0.3: 1.3e-7, ``float32-casts`` 2.0e-16; Adam at the
  harness's defaults: 2.2e-6, ``eps-hat+float32-casts`` 1.1e-16; Adam with
  float32-exact hyperparameters (lr 0.125, betas 0.875/0.9990234375, eps
  2^-17): 7.1e-5, same variant 3.0e-16; RMSprop at the defaults: 1.8e-5,
  ``eps-inside-sqrt`` 3.6e-15; SGD, lr 0.3, weight decay 0.01: 2.8e-9,
  ``decoupled-weight-decay+float32-casts`` 1.5e-16.
* TF1 optimizers (graph mode, optimizer level), read in
  tensorflow/python/training/{gradient_descent,momentum,adam,rmsprop}.py
  and the ``ApplyGradientDescent``, ``ApplyMomentum``, ``ApplyAdam``,
  ``ApplyRMSProp`` kernels: ``sgd`` is ``GradientDescentOptimizer(lr)``,
  ``momentum``/``nesterov`` ``MomentumOptimizer(lr, mu, use_nesterov=)``
  (``accum = mu accum + g; p -= lr accum``, nesterov ``p -= lr g + lr mu
  accum``: the textbook), ``adam`` ``AdamOptimizer(lr, beta1, beta2,
  epsilon)``, ``rmsprop`` ``RMSPropOptimizer(lr, decay=rho, momentum=0,
  epsilon)``, hyperparameters passed as Python floats as the notebook passes
  its learning rate.  Departures (``departures``):

  - every hyperparameter becomes a float32 tensor (``convert_to_tensor`` of
    a Python float) and is cast to the variable's dtype in
    ``_apply_dense``: float32-rounded at float64 (atom ``float32-hparams``;
    lr 0.3: 2.1e-8 from the textbook, 0 from the variant);
  - Adam: epsilon added to ``sqrt(v)`` with ``lr_t = lr sqrt(1 - b2^t) /
    (1 - b1^t)`` computed in the kernel (``eps-hat``), from ``beta1_power``
    and ``beta2_power``, non-slot variables created from the Python floats
    (float32) and multiplied by the float32 betas after every step: float32
    running products (new atom ``float32-beta-powers``; with float32-exact
    hyperparameters 7.2e-5 from the textbook, 0 from
    ``eps-hat+float32-beta-powers+float32-hparams``, while
    ``eps-hat+float32-hparams`` alone is off);
  - RMSProp: ``ms`` starts at ones (``ones_initializer``, atom
    ``ones-init``) and the step is ``lr g / sqrt(ms + eps)``
    (``eps-inside-sqrt``): at the defaults 9.6e-2 from the textbook, 3.3e-16
    from the three atoms;
  - TF1 optimizers take no weight decay: we add ``wd * sum(l2_loss(p))`` to
    the minimized loss (``loss_curve`` stays the cross-entropy), the
    textbook's L2, its coefficient a Python float multiplied into a float64
    tensor: exact (atom ``float64-weight-decay`` with ``float32-hparams``).
  - Defaults (``--hparams defaults``; read back from the object): lr only;
    Adam beta1 0.9, beta2 0.999, epsilon 1e-8; RMSProp decay 0.9, epsilon
    1e-10; ``MomentumOptimizer`` has no default momentum, so it gets the
    harness's (0.9).  The hand-written levels (raw, module, in every mode)
    take Keras' defaults: this row's optimizers are Keras'.
* ``model.fit`` shuffles by default and uses batches of 32; one epoch must be
  the cell's batches in table order.  With the default full batch, one epoch is
  one full-batch step.  ``model.fit(x, y, batch_size=<all rows>,
  shuffle=False)`` does that, but costs ~50 ms per epoch on a 2-core
  machine (about a minute per 1000-epoch cell), nearly all of it creating
  the iterators of Keras' tf.data pipeline, twice per epoch.  We hand ``fit``
  the same single batch as ``tf.data.Dataset.from_tensors((x, y)).repeat()``,
  and (backends/keras_common.py) every update as a step of one epoch
  (``steps_per_epoch`` the cell's updates), all in one call: 0.6 s for a
  1000-update cell, with bit-identical parameters and loss curves
  (tests/test_backends.py checks it against ``fit(x, y, epochs=...)``).
  With ``--batch-size`` the dataset is ``from_tensor_slices((x, y))
  .batch(batch_size).repeat()``: the same unshuffled batches as
  ``fit(batch_size=, shuffle=False)``, epoch after epoch.
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
from backends.curve import LossCurve
from harness.tasks import (HPARAM_DEFAULTS, HYPERPARAMETERS, BatchResult, BatchSpec, TrainResult,
                           TrainSpec, batches, hyperparameters, updates)

NAME = "tensorflow"
IMPORTS = ("tensorflow", "keras")
UNSUPPORTED: dict[str, str] = {}

optimizer_defaults = keras_common.optimizer_defaults


def departures(cell) -> tuple[str, ...]:
    """Keras' optimizers' departures (backends/keras_common.py), and in graph
    mode TF1's (the module docstring)."""
    if cell.mode != "graph":
        return keras_common.departures(cell, float32_casts=True)
    if cell.level != "optimizer":
        return ()
    atoms = {"adam": ("eps-hat", "float32-beta-powers"),
             "rmsprop": ("eps-inside-sqrt", "ones-init")}.get(cell.optimizer, ())
    wd = ("float64-weight-decay",) if cell.weight_decay else ()
    return (*atoms, "float32-hparams", *wd)


def framework_version() -> str:
    import keras
    import tensorflow as tf
    return f"{tf.__version__} (keras {keras.__version__})"


def _np(t) -> np.ndarray:
    return np.array(t.numpy())


def _raw_graph(tf, spec: TrainSpec):
    """Variables for the canonical parameters, a forward pass, the written-out loss."""
    params = {k: tf.Variable(v, name=k) for k, v in spec.params.items()}

    def forward(x):
        if spec.arch == "single":
            return tf.sigmoid(tf.matmul(x, params["W"]) + params["b"])
        h = tf.sigmoid(tf.matmul(x, params["W1"]) + params["b1"])
        return tf.sigmoid(tf.matmul(h, params["W2"]) + params["b2"])

    def loss_of(p, y):
        loss = -tf.reduce_sum(tf.math.log(y * p + (1 - y) * (1 - p)))
        return loss / y.shape[0] if spec.reduction == "mean" else loss

    return params, forward, loss_of


def loss_and_grad(spec: TrainSpec):
    """The raw level's loss and autodiff gradient at ``spec.params``."""
    import tensorflow as tf

    params, forward, loss_of = _raw_graph(tf, spec)
    x, y = tf.constant(spec.x), tf.constant(spec.y)
    with tf.GradientTape() as tape:
        loss = loss_of(forward(x), y)
    grads = tape.gradient(loss, list(params.values()))
    return float(loss), {k: _np(g) for k, g in zip(params, grads)}


def _textbook_steps(tf, variables: dict, loss_fn, rule, spec: TrainSpec, data) -> list[float]:
    """Hand-written updates of ``variables`` (name -> variable) by the cell's
    textbook rule, one per batch of ``data`` every epoch: one tf.function
    (compiled; traced once per batch shape) or plain Python over eager
    tensors (eager).  Returns the loss curve.

    The update count and the rule's state live in variables that the step
    reads and assigns, as the graph mode's do, so the step takes the batch
    only: a tf.function call costs more with every argument it flattens
    (the count and a dict of state tuples doubled it), and the count is
    the same integer, cast to the cell's dtype, that a constant per step
    was.  Plain SGD reads no count (``Textbook.plain``): its step keeps none.
    The losses are read back a block at a time (``LossCurve``), not one
    host copy per update.  AutoGraph is off: the step has no Python control
    flow on tensors to convert (its loops and branches are over Python
    values), so the traced graph is the same, and converting the step and
    every function it calls cost each cell 2.7 ms of its trace (a
    100-update single-layer cell takes 55 ms)."""
    count = None if rule.plain else tf.Variable(0, dtype=tf.int64)
    slots = keras_common.zero_state(rule, variables,
                                    lambda v: tf.Variable(tf.zeros(v.shape, v.dtype)))

    def step(x, y):
        with tf.GradientTape() as tape:
            loss = loss_fn(x, y)
        grads = dict(zip(variables, tape.gradient(loss, list(variables.values()))))
        t = None
        if count is not None:
            count.assign_add(1)
            t = tf.cast(count, spec.dtype)
        state = {k: tuple(s.read_value() for s in slots[k]) for k in slots}
        new, state = keras_common.textbook_update(rule, t, state, variables, grads)
        for name, v in variables.items():
            v.assign(new[name])
        for k in slots:
            for s, value in zip(slots[k], state[k]):
                s.assign(value)
        return loss

    if spec.mode == "compiled":
        step = tf.function(step, jit_compile=False, autograph=False)
        # Each batch's traced graph, called directly: a tf.function call
        # first matches its arguments against its traces (measured: 310 µs
        # an update through the tf.function, 190 µs through the same
        # concrete function; the same graph, so the same numbers).
        calls = [(step.get_concrete_function(x, y), x, y) for x, y in data]
    else:
        calls = [(step, x, y) for x, y in data]
    curve = LossCurve(lambda losses: tf.stack(losses).numpy().tolist())
    for _ in range(spec.epochs):
        for fn, x, y in calls:
            curve.append(fn(x, y))
    return curve.floats()


def _batches(tf, spec: TrainSpec):
    return [(tf.constant(spec.x[rows]), tf.constant(spec.y[rows])) for rows in batches(spec.cell)]


def train_raw(spec: TrainSpec) -> TrainResult:
    import tensorflow as tf

    if spec.mode == "graph":
        return _train_session(tf, spec)
    params, forward, loss_of = _raw_graph(tf, spec)
    rule = keras_common.textbook(spec, tf.sqrt)
    start = {k: _np(v) for k, v in params.items()}
    curve = _textbook_steps(tf, params, lambda x, y: loss_of(forward(x), y), rule, spec,
                            _batches(tf, spec))
    x, y = tf.constant(spec.x), tf.constant(spec.y)
    p = forward(x)
    final = {k: _np(v) for k, v in params.items()}
    return _result(tf, spec, start, final, curve, float(loss_of(p, y)), _np(p), rule.hp)


def _result(tf, spec, start, final, curve, loss, probs, hparams) -> TrainResult:
    if spec.mode == "graph":
        info = {"mode": "tf.compat.v1.Session"}
    elif spec.mode == "compiled" and not tf.config.functions_run_eagerly():
        info = {"mode": "tf.function", "jit_compile": False}
    else:
        info = {"mode": "eager"}
    return TrainResult(params_start=start, params_final=final, loss_curve=curve, loss_final=loss,
                       probs=probs.reshape(-1), info=info, hparams=hparams)


# TF1's optimizer classes and their names for the harness's hyperparameters.
TF1_CLASSES = {"sgd": "GradientDescentOptimizer", "momentum": "MomentumOptimizer",
               "nesterov": "MomentumOptimizer", "adam": "AdamOptimizer",
               "rmsprop": "RMSPropOptimizer"}
TF1_NAMES = {"momentum": "momentum", "beta1": "beta1", "beta2": "beta2", "eps": "epsilon",
             "rho": "decay"}


def _tf1_optimizer(v1, spec: TrainSpec):
    """The family's TF1 optimizer (``tf.compat.v1.train``), the cell's
    hyperparameters passed as Python floats as the notebook does (with
    --hparams defaults only the learning rate, and for MomentumOptimizer,
    which has no default momentum, the harness's), and the hyperparameters
    it holds, read back from it."""
    hp = hyperparameters(spec.cell)
    kwargs = {TF1_NAMES[k]: v for k, v in hp.items() if k in TF1_NAMES}
    if spec.optimizer in ("momentum", "nesterov"):
        kwargs.setdefault("momentum", HPARAM_DEFAULTS["momentum"])
        kwargs["use_nesterov"] = spec.optimizer == "nesterov"
    if spec.optimizer == "rmsprop":
        kwargs["momentum"] = 0.0  # its own default: no momentum term
    opt = getattr(v1.train, TF1_CLASSES[spec.optimizer])(hp["lr"], **kwargs)
    held = {"lr": opt._lr if spec.optimizer == "adam" else opt._learning_rate}
    for name in HYPERPARAMETERS[spec.optimizer]:
        if name in TF1_NAMES:
            held[name] = getattr(opt, "_" + TF1_NAMES[name])
    # TF1 optimizers have no weight decay: L2 in the loss (_train_session).
    held["weight_decay"] = hp.get("weight_decay", 0.0)
    return opt, {k: float(v) for k, v in held.items()}


def _train_session(tf, spec: TrainSpec) -> TrainResult:
    """The notebook's TensorFlow 1: a graph of placeholders and variables run
    in a ``tf.compat.v1.Session``.  Raw level: the written-out loss and
    ``tf.gradients``, the textbook rule written out in graph ops (its state
    in variables, the update count fed); optimizer level:
    ``sigmoid_cross_entropy_with_logits`` summed (or averaged) and the
    family's ``tf.compat.v1.train`` optimizer's ``minimize``."""
    v1 = tf.compat.v1
    graph = tf.Graph()
    with graph.as_default():
        x = v1.placeholder(spec.dtype, (None, spec.x.shape[1]))
        y = v1.placeholder(spec.dtype, (None, 1))
        params = {k: v1.Variable(v, name=k) for k, v in spec.params.items()}
        if spec.arch == "single":
            z = tf.matmul(x, params["W"]) + params["b"]
        else:
            h = tf.sigmoid(tf.matmul(x, params["W1"]) + params["b1"])
            z = tf.matmul(h, params["W2"]) + params["b2"]
        p = tf.sigmoid(z)
        t = v1.placeholder(spec.dtype, ())
        if spec.level == "raw":
            loss = -tf.reduce_sum(tf.math.log(y * p + (1 - y) * (1 - p)))
            if spec.reduction == "mean":
                loss = loss / tf.cast(tf.shape(x)[0], spec.dtype)
            grads = dict(zip(params, tf.gradients(loss, list(params.values()))))
            rule = keras_common.textbook(spec, tf.sqrt)
            slots = keras_common.zero_state(rule, spec.params,
                                            lambda a: v1.Variable(np.zeros_like(a)))
            # The loss and every gradient are read before any variable moves;
            # each variable's new value is computed from its own read.
            with tf.control_dependencies([loss, *grads.values()]):
                new, state = keras_common.textbook_update(
                    rule, t, {k: tuple(s.read_value() for s in slots[k]) for k in slots},
                    params, grads)
                train = tf.group(*(params[k].assign(new[k]) for k in params),
                                 *(s.assign(v) for k in slots for s, v in zip(slots[k], state[k])))
            hp = rule.hp
        else:
            terms = tf.nn.sigmoid_cross_entropy_with_logits(labels=y, logits=z)
            loss = tf.reduce_sum(terms) if spec.reduction == "sum" else tf.reduce_mean(terms)
            opt, hp = _tf1_optimizer(v1, spec)
            total = loss
            if hp["weight_decay"]:
                # TF1's idiom for weight decay: L2 in the loss, gradient wd * p.
                total = loss + hp["weight_decay"] * tf.add_n(
                    [tf.nn.l2_loss(v) for v in params.values()])
            train = opt.minimize(total)
        init = v1.global_variables_initializer()
    config = v1.ConfigProto(intra_op_parallelism_threads=1, inter_op_parallelism_threads=1)
    with v1.Session(graph=graph, config=config) as sess:
        sess.run(init)
        start = sess.run(params)
        curve = []
        for _ in range(spec.epochs):
            for rows in batches(spec.cell):
                feed = {x: spec.x[rows], y: spec.y[rows], t: len(curve) + 1}
                curve.append(float(sess.run([loss, train], feed)[0]))
        final, loss_final, probs = sess.run([params, loss, p], {x: spec.x, y: spec.y})
    return _result(tf, spec, start, final, curve, float(loss_final), probs, hp)


def full_batch(tf, spec: TrainSpec):
    """Every row, unshuffled, as one batch per epoch (see the docstring)."""
    return tf.data.Dataset.from_tensors((spec.x, spec.y)).repeat()


def _hand_train(model, loss_fn, data, spec: TrainSpec, rule) -> list[float]:
    import tensorflow as tf

    variables = {str(i): v for i, v in enumerate(model.trainable_variables)}
    return _textbook_steps(tf, variables, lambda x, y: loss_fn(y, model(x, training=True)),
                           rule, spec, data)


def _info(spec: TrainSpec) -> dict:
    import tensorflow as tf

    if spec.mode == "compiled" and not tf.config.functions_run_eagerly():
        return {"mode": "tf.function", "jit_compile": False}
    return {"mode": "eager"}


def _fit_data(spec: TrainSpec) -> dict:
    import tensorflow as tf

    if spec.batch_size is None:
        data = full_batch(tf, spec)
    else:
        data = tf.data.Dataset.from_tensor_slices((spec.x, spec.y)).batch(spec.batch_size).repeat()
    return {"x": data, "steps_per_epoch": updates(spec.cell)}


# Keras on TensorFlow: compiled is a tf.function without XLA.
ROW = keras_common.KerasRow(hand_train=_hand_train, fit_data=_fit_data,
                            jit_compile=lambda mode: False, info=_info, curve_in_graph=True)


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


# ---------------------------------------------------- raw level, batched

def _raw_graph_seeds(tf, spec: BatchSpec, variable):
    """``_raw_graph`` with a leading seed axis: W (S, n, k) and biases held as
    (S, 1, k), ``variable(name, array)`` making each.  ``tf.matmul`` of x
    (R, n) (or h (S, R, H)) and W (S, n, k) broadcasts x over the seeds
    (``BatchMatMulV2``); the loss is one per seed, (S,)."""
    params = {k: variable(k, v[:, None, :] if v.ndim == 2 else v) for k, v in spec.params.items()}

    def logits(x):
        if spec.arch == "single":
            return tf.matmul(x, params["W"]) + params["b"], None
        h = tf.sigmoid(tf.matmul(x, params["W1"]) + params["b1"])
        return tf.matmul(h, params["W2"]) + params["b2"], h

    def forward(x):
        return tf.sigmoid(logits(x)[0])

    def loss_of(p, y, rows):
        loss = -tf.reduce_sum(tf.math.log(y * p + (1 - y) * (1 - p)), axis=(1, 2))
        return loss / rows if spec.reduction == "mean" else loss

    return params, forward, loss_of


def train_raw_batch(spec: BatchSpec) -> BatchResult:
    """``train_raw`` for S seeds at once, in the cell's mode: the
    tf.function step (compiled), the same step op by op (eager) or a TF1
    session (graph).  Each update's (S,) losses stay tensors until the end
    (compiled, eager)."""
    import tensorflow as tf

    if spec.mode == "graph":
        return _train_session_seeds(tf, spec)
    params, forward, loss_of = _raw_graph_seeds(tf, spec, lambda k, v: tf.Variable(v, name=k))
    rule = keras_common.textbook(spec, tf.sqrt)
    shapes = {k: v.shape for k, v in spec.params.items()}
    start = {k: _np(v).reshape(shapes[k]) for k, v in params.items()}

    def step(x, y, t, state):
        with tf.GradientTape() as tape:
            loss = loss_of(forward(x), y, y.shape[0])
        # The gradient of the (S,) losses is that of their sum: each seed's own.
        grads = dict(zip(params, tape.gradient(loss, list(params.values()))))
        new, state = keras_common.textbook_update(rule, t, state, params, grads)
        for name, v in params.items():
            v.assign(new[name])
        return loss, state

    if spec.mode == "compiled":
        step = tf.function(step, jit_compile=False, autograph=False)
    state = keras_common.zero_state(rule, params, lambda v: tf.zeros(v.shape, v.dtype))
    data = [(tf.constant(spec.x[rows]), tf.constant(spec.y[rows])) for rows in batches(spec.cell)]
    curve, t = [], 0
    for _ in range(spec.epochs):
        for x, y in data:
            t += 1
            loss, state = step(x, y, tf.constant(t, spec.dtype), state)
            curve.append(loss)
    x, y = tf.constant(spec.x), tf.constant(spec.y)
    p = forward(x)
    final = {k: _np(v).reshape(shapes[k]) for k, v in params.items()}
    return _batch_result(tf, spec, start, final, _np(tf.stack(curve, axis=1)),
                         _np(loss_of(p, y, y.shape[0])), _np(p), rule.hp)


def _batch_result(tf, spec, start, final, curve, loss, probs, hparams) -> BatchResult:
    info = {"mode": "tf.compat.v1.Session"} if spec.mode == "graph" else _info(spec)
    return BatchResult(params_start=start, params_final=final, loss_curve=curve, loss_final=loss,
                       probs=probs.reshape(spec.seeds, -1), info=info, hparams=hparams)


def _train_session_seeds(tf, spec: BatchSpec) -> BatchResult:
    """``_train_session``'s raw level for S seeds: the same graph with a
    leading seed axis on the variables."""
    v1 = tf.compat.v1
    graph = tf.Graph()
    with graph.as_default():
        x = v1.placeholder(spec.dtype, (None, spec.x.shape[1]))
        y = v1.placeholder(spec.dtype, (None, 1))
        params, forward, loss_of = _raw_graph_seeds(tf, spec,
                                                    lambda k, v: v1.Variable(v, name=k))
        p = forward(x)
        t = v1.placeholder(spec.dtype, ())
        loss = loss_of(p, y, tf.cast(tf.shape(x)[0], spec.dtype))
        grads = dict(zip(params, tf.gradients(loss, list(params.values()))))
        rule = keras_common.textbook(spec, tf.sqrt)
        slots = keras_common.zero_state(rule, params, lambda a: v1.Variable(
            np.zeros(a.shape, spec.dtype)))
        with tf.control_dependencies([loss, *grads.values()]):
            new, state = keras_common.textbook_update(
                rule, t, {k: tuple(s.read_value() for s in slots[k]) for k in slots},
                params, grads)
            train = tf.group(*(params[k].assign(new[k]) for k in params),
                             *(s.assign(v) for k in slots for s, v in zip(slots[k], state[k])))
        init = v1.global_variables_initializer()
    shapes = {k: v.shape for k, v in spec.params.items()}
    config = v1.ConfigProto(intra_op_parallelism_threads=1, inter_op_parallelism_threads=1)
    with v1.Session(graph=graph, config=config) as sess:
        sess.run(init)
        start = {k: v.reshape(shapes[k]) for k, v in sess.run(params).items()}
        curve = np.empty((updates(spec.cell), spec.seeds), spec.dtype)
        epoch = batches(spec.cell)
        for u in range(len(curve)):
            rows = epoch[u % len(epoch)]
            curve[u] = sess.run([loss, train], {x: spec.x[rows], y: spec.y[rows], t: u + 1})[0]
        final, loss_final, probs = sess.run([params, loss, p], {x: spec.x, y: spec.y})
    final = {k: v.reshape(shapes[k]) for k, v in final.items()}
    return _batch_result(tf, spec, start, final, curve.T, loss_final, probs, rule.hp)


BATCHED = {"raw": train_raw_batch}
# Measured (tests/test_batch.py samples, 5 seeds): BatchMatMulV2 with x
# broadcast over the seeds rounds float32 sums differently from MatMul (4.8e-7
# single-layer nand), and the adam update 6.0e-16 at float64; the float64 sgd
# multi-layer xor sample is bit-identical in every mode.
BATCH_BOUNDS = {"raw": ({"float64": 1e-14, "float32": 1e-6},
                        "BatchMatMulV2 rounds float32 sums differently from one seed's MatMul "
                        "(measured 4.8e-7 float32, 6.0e-16 float64 adam)")}
