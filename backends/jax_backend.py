"""JAX, with Flax NNX modules and optax.

* ``raw``: a pure function of the canonical parameter dict in ``jax.numpy``,
  the notebook's written-out loss, ``jax.value_and_grad``, the update
  written out with ``harness.recipes.Textbook`` (``jnp.sqrt``), every
  optimizer family.
* ``module``: ``nnx.Sequential(nnx.Linear, nnx.sigmoid, nnx.Linear)`` and
  ``optax.sigmoid_binary_cross_entropy`` summed (or averaged) over a batch's
  rows; gradients with ``nnx.grad``, the textbook update written out over
  the ``nnx.Param`` state (``nnx.state`` / ``nnx.update``).
* ``optimizer``: the same model with ``nnx.Optimizer(model, tx)``, tx the
  family's own optax transformation (below).
* ``custom``: a user-style ``nnx.Module`` subclass (layers as attributes,
  the forward pass in ``__call__``) with the same optimizer.

Modes: ``compiled`` (the default: the training step under ``jax.jit``,
at the NNX levels over the model's and optimizer's ``nnx.split`` state as
Flax advises for speed, traced once per shape, dtype, family and
hyperparameters in a worker) and ``eager`` (the same step dispatched op by
op), for every family, batch size and reduction.

Batched seeds (``--batch-seeds``, ``BATCHED``): every level, both modes.
``raw`` vmaps its step over a leading seed axis of the parameter dict and
the rule's state.  The NNX levels build the first seed's model (and
``nnx.Optimizer``) exactly as per seed (``_build``); every seed's state is
made from that model under ``jax.vmap`` (``_seed_states``: the model
re-made by ``nnx.merge``, the seed's parameters loaded, its optimizer
created, ``nnx.split``), the states stacked under the first seed's graph
definition (the model and the cached transformation are the same for
all), and the per-seed step's pure form (``_nnx_pure``: ``nnx.merge``
inside) vmapped over the stacked state and the hand-written rule's state;
``jax.jit(jax.vmap(...))`` in compiled, the vmapped step op by op in
eager; the final loss and probabilities vmapped, not jitted, as per seed.
``hparams`` are read back from the first seed's ``nnx.Optimizer`` before
training, as per seed.  Building every seed's model instead cost 1.2 s of
a 1000-seed batch (the random initialisers that the loaded parameters
overwrite); the states made under vmap are the same bits (every record of
288, six families, both modes and dtypes).  Measured
against per seed (4-5 seeds each; module, optimizer, custom; single and
multi; and, nand, or, xor): bit-identical for full-batch sgd, momentum
(with weight decay), nesterov and ``--hparams defaults`` at float32 and
float64, compiled and eager; not at batch size 1, sgd included (8.4e-16
float64; raw 6.6e-16: from identical parameters the one-row forward pass
already differs, elementwise ops alone do not, so presumably the one-row
``x @ W``, a vector-matrix product per seed and a batched ``dot_general``
vmapped), nor with adam (5.6e-16 float64, 2.4e-7 float32, full batch too,
cause not traced) or rmsprop, in either mode (``BATCH_BOUNDS``, set on the
test samples). rmsprop amplifies it as the caveat below says: multi
``xor``, lr 0.01, 300 epochs, 4 seeds, 9.0e-5 (float64) and 1.0e-2
(float32), the raw level alike (9.9e-3).

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
  reduction): we ``.sum()`` it, or ``.mean()`` it with ``--reduction mean``
  (the batch's rows).  optax never divides by a batch size itself, so the
  learning rate is the cell's.  Batches: rows in table order, sliced once
  per cell, no shuffling.
* ``nnx.Optimizer.update(grads)`` applies optax's update to the model in
  place (flax 0.10's API, which takes no model argument).
* The hand-written rule under ``jax.jit``: the hyperparameters are static
  arguments (``Textbook`` branches on weight decay), Python floats, so they
  are weakly typed and take the parameters' dtype as a Python float does in
  numpy; the update count t is traced; the rule's state is carried between
  steps as a pytree (its structure is set by the first step: two traces).

Optimizer families (optax 0.2.4, read from ``optax/_src/alias.py``,
``transform.py``, ``transforms/_accumulation.py``, ``_adding.py``):

* ``sgd``: ``optax.sgd(lr)`` (momentum None: no trace at all), ``-lr g``.
* ``momentum``: ``optax.sgd(lr, momentum=mu)``: ``trace``, t = g + mu t,
  update -lr t: the textbook.  ``nesterov``: ``nesterov=True``, update
  -lr (g + mu t_new): the textbook.
* ``adam``: ``optax.adam(lr, b1, b2, eps)`` (eps_root 0): bias-corrected
  ``m_hat / (sqrt(v_hat) + eps)``: the textbook.
* ``rmsprop``: ``optax.rmsprop(lr, decay=rho, eps=eps)`` defaults to
  ``eps_in_sqrt=True``: ``g * rsqrt(nu + eps)``, epsilon INSIDE the square
  root (nu starts at ``initial_scale=0``, as the textbook's): departure
  ``eps-inside-sqrt`` (``departures``).  Measured at float64, seed 0,
  single ``and``, 60 updates, lr 0.125, eps 1e-4: textbook dev 3.8e-3,
  the variant within the 1e-9 tolerance, compiled and eager
  (``tests/test_recipes_jax.py``); with the defaults (lr 0.5, eps 1e-8,
  100 updates) textbook dev 1.8e-5, the variant within tolerance.
* Weight decay: ``optax.add_decayed_weights(wd)`` chained before the
  family's transformation, ``g + wd p``: L2 added to the gradient, the
  textbook's (``optax.adamw`` is decoupled and is not used).
* Hyperparameters read back: both transformations are wrapped in
  ``optax.inject_hyperparams``, which keeps every numeric argument (the
  passed ones, and the factory's defaults) in the optimizer state; the
  record's ``hparams`` are read from the ``nnx.Optimizer``'s ``opt_state``
  (learning_rate -> lr, b1/b2 -> beta1/beta2, decay -> rho).
  ``inject_hyperparams`` casts them to the parameters' dtype, so a float32
  cell reads back float32-rounded values (e.g. 0.9 -> 0.8999999762), the
  values its float32 arithmetic uses; at float64 they are the passed ones.
* ``--hparams defaults``: only the learning rate is passed (and the
  family's switches, momentum's none, nesterov's ``nesterov=True``).
  ``optax.sgd``'s momentum defaults to None, no momentum at all: the
  momentum and nesterov families are then plain gradient descent, recorded
  as momentum 0 (which is what the textbook rule with momentum 0 computes).

Caveat, every backend: rmsprop (and any rule that divides g by sqrt(s))
is scale-invariant in g, so near a stationary point or a saturated row,
where g is tiny and carries a large RELATIVE round-off (sigmoid(z) - y
cancels), it turns that round-off into an O(1) relative error of the step.
Such float64 cells can leave the 1e-9 band through gradient round-off
alone: the oracle's own trajectory moves past it when its dL/dz is computed
in the equally valid form -sigmoid(-z) for y = 1 rows.
"""
from __future__ import annotations

