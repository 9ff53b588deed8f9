"""MXNet 1.x: NDArray + autograd, and Gluon.

* ``raw``: ``nd`` arrays with ``attach_grad()``, the forward pass and the
  notebook's written-out loss under ``autograd.record()``, ``backward()``,
  the update (``harness.recipes.Textbook``, every optimizer family, on
  NDArrays with ``nd.sqrt``) copied into each parameter in place
  (``copyto(p)``) outside ``record()``.
* ``module``: ``gluon.nn.Sequential`` of ``Dense`` / ``Activation('sigmoid')``
  / ``Dense`` and ``gluon.loss.SigmoidBinaryCrossEntropyLoss`` summed (or
  averaged) over rows; the same written-out update over
  ``collect_params()``, in place on ``param.data()``.
* ``optimizer``: the same network with ``gluon.Trainer(params, name,
  {...})``: ``'sgd'`` (sgd; momentum with ``momentum``), ``'nag'``
  (nesterov), ``'adam'``, ``'rmsprop'`` (``gamma1`` is rho, ``centered``
  left False); every family takes ``wd``.
* ``custom``: user-style ``gluon.HybridBlock`` subclasses (layers in
  ``name_scope()``, the forward pass in ``hybrid_forward(F, x)``) with the
  same Trainer.
* ``raw``, batched (``--batch-seeds``, ``BATCHED``): every parameter with a
  leading seed axis (W (S, n, k), biases held as (S, 1, k)).  ``nd.dot``
  does not batch (on N-D arrays it contracts x's last axis with W's
  first), so x is broadcast to (S, R, n) and multiplied by
  ``nd.batch_dot``: on CPU one BLAS GEMM per seed, the call ``nd.dot``
  makes per seed, forward and backward.  ``broadcast_mul`` + ``sum`` would
  not do: it rounds differently (measured: gradients off by 4e-16 at
  float64, 1e-6 at float32).  The loss is summed (or averaged) over axes
  (1, 2), one per seed, and ``backward()`` on it (head gradient ones) is
  each seed's own.  The losses stay on MXNet's engine (one row of an
  (updates, S) array per update) and are read once at the end.
  Bit-identical to per seed (tests/test_batch.py; also measured on every
  family, weight decay, batch sizes 1-3, ``--hparams defaults``, zeros
  init, both dtypes).  1000 seeds of multi xor float64, 1000 epochs: 3.4 s
  batched against 1.7-2.6 s per seed, ~500-780x (2 shared cores).  Module,
  optimizer and custom levels run per seed (a Gluon block holds one set
  of parameters).

Modes: ``eager`` (imperative Gluon, the default) and ``compiled``:
``net.hybridize()``, which traces the block into a cached symbolic graph
on its first call (module and optimizer then use ``HybridSequential``,
the one Sequential that can hybridize).  The raw level's ``nd`` arrays
have no compiled form.  Hybridized and imperative runs agree bit for bit
on these networks (measured: float32 and float64, both archs); a batch of
another size re-traces the graph for its shape, and compiled cells of every
family, batch size and reduction are judged like eager ones.

The engine: harness workers set ``MXNET_ENGINE_TYPE=NaiveEngine`` unless
the environment names another (``THREAD_VARS``, harness/execution/engine.py),
which runs each operator in the calling thread instead of handing it to
the threaded engine's workers: the same kernels, so the same records
(measured on the default matrix, float64 adam/rmsprop/momentum and the
batched raw level), and the default mxnet matrix trains in 20.7 s instead
of 28.0 s, the hand-off costing more than these tiny operators.

Conventions adapted:

* ``Dense`` stores its weight as (out, in): canonical W is transposed on load
  (``Parameter.set_data``) and on read-back.  Layers are built with
  ``in_units`` so their shapes are known without a first forward pass
  (Gluon's deferred initialization) and initialized with ``'zeros'`` (no
  random draw) before the harness's values are loaded.  ``Dense`` flattens
  its input to 2-D by default (``flatten=True``): a no-op for our (rows, in)
  inputs.
* ``SigmoidBinaryCrossEntropyLoss`` returns one loss per row (the mean over
  the non-batch axes, here a single output).  Reduction ``sum``: we
  ``.sum()`` it, and ``trainer.step(1)`` (``step(batch_size)`` multiplies
  gradients by ``rescale_grad = 1 / batch_size``; ours is already the
  summed loss's, so ``rescale_grad = 1.0``, exact).  Reduction ``mean``:
  MXNet's own idiom, ``backward()`` on the per-row losses (their sum, head
  gradient 1) and ``trainer.step(rows)``: the Trainer divides by the rows,
  the learning rate is untouched (weight decay is not rescaled: ``wd * w``
  is added after ``rescale_grad * g``, as the textbook adds it to the mean
  loss's gradient).  The ``module`` level, which has no Trainer,
  differentiates ``.mean()``.
* The Trainer's hyperparameters are keyword arguments of its optimizer
  (``learning_rate``, ``momentum``, ``beta1``, ``beta2``, ``epsilon``,
  ``gamma1``, ``wd``); the record reads them back from
  ``trainer.optimizer`` (``lr``, ``momentum``, ...).  With ``--hparams
  defaults`` only the learning rate is passed, and MXNet's defaults
  (``optimizer_defaults``, read from ``mx.optimizer.create(name)``) are
  in effect: momentum 0 for ``'sgd'`` and ``'nag'`` (so the momentum and
  nesterov families are plain gradient descent there), adam 0.9 / 0.999 /
  1e-8, rmsprop gamma1 0.9 and epsilon 1e-8, wd 0.  Gluon parameters have
  ``lr_mult = wd_mult = 1``, so weight decay reaches biases too, as in the
  textbook.  With one CPU context the Trainer updates locally, without a
  kvstore.
* ``nd.array(numpy_array)`` is float32 unless told otherwise, and ``Dense``
  defaults to ``dtype='float32'``: every array and layer is created in the
  cell's dtype explicitly.  (Scalar arithmetic on NDArrays, used by the
  written-out update, is in double: ``nd.array([1.], dtype='float64') *
  0.1`` is exactly 0.1.)
* Gradients are overwritten by each ``backward()`` (``grad_req='write'``),
  so nothing needs zeroing, and the written-out rule copies a gradient it
  keeps as state (``harness.recipes``).

How the Trainer's optimizers depart from the textbook rule
(``departures``; each atom is ``harness.oracle.VARIANTS``' and is judged:
measured on float64 cells of 60-100 updates, lr 0.125 or 0.1, params_final
relative deviation from the textbook / from the variant):

* ``float32-hparams`` (every family, float64 runs): the C++ update kernels
  (``sgd_update``, ``sgd_mom_update``, ``nag_mom_update``, ``adam_update``,
  ``rmsprop_update``) take lr, wd, momentum, beta1, beta2, epsilon, gamma1
  and rescale_grad as C ``float``, while the arithmetic is in the weights'
  dtype: a hyperparameter float32 cannot represent (lr 0.1, momentum 0.9,
  wd 0.01) is rounded.  Momentum 0.9 and lr 0.125: 1.2e-7 / 4e-16; sgd with
  wd 0.01: 1.5e-8 / 2e-16.  ``info['lr_applied']`` records the learning
  rate the kernel used.  (In a float32 run every hyperparameter meets
  float32 arithmetic anyway, and the atom is not named.)
* ``eps-hat`` (adam): ``Adam.update`` computes ``lr_t = lr sqrt(1 - b2^t)
  / (1 - b1^t)`` in Python (float64, from the unrounded hyperparameters) and
  the kernel does ``w -= lr_t m / (sqrt(v) + eps)``: eps before the bias
  correction.  With float32-hparams: 2.5e-6 to 4e-6 / 3e-16 single-layer,
  to 7e-4 / 7e-14 multi-layer.  (The atom's first form rounded the betas
  in lr_t to float32 as well: 4.3e-6 from MXNet; MXNet rounds only lr_t.)
* ``eps-inside-sqrt`` (rmsprop, non-centered): ``w -= lr g / sqrt(n +
  eps)``.  Seen at float32 with eps 0.01: textbook 5e-2, variant 1e-7
  (float32 tolerance).
* ``nesterov-wd-updated-weight`` (nesterov with weight decay): 1.9.1's
  ``nag_mom_update`` keeps mom = -lr v and writes the new weight (textbook
  value) first, then updates mom with ``wd * weight`` read from the same
  array, already updated (the Trainer updates in place, ``out=weight``).
  The Python docstring's formula is the textbook's; the kernel is not.  wd
  0.01, lr 0.1, momentum 0.9: 3.1e-3 single-layer, 1.1e-2 multi-layer /
  2e-16, 7e-16.
* ``float32-rescale-grad`` (reduction mean, float64 runs): the mean's
  ``1 / rows`` is ``rescale_grad``, another C float: exact for 1, 2 and 4
  rows, rounded for 3 (``--batch-size 3``): 1.7e-8 (sgd), 3e-6 (adam) /
  2e-16, 1e-15.

Gap: ``'rmsprop'`` cannot train float64 weights (``OPTIMIZER_GAPS``):
``RMSProp.create_state`` makes its state with ``zeros()`` in the default
float32, whatever the weight's dtype, and ``rmsprop_update`` refuses the
mix.  Its float32 cells run.

Not adaptable (a finding): ``SigmoidBinaryCrossEntropyLoss`` computes
``relu(x) - x*y + softrelu(-|x|)`` and MXNet differentiates ``relu`` and
``abs`` as 0 at x = 0, so at a logit of exactly 0 its gradient is ``-y``
instead of ``sigmoid(0) - y = 0.5 - y``.  In practice only a zero start
(``--init zeros``) produces exactly-zero logits (every row, first step);
from there the module and optimizer levels depart from the reference,
deterministically: by 2e-5 to 2e-3 on single-layer cells, 6e-4 to 0.09 on
multi-layer ones, and qualitatively on multi-layer ``not``, where the zero
start is a stationary point of the true loss (gradient exactly 0, p stays
0.5) and Gluon's first step leaves it: MXNet learns ``not`` there and no
other framework does.  The raw level's written-out loss is not affected.
Writing the loss by hand would hide what Gluon does, so we don't.
"""
from __future__ import annotations

