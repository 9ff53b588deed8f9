"""Benchmark: the harness's own training function against a bare loop of the
same framework that does the same work.

    python scripts/bench_overhead.py                            # every backend, float32
    python scripts/bench_overhead.py --backends numpy,chainer --dtype float32,float64
    python scripts/bench_overhead.py --repeats 3 --levels raw

For every backend and gradient level it has (raw, module, optimizer,
custom), two cells with the default recipe (sgd, lr 0.5, full batch, summed
loss) in the backend's default mode, seed 0: multi-layer xor, 1000 epochs,
and single-layer nand, 100 epochs.  Each cell is timed twice:

* ``harness``: ``registry.backend(name).train(spec)`` for the cell's
  TrainSpec, exactly what a worker runs for a cell (without judging the
  record against the oracle);
* ``bare``: a loop written here in the notebook's idiom of that framework
  and level (data and parameters set up from the same TrainSpec, the loop,
  one loss per update, the final parameters and probabilities read back),
  as short as a user would write it.

Each backend runs in a subprocess of its own with the environment a worker
has (single-threaded math libraries, the backend's ``ENV`` set before its
framework is imported).  After one warm-up of each, harness and bare runs
alternate ``--repeats`` times; the table has the minimum of each, and their
ratio.  The bare loop must do the same work: its final parameters and its
loss curve are compared with the harness's, and the ``same`` column says
``yes`` when both are bit-identical, else the largest deviation.

Prints numbers only; it asserts nothing (the machine is shared: read ratios,
which are measured interleaved, rather than seconds).
"""
from __future__ import annotations

import argparse
import functools
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

# The cells: (arch, gate), each with its arch's default epochs.
CELLS = (("multi", "xor"), ("single", "nand"))
GRADIENT_LEVELS = ("raw", "module", "optimizer", "custom")

# Why a ratio stays above 1.10 where the harness cannot do less without
# changing what its level means; printed under the table.
EXPLAINED: dict[tuple[str, str], str] = {}


# ---------------------------------------------------------------- helpers

def _arch(params) -> str:
    return "single" if "W" in params else "multi"


def _layers(params):
    """Canonical (W, b) pairs, layer by layer."""
    return [("W", "b")] if "W" in params else [("W1", "b1"), ("W2", "b2")]


# ------------------------------------------------------------------ numpy

def numpy_raw(spec):
    import numpy as np

    def sigmoid(z):
        return 1.0 / (1.0 + np.exp(-z))

    x, y, lr = spec.x, spec.y, spec.lr
    P = {k: v.copy() for k, v in spec.params.items()}
    curve = []
    for _ in range(spec.epochs):
        if "W" in P:
            p = sigmoid(x @ P["W"] + P["b"])
        else:
            h = sigmoid(x @ P["W1"] + P["b1"])
            p = sigmoid(h @ P["W2"] + P["b2"])
        curve.append(float(-np.sum(np.log(y * p + (1 - y) * (1 - p)))))
        dz = p - y
        if "W" in P:
            grads = {"W": x.T @ dz, "b": dz.sum(axis=0)}
        else:
            dz1 = dz @ P["W2"].T * h * (1 - h)
            grads = {"W1": x.T @ dz1, "b1": dz1.sum(axis=0), "W2": h.T @ dz, "b2": dz.sum(axis=0)}
        for k, g in grads.items():
            P[k] -= lr * g
    h = sigmoid(x @ P["W1"] + P["b1"]) if "W1" in P else x
    return P, curve, sigmoid(h @ P.get("W2", P.get("W")) + P.get("b2", P.get("b")))


def numpy_module(spec):
    """The same network on the logits with the overflow-safe BCE, as the
    reference's modules compute it: numpy has no module or optimizer
    objects of its own, so this one bare loop is the baseline of the
    module, optimizer and custom levels."""
    import numpy as np

    def sigmoid(z):
        return 1.0 / (1.0 + np.exp(-z))

    x, y, lr = spec.x, spec.y, spec.lr
    P = {k: v.copy() for k, v in spec.params.items()}
    curve = []
    for _ in range(spec.epochs):
        if "W" in P:
            z = x @ P["W"] + P["b"]
        else:
            h = sigmoid(x @ P["W1"] + P["b1"])
            z = h @ P["W2"] + P["b2"]
        curve.append(float(np.sum(np.maximum(z, 0) - z * y + np.log1p(np.exp(-np.abs(z))))))
        dz = sigmoid(z) - y
        if "W" in P:
            grads = {"W": x.T @ dz, "b": dz.sum(axis=0)}
        else:
            dz1 = dz @ P["W2"].T * h * (1 - h)
            grads = {"W2": h.T @ dz, "b2": dz.sum(axis=0), "W1": x.T @ dz1, "b1": dz1.sum(axis=0)}
        for k, g in grads.items():
            P[k] -= lr * g
    h = sigmoid(x @ P["W1"] + P["b1"]) if "W1" in P else x
    return P, curve, sigmoid(h @ P.get("W2", P.get("W")) + P.get("b2", P.get("b")))