import functools
import inspect
from collections import namedtuple

import numpy as np

from backends.curve import LossCurve
from harness.recipes import Textbook, in_effect
from harness.tasks import (BatchResult, BatchSpec, TrainResult, TrainSpec, batches,
                           hyperparameters)

NAME = "jax"
IMPORTS = ("jax", "flax", "optax")
ENV = {"JAX_ENABLE_X64": "1"}
UNSUPPORTED: dict[str, str] = {}
# optax's name of each harness hyperparameter, per factory argument.
_OPTAX_NAMES = {"lr": "learning_rate", "momentum": "momentum", "beta1": "b1", "beta2": "b2",
                "eps": "eps", "rho": "decay", "weight_decay": "weight_decay"}
_HARNESS_NAMES = {v: k for k, v in _OPTAX_NAMES.items()}


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


def _batches(spec: TrainSpec, x, y):
    """One epoch's (x, y) batches, rows in table order, sliced once."""
    return [(x[rows], y[rows]) for rows in batches(spec.cell)]


# ----------------------------------------------------------- optax objects

def _factory(family: str):
    """optax's factory for a family: ``optax.sgd`` (momentum None: plain;
    ``momentum``; ``nesterov=True``), ``optax.adam``, ``optax.rmsprop``."""
    import optax
    return {"sgd": optax.sgd, "momentum": optax.sgd, "nesterov": optax.sgd,
            "adam": optax.adam, "rmsprop": optax.rmsprop}[family]


