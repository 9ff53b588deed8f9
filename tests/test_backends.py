"""Facts about individual backends that their docstrings rely on."""
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from harness import registry
from harness.compare import relative_deviation, tolerance
from harness.execution.child import run_cell
from harness.tasks import TrainSpec, updates

from conftest import applicable, cached_run, make_cell, require, require_in_process

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize("backend", list(registry.BACKENDS))
def test_a_float64_cell_leaves_nothing_behind(backend):
    # Same float32 cell before and after float64 cells of every level, in one
    # process: bit-identical, so no default dtype or other setting leaked.
    require_in_process(backend)
    spec = registry.backend(backend)
    levels = [lv for lv, arch in applicable(backend) if arch == "single"]
    cell32 = make_cell(backend, levels[-1], "single", "or", seed=6, dtype="float32", epochs=20)
    before = spec.train(TrainSpec.from_cell(cell32))
    for level in levels:
        spec.train(TrainSpec.from_cell(make_cell(backend, level, "single", "or", seed=6, epochs=5)))
    after = spec.train(TrainSpec.from_cell(cell32))
    for name, value in before.params_final.items():
        assert value.dtype == np.float32
        assert np.array_equal(value, after.params_final[name])
    assert before.loss_curve == after.loss_curve


@pytest.mark.parametrize("policy", [None, "mixed_float16"])
def test_keras_float_defaults_are_restored(policy):
    # floatx and the global dtype policy (unset, or set by the caller) come back
    # as they were, and a caller's policy does not reach the cell.
    require("tensorflow")
    import keras
    from keras.src.backend.common import global_state

    saved = keras.config.floatx(), global_state.get_global_attribute("dtype_policy")
    try:
        if policy:
            keras.config.set_dtype_policy(policy)
        before = global_state.get_global_attribute("dtype_policy")
        for level in ("module", "optimizer"):
            cell = make_cell("tensorflow", level, "single", "and", seed=7)
            rec = run_cell(cell)
            ref = cached_run(make_cell("numpy", "raw", "single", "and", seed=7))
            assert relative_deviation(rec.params_final, ref.params_final) <= 1e-9
            assert keras.config.floatx() == saved[0]
            assert global_state.get_global_attribute("dtype_policy") is before
    finally:
        keras.config.set_floatx(saved[0])
        global_state.set_global_attribute("dtype_policy", saved[1])


# (level, arch, gate, mode, recipe) samples: the full batch, an even and an
# uneven batch size (a short last batch every pass), a rule with state, the
# mean reduction, both modes.
KERAS_FIT_CELLS = [
    ("optimizer", "single", "nand", "compiled", {}),
    ("custom", "multi", "xor", "compiled", {"optimizer": "adam", "batch_size": 3}),
    ("optimizer", "multi", "or", "eager", {"optimizer": "rmsprop", "batch_size": 2,
                                             "reduction": "mean", "eps": 1e-2}),
]


@pytest.mark.parametrize("backend", ["tensorflow", "keras-jax", "keras-torch"])
def test_keras_fit_of_every_update_in_one_epoch_is_the_notebooks_fit(backend):
    # The optimizer and custom levels hand fit every update as one epoch
    # (keras_common._fit); the notebook calls fit(x, y, epochs=...).  Same
    # batches in the same order, so the same parameters and, batch by batch,
    # the same losses: bit for bit, in every mode.
    require(backend)
    spec = registry.backend(backend)
    cells = [make_cell(backend, level, arch, gate, dtype="float32", epochs=12, lr=0.25,
                       mode=mode, **recipe)
             for level, arch, gate, mode, recipe in KERAS_FIT_CELLS if mode in spec.modes[level]]
    r = subprocess.run([sys.executable, str(ROOT / "tests" / "keras_epochs_fit.py"), backend,
                        *(json.dumps(c.to_dict()) for c in cells)],
                       capture_output=True, text=True, cwd=ROOT, timeout=600,
                       env={**os.environ, "PYTHONPATH": str(ROOT), **spec.env})
    assert r.returncode == 0, r.stderr[-3000:]
    out = json.loads(r.stdout.splitlines()[-1])
    for cell, got in zip(cells, out):
        assert got == {"params": True, "curve": True, "updates": updates(cell)}, cell


def test_tensorflow_records_graph_mode():
    require("tensorflow")
    for level in ("raw", "module", "optimizer"):
        info = cached_run(make_cell("tensorflow", level, "single", "and")).info
        assert info == {"mode": "tf.function", "jit_compile": False}


def test_autograd_sgd_state_dtype_is_recorded():
    require("autograd")
    for dtype in ("float32", "float64"):
        rec = cached_run(make_cell("autograd", "optimizer", "single", "xor", seed=3, dtype=dtype))
        assert rec.info == {"sgd_state_dtype": "float64"}