# --------------------------------------------------------------- autograd

def _autograd_loss(spec):
    import autograd.numpy as anp

    x, y = spec.x, spec.y

    def forward(P):
        if "W" in P:
            return 1.0 / (1.0 + anp.exp(-(anp.dot(x, P["W"]) + P["b"])))
        h = 1.0 / (1.0 + anp.exp(-(anp.dot(x, P["W1"]) + P["b1"])))
        return 1.0 / (1.0 + anp.exp(-(anp.dot(h, P["W2"]) + P["b2"])))

    def loss(P, i=None):
        p = forward(P)
        return -anp.sum(anp.log(y * p + (1 - y) * (1 - p)))

    return forward, loss


def autograd_raw(spec):
    from autograd import value_and_grad

    forward, loss = _autograd_loss(spec)
    vg = value_and_grad(loss)
    P = {k: v.copy() for k, v in spec.params.items()}
    curve = []
    for _ in range(spec.epochs):
        value, g = vg(P)
        curve.append(float(value))
        P = {k: P[k] - spec.lr * g[k] for k in P}
    return P, curve, forward(P)


def autograd_optimizer(spec):
    from autograd import value_and_grad
    from autograd.misc.optimizers import sgd

    forward, loss = _autograd_loss(spec)
    vg = value_and_grad(loss)
    curve = []

    def grad(P, i):
        value, g = vg(P)
        curve.append(float(value))
        return g

    P = sgd(grad, {k: v.copy() for k, v in spec.params.items()}, num_iters=spec.epochs,
            step_size=spec.lr, mass=0.0)
    return P, curve, forward(P)


# ------------------------------------------------------------------ torch

def _torch_out(torch, P, losses, p):
    """Canonical numpy parameters, the losses as floats (one conversion at
    the end), probabilities."""
    return ({k: v.detach().numpy().copy() for k, v in P.items()},
            torch.stack(losses).tolist(), p.detach().numpy())


def torch_raw(spec):
    import torch

    x, y, lr = torch.from_numpy(spec.x), torch.from_numpy(spec.y), spec.lr
    P = {k: torch.from_numpy(v.copy()).requires_grad_() for k, v in spec.params.items()}
    losses = []
    for _ in range(spec.epochs):
        if "W" in P:
            p = (x @ P["W"] + P["b"]).sigmoid()
        else:
            p = ((x @ P["W1"] + P["b1"]).sigmoid() @ P["W2"] + P["b2"]).sigmoid()
        loss = -(y * p + (1 - y) * (1 - p)).log().sum()
        losses.append(loss.detach())
        loss.backward()
        with torch.no_grad():
            for w in P.values():
                w -= lr * w.grad
                w.grad.zero_()
    return _torch_out(torch, P, losses, p)


@functools.lru_cache(maxsize=None)
def _torch_classes():
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


def _torch_model(torch, spec, custom):
    n_in, P = spec.x.shape[1], spec.params
    if custom:
        single, three = _torch_classes()
        model = single(n_in, 1) if "W" in P else three(n_in, spec.hidden, 1)
        linears = [model.linear1] if "W" in P else [model.linear1, model.linear2]
    elif "W" in P:
        model = torch.nn.Sequential(torch.nn.Linear(n_in, 1))
        linears = [model[0]]
    else:
        model = torch.nn.Sequential(torch.nn.Linear(n_in, spec.hidden), torch.nn.Sigmoid(),
                                    torch.nn.Linear(spec.hidden, 1))
        linears = [model[0], model[2]]
    model.to(getattr(torch, spec.dtype))
    with torch.no_grad():
        for lin, (w, b) in zip(linears, _layers(P)):
            lin.weight.copy_(torch.from_numpy(P[w].T.copy()))
            lin.bias.copy_(torch.from_numpy(P[b]))
    return model, linears


def _torch_read(spec, linears):
    out = {}
    for lin, (w, b) in zip(linears, _layers(spec.params)):
        out[w] = lin.weight.detach().numpy().T.copy()
        out[b] = lin.bias.detach().numpy().copy()
    return out


def _torch_module_loop(spec, use_optimizer, custom=False):
    import torch

    x, y = torch.from_numpy(spec.x), torch.from_numpy(spec.y)
    model, linears = _torch_model(torch, spec, custom)
    loss_fn = torch.nn.BCEWithLogitsLoss(reduction="sum")
    optimizer = torch.optim.SGD(model.parameters(), lr=spec.lr) if use_optimizer else None
    losses = []
    for _ in range(spec.epochs):
        loss = loss_fn(model(x), y)
        losses.append(loss.detach())
        model.zero_grad()
        loss.backward()
        if optimizer:
            optimizer.step()
        else:
            with torch.no_grad():
                for param in model.parameters():
                    param -= spec.lr * param.grad
    with torch.no_grad():
        p = model(x).sigmoid()
    return _torch_read(spec, linears), torch.stack(losses).tolist(), p.numpy()


def torch_module(spec):
    return _torch_module_loop(spec, use_optimizer=False)