import functools

import numpy as np

from backends.curve import LossCurve
from harness.recipes import Textbook, in_effect
from harness.tasks import (HYPERPARAMETERS, BatchResult, BatchSpec, TrainResult, TrainSpec,
                           batches, hyperparameters, updates)

NAME = "mxnet"
IMPORTS = ("mxnet",)
UNSUPPORTED: dict[str, str] = {}
OPTIMIZER_GAPS = {
    ("rmsprop", "float64"): (
        "MXNet's RMSProp creates its state with zeros() in the default float32 whatever the "
        "weight's dtype (optimizer.py, RMSProp.create_state), so its rmsprop_update refuses "
        "float64 weights ('Incompatible attr ... expected float64, got float32')"),
}


# Optimizer family -> (the name gluon.Trainer knows it by, {harness name: its
# keyword}).  The Trainer holds each keyword as an attribute of its
# optimizer object under the same name, except those in _ATTRIBUTE.
_OPTIMIZERS = {
    "sgd": ("sgd", {"lr": "learning_rate", "weight_decay": "wd"}),
    "momentum": ("sgd", {"lr": "learning_rate", "momentum": "momentum", "weight_decay": "wd"}),
    "nesterov": ("nag", {"lr": "learning_rate", "momentum": "momentum", "weight_decay": "wd"}),
    "adam": ("adam", {"lr": "learning_rate", "beta1": "beta1", "beta2": "beta2",
                      "eps": "epsilon", "weight_decay": "wd"}),
    "rmsprop": ("rmsprop", {"lr": "learning_rate", "rho": "gamma1", "eps": "epsilon",
                            "weight_decay": "wd"}),
}
_ATTRIBUTE = {"learning_rate": "lr"}