def optimizer_defaults(family: str) -> dict[str, float]:
    """optax's own defaults for the family, from its factories' signatures
    (harness names).  ``optax.sgd``'s momentum defaults to None, no momentum
    trace at all, which is the momentum and nesterov rules with momentum 0;
    weight decay is ``optax.add_decayed_weights``' default (0)."""
    import optax

    def defaults(fn):
        return {_HARNESS_NAMES[k]: p.default for k, p in inspect.signature(fn).parameters.items()
                if k in _HARNESS_NAMES and p.default is not inspect.Parameter.empty}

    got = defaults(_factory(family))
    out = {}
    from harness.tasks import HYPERPARAMETERS
    for name in HYPERPARAMETERS[family]:
        if name == "weight_decay":
            out[name] = float(defaults(optax.add_decayed_weights)["weight_decay"])
        elif name in got:
            out[name] = 0.0 if got[name] is None else float(got[name])
    return out


def departures(cell) -> tuple[str, ...]:
    """``optax.rmsprop`` puts epsilon inside the square root by default
    (``eps_in_sqrt=True``: ``rsqrt(nu + eps)``).  Every other family, and
    weight decay (``optax.add_decayed_weights``: ``g + wd * p``), is the
    textbook's."""
    if cell.level in ("optimizer", "custom") and cell.optimizer == "rmsprop":
        return ("eps-inside-sqrt",)
    return ()


def _transform(spec: TrainSpec):
    """The cell's optax transformation: ``add_decayed_weights`` (L2 added to
    the gradient, before the rule) chained with the family's factory, each
    wrapped in ``optax.inject_hyperparams`` so that its state holds the
    hyperparameters in effect.  With ``--hparams defaults`` only the
    learning rate (and the family's switches) is passed."""
    return _transform_of(spec.optimizer, tuple(hyperparameters(spec.cell).items()))


@functools.lru_cache(maxsize=None)
def _transform_of(family: str, hp: tuple):
    """One transformation per family and hyperparameters, shared by the
    cells that have them (it is a pair of pure functions): the compiled
    step is traced once per graph definition of the model and optimizer,
    which holds the transformation, so a new one per cell made every cell
    compile its step anew."""
    import optax

    hp = dict(hp)
    kw = {_OPTAX_NAMES[k]: v for k, v in hp.items() if k != "weight_decay"}
    if family == "nesterov":
        kw["nesterov"] = True
    decay = {"weight_decay": hp["weight_decay"]} if "weight_decay" in hp else {}
    return optax.chain(optax.inject_hyperparams(optax.add_decayed_weights)(**decay),
                       optax.inject_hyperparams(_factory(family))(**kw))


def _read_hparams(optimizer, family: str) -> dict[str, float]:
    """The hyperparameters in effect, read back from the ``nnx.Optimizer``'s
    optax state (``inject_hyperparams``' ``hyperparams``), harness names,
    lr first.  optax.sgd without momentum holds none: momentum 0."""
    from harness.tasks import HYPERPARAMETERS

    decay, rule = optimizer.opt_state
    held = {**{k: v.value for k, v in rule.hyperparams.items()},
            **{k: v.value for k, v in decay.hyperparams.items()}}
    out = {"lr": float(held["learning_rate"])}
    for name in HYPERPARAMETERS[family]:
        value = held.get(_OPTAX_NAMES[name])
        out[name] = 0.0 if value is None and name == "momentum" else float(value)
    return out


# ------------------------------------------------------- hand-written rule

# ``Textbook`` reads only the cell's family: a stand-in that jit can hold
# as a static argument.
_Family = namedtuple("_Family", "optimizer")