def test_chainer_mean_losses_are_not_sums():
    # Why the module level sums reduce='no': normalize=False still divides by the batch.
    require("chainer")
    import chainer.functions as F

    z = np.array([[0.3], [-1.2], [2.0], [0.1]])
    t = np.array([[1], [0], [1], [0]], dtype=np.int32)
    total = float(F.sum(F.sigmoid_cross_entropy(z, t, reduce="no")).array)
    assert float(F.sigmoid_cross_entropy(z, t, normalize=False).array) == pytest.approx(total / 4)


def test_gluon_loss_gradient_at_a_zero_logit():
    # SigmoidBinaryCrossEntropyLoss = relu(x) - x y + softrelu(-|x|), and MXNet
    # differentiates relu and |x| as 0 at x = 0: gradient -y, not sigmoid(0) - y.
    require("mxnet")
    from mxnet import autograd, gluon, nd

    y = np.array([[1.0], [0.0]])
    for x, expect in ((0.0, -y), (1e-300, 0.5 - y)):
        z = nd.array(np.full((2, 1), x), dtype="float64")
        z.attach_grad()
        with autograd.record():
            loss = gluon.loss.SigmoidBinaryCrossEntropyLoss()(z, nd.array(y, dtype="float64")).sum()
        loss.backward()
        assert np.array_equal(z.grad.asnumpy(), expect)


@pytest.mark.parametrize("level", ["module", "optimizer"])
def test_mxnet_from_zeros_is_gradient_descent_with_that_gradient(level):
    # From zeros every logit of the first step is exactly 0; replaying the
    # reference with -y there reproduces MXNet to float64 round-off.
    require("mxnet")
    from backends.numpy_backend import sigmoid

    cell = make_cell("mxnet", level, "single", "and", init="zeros")
    spec = TrainSpec.from_cell(cell)
    W, b = spec.params["W"].copy(), spec.params["b"].copy()
    for _ in range(cell.epochs):
        z = spec.x @ W + b
        dz = np.where(z == 0, -spec.y, sigmoid(z) - spec.y)
        W, b = W - cell.lr * spec.x.T @ dz, b - cell.lr * dz.sum(axis=0)
    rec = cached_run(cell)
    replayed = {"W": W, "b": b}
    assert relative_deviation(rec.params_final, replayed) <= tolerance("float64", cell.epochs)
    reference = cached_run(make_cell("numpy", "raw", "single", "and", init="zeros"))
    assert relative_deviation(rec.params_final, reference.params_final) > 1e-6


@pytest.mark.parametrize("backend", [b for b in registry.BACKENDS
                                     if "raw" in registry.backend(b).levels])
def test_raw_loss_and_grad_is_the_hand_derived_one(backend):
    require_in_process(backend)
    from backends import numpy_backend

    mod = registry.backend(backend)
    for dtype in ("float32", "float64"):
        for arch, gate in (("single", "nand"), ("multi", "xor"), ("multi", "not")):
            spec = TrainSpec.from_cell(make_cell(backend, "raw", arch, gate, seed=2, dtype=dtype))
            loss, grads = mod.loss_and_grad(spec)
            want_loss, want = numpy_backend.loss_and_grad(spec)
            assert list(grads) == list(want)
            atol = 1e-12 if dtype == "float64" else 1e-5
            assert loss == pytest.approx(want_loss, abs=atol)
            for name, g in grads.items():
                assert g.dtype == np.dtype(dtype) and g.shape == want[name].shape
                np.testing.assert_allclose(g, want[name], rtol=0, atol=atol)


def test_jax_float64_cells_really_compute_in_float64():
    # The worker sets JAX_ENABLE_X64=1 before JAX is imported (the backend's
    # ENV); without it JAX would silently hold float64 data in float32.
    require("jax")
    rec = cached_run(make_cell("jax", "raw", "multi", "xor", seed=2))
    assert rec.info["x64"] is True and rec.agrees
    assert rec.oracle_dev < 1e-12  # float32 arithmetic would be ~1e-7 away
    rec32 = cached_run(make_cell("jax", "raw", "multi", "xor", seed=2, dtype="float32"))
    assert relative_deviation(rec32.params_final, rec.params_final) > 1e-8
    # Where the switch is off, the trainer refuses instead of computing in float32.
    code = ("import sys; from backends import jax_backend; from harness.tasks import Cell, "
            "TrainSpec\ntry:\n    jax_backend.train_raw(TrainSpec.from_cell(Cell('jax', 'raw', "
            "'single', 'and', 0, 'float64')))\nexcept RuntimeError as e:\n    print(e)")
    env = {k: v for k, v in os.environ.items() if k != "JAX_ENABLE_X64"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=ROOT, env={**env, "PYTHONPATH": str(ROOT)}, timeout=300)
    assert "JAX_ENABLE_X64 was not set" in out.stdout, out.stderr[-500:]