def optimizer_defaults(family: str) -> dict[str, float]:
    """MXNet's own defaults for the family, read from a fresh optimizer object
    (SGD's and NAG's momentum is 0: plain gradient descent)."""
    import mxnet as mx

    name, translate = _OPTIMIZERS[family]
    opt = mx.optimizer.create(name)
    return {k: float(getattr(opt, _ATTRIBUTE.get(m, m))) for k, m in translate.items()
            if k in HYPERPARAMETERS[family]}


def departures(cell) -> tuple[str, ...]:
    """How the Trainer's optimizer computes the cell's rule (see the docstring)."""
    if cell.level not in ("optimizer", "custom"):
        return ()
    atoms = {"adam": ("eps-hat",), "rmsprop": ("eps-inside-sqrt",)}.get(cell.optimizer, ())
    if cell.optimizer == "nesterov" and cell.weight_decay:
        atoms += ("nesterov-wd-updated-weight",)
    if cell.dtype == "float64":
        # In a float32 run every hyperparameter meets float32 arithmetic anyway.
        atoms += ("float32-hparams",)
        if cell.reduction == "mean":
            atoms += ("float32-rescale-grad",)
    return atoms


def known_departure(cell) -> str | None:
    """Why this cell is known to leave the reference (a finding the verdict
    still reports as a disagreement), or None."""
    if cell.level in ("module", "optimizer", "custom") and cell.init == "zeros":
        return ("Gluon's SigmoidBinaryCrossEntropyLoss differentiates relu and abs as 0 at a "
                "logit of exactly 0: gradient -y there, not 0.5 - y")
    return None