def _textbook(family: str, hp: tuple, t, state: dict):
    """The textbook rule at update t with the state carried so far: a pure
    function of its arguments, so it runs under ``jax.jit``.  ``hp`` is the
    hyperparameters' items, static under jit (``Textbook`` branches on
    weight decay): Python floats, weakly typed, so they take the
    parameters' dtype as a Python float does in numpy; t is traced."""
    import jax.numpy as jnp

    rule = Textbook(_Family(family), dict(hp), jnp.sqrt)
    rule.t, rule.state = t, dict(state)
    return rule


def _reduce(total, rows: int, mean: bool):
    return total / rows if mean else total


def _written_out(params, x, y):
    import jax
    import jax.numpy as jnp

    if "W" in params:
        p = jax.nn.sigmoid(x @ params["W"] + params["b"])
    else:
        h = jax.nn.sigmoid(x @ params["W1"] + params["b1"])
        p = jax.nn.sigmoid(h @ params["W2"] + params["b2"])
    return -jnp.sum(jnp.log(y * p + (1 - y) * (1 - p))), p


def _raw_loss(params, x, y, mean=False):
    return _reduce(_written_out(params, x, y)[0], y.shape[0], mean)


def _raw_step(params, state, x, y, hp, t, family="sgd", mean=False):
    import jax

    loss, grads = jax.value_and_grad(_raw_loss)(params, x, y, mean)
    rule = _textbook(family, hp, t, state)
    return loss, {k: rule.step(k, params[k], grads[k]) for k in params}, rule.state


@functools.lru_cache(maxsize=None)
def _bound_step(fn, jit: bool, hp: tuple, family: str, mean: bool):
    """``fn(params, state, x, y, t=t)`` with the static arguments bound, jitted
    once per binding (compiled) or not (eager): binding them here rather
    than passing them as static keywords at every call saves JAX hashing
    them per update (a third of a compiled update's time on one layer)."""
    import jax

    bound = functools.partial(fn, hp=hp, family=family, mean=mean)
    return jax.jit(bound) if jit else bound


def loss_and_grad(spec: TrainSpec):
    """The raw level's loss and autodiff gradient at ``spec.params``."""
    jax, jnp, x, y = _arrays(spec)
    params = {k: jnp.asarray(v) for k, v in spec.params.items()}
    loss, grads = jax.value_and_grad(_raw_loss)(params, x, y)
    return float(loss), {k: np.asarray(grads[k]) for k in spec.params}


def _curve(jax) -> LossCurve:
    """The loss curve, copied to the host a block of updates at a time:
    ``float(loss)`` per update would wait for every step JAX dispatched."""
    return LossCurve(lambda losses: [float(v) for v in jax.device_get(losses)])


def _info(jax) -> dict:
    return {"x64": bool(jax.config.jax_enable_x64)}


def train_raw(spec: TrainSpec) -> TrainResult:
    jax, jnp, x, y = _arrays(spec)
    params = {k: jnp.asarray(v) for k, v in spec.params.items()}
    hp = in_effect(spec.cell, optimizer_defaults)
    mean = spec.reduction == "mean"
    step = _bound_step(_raw_step, spec.mode == "compiled", tuple(hp.items()), spec.optimizer,
                       mean)
    start = {k: np.asarray(v) for k, v in params.items()}
    curve, state, t = _curve(jax), {}, 0
    data = _batches(spec, x, y)
    for _ in range(spec.epochs):
        for xb, yb in data:
            t += 1
            loss, params, state = step(params, state, xb, yb, t=t)
            curve.append(loss)
    loss = _raw_loss(params, x, y, mean)
    _, p = _written_out(params, x, y)
    # jax's tree maps return dicts in sorted key order: back to canonical.
    return TrainResult(params_start=start, params_final={k: np.asarray(params[k]) for k in start},
                       loss_curve=curve.floats(), loss_final=float(loss),
                       probs=np.asarray(p).reshape(-1), info=_info(jax), hparams=hp)


# ---------------------------------------------------- raw level, batched