def torch_optimizer(spec):
    return _torch_module_loop(spec, use_optimizer=True)


def torch_custom(spec):
    return _torch_module_loop(spec, use_optimizer=True, custom=True)


# ------------------------------------------------------------- tensorflow

def tensorflow_raw(spec):
    import tensorflow as tf

    x, y, lr = tf.constant(spec.x), tf.constant(spec.y), spec.lr
    P = {k: tf.Variable(v) for k, v in spec.params.items()}

    def forward(x):
        if "W" in P:
            return tf.sigmoid(tf.matmul(x, P["W"]) + P["b"])
        h = tf.sigmoid(tf.matmul(x, P["W1"]) + P["b1"])
        return tf.sigmoid(tf.matmul(h, P["W2"]) + P["b2"])

    @tf.function(jit_compile=False)
    def step(x, y):
        with tf.GradientTape() as tape:
            p = forward(x)
            loss = -tf.reduce_sum(tf.math.log(y * p + (1 - y) * (1 - p)))
        for v, g in zip(P.values(), tape.gradient(loss, list(P.values()))):
            v.assign_sub(lr * g)
        return loss

    losses = [step(x, y) for _ in range(spec.epochs)]
    return ({k: v.numpy() for k, v in P.items()}, tf.stack(losses).numpy().tolist(),
            forward(x).numpy())


def _keras_model(keras, spec, custom):
    n_in, P, dtype = spec.x.shape[1], spec.params, spec.dtype

    def dense(units, **kw):
        return keras.layers.Dense(units, dtype=dtype, kernel_initializer="zeros",
                                  bias_initializer="zeros", **kw)

    if custom:
        single, three = _keras_classes()
        model = single(dtype) if "W" in P else three(spec.hidden, dtype)
        layers = [model.linear1] if "W" in P else [model.linear1, model.linear2]
        for layer, width in zip(layers, (n_in, spec.hidden)):
            layer.build((None, width))
    else:
        layers = ([dense(1)] if "W" in P else
                  [dense(spec.hidden, activation="sigmoid"), dense(1)])
        model = keras.Sequential([keras.Input(shape=(n_in,), dtype=dtype), *layers])
    for layer, (w, b) in zip(layers, _layers(P)):
        layer.kernel.assign(P[w])
        layer.bias.assign(P[b])
    return model, layers


@functools.lru_cache(maxsize=None)
def _keras_classes():
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


def _keras_read(keras, spec, layers):
    out = {}
    for layer, (w, b) in zip(layers, _layers(spec.params)):
        out[w] = keras.ops.convert_to_numpy(layer.kernel)
        out[b] = keras.ops.convert_to_numpy(layer.bias)
    return out


def _keras_loss(keras, spec):
    return keras.losses.BinaryCrossentropy(from_logits=True, reduction="sum", dtype=spec.dtype)


def _with_floatx(fn):
    """Keras computes in floatx where no dtype reaches: a float64 bare loop
    sets it, as a user would (restored after, as the harness restores it)."""
    @functools.wraps(fn)
    def run(spec):
        import keras

        from backends.keras_common import floatx
        with floatx(keras, spec.dtype):
            return fn(spec)
    return run


@_with_floatx
def tensorflow_module(spec):
    import keras
    import tensorflow as tf

    x, y = tf.constant(spec.x), tf.constant(spec.y)
    model, layers = _keras_model(keras, spec, custom=False)
    loss_fn = _keras_loss(keras, spec)

    @tf.function(jit_compile=False)
    def step(x, y):
        with tf.GradientTape() as tape:
            loss = loss_fn(y, model(x, training=True))
        grads = tape.gradient(loss, model.trainable_variables)
        for v, g in zip(model.trainable_variables, grads):
            v.assign_sub(spec.lr * g)
        return loss

    losses = [step(x, y) for _ in range(spec.epochs)]
    return (_keras_read(keras, spec, layers), tf.stack(losses).numpy().tolist(),
            keras.ops.convert_to_numpy(keras.ops.sigmoid(model(x))))


def _keras_fit(spec, custom, data, jit_compile):
    """compile + fit, one full batch per epoch, the loss curve from fit's history."""
    import keras

    model, layers = _keras_model(keras, spec, custom)
    model.compile(optimizer=keras.optimizers.SGD(learning_rate=spec.lr),
                  loss=_keras_loss(keras, spec), jit_compile=jit_compile)
    history = model.fit(**data, epochs=spec.epochs, shuffle=False, verbose=0)
    probs = keras.ops.convert_to_numpy(keras.ops.sigmoid(model(spec.x)))
    return _keras_read(keras, spec, layers), history.history["loss"], probs


def _tf_fit(spec, custom):
    import tensorflow as tf

    # The notebook's fit(epochs=...), one epoch per pass, with the fast way
    # to give fit one unshuffled full batch per epoch (fit on arrays costs
    # ~50 ms an epoch, backends/tensorflow_backend.py); the harness runs
    # every update as a step of one epoch (backends/keras_common.py).
    data = tf.data.Dataset.from_tensors((spec.x, spec.y)).repeat()
    return _keras_fit(spec, custom, {"x": data, "steps_per_epoch": 1}, jit_compile=False)