def framework_version() -> str:
    import mxnet
    return mxnet.__version__


def _raw_graph(nd, spec: TrainSpec):
    """Arrays with gradients for the canonical parameters, a forward pass and
    the written-out loss (summed or averaged over the rows) for rows ``x``."""
    params = {k: nd.array(v, dtype=spec.dtype) for k, v in spec.params.items()}
    for p in params.values():
        p.attach_grad()

    def forward(x):
        if spec.arch == "single":
            return (nd.dot(x, params["W"]) + params["b"]).sigmoid()
        h = (nd.dot(x, params["W1"]) + params["b1"]).sigmoid()
        return (nd.dot(h, params["W2"]) + params["b2"]).sigmoid()

    def loss_of(p, y):
        each = -(y * p + (1 - y) * (1 - p)).log()
        return each.mean() if spec.reduction == "mean" else each.sum()

    return params, forward, loss_of


def _rows(nd, spec: TrainSpec):
    """(x, y) as arrays in the cell's dtype: all rows, and each batch's."""
    def arrays(rows):
        return (nd.array(spec.x[rows], dtype=spec.dtype),
                nd.array(spec.y[rows], dtype=spec.dtype))
    return arrays(slice(None)), [arrays(rows) for rows in batches(spec.cell)]


def _curve(nd) -> LossCurve:
    """The loss curve, read back a block of updates at a time: ``asscalar()``
    per update would make Python wait for MXNet's engine at every step."""
    return LossCurve(lambda losses: nd.concat(*losses, dim=0).asnumpy().tolist())


def loss_and_grad(spec: TrainSpec):
    """The raw level's loss and autodiff gradient at ``spec.params``."""
    from mxnet import autograd, nd

    params, forward, loss_of = _raw_graph(nd, spec)
    (x, y), _ = _rows(nd, spec)
    with autograd.record():
        loss = loss_of(forward(x), y)
    loss.backward()
    return loss.asscalar().item(), {k: v.grad.asnumpy() for k, v in params.items()}


def train_raw(spec: TrainSpec) -> TrainResult:
    from mxnet import autograd, nd

    params, forward, loss_of = _raw_graph(nd, spec)
    (x, y), batch = _rows(nd, spec)
    hp = in_effect(spec.cell, optimizer_defaults)
    rule = Textbook(spec.cell, hp, nd.sqrt)
    start = {k: v.asnumpy() for k, v in params.items()}
    curve = _curve(nd)
    for _ in range(spec.epochs):
        for xb, yb in batch:
            with autograd.record():
                loss = loss_of(forward(xb), yb)
            loss.backward()
            curve.append(loss)
            rule.tick()
            for name, p in params.items():
                # In place: p keeps its gradient buffer.  Plain SGD as the
                # notebook writes it (two operators, the same arithmetic as
                # p - lr * g); otherwise the rule's value, copied in (copyto
                # is one operator; p[:] = ... goes through indexing first).
                if rule.plain:
                    p -= rule.hp["lr"] * p.grad
                else:
                    rule.step(name, p, p.grad).copyto(p)
    p = forward(x)
    loss = loss_of(p, y)
    return TrainResult(params_start=start, params_final={k: v.asnumpy() for k, v in params.items()},
                       loss_curve=curve.floats(), loss_final=loss.asscalar().item(),
                       probs=p.asnumpy().reshape(-1), hparams=hp)