def _raw_step_seeds(params, state, x, y, hp, t, family="sgd", mean=False):
    """``_raw_step`` vmapped over the leading seed axis of the parameters
    and the rule's state; the data, the hyperparameters and the update
    count t are shared (closed over, so t has the per-seed step's type:
    a traced argument under jit, a Python int in eager mode)."""
    import jax

    def one(p, s):
        return _raw_step(p, s, x, y, hp, t, family, mean)

    return jax.vmap(one)(params, state)


def _losses_by_seed(jax, losses) -> np.ndarray:
    """The per-update loss vectors of a batch as (seeds, updates): one copy
    to the host, stacked there (``jnp.stack`` of a thousand device arrays
    compiles a concatenation for the shape and costs ~0.2 s)."""
    return np.stack(jax.device_get(losses), axis=1)


def _final_seeds(params, x, y, mean):
    """Each seed's loss over all rows and probabilities, as ``train_raw``
    computes them after training, op by op in either mode.  Not jitted,
    though op by op each operation compiles again for every new number of
    seeds (0.15 s for 1000 seeds): jitted, XLA fuses the float32 pass and
    its bits differ from the per-seed pass's (measured: 404 of 28,800
    seeds, every one float32)."""
    import jax

    def one(p):
        return _raw_loss(p, x, y, mean), _written_out(p, x, y)[1]

    return jax.vmap(one)(params)


def train_raw_batch(spec: BatchSpec) -> BatchResult:
    """``train_raw`` for S seeds at once: the same step under ``jax.vmap``,
    jitted as ``jax.jit(jax.vmap(step))`` in mode ``compiled`` and
    dispatched op by op in ``eager``.  The per-update losses stay on the
    device and are read once at the end."""
    jax, jnp, x, y = _arrays(spec)
    params = {k: jnp.asarray(v) for k, v in spec.params.items()}
    hp = in_effect(spec.cell, optimizer_defaults)
    mean = spec.reduction == "mean"
    step = _bound_step(_raw_step_seeds, spec.mode == "compiled", tuple(hp.items()),
                       spec.optimizer, mean)
    start = {k: np.asarray(v) for k, v in params.items()}
    losses, state, t = [], {}, 0
    data = _batches(spec, x, y)
    for _ in range(spec.epochs):
        for xb, yb in data:
            t += 1
            loss, params, state = step(params, state, xb, yb, t=t)
            losses.append(loss)
    loss, p = _final_seeds(params, x, y, mean)
    return BatchResult(params_start=start, params_final={k: np.asarray(params[k]) for k in start},
                       loss_curve=_losses_by_seed(jax, losses),
                       loss_final=np.asarray(loss), probs=np.asarray(p).reshape(spec.seeds, -1),
                       info=_info(jax), hparams=hp)


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
    """(the cell's model with its start parameters loaded, read() -> the
    parameters it holds now)."""
    from flax import nnx

    rngs = nnx.Rngs(0)  # its draw is overwritten below
    n_in = spec.x.shape[1]
    dt = dict(dtype=spec.dtype, param_dtype=spec.dtype)
    if spec.level == "custom":
        single, three = _custom_classes()
        model = (single(n_in, spec.dtype, rngs) if spec.arch == "single" else
                 three(n_in, spec.hidden, spec.dtype, rngs))
    elif spec.arch == "single":
        model = nnx.Sequential(nnx.Linear(n_in, 1, rngs=rngs, **dt))
    else:
        model = nnx.Sequential(nnx.Linear(n_in, spec.hidden, rngs=rngs, **dt), nnx.sigmoid,
                               nnx.Linear(spec.hidden, 1, rngs=rngs, **dt))
    layers = _layers(model, spec.level, spec.arch)
    _load(layers, spec.params)

    def read():
        return {name: np.asarray(v.value) for name, v in _variables(layers)}

    return model, read