tensorflow_optimizer = _with_floatx(functools.partial(_tf_fit, custom=False))
tensorflow_custom = _with_floatx(functools.partial(_tf_fit, custom=True))


# ------------------------------------------------------------------ mxnet

def _mx_out(nd, losses):
    return nd.concat(*losses, dim=0).asnumpy().tolist()


def mxnet_raw(spec):
    from mxnet import autograd, nd

    x, y = nd.array(spec.x, dtype=spec.dtype), nd.array(spec.y, dtype=spec.dtype)
    P = {k: nd.array(v, dtype=spec.dtype) for k, v in spec.params.items()}
    for w in P.values():
        w.attach_grad()

    def forward(x):
        if "W" in P:
            return (nd.dot(x, P["W"]) + P["b"]).sigmoid()
        h = (nd.dot(x, P["W1"]) + P["b1"]).sigmoid()
        return (nd.dot(h, P["W2"]) + P["b2"]).sigmoid()

    losses = []
    for _ in range(spec.epochs):
        with autograd.record():
            p = forward(x)
            loss = -(y * p + (1 - y) * (1 - p)).log().sum()
        loss.backward()
        losses.append(loss)
        for w in P.values():
            w -= spec.lr * w.grad
    return {k: v.asnumpy() for k, v in P.items()}, _mx_out(nd, losses), forward(x).asnumpy()


@functools.lru_cache(maxsize=None)
def _mx_classes():
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


def _mx_loop(spec, use_optimizer, custom=False):
    import mxnet as mx
    from mxnet import autograd, gluon, nd

    P, n_in, dt = spec.params, spec.x.shape[1], spec.dtype
    dense = dict(weight_initializer="zeros", bias_initializer="zeros")
    if custom:
        single, three = _mx_classes()
        net = single(n_in, dt, **dense) if "W" in P else three(n_in, spec.hidden, dt, **dense)
        layers = [net.linear1] if "W" in P else [net.linear1, net.linear2]
    else:
        net = gluon.nn.Sequential()
        if "W" in P:
            layers = [gluon.nn.Dense(1, in_units=n_in, dtype=dt, **dense)]
            net.add(layers[0])
        else:
            layers = [gluon.nn.Dense(spec.hidden, in_units=n_in, dtype=dt, **dense),
                      gluon.nn.Dense(1, in_units=spec.hidden, dtype=dt, **dense)]
            net.add(layers[0], gluon.nn.Activation("sigmoid"), layers[1])
    net.initialize(ctx=mx.cpu())
    for layer, (w, b) in zip(layers, _layers(P)):
        layer.weight.set_data(nd.array(P[w].T, dtype=dt))
        layer.bias.set_data(nd.array(P[b], dtype=dt))
    x, y = nd.array(spec.x, dtype=dt), nd.array(spec.y, dtype=dt)
    loss_fn = gluon.loss.SigmoidBinaryCrossEntropyLoss()
    params = net.collect_params()
    trainer = gluon.Trainer(params, "sgd", {"learning_rate": spec.lr}) if use_optimizer else None
    losses = []
    for _ in range(spec.epochs):
        with autograd.record():
            loss = loss_fn(net(x), y).sum()
        loss.backward()
        losses.append(loss)
        if trainer:
            trainer.step(1)
        else:
            for param in params.values():
                w = param.data()
                w -= spec.lr * param.grad()
    out = {}
    for layer, (w, b) in zip(layers, _layers(P)):
        out[w] = layer.weight.data().asnumpy().T.copy()
        out[b] = layer.bias.data().asnumpy()
    return out, _mx_out(nd, losses), net(x).sigmoid().asnumpy()


def mxnet_module(spec):
    return _mx_loop(spec, use_optimizer=False)


def mxnet_optimizer(spec):
    return _mx_loop(spec, use_optimizer=True)


def mxnet_custom(spec):
    return _mx_loop(spec, use_optimizer=True, custom=True)


# ---------------------------------------------------------------- chainer

def _chainer_dtype(fn):
    @functools.wraps(fn)
    def run(spec):
        import chainer
        import numpy as np
        with chainer.using_config("dtype", np.dtype(spec.dtype)):
            return fn(spec)
    return run


@_chainer_dtype
def chainer_raw(spec):
    import chainer
    import chainer.functions as F

    x, y, lr = spec.x, spec.y, spec.lr
    P = {k: chainer.Variable(v.copy(), requires_grad=True) for k, v in spec.params.items()}

    def forward(x):
        if "W" in P:
            return F.sigmoid(F.matmul(x, P["W"]) + P["b"])
        h = F.sigmoid(F.matmul(x, P["W1"]) + P["b1"])
        return F.sigmoid(F.matmul(h, P["W2"]) + P["b2"])

    curve = []
    for _ in range(spec.epochs):
        p = forward(x)
        loss = -F.sum(F.log(y * p + (1 - y) * (1 - p)))
        curve.append(float(loss.array))
        loss.backward()
        for w in P.values():
            w.array -= lr * w.grad
            w.cleargrad()
    with chainer.no_backprop_mode():
        p = forward(x)
    return {k: v.array.copy() for k, v in P.items()}, curve, p.array


