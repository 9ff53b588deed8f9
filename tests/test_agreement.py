"""Cross-backend agreement beyond the contract suite's seed 0.

* float64, seeds 1 and 2 and ``--init zeros``: every backend x gradient level
  x arch agrees with the numpy reference to the float64 tolerance (the
  multi-layer cells at one level per variant, in turn).  Single
  layer cells (100 steps) run every gate; multi-layer cells (1000 steps,
  ~0.2-2.7 s each outside numpy) run a subset: the gates a hidden layer is
  for, xor and xnor, and from zeros nand and not (not: a stationary start).
  ``harness run`` over the full matrix is the
  exhaustive check: every ok record carries the oracle's verdict.  Known
  exceptions, asserted to differ, come from the backends' ``known_departure``
  (``harness.registry.known_departure``): MXNet's Gluon loss from zeros.
* float32: cells agree with the oracle (float64 from the same float32 start)
  within ``FLOAT32_TOLERANCES``.
* A learning rate float32 cannot represent (0.1): float64 still agrees,
  except where a framework rounds it (MXNet's SGD operators).
"""
import dataclasses

import numpy as np
import pytest

from harness import oracle, registry
from harness.compare import curve_deviation, loss_tolerance, relative_deviation, tolerance
from harness.tasks import ARCHS, GATES, GRADIENT_LEVELS

from conftest import applicable, cached_run, make_cell, require

# (seed, init, multi-layer gates)
VARIANTS = {
    "seed1": (1, "normal", ("xor",)),
    "seed2": (2, "normal", ("xnor",)),
    "zeros": (0, "zeros", ("nand", "not")),
}


def test_known_departures_are_exactly_gluons_loss_at_zero():
    # Gluon's SigmoidBinaryCrossEntropyLoss has gradient -y instead of 0.5 - y
    # at a logit of exactly 0, which only a zero start produces
    # (backends/mxnet_backend.py, tests/test_backends.py).
    known = {(b, lv, init) for b in registry.BACKENDS for lv in GRADIENT_LEVELS
             for init in ("normal", "zeros")
             if registry.known_departure(make_cell(b, lv, "single", "and", init=init))}
    # ... and, at float64, Keras 3 on torch computing float64 matmuls in float32.
    torch_keras = {("keras-torch", lv, init) for lv in GRADIENT_LEVELS
                   for init in ("normal", "zeros")}
    assert known == {("mxnet", "module", "zeros"), ("mxnet", "optimizer", "zeros"),
                     ("mxnet", "custom", "zeros"), *torch_keras}


def supported(backend, levels):
    return applicable(backend, levels)


def assert_matches_reference(rec, ref):
    assert rec.status == "ok", rec.message
    dev = relative_deviation(rec.params_final, ref.params_final)
    assert dev <= tolerance("float64", rec.epochs), (rec.cell, dev)
    np.testing.assert_allclose(rec.probs, ref.probs, rtol=0, atol=1e-9)


@pytest.mark.parametrize("variant", list(VARIANTS))
@pytest.mark.parametrize("backend", [b for b in registry.BACKENDS if b != "numpy"])
def test_float64_agrees_with_reference(backend, variant):
    require(backend)
    seed, init, multi_gates = VARIANTS[variant]
    levels = [lv for lv in GRADIENT_LEVELS if lv in registry.backend(backend).levels]
    # Multi-layer cells (1000 updates) at one level per variant, in turn, so
    # that the three variants cover three levels and the suite stays fast;
    # every level's multi-layer cells run in the contract suite at seed 0.
    multi_level = levels[list(VARIANTS).index(variant) % len(levels)]
    for level, arch in supported(backend, GRADIENT_LEVELS):
        if arch == "multi" and level != multi_level:
            continue
        for gate in GATES if arch == "single" else multi_gates:
            ref = cached_run(make_cell("numpy", "raw", arch, gate, seed=seed, init=init))
            rec = cached_run(make_cell(backend, level, arch, gate, seed=seed, init=init))
            if registry.known_departure(rec.cell):
                # May leave the reference (a zero start that stays at its
                # stationary point does not); the contract suite's strict
                # expected failures check that the departure is real.
                continue
            else:
                assert_matches_reference(rec, ref)


@pytest.mark.parametrize("backend", list(registry.BACKENDS))
def test_float32_within_table(backend):
    # The float32 cells the contract suite runs too (cached), and single-layer
    # `and`: the oracle's verdict (parameters and loss curve, float64 from the
    # cell's float32 start) within FLOAT32_TOLERANCES.
    require(backend)
    for level, arch in applicable(backend):
        # Multi-layer: the cell whose curve strays furthest in float32 (the
        # plateau's sharp drop, compare.py) at seed 3; seed 0 runs in the
        # contract suite.
        cases = [("xor", 3)] + ([] if arch == "multi" else [("and", 0)])
        for gate, seed in cases:
            cell = make_cell(backend, level, arch, gate, seed=seed, dtype="float32")
            rec = cached_run(cell)
            assert rec.status == "ok", rec.message
            assert rec.agrees, (level, arch, gate, seed, rec.oracle_dev, rec.first_departure)


def test_loss_curve_has_its_own_bound():
    # float32 loss curves may stray further than parameters (see compare.py).
    require("numpy")
    rec = cached_run(make_cell("numpy", "raw", "multi", "xor", seed=2, dtype="float32"))
    params, curve = tolerance("float32", 1000), loss_tolerance("float32", 1000)
    assert params < curve
    for shift, agrees in ((0.5 * curve, True), (2 * curve, False)):
        curve_moved = [*rec.loss_curve[:600], rec.loss_curve[600] + shift, *rec.loss_curve[601:]]
        moved = dataclasses.replace(rec, loss_curve=curve_moved)
        verdict = oracle.judge(moved)
        assert verdict.agrees is agrees
        assert verdict.first_departure == (None if agrees else 600)
    assert curve_deviation([1.0, 2.0, float("nan")], [1.0, 2.5, 3.0]) == float("inf")
    assert curve_deviation([0.1, 2.0], [0.3, 2.5]) == pytest.approx(0.2)


@pytest.mark.parametrize("backend", [b for b in registry.BACKENDS if b != "numpy"])
def test_float64_lr_not_representable_in_float32(backend):
    require(backend)
    for level, arch in supported(backend, GRADIENT_LEVELS):
        if arch != "single":
            continue
        rec = cached_run(make_cell(backend, level, arch, "xor", seed=1, lr=0.1))
        if "lr_applied" not in rec.info and registry.known_departure(rec.cell):
            assert not rec.agrees  # a departure that is not about the learning rate
            continue
        lr_used = rec.info.get("lr_applied", 0.1)
        ref = cached_run(make_cell("numpy", "raw", arch, "xor", seed=1, lr=lr_used))
        assert_matches_reference(rec, ref)
        if backend == "mxnet" and level in ("optimizer", "custom"):
            assert lr_used == float(np.float32(0.1)) != 0.1
        else:
            assert lr_used == 0.1