def _layers(model, level: str, arch: str) -> list:
    """The model's Linear layers, first to last, named by the canonical
    parameters they hold."""
    if level == "custom":
        found = [model.linear1] if arch == "single" else [model.linear1, model.linear2]
    else:  # nnx.Sequential; multi-layer: Linear, sigmoid, Linear
        found = [model.layers[0]] if arch == "single" else [model.layers[0], model.layers[2]]
    names = [("W", "b")] if arch == "single" else [("W1", "b1"), ("W2", "b2")]
    return list(zip(found, names))


def _variables(layers):
    for layer, (w, b) in layers:
        yield w, layer.kernel
        yield b, layer.bias


def _load(layers, params) -> None:
    import jax.numpy as jnp

    for name, variable in _variables(layers):
        variable.value = jnp.asarray(params[name])


def _bce(model, x, y, mean=False):
    """``optax.sigmoid_binary_cross_entropy`` (one loss per row), summed or
    averaged over the batch's rows."""
    import optax
    losses = optax.sigmoid_binary_cross_entropy(model(x), y)
    return losses.mean() if mean else losses.sum()


def _hand_step(model, x, y, hp, t, state, family="sgd", mean=False):
    import jax
    from flax import nnx

    loss, grads = nnx.value_and_grad(_bce)(model, x, y, mean)
    params = nnx.state(model, nnx.Param)
    leaves, tree = jax.tree_util.tree_flatten(params)
    rule = _textbook(family, hp, t, state)
    new = [rule.step(i, p, g) for i, (p, g) in
           enumerate(zip(leaves, jax.tree_util.tree_leaves(grads)))]
    nnx.update(model, jax.tree_util.tree_unflatten(tree, new))
    return loss, rule.state


def _optimizer_step(model, optimizer, x, y, mean=False):
    from flax import nnx

    loss, grads = nnx.value_and_grad(_bce)(model, x, y, mean)
    optimizer.update(grads)
    return loss


@functools.lru_cache(maxsize=None)
def _nnx_pure(fn):
    """``fn(*nodes, *args, **kwargs)`` as a pure function of the split form
    of its nnx objects (``nodes``: the model, and the optimizer):
    ``(graphdef, static, state, args, kwargs) -> (fn's result, new state)``,
    ``static`` the static keyword arguments' items.  What jit and vmap
    transform: the nodes are merged inside, so they see only arrays."""
    from flax import nnx

    def pure(graphdef, static, state, args, kwargs):
        nodes = nnx.merge(graphdef, state)
        out = fn(*nodes, *args, **kwargs, **dict(static))
        return out, nnx.state(nodes)

    return pure


@functools.lru_cache(maxsize=None)
def _nnx_jitted(fn):
    """``_nnx_pure(fn)`` compiled with ``jax.jit``, ``graphdef`` and
    ``static`` static.  This is Flax's own advice for speed: ``nnx.jit``
    walks the objects' graph in Python at every call, which cost more than
    the step itself; the traced step, and so every number, is the same."""
    import jax

    return jax.jit(_nnx_pure(fn), static_argnums=(0, 1))


class _Step:
    """``fn(*nodes, *args, **kwargs, **static)`` for one training step:
    called as it is (eager), or compiled (``_nnx_jitted``) over the nodes'
    split state, which ``finish()`` writes back into the nodes."""

    def __init__(self, fn, nodes: tuple, jit: bool, **static):
        from flax import nnx

        self.fn, self.nodes, self.static = fn, nodes, static
        self.jitted = _nnx_jitted(fn) if jit else None
        if self.jitted:
            self.graphdef, self.state = nnx.split(nodes)
            self.static_items = tuple(static.items())

    def __call__(self, *args, **kwargs):
        if not self.jitted:
            return self.fn(*self.nodes, *args, **kwargs, **self.static)
        out, self.state = self.jitted(self.graphdef, self.static_items, self.state, args,
                                      kwargs)
        return out

    def finish(self) -> None:
        from flax import nnx

        if self.jitted:
            nnx.update(self.nodes, self.state)