def _build(mx, spec: TrainSpec):
    nn, nd = mx.gluon.nn, mx.nd
    n_in = spec.x.shape[1]
    dense = dict(dtype=spec.dtype, weight_initializer="zeros", bias_initializer="zeros")
    # Only a HybridSequential can be hybridize()d; eager keeps the plain one.
    net = nn.HybridSequential() if spec.mode == "compiled" else nn.Sequential()
    if spec.level == "custom":
        single, three = _custom_classes()
        dense.pop("dtype")
        net = (single(n_in, spec.dtype, **dense) if spec.arch == "single" else
               three(n_in, spec.hidden, spec.dtype, **dense))
        layers = [net.linear1] if spec.arch == "single" else [net.linear1, net.linear2]
        names = [("W", "b")] if spec.arch == "single" else [("W1", "b1"), ("W2", "b2")]
    elif spec.arch == "single":
        layers = [nn.Dense(1, in_units=n_in, **dense)]
        net.add(layers[0])
        names = [("W", "b")]
    else:
        layers = [nn.Dense(spec.hidden, in_units=n_in, **dense),
                  nn.Dense(1, in_units=spec.hidden, **dense)]
        net.add(layers[0], nn.Activation("sigmoid"), layers[1])
        names = [("W1", "b1"), ("W2", "b2")]
    net.initialize(ctx=mx.cpu())
    for layer, (w, b) in zip(layers, names):
        layer.weight.set_data(nd.array(spec.params[w].T, dtype=spec.dtype))
        layer.bias.set_data(nd.array(spec.params[b], dtype=spec.dtype))

    def read():
        out = {}
        for layer, (w, b) in zip(layers, names):
            out[w] = layer.weight.data().asnumpy().T.copy()
            out[b] = layer.bias.data().asnumpy()
        return out

    return net, read


@functools.lru_cache(maxsize=None)
def _custom_classes():
    """User-style Gluon models: ``HybridBlock`` subclasses with their layers
    registered in ``name_scope()`` and the forward pass in
    ``hybrid_forward(F, x)``, so that ``hybridize()`` can compile them."""
    from mxnet import gluon

    class SingleLayerNN(gluon.HybridBlock):
        def __init__(self, n_in, dtype, **dense):
            super().__init__()
            with self.name_scope():
                self.linear1 = gluon.nn.Dense(1, in_units=n_in, dtype=dtype, **dense)

        def hybrid_forward(self, F, x):
            return self.linear1(x)

    class ThreeLayerNN(gluon.HybridBlock):
        def __init__(self, n_in, hidden, dtype, **dense):
            super().__init__()
            with self.name_scope():
                self.linear1 = gluon.nn.Dense(hidden, in_units=n_in, dtype=dtype, **dense)
                self.linear2 = gluon.nn.Dense(1, in_units=hidden, dtype=dtype, **dense)

        def hybrid_forward(self, F, x):
            return self.linear2(F.sigmoid(self.linear1(x)))

    return SingleLayerNN, ThreeLayerNN


def _trainer(mx, params, cell):
    """A ``gluon.Trainer`` with the cell's optimizer family, and the
    hyperparameters it holds, in harness names."""
    name, translate = _OPTIMIZERS[cell.optimizer]
    given = hyperparameters(cell)
    if cell.hparams == "defaults":
        given = {"lr": given["lr"]}
    trainer = mx.gluon.Trainer(params, name, {translate[k]: v for k, v in given.items()})
    opt = trainer.optimizer
    return trainer, {k: float(getattr(opt, _ATTRIBUTE.get(m, m))) for k, m in translate.items()}


def _train_module(spec: TrainSpec, use_optimizer: bool) -> TrainResult:
    import mxnet as mx

    autograd, gluon, nd = mx.autograd, mx.gluon, mx.nd
    net, read = _build(mx, spec)
    if spec.mode == "compiled":
        net.hybridize()
    (x, y), batch = _rows(nd, spec)
    loss_fn = gluon.loss.SigmoidBinaryCrossEntropyLoss()
    params = net.collect_params()
    mean = spec.reduction == "mean"
    trainer, rule = None, None
    if use_optimizer:
        trainer, hp = _trainer(mx, params, spec.cell)
    else:
        hp = in_effect(spec.cell, optimizer_defaults)
        rule = Textbook(spec.cell, hp, nd.sqrt)
    start = read()
    curve = _curve(nd)
    for _ in range(spec.epochs):
        for xb, yb in batch:
            with autograd.record():
                each = loss_fn(net(xb), yb)  # one loss per row
                loss = each.mean() if mean else each.sum()
            if trainer and mean:
                # MXNet's idiom for a mean: backward() on the per-row losses
                # (their sum), and step(rows) scales the gradient by 1 / rows.
                each.backward()
                trainer.step(len(yb))
            elif trainer:
                loss.backward()
                trainer.step(1)  # the gradient is already the summed loss's
            else:
                loss.backward()
                rule.tick()
                for name, param in params.items():
                    weight = param.data()  # the stored array itself, updated in place
                    if rule.plain:  # as in train_raw
                        weight -= rule.hp["lr"] * param.grad()
                    else:
                        rule.step(name, weight, param.grad()).copyto(weight)
            curve.append(loss)
    z = net(x)
    each = loss_fn(z, y)
    loss = each.mean() if mean else each.sum()
    # MXNet's optimizer kernels take the learning rate as a C float (see the docstring).
    info = {"lr_applied": float(np.float32(spec.lr))} if use_optimizer else {}
    return TrainResult(params_start=start, params_final=read(), loss_curve=curve.floats(),
                       loss_final=loss.asscalar().item(), probs=z.sigmoid().asnumpy().reshape(-1),
                       info=info, hparams=hp)


