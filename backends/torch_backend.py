"""PyTorch.

* ``raw``: leaf tensors with ``requires_grad``, the notebook's written-out
  loss, ``loss.backward()``, update under ``torch.no_grad()``.
* ``module``: ``nn.Sequential(Linear, Sigmoid, Linear)`` and
  ``BCEWithLogitsLoss(reduction='sum')``; update written over
  ``model.parameters()``.
* ``optimizer``: the same model with the ``torch.optim`` object of the
  cell's family: ``SGD`` (momentum 0, dampening 0: its defaults),
  ``SGD(momentum=mu)``, ``SGD(momentum=mu, nesterov=True)``, ``Adam``,
  ``RMSprop`` (its ``alpha`` is the harness's ``rho``), each with
  ``weight_decay`` (L2 added to the gradient, as the harness means it).
* ``custom``: the notebook's ``nn.Module`` subclasses (``SingleLayerNN``:
  ``linear1``; ``ThreeLayerNN``: ``linear2(linear1(x).sigmoid())``) with
  ``torch.optim.SGD``.

Modes: ``eager`` (the default) and ``compiled``: ``torch.compile`` (dynamo
+ inductor, which generates and builds C++ for the CPU, so it needs a C
compiler) of the raw level's loss function, or of the model
(``torch.compile(model)``) at the other levels; the backward pass is
compiled too (AOTAutograd), the optimizer step stays eager.  The compiled
functions take the parameters as inputs, so one compilation serves every
cell of the same shapes and dtype in a worker (``info['recompiles']``
counts the graphs dynamo compiled for the cell; a first compilation costs
tens of seconds).

Recipes: torch.optim's formulas *are* the textbook (``harness.recipes``
copies them from its documentation), so no family departs: measured at
float64 over every gate and arch, seeds 0-2, each family's optimizer level
agrees with the oracle's textbook rule to ~1e-15.  Its defaults differ from
the other frameworks' in places (``--hparams defaults``): RMSprop
``alpha`` 0.99 where Keras, optax and MXNet use 0.9, and eps 1e-8 where
Keras uses 1e-7.  Mini-batches: the loss is summed or averaged by
``BCEWithLogitsLoss(reduction=...)`` over the batch's rows; nothing
divides by the batch size behind the user's back.

Conventions adapted:

* ``nn.Linear`` stores its weight as (out, in): canonical W is transposed on
  load and on read-back.
* ``BCEWithLogitsLoss`` averages by default (``reduction='mean'``); the
  notebook's ``size_average=False`` is the removed spelling of
  ``reduction='sum'``, which we use.
* torch's default dtype is float32: every tensor and module is created in the
  cell's dtype explicitly (``torch.from_numpy`` keeps it, ``module.to(dtype)``).
* Gradients accumulate across ``backward()`` calls: they are zeroed every step.
"""
from __future__ import annotations

import contextlib
import functools

import numpy as np

from harness.recipes import Textbook, in_effect
from harness.tasks import BatchResult, BatchSpec, TrainResult, TrainSpec, batches, updates

NAME = "torch"
IMPORTS = ("torch",)
UNSUPPORTED: dict[str, str] = {}


def framework_version() -> str:
    import torch
    return torch.__version__


def _np(t) -> np.ndarray:
    return t.detach().cpu().numpy().copy()


def _written_out(x, y, mean, *params):
    """(the notebook's loss, probabilities) at canonical params W, b or W1,
    b1, W2, b2: a module-level function of its inputs only, so a compiled
    version serves every cell of the same shapes."""
    if len(params) == 2:
        W, b = params
        p = (x @ W + b).sigmoid()
    else:
        W1, b1, W2, b2 = params
        h = (x @ W1 + b1).sigmoid()
        p = (h @ W2 + b2).sigmoid()
    loss = -(y * p + (1 - y) * (1 - p)).log().sum()
    return (loss / y.shape[0] if mean else loss), p


@functools.lru_cache(maxsize=None)
def _compiled(fn):
    import torch
    return torch.compile(fn)


def _raw_graph(torch, spec: TrainSpec):
    """Leaf tensors for the canonical parameters and the written-out loss
    as a function of them: (x, y) -> (loss, probabilities); all rows by
    default."""
    x, y = torch.from_numpy(spec.x), torch.from_numpy(spec.y)
    params = {k: torch.from_numpy(v.copy()).requires_grad_() for k, v in spec.params.items()}
    fn = _compiled(_written_out) if spec.mode == "compiled" else _written_out
    mean = spec.reduction == "mean"
    return params, lambda xb=x, yb=y: fn(xb, yb, mean, *params.values())