def _chainer_classes():
    import chainer
    import chainer.functions as F
    import chainer.links as L

    class SingleLayerNet(chainer.Chain):
        def __init__(self, n_in, W, b):
            super().__init__()
            with self.init_scope():
                self.l1 = L.Linear(n_in, 1, initialW=W.T.copy(), initial_bias=b.copy())

        def __call__(self, x):
            return self.l1(x)

    class TwoLayerNet(chainer.Chain):
        def __init__(self, n_in, hidden, W1, b1, W2, b2):
            super().__init__()
            with self.init_scope():
                self.l1 = L.Linear(n_in, hidden, initialW=W1.T.copy(), initial_bias=b1.copy())
                self.l2 = L.Linear(hidden, 1, initialW=W2.T.copy(), initial_bias=b2.copy())

        def __call__(self, x):
            return self.l2(F.sigmoid(self.l1(x)))

    return SingleLayerNet, TwoLayerNet


def _chainer_loop(spec, use_optimizer, custom=False):
    import chainer
    import chainer.functions as F
    import chainer.links as L
    import numpy as np

    P, n_in = spec.params, spec.x.shape[1]
    if custom:
        single, two = _chainer_classes()
        model = (single(n_in, P["W"], P["b"]) if "W" in P else
                 two(n_in, spec.hidden, P["W1"], P["b1"], P["W2"], P["b2"]))
        links = [model.l1] if "W" in P else [model.l1, model.l2]
    else:
        links = [L.Linear(n_in if i == 0 else spec.hidden, P[w].shape[1], initialW=P[w].T.copy(),
                          initial_bias=P[b].copy()) for i, (w, b) in enumerate(_layers(P))]
        model = (chainer.Sequential(*links) if "W" in P else
                 chainer.Sequential(links[0], F.sigmoid, links[1]))
    x, t = spec.x, spec.y.astype(np.int32)
    optimizer = None
    if use_optimizer:
        optimizer = chainer.optimizers.SGD(lr=spec.lr)
        optimizer.setup(model)
    curve = []
    for _ in range(spec.epochs):
        loss = F.sum(F.sigmoid_cross_entropy(model(x), t, reduce="no"))
        curve.append(float(loss.array))
        model.cleargrads()
        loss.backward()
        if optimizer:
            optimizer.update()
        else:
            for param in model.params():
                param.array -= spec.lr * param.grad
    with chainer.no_backprop_mode():
        probs = F.sigmoid(model(x)).array
    out = {}
    for link, (w, b) in zip(links, _layers(P)):
        out[w] = link.W.array.T.copy()
        out[b] = link.b.array.copy()
    return out, curve, probs


chainer_module = _chainer_dtype(functools.partial(_chainer_loop, use_optimizer=False))
chainer_optimizer = _chainer_dtype(functools.partial(_chainer_loop, use_optimizer=True))
chainer_custom = _chainer_dtype(functools.partial(_chainer_loop, use_optimizer=True, custom=True))


# -------------------------------------------------------------------- jax

def _jax_loss(params, x, y):
    import jax
    import jax.numpy as jnp

    if "W" in params:
        p = jax.nn.sigmoid(x @ params["W"] + params["b"])
    else:
        h = jax.nn.sigmoid(x @ params["W1"] + params["b1"])
        p = jax.nn.sigmoid(h @ params["W2"] + params["b2"])
    return -jnp.sum(jnp.log(y * p + (1 - y) * (1 - p))), p


@functools.lru_cache(maxsize=None)
def _jax_step(lr):
    """One jitted step per learning rate, defined once like a notebook cell."""
    import jax

    @jax.jit
    def step(params, x, y):
        (loss, _), grads = jax.value_and_grad(_jax_loss, has_aux=True)(params, x, y)
        return loss, {k: params[k] - lr * grads[k] for k in params}

    return step


def _jax_losses(losses):
    import jax.numpy as jnp
    import numpy as np
    return np.asarray(jnp.stack(losses)).tolist()


def jax_raw(spec):
    import jax.numpy as jnp
    import numpy as np

    x, y = jnp.asarray(spec.x), jnp.asarray(spec.y)
    P = {k: jnp.asarray(v) for k, v in spec.params.items()}
    step = _jax_step(spec.lr)
    losses = []
    for _ in range(spec.epochs):
        loss, P = step(P, x, y)
        losses.append(loss)
    return {k: np.asarray(v) for k, v in P.items()}, _jax_losses(losses), _jax_loss(P, x, y)[1]


@functools.lru_cache(maxsize=None)
def _nnx_classes():
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


def _nnx_bce(model, x, y):
    import optax
    return optax.sigmoid_binary_cross_entropy(model(x), y).sum()