TRAINERS = {
    "raw": train_raw,
    "module": functools.partial(_train_module, use_optimizer=False),
    "optimizer": functools.partial(_train_module, use_optimizer=True),
    "custom": functools.partial(_train_module, use_optimizer=True),
}
MODES = {"raw": ("eager",), "module": ("eager", "compiled"),
         "optimizer": ("eager", "compiled"), "custom": ("eager", "compiled")}
MODE_GAPS = {
    ("raw", "compiled"): "hybridize() compiles Gluon HybridBlocks; the raw level's nd arrays "
                         "under autograd.record() have no compiled form",
    "graph": "MXNet's symbolic graphs (mx.sym, Module API) are not the notebook's idiom; its "
             "compiled mode is hybridize()",
}


# ---------------------------------------------------- raw level, batched

def _raw_graph_seeds(nd, spec: BatchSpec):
    """``_raw_graph`` with a leading seed axis: W (S, n, k), biases held as
    (S, 1, k).  ``nd.dot`` does not batch, so x (R, n) is broadcast to (S,
    R, n) and multiplied by ``nd.batch_dot``, which on CPU is one GEMM per
    seed, the same product ``nd.dot`` computes per seed; the loss is one per
    seed, (S,)."""
    S = spec.seeds
    params = {k: nd.array(v[:, None, :] if v.ndim == 2 else v, dtype=spec.dtype)
              for k, v in spec.params.items()}
    for p in params.values():
        p.attach_grad()

    def dot(x, w):
        return nd.batch_dot(x if x.ndim == 3 else nd.broadcast_to(x.expand_dims(0),
                                                                    (S, *x.shape)), w)

    def forward(x):
        if spec.arch == "single":
            return (dot(x, params["W"]) + params["b"]).sigmoid()
        h = (dot(x, params["W1"]) + params["b1"]).sigmoid()
        return (dot(h, params["W2"]) + params["b2"]).sigmoid()

    def loss_of(p, y):
        each = -(y * p + (1 - y) * (1 - p)).log()
        return each.mean(axis=(1, 2)) if spec.reduction == "mean" else each.sum(axis=(1, 2))

    return params, forward, loss_of


def train_raw_batch(spec: BatchSpec) -> BatchResult:
    """``train_raw`` for S seeds at once.  The losses stay on MXNet's engine
    (one row of ``curve`` per update) and are read once at the end."""
    from mxnet import autograd, nd

    params, forward, loss_of = _raw_graph_seeds(nd, spec)
    (x, y), batch = _rows(nd, spec)
    hp = in_effect(spec.cell, optimizer_defaults)
    rule = Textbook(spec.cell, hp, nd.sqrt)

    shapes = {k: v.shape for k, v in spec.params.items()}
    start = {k: v.asnumpy().reshape(shapes[k]) for k, v in params.items()}
    curve = nd.zeros((updates(spec.cell), spec.seeds), dtype=spec.dtype)
    u = 0
    for _ in range(spec.epochs):
        for xb, yb in batch:
            with autograd.record():
                loss = loss_of(forward(xb), yb)
            # The seeds' losses are independent: a head gradient of ones is
            # each seed's own backward(), exactly.
            loss.backward()
            curve[u] = loss
            rule.tick()
            for name, p in params.items():
                p[:] = rule.step(name, p, p.grad)  # in place: p keeps its gradient buffer
            u += 1
    p = forward(x)
    loss = loss_of(p, y)
    return BatchResult(params_start=start,
                       params_final={k: v.asnumpy().reshape(shapes[k]) for k, v in params.items()},
                       loss_curve=curve.asnumpy().T, loss_final=loss.asnumpy(),
                       probs=p.asnumpy().reshape(spec.seeds, -1), hparams=hp)


BATCHED = {"raw": train_raw_batch}