def _batches(torch, spec: TrainSpec) -> list:
    """One epoch's (x, y) batches as tensors, sliced once: every epoch reuses them."""
    x, y = torch.from_numpy(spec.x), torch.from_numpy(spec.y)
    return [(x[rows], y[rows]) for rows in batches(spec.cell)]


def loss_and_grad(spec: TrainSpec):
    """The raw level's loss and autodiff gradient at ``spec.params``."""
    import torch

    params, loss_of = _raw_graph(torch, spec)
    loss, _ = loss_of()
    loss.backward()
    return loss.item(), {k: _np(v.grad) for k, v in params.items()}


def train_raw(spec: TrainSpec) -> TrainResult:
    import torch

    params, loss_of = _raw_graph(torch, spec)
    counter = _Recompiles(torch)
    start = {k: _np(v) for k, v in params.items()}
    hp = in_effect(spec.cell, optimizer_defaults)
    rule = Textbook(spec.cell, hp, torch.sqrt)
    curve = []
    data = _batches(torch, spec)
    for _ in range(spec.epochs):
        for xb, yb in data:
            loss, _ = loss_of(xb, yb)
            curve.append(loss.item())
            loss.backward()
            rule.tick()
            with torch.no_grad():
                for name, p in params.items():
                    p.copy_(rule.step(name, p, p.grad))
                    p.grad.zero_()
    with torch.no_grad():
        loss, p = loss_of()
    return _result(torch, spec, start, {k: _np(v) for k, v in params.items()}, curve, loss, p,
                   counter, hp)


class _Recompiles:
    """Graphs dynamo compiles from here on (0 in eager mode)."""

    def __init__(self, torch):
        from torch._dynamo.utils import counters
        self.counters, self.start = counters, counters["stats"]["unique_graphs"]

    def __call__(self) -> int:
        return self.counters["stats"]["unique_graphs"] - self.start


def _result(torch, spec, start, final, curve, loss, probs, counter, hp) -> TrainResult:
    info = {"threads": torch.get_num_threads()}
    if spec.mode == "compiled":
        info["recompiles"] = counter()
    return TrainResult(params_start=start, params_final=final, loss_curve=curve,
                       loss_final=loss.item(), probs=_np(probs).reshape(-1), info=info,
                       hparams=hp)


# harness family -> (torch.optim class name, fixed keyword arguments,
# {harness hyperparameter: torch's name for it}).
_OPTIMIZERS = {
    "sgd": ("SGD", {}, {}),
    "momentum": ("SGD", {}, {"momentum": "momentum"}),
    "nesterov": ("SGD", {"nesterov": True}, {"momentum": "momentum"}),
    "adam": ("Adam", {}, {"beta1": ("betas", 0), "beta2": ("betas", 1), "eps": "eps"}),
    "rmsprop": ("RMSprop", {}, {"rho": "alpha", "eps": "eps"}),
}


def _read(group: dict, names: dict) -> dict[str, float]:
    out = {"lr": float(group["lr"])}
    for harness_name, where in names.items():
        value = group[where[0]][where[1]] if isinstance(where, tuple) else group[where]
        out[harness_name] = float(value)
    out["weight_decay"] = float(group["weight_decay"])
    return out


def optimizer_defaults(family: str) -> dict[str, float]:
    """torch.optim's own defaults for the family, from its signature."""
    import inspect

    import torch

    cls, fixed, names = _OPTIMIZERS[family]
    defaults = {k: p.default for k, p in
                inspect.signature(getattr(torch.optim, cls)).parameters.items()}
    defaults.setdefault("lr", 0.0)
    if family in ("momentum", "nesterov") and not defaults["momentum"]:
        # SGD's default momentum is 0, which is not momentum at all; a user
        # asking for momentum gives one, and 0.9 is what torch's docs use.
        defaults["momentum"] = 0.9
    return {k: v for k, v in _read(defaults, names).items() if k != "lr"}


def _optimizer(torch, spec: TrainSpec, parameters):
    """The family's torch.optim object, and the hyperparameters it holds."""
    cls, fixed, names = _OPTIMIZERS[spec.optimizer]
    kwargs = dict(fixed, lr=spec.lr)
    if spec.hparams == "explicit":
        betas = {}
        for harness_name, where in names.items():
            value = getattr(spec.cell, harness_name)
            if isinstance(where, tuple):
                betas[where[1]] = value
            else:
                kwargs[where] = value
        if betas:
            kwargs["betas"] = (betas[0], betas[1])
        kwargs["weight_decay"] = spec.weight_decay
    elif spec.optimizer in ("momentum", "nesterov"):
        kwargs["momentum"] = optimizer_defaults(spec.optimizer)["momentum"]
    optimizer = getattr(torch.optim, cls)(parameters, **kwargs)
    return optimizer, _read(optimizer.param_groups[0], names)