@functools.lru_cache(maxsize=None)
def _nnx_steps(lr):
    """The jitted steps and the optax transformation, defined once like a
    notebook cell (nnx.jit compiles anew for a new transformation)."""
    import jax
    import optax
    from flax import nnx

    @nnx.jit
    def hand(model, x, y):
        loss, grads = nnx.value_and_grad(_nnx_bce)(model, x, y)
        params = nnx.state(model, nnx.Param)
        nnx.update(model, jax.tree_util.tree_map(lambda p, g: p - lr * g, params, grads))
        return loss

    @nnx.jit
    def opt(model, optimizer, x, y):
        loss, grads = nnx.value_and_grad(_nnx_bce)(model, x, y)
        optimizer.update(grads)
        return loss

    return hand, opt, optax.sgd(lr)


def _nnx_loop(spec, use_optimizer, custom=False):
    import jax
    import jax.numpy as jnp
    import numpy as np
    from flax import nnx

    P, n_in, dt = spec.params, spec.x.shape[1], spec.dtype
    rngs = nnx.Rngs(0)
    if custom:
        single, three = _nnx_classes()
        model = single(n_in, dt, rngs) if "W" in P else three(n_in, spec.hidden, dt, rngs)
        layers = [model.linear1] if "W" in P else [model.linear1, model.linear2]
    else:
        kw = dict(dtype=dt, param_dtype=dt, rngs=rngs)
        layers = ([nnx.Linear(n_in, 1, **kw)] if "W" in P else
                  [nnx.Linear(n_in, spec.hidden, **kw), nnx.Linear(spec.hidden, 1, **kw)])
        model = (nnx.Sequential(*layers) if "W" in P else
                 nnx.Sequential(layers[0], nnx.sigmoid, layers[1]))
    for layer, (w, b) in zip(layers, _layers(P)):
        layer.kernel.value = jnp.asarray(P[w])
        layer.bias.value = jnp.asarray(P[b])
    x, y = jnp.asarray(spec.x), jnp.asarray(spec.y)
    hand, opt, tx = _nnx_steps(spec.lr)
    losses = []
    if use_optimizer:
        optimizer = nnx.Optimizer(model, tx)
        for _ in range(spec.epochs):
            losses.append(opt(model, optimizer, x, y))
    else:
        for _ in range(spec.epochs):
            losses.append(hand(model, x, y))
    out = {}
    for layer, (w, b) in zip(layers, _layers(P)):
        out[w] = np.asarray(layer.kernel.value)
        out[b] = np.asarray(layer.bias.value)
    return out, _jax_losses(losses), np.asarray(jax.nn.sigmoid(model(x)))


jax_module = functools.partial(_nnx_loop, use_optimizer=False)
jax_optimizer = functools.partial(_nnx_loop, use_optimizer=True)
jax_custom = functools.partial(_nnx_loop, use_optimizer=True, custom=True)


# -------------------------------------------------------------- keras-jax

def _keras_ops_loss(params, x, y):
    import keras
    ops = keras.ops
    if "W" in params:
        p = ops.sigmoid(ops.matmul(x, params["W"]) + params["b"])
    else:
        h = ops.sigmoid(ops.matmul(x, params["W1"]) + params["b1"])
        p = ops.sigmoid(ops.matmul(h, params["W2"]) + params["b2"])
    return -ops.sum(ops.log(y * p + (1 - y) * (1 - p))), p


@functools.lru_cache(maxsize=None)
def _keras_jax_step(lr):
    import jax

    @jax.jit
    def step(params, x, y):
        (loss, _), grads = jax.value_and_grad(_keras_ops_loss, has_aux=True)(params, x, y)
        return loss, {k: params[k] - lr * grads[k] for k in params}

    return step


def keras_jax_raw(spec):
    import jax.numpy as jnp
    import numpy as np

    x, y = jnp.asarray(spec.x), jnp.asarray(spec.y)
    P = {k: jnp.asarray(v) for k, v in spec.params.items()}
    step = _keras_jax_step(spec.lr)
    losses = []
    for _ in range(spec.epochs):
        loss, P = step(P, x, y)
        losses.append(loss)
    probs = np.asarray(_keras_ops_loss(P, x, y)[1])
    return {k: np.asarray(v) for k, v in P.items()}, _jax_losses(losses), probs


@_with_floatx
def keras_jax_module(spec):
    import jax
    import jax.numpy as jnp
    import keras
    import numpy as np

    model, layers = _keras_model(keras, spec, custom=False)
    loss_fn = _keras_loss(keras, spec)
    x, y = jnp.asarray(spec.x), jnp.asarray(spec.y)
    fixed = [v.value for v in model.non_trainable_variables]

    def loss_of(values, x, y):
        z, _ = model.stateless_call(values, fixed, x, training=True)
        return loss_fn(y, z)

    @jax.jit
    def step(values, x, y):
        loss, grads = jax.value_and_grad(loss_of)(values, x, y)
        return loss, [v - spec.lr * g for v, g in zip(values, grads)]

    values = [v.value for v in model.trainable_variables]
    losses = []
    for _ in range(spec.epochs):
        loss, values = step(values, x, y)
        losses.append(loss)
    for variable, value in zip(model.trainable_variables, values):
        variable.assign(value)
    probs = np.asarray(keras.ops.sigmoid(model(x)))
    return _keras_read(keras, spec, layers), _jax_losses(losses), probs