def _train_nnx(spec: TrainSpec, use_optimizer: bool) -> TrainResult:
    jax, jnp, x, y = _arrays(spec)
    from flax import nnx

    model, read = _build(spec)
    start = read()
    jit = spec.mode == "compiled"
    mean = spec.reduction == "mean"
    data = _batches(spec, x, y)
    curve = _curve(jax)
    if use_optimizer:
        optimizer = nnx.Optimizer(model, _transform(spec))
        hp = _read_hparams(optimizer, spec.optimizer)
        step = _Step(_optimizer_step, (model, optimizer), jit, mean=mean)
        for _ in range(spec.epochs):
            for xb, yb in data:
                curve.append(step(xb, yb))
    else:
        hp = in_effect(spec.cell, optimizer_defaults)
        step = _Step(_hand_step, (model,), jit, hp=tuple(hp.items()), family=spec.optimizer,
                     mean=mean)
        state, t = {}, 0
        for _ in range(spec.epochs):
            for xb, yb in data:
                t += 1
                loss, state = step(xb, yb, t=t, state=state)
                curve.append(loss)
    step.finish()
    z = model(x)
    loss = _bce(model, x, y, mean)
    return TrainResult(params_start=start, params_final=read(), loss_curve=curve.floats(),
                       loss_final=float(loss), probs=np.asarray(jax.nn.sigmoid(z)).reshape(-1),
                       info=_info(jax), hparams=hp)


# ---------------------------------------------------- NNX levels, batched

@functools.lru_cache(maxsize=None)
def _nnx_seeds(fn, jit: bool):
    """``_nnx_pure(fn)`` vmapped over the leading seed axis of the nodes'
    stacked state and of ``carried`` (keyword arguments each seed carries
    from step to step: the hand-written rule's state); the data and the
    other keyword arguments (the update count t) are shared, closed over as
    in ``_raw_step_seeds``.  ``jax.jit(jax.vmap(...))`` in mode compiled,
    the vmapped step dispatched op by op in eager."""
    import jax

    pure = _nnx_pure(fn)

    def seeds(graphdef, static, state, args, kwargs, carried):
        def one(s, c):
            return pure(graphdef, static, s, args, {**kwargs, **c})

        return jax.vmap(one)(state, carried)

    return jax.jit(seeds, static_argnums=(0, 1)) if jit else seeds


class _SeedsStep:
    """``_Step`` for S seeds: the first seed's nodes (the model, and the
    optimizer), built as per seed, give the graph definition that every
    seed shares (same model, same transformation: ``_transform_of``); the
    seeds' split states are stacked (leading axis S).  ``finish()`` writes
    the stacked state into the first seed's nodes, whose variables then
    hold every seed's values."""

    def __init__(self, fn, nodes: tuple, state, jit: bool, **static):
        import jax
        from flax import nnx

        self.nodes = nodes
        self.graphdef, first = nnx.split(nodes)
        if jax.tree_util.tree_structure(state) != jax.tree_util.tree_structure(first):
            raise AssertionError("the seeds' stacked state is not shaped as the first seed's")
        self.state = state
        self.fn, self.static_items = _nnx_seeds(fn, jit), tuple(static.items())

    def __call__(self, *args, carried=None, **kwargs):
        out, self.state = self.fn(self.graphdef, self.static_items, self.state, args, kwargs,
                                  carried or {})
        return out

    def finish(self) -> None:
        from flax import nnx

        nnx.update(self.nodes, self.state)

    def final(self, x, y, mean: bool):
        """Each seed's loss over all rows and logits, as ``_train_nnx``
        computes them after training (not jitted, in either mode)."""
        import jax
        from flax import nnx

        def one(s):
            model = nnx.merge(self.graphdef, s)[0]
            return _bce(model, x, y, mean), model(x)

        return jax.vmap(one)(self.state)


def _seed_states(spec: BatchSpec, model, tx):
    """Every seed's split state (the model, and the ``nnx.Optimizer`` with
    ``tx`` unless None), stacked: the first seed's model re-made under
    ``jax.vmap``, each seed's parameters loaded into it and its optimizer
    created from it, so each seed's state is what building it alone gives
    (the optimizer's initial state from its own parameters) without
    building a thousand models (a ``_build`` is ~2 ms of random
    initialisers that the loaded parameters overwrite)."""
    import jax
    import jax.numpy as jnp
    from flax import nnx

    graphdef, state = nnx.split(model)

    def one(params):
        seed = nnx.merge(graphdef, state)
        _load(_layers(seed, spec.level, spec.arch), params)
        return nnx.split((seed, nnx.Optimizer(seed, tx)) if tx is not None else (seed,))[1]

    return jax.vmap(one)({k: jnp.asarray(v) for k, v in spec.params.items()})