@functools.lru_cache(maxsize=None)
def _custom_classes():
    """The notebook's user-style models, defined once per process (a class
    defined per cell would make torch.compile recompile per cell)."""
    import torch

    class SingleLayerNN(torch.nn.Module):
        def __init__(self, d_in, d_out):
            super().__init__()
            self.linear1 = torch.nn.Linear(d_in, d_out, bias=True)

        def forward(self, x):
            return self.linear1(x)

    class ThreeLayerNN(torch.nn.Module):
        def __init__(self, d_in, d_hidden, d_out):
            super().__init__()
            self.linear1 = torch.nn.Linear(d_in, d_hidden, bias=True)
            self.linear2 = torch.nn.Linear(d_hidden, d_out, bias=True)

        def forward(self, x):
            return self.linear2(self.linear1(x).sigmoid())

    return SingleLayerNN, ThreeLayerNN


def _build(torch, spec: TrainSpec):
    dtype = getattr(torch, spec.dtype)
    n_in = spec.x.shape[1]
    p = spec.params
    if spec.level == "custom":
        single, three = _custom_classes()
        if spec.arch == "single":
            model = single(n_in, 1)
            pairs = [(model.linear1, "W", "b")]
        else:
            model = three(n_in, spec.hidden, 1)
            pairs = [(model.linear1, "W1", "b1"), (model.linear2, "W2", "b2")]
    elif spec.arch == "single":
        model = torch.nn.Sequential(torch.nn.Linear(n_in, 1))
        pairs = [(model[0], "W", "b")]
    else:
        model = torch.nn.Sequential(torch.nn.Linear(n_in, spec.hidden), torch.nn.Sigmoid(),
                                    torch.nn.Linear(spec.hidden, 1))
        pairs = [(model[0], "W1", "b1"), (model[2], "W2", "b2")]
    model.to(dtype)
    with torch.no_grad():
        for layer, w, b in pairs:
            layer.weight.copy_(torch.from_numpy(p[w].T.copy()))
            layer.bias.copy_(torch.from_numpy(p[b]))

    def read():
        out = {}
        for layer, w, b in pairs:
            out[w] = _np(layer.weight).T.copy()
            out[b] = _np(layer.bias)
        return out

    return model, read


def _train_module(spec: TrainSpec, use_optimizer: bool) -> TrainResult:
    import torch

    model, read = _build(torch, spec)
    call = torch.compile(model) if spec.mode == "compiled" else model
    counter = _Recompiles(torch)
    x, y = torch.from_numpy(spec.x), torch.from_numpy(spec.y)
    loss_fn = torch.nn.BCEWithLogitsLoss(reduction=spec.reduction)
    if use_optimizer:
        optimizer, hp = _optimizer(torch, spec, model.parameters())
    else:
        hp = in_effect(spec.cell, optimizer_defaults)
        rule = Textbook(spec.cell, hp, torch.sqrt)
    start = read()
    parameters = list(model.parameters())
    curve = []
    data = _batches(torch, spec)
    for _ in range(spec.epochs):
        for xb, yb in data:
            loss = loss_fn(call(xb), yb)
            curve.append(loss.item())
            model.zero_grad()
            loss.backward()
            if use_optimizer:
                optimizer.step()
            else:
                rule.tick()
                with torch.no_grad():
                    for i, param in enumerate(parameters):
                        param.copy_(rule.step(i, param, param.grad))
    with torch.no_grad():
        z = call(x)
        loss = loss_fn(z, y)
    return _result(torch, spec, start, read(), curve, loss, z.sigmoid(), counter, hp)


# ---------------------------------------------------- raw level, batched

def _rows(fn, t):
    """``fn`` (an elementwise function) applied to t (S, ...) as the
    per-seed trainer applies it to one seed's tensor: each seed's elements
    as one row of a (S, n) view whose rows are not adjacent in memory, so
    that ATen cannot fuse them into one long loop and runs each row with
    the per-seed tensor's own loop (vectorized chunks, then a scalar tail;
    an n-element tensor below two vector widths, every cell here, is
    scalar).  A plain call on the whole (S, ...) tensor runs vectorized
    (SLEEF's exp), whose last bit differs from the scalar exp for a few
    percent of inputs, and training amplifies it (1e-3 relative at float32
    after 1000 updates)."""
    import torch

    s, n = t.shape[0], t[0].numel()
    rows = torch.nn.functional.pad(t.reshape(s, n), (0, 1))[:, :n]
    return fn(rows).reshape(t.shape)