def _array_fit(spec, custom, jit_compile):
    data = {"x": spec.x, "y": spec.y, "batch_size": len(spec.x)}
    return _keras_fit(spec, custom, data, jit_compile)


keras_jax_optimizer = _with_floatx(functools.partial(_array_fit, custom=False, jit_compile=True))
keras_jax_custom = _with_floatx(functools.partial(_array_fit, custom=True, jit_compile=True))


# ------------------------------------------------------------ keras-torch

def keras_torch_raw(spec):
    import torch

    x, y, lr = torch.from_numpy(spec.x), torch.from_numpy(spec.y), spec.lr
    P = {k: torch.from_numpy(v.copy()).requires_grad_() for k, v in spec.params.items()}
    losses = []
    for _ in range(spec.epochs):
        loss, p = _keras_ops_loss(P, x, y)
        losses.append(loss.detach())
        loss.backward()
        with torch.no_grad():
            for w in P.values():
                w -= lr * w.grad
                w.grad = None
    with torch.no_grad():
        p = _keras_ops_loss(P, x, y)[1]
    return _torch_out(torch, P, losses, p)


@_with_floatx
def keras_torch_module(spec):
    import keras
    import torch

    model, layers = _keras_model(keras, spec, custom=False)
    loss_fn = _keras_loss(keras, spec)
    x, y = torch.from_numpy(spec.x), torch.from_numpy(spec.y)
    params = [v.value for v in model.trainable_variables]
    losses = []
    for _ in range(spec.epochs):
        loss = loss_fn(y, model(x, training=True))
        losses.append(loss.detach())
        for p in params:
            p.grad = None
        loss.backward()
        with torch.no_grad():
            for p in params:
                p -= spec.lr * p.grad
    probs = keras.ops.convert_to_numpy(keras.ops.sigmoid(model(x)))
    return _keras_read(keras, spec, layers), torch.stack(losses).tolist(), probs


keras_torch_optimizer = _with_floatx(functools.partial(_array_fit, custom=False,
                                                       jit_compile=False))
keras_torch_custom = _with_floatx(functools.partial(_array_fit, custom=True, jit_compile=False))


BARE = {
    ("numpy", "raw"): numpy_raw,
    ("numpy", "module"): numpy_module,
    ("numpy", "optimizer"): numpy_module,
    ("numpy", "custom"): numpy_module,
    ("autograd", "raw"): autograd_raw,
    ("autograd", "optimizer"): autograd_optimizer,
    ("torch", "raw"): torch_raw,
    ("torch", "module"): torch_module,
    ("torch", "optimizer"): torch_optimizer,
    ("torch", "custom"): torch_custom,
    ("tensorflow", "raw"): tensorflow_raw,
    ("tensorflow", "module"): tensorflow_module,
    ("tensorflow", "optimizer"): tensorflow_optimizer,
    ("tensorflow", "custom"): tensorflow_custom,
    ("mxnet", "raw"): mxnet_raw,
    ("mxnet", "module"): mxnet_module,
    ("mxnet", "optimizer"): mxnet_optimizer,
    ("mxnet", "custom"): mxnet_custom,
    ("chainer", "raw"): chainer_raw,
    ("chainer", "module"): chainer_module,
    ("chainer", "optimizer"): chainer_optimizer,
    ("chainer", "custom"): chainer_custom,
    ("jax", "raw"): jax_raw,
    ("jax", "module"): jax_module,
    ("jax", "optimizer"): jax_optimizer,
    ("jax", "custom"): jax_custom,
    ("keras-jax", "raw"): keras_jax_raw,
    ("keras-jax", "module"): keras_jax_module,
    ("keras-jax", "optimizer"): keras_jax_optimizer,
    ("keras-jax", "custom"): keras_jax_custom,
    ("keras-torch", "raw"): keras_torch_raw,
    ("keras-torch", "module"): keras_torch_module,
    ("keras-torch", "optimizer"): keras_torch_optimizer,
    ("keras-torch", "custom"): keras_torch_custom,
}


# ------------------------------------------------------------- measuring

def _deviation(result, bare) -> str:
    """'yes' when the bare loop ended bit-identical to the harness (final
    parameters and loss curve), else the largest deviation."""
    import numpy as np

    params, curve, _ = bare
    dev = 0.0
    for name, value in result.params_final.items():
        mine = np.asarray(params[name])
        if mine.shape != value.shape or mine.dtype != value.dtype:
            return f"{name}: {mine.dtype}{mine.shape} vs {value.dtype}{value.shape}"
        dev = max(dev, float(np.max(np.abs(mine.astype(np.float64) - value.astype(np.float64)))))
    curve = [float(v) for v in curve]
    if len(curve) != len(result.loss_curve):
        return f"curve has {len(curve)} entries, not {len(result.loss_curve)}"
    cdev = max(abs(a - b) for a, b in zip(curve, result.loss_curve))
    if dev == 0 and cdev == 0:
        return "yes"
    return f"params {dev:.1e}, curve {cdev:.1e}"