def _train_nnx_batch(spec: BatchSpec, use_optimizer: bool) -> BatchResult:
    """``_train_nnx`` for S seeds at once: the first seed's model (and
    ``nnx.Optimizer``) built by ``_build``, every seed's state made from it
    (``_seed_states``), and the per-seed step (``_hand_step``,
    ``_optimizer_step``) vmapped over the stacked states (``_SeedsStep``).
    The per-update losses stay on the device and are read once at the end."""
    jax, jnp, x, y = _arrays(spec)
    from flax import nnx

    model, read = _build(TrainSpec(spec.cells[0], spec.x, spec.y,
                                   {k: v[0] for k, v in spec.params.items()}))
    jit = spec.mode == "compiled"
    mean = spec.reduction == "mean"
    data = _batches(spec, x, y)
    losses = []
    if use_optimizer:
        tx = _transform(spec)
        nodes = (model, nnx.Optimizer(model, tx))
        hp = _read_hparams(nodes[1], spec.optimizer)
        step = _SeedsStep(_optimizer_step, nodes, _seed_states(spec, model, tx), jit, mean=mean)
    else:
        hp = in_effect(spec.cell, optimizer_defaults)
        step = _SeedsStep(_hand_step, (model,), _seed_states(spec, model, None), jit,
                          hp=tuple(hp.items()), family=spec.optimizer, mean=mean)
    step.finish()
    start = read()  # every seed's start, as the seeds' models hold it
    if use_optimizer:
        for _ in range(spec.epochs):
            for xb, yb in data:
                losses.append(step(xb, yb))
    else:
        state, t = {}, 0
        for _ in range(spec.epochs):
            for xb, yb in data:
                t += 1
                loss, state = step(xb, yb, t=t, carried={"state": state})
                losses.append(loss)
    loss, z = step.final(x, y, mean)
    step.finish()
    return BatchResult(params_start=start, params_final=read(),
                       loss_curve=_losses_by_seed(jax, losses),
                       loss_final=np.asarray(loss),
                       probs=np.asarray(jax.nn.sigmoid(z)).reshape(spec.seeds, -1),
                       info=_info(jax), hparams=hp)


TRAINERS = {
    "raw": train_raw,
    "module": functools.partial(_train_nnx, use_optimizer=False),
    "optimizer": functools.partial(_train_nnx, use_optimizer=True),
    "custom": functools.partial(_train_nnx, use_optimizer=True),
}
MODES = dict.fromkeys(TRAINERS, ("compiled", "eager"))
BATCHED = {
    "raw": train_raw_batch,
    "module": functools.partial(_train_nnx_batch, use_optimizer=False),
    "optimizer": functools.partial(_train_nnx_batch, use_optimizer=True),
    "custom": functools.partial(_train_nnx_batch, use_optimizer=True),
}
MODE_GAPS = {"graph": "JAX has no graph-and-session mode; jax.jit is its compiled mode"}

# Measured (tests/test_batch.py samples, 5 seeds, and the cells named in the
# module docstring): every level's vmapped step is bit-identical to the
# per-seed step for full-batch sgd, momentum and nesterov (float32 and
# float64, both modes); it is not at batch size 1 (the one-row forward pass,
# presumably x @ W: 8.4e-16 float64, sgd too) nor with adam or rmsprop
# (4.5e-16 float64 full batch).
BATCH_BOUNDS = {
    level: ({"float64": 1e-14, "float32": 1e-6},
            "XLA's batched kernels round a one-row forward pass and the adam/rmsprop "
            "update differently from one seed's, in both modes (measured 8.4e-16 float64, 2.4e-7 "
            "float32; full-batch sgd/momentum/nesterov bit-identical)")
    for level in BATCHED}