def _written_out_seeds(x, y, mean, *params):
    """``_written_out`` with a leading seed axis S on every parameter: x
    (R, n) @ W (S, n, k) broadcasts to one matrix product per seed, biases
    (S, k) become (S, 1, k); sigmoid and log run per seed (``_rows``).
    Returns (each seed's loss (S,), probabilities (S, R, 1))."""
    import torch

    if len(params) == 2:
        W, b = params
        p = _rows(torch.sigmoid, x @ W + b[:, None, :])
    else:
        W1, b1, W2, b2 = params
        h = _rows(torch.sigmoid, x @ W1 + b1[:, None, :])
        p = _rows(torch.sigmoid, h @ W2 + b2[:, None, :])
    loss = -_rows(torch.log, y * p + (1 - y) * (1 - p)).sum(dim=(1, 2))
    return (loss / y.shape[0] if mean else loss), p


@contextlib.contextmanager
def _one_thread(torch):
    """One intra-op thread while a batch trains: a (S, n) tensor over
    ATen's grain size (32768 elements) would be split between threads at an
    element that need not start a seed's row (``_rows``), and on shared
    cores OpenMP's barriers cost more than the split gains (a sigmoid of
    80,000 float64s: 0.08 ms on one thread, 12 ms on two busy cores)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def train_raw_batch(spec: BatchSpec) -> BatchResult:
    """``train_raw`` for S seeds at once: stacked leaf tensors, each seed's
    written-out loss, and ``backward()`` of their sum (the gradient of a sum
    over seeds is each seed's own gradient).  The per-update losses stay in
    a preallocated tensor, read once at the end: no host sync per step."""
    import torch

    x, y = torch.from_numpy(spec.x), torch.from_numpy(spec.y)
    params = {k: torch.from_numpy(v.copy()).requires_grad_() for k, v in spec.params.items()}
    fn = _compiled(_written_out_seeds) if spec.mode == "compiled" else _written_out_seeds
    mean = spec.reduction == "mean"
    counter = _Recompiles(torch)
    start = {k: _np(v) for k, v in params.items()}
    hp = in_effect(spec.cell, optimizer_defaults)
    rule = Textbook(spec.cell, hp, torch.sqrt)
    curve = torch.empty((updates(spec.cell), spec.seeds), dtype=x.dtype)
    u = 0
    with _one_thread(torch):
        for _ in range(spec.epochs):
            for rows in batches(spec.cell):
                loss, _ = fn(x[rows], y[rows], mean, *params.values())
                curve[u] = loss.detach()
                loss.sum().backward()
                rule.tick()
                with torch.no_grad():
                    for name, p in params.items():
                        p.copy_(rule.step(name, p, p.grad))
                        p.grad.zero_()
                u += 1
        with torch.no_grad():
            loss, p = fn(x, y, mean, *params.values())
        return _batch_result(torch, spec, start, {k: _np(v) for k, v in params.items()}, curve,
                             loss, p, counter, hp)


def _batch_result(torch, spec, start, final, curve, loss, probs, counter, hp) -> BatchResult:
    info = {"threads": torch.get_num_threads()}  # one: _one_thread
    if spec.mode == "compiled":
        info["recompiles"] = counter()
    return BatchResult(params_start=start, params_final=final,
                       loss_curve=np.ascontiguousarray(_np(curve).T), loss_final=_np(loss),
                       probs=_np(probs).reshape(spec.seeds, -1), info=info, hparams=hp)


# --------------------------------------- module, optimizer, custom: batched

def _train_module_batch(spec: BatchSpec, use_optimizer: bool) -> BatchResult:
    """``_train_module`` for S seeds at once: the cell's own model (built
    once, for its structure), called on stacked parameters with
    ``torch.func.functional_call`` under ``torch.func.vmap`` over the seed
    axis, the loss function vmapped too, and ``backward()`` of the seeds'
    summed losses into stacked leaf tensors (S, *torch's shape).  The update
    is the textbook rule (``module``) or the family's ``torch.optim`` object
    over the stacked tensors (``optimizer``, ``custom``): every family's
    math is elementwise, so a stacked tensor steps each seed as its own
    tensor would; CPU tensors take the single-tensor implementation (no
    foreach, no fused), as per seed."""
    import torch
    from torch.func import functional_call, vmap

    first = TrainSpec(spec.cell, spec.x, spec.y, {k: v[0] for k, v in spec.params.items()})
    model, _ = _build(torch, first)
    names = [n for n, _ in model.named_parameters()]
    canonical = list(spec.params)  # W, b (or W1, b1, W2, b2): the model's order
    params = {}
    for name, key in zip(names, canonical):
        value = spec.params[key]
        if value.ndim == 3:  # a weight: canonical (S, in, out), torch's (S, out, in)
            value = value.transpose(0, 2, 1)
        params[name] = torch.from_numpy(np.ascontiguousarray(value)).requires_grad_()

    def read(tensors):
        out = {}
        for name, key in zip(names, canonical):
            value = _np(tensors[name])
            out[key] = np.ascontiguousarray(value.transpose(0, 2, 1)) if value.ndim == 3 else value
        return out

    loss_fn = torch.nn.BCEWithLogitsLoss(reduction=spec.reduction)

    def forward(ps, xb):
        return functional_call(model, ps, (xb,))

    call = vmap(forward, in_dims=(0, None))
    if spec.mode == "compiled":
        call = torch.compile(call)
    losses = vmap(loss_fn, in_dims=(0, None))
    counter = _Recompiles(torch)
    x, y = torch.from_numpy(spec.x), torch.from_numpy(spec.y)
    tensors = list(params.values())
    if use_optimizer:
        optimizer, hp = _optimizer(torch, spec, tensors)
    else:
        hp = in_effect(spec.cell, optimizer_defaults)
        rule = Textbook(spec.cell, hp, torch.sqrt)
    start = read(params)
    curve = torch.empty((updates(spec.cell), spec.seeds), dtype=x.dtype)
    u = 0
    with _one_thread(torch):
        for _ in range(spec.epochs):
            for rows in batches(spec.cell):
                loss = losses(call(params, x[rows]), y[rows])
                curve[u] = loss.detach()
                for t in tensors:
                    t.grad = None  # model.zero_grad(): set to None
                loss.sum().backward()
                if use_optimizer:
                    optimizer.step()
                else:
                    rule.tick()
                    with torch.no_grad():
                        for i, t in enumerate(tensors):
                            t.copy_(rule.step(i, t, t.grad))
                u += 1
        with torch.no_grad():
            z = call(params, x)
            loss = losses(z, y)
        return _batch_result(torch, spec, start, read(params), curve, loss, z.sigmoid(), counter,
                             hp)


TRAINERS = {
    "raw": train_raw,
    "module": functools.partial(_train_module, use_optimizer=False),
    "optimizer": functools.partial(_train_module, use_optimizer=True),
    "custom": functools.partial(_train_module, use_optimizer=True),
}
MODES = dict.fromkeys(TRAINERS, ("eager", "compiled"))
BATCHED = {
    "raw": train_raw_batch,
    "module": functools.partial(_train_module_batch, use_optimizer=False),
    "optimizer": functools.partial(_train_module_batch, use_optimizer=True),
    "custom": functools.partial(_train_module_batch, use_optimizer=True),
}
MODE_GAPS = {"graph": "PyTorch has no graph-and-session mode; its compiled mode is "
                      "torch.compile"}
# Measured (tests/test_batch.py samples, 5 seeds; scripts/bench_seeds.py):
# the batched kernels round differently from one seed's and training
# carries it along.  The eager raw level (``_rows``) is bit-identical on an
# AVX2 AMD EPYC but not on an AVX-512 Xeon, where MKL's batched float64
# products round otherwise: its bound is the Xeon's measurement.
BATCH_BOUNDS = {
    ("raw", "eager"): ({"float64": 1e-12, "float32": 1e-6},
                       "on some CPUs (an AVX-512 Xeon) MKL's batched float64 matmul rounds "
                       "differently from one seed's (measured 8.0e-14 float64 multi xor, "
                       "4.2e-16 adam online; float32 bit-identical; bit-identical on an AVX2 "
                       "EPYC)"),
    ("raw", "compiled"): ({"float64": 1e-12, "float32": 1e-6},
                          "Inductor fuses the (S, ...) graph into other loops than the per-seed "
                          "one (measured 1.5e-13 float64 multi xor, 2.4e-7 float32)"),
    **dict.fromkeys(("module", "optimizer", "custom"), (
        {"float64": 1e-11, "float32": 1e-6},
        "vmap's batched matmul and BCEWithLogitsLoss run other kernels than one seed's "
        "(measured 3.4e-13 eager, 1.4e-12 compiled float64 multi xor; 4.2e-7 float32)")),
}