def child(name: str, dtypes: list[str], levels: list[str], repeats: int) -> None:
    """In the backend's own process: time every cell, one JSON line each."""
    from harness import registry
    from harness.execution.child import import_framework
    from harness.tasks import DEFAULT_HIDDEN, Cell, TrainSpec

    avail = import_framework(name)
    if not avail.ok:
        print(json.dumps({"backend": name, "skipped": f"{avail.state}: {avail.detail}"}),
              flush=True)
        return
    backend = registry.backend(name)
    for dtype in dtypes:
        for level in levels:
            for arch, gate in CELLS:
                if backend.gap(level, arch) or (name, level) not in BARE:
                    continue
                cell = Cell(backend=name, level=level, arch=arch, gate=gate, seed=0, dtype=dtype,
                            hidden=DEFAULT_HIDDEN)
                spec = TrainSpec.from_cell(cell)
                bare = BARE[(name, level)]
                result = backend.train(spec)  # warm-up, and the reference
                same = _deviation(result, bare(spec))
                wall = {"harness": [], "bare": []}
                cpu = {"harness": [], "bare": []}
                for i in range(repeats):
                    # Alternate which goes first, so neither always follows the other.
                    order = (("harness", backend.train), ("bare", bare))
                    for label, fn in (order if i % 2 == 0 else order[::-1]):
                        c0, t0 = time.process_time(), time.perf_counter()
                        fn(spec)
                        wall[label].append(time.perf_counter() - t0)
                        cpu[label].append(time.process_time() - c0)
                print(json.dumps({"backend": name, "level": level, "arch": arch, "dtype": dtype,
                                  "mode": cell.mode, "harness": min(wall["harness"]),
                                  "bare": min(wall["bare"]),
                                  "cpu_ratio": min(cpu["harness"]) / min(cpu["bare"]),
                                  "same": same}), flush=True)


def run_backend(name: str, args) -> list[dict]:
    from harness import registry
    from harness.execution.engine import worker_env

    env = worker_env()  # single-threaded math libraries, as in a worker
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", name,
           "--dtype", ",".join(args.dtype), "--levels", ",".join(args.levels),
           "--repeats", str(args.repeats)]
    assert registry.backend(name)  # a known backend; its ENV is set by the child's import
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=ROOT)
    rows = []
    for line in r.stdout.splitlines():
        if line.startswith("{"):
            rows.append(json.loads(line))
    if r.returncode != 0:
        tail = r.stderr.strip().splitlines()[-3:]
        rows.append({"backend": name, "skipped": f"exit {r.returncode}: {' | '.join(tail)}"})
    return rows


def table(rows: list[dict]) -> str:
    head = (f"{'backend':<12}{'level':<10}{'arch':<7}{'dtype':<8}{'mode':<9}"
            f"{'harness s':>10}{'bare s':>9}{'ratio':>7}{'cpu':>6}  same")
    lines = [head, "-" * len(head)]
    for r in rows:
        if "skipped" in r:
            lines.append(f"{r['backend']:<12}skipped: {r['skipped']}")
            continue
        lines.append(f"{r['backend']:<12}{r['level']:<10}{r['arch']:<7}{r['dtype']:<8}"
                     f"{r['mode']:<9}{r['harness']:>10.4f}{r['bare']:>9.4f}"
                     f"{r['harness'] / r['bare']:>7.2f}{r['cpu_ratio']:>6.2f}  {r['same']}")
    notes = [f"{b} {lv}: {why}" for (b, lv), why in EXPLAINED.items()
             if any(r.get("backend") == b and r.get("level") == lv
                    and r["harness"] / r["bare"] > 1.10 for r in rows if "skipped" not in r)]
    return "\n".join(lines + (["", "above 1.10:"] + notes if notes else []))


def main() -> None:
    from harness import registry

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backends", default=",".join(registry.BACKENDS))
    parser.add_argument("--levels", default=",".join(GRADIENT_LEVELS))
    parser.add_argument("--dtype", default="float32", help="float32, float64 or both (comma list)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    args.dtype = args.dtype.split(",")
    args.levels = args.levels.split(",")
    if args.child:
        child(args.child, args.dtype, args.levels, args.repeats)
        return
    load = os.getloadavg()
    print(f"# {time.strftime('%Y-%m-%d %H:%M')}, {os.cpu_count()} CPUs, load average "
          f"{load[0]:.2f} at start; min of {args.repeats} interleaved repeats", flush=True)
    rows = []
    for name in args.backends.split(","):
        rows.extend(run_backend(name, args))
    print(table(rows))
    print(f"# load average {os.getloadavg()[0]:.2f} at the end")


if __name__ == "__main__":
    main()
