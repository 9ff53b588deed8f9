"""One contract suite, parametrized over every registered backend.

Ids read ``<backend>-<check>``; a backend whose framework is missing or
broken is skipped with the probe's reason.  Known gaps (levels a framework
lacks) come from the backends' own ``UNSUPPORTED`` tables via the registry.
"""
import numpy as np
import pytest

from harness import registry
from harness.compare import relative_deviation, tolerance
from harness.results import dumps
from harness.tasks import ARCHS, GATES, GRADIENT_LEVELS, NOT_LINEARLY_SEPARABLE, init_params

from conftest import cached_run, make_cell, require

LINEAR_GATES = ("and", "or", "nand", "nor", "not")
# A seed whose float64 and float32 reference learns xor with 2 hidden units.
XOR_SEED = 0


def supported(backend):
    mod = registry.backend_module(backend)
    for level in mod.LEVELS:
        for arch in ARCHS:
            if registry.gap(backend, level, arch) is None:
                yield level, arch


def check_well_formed_records(backend):
    for level, arch in supported(backend):
        for gate in GATES:
            rec = cached_run(make_cell(backend, level, arch, gate))
            assert rec.status == "ok", (level, arch, gate, rec.message)
            rows = len(GATES[gate])
            assert len(rec.probs) == len(rec.preds) == rows
            assert set(rec.preds) <= {0, 1}
            assert len(rec.loss_curve) == rec.epochs
            assert np.isfinite(rec.loss_final) and rec.seconds >= 0
            assert rec.learned == (rec.accuracy == 1.0)
            for name, value in rec.params_final.items():
                assert np.shape(value) == np.shape(rec.params_init[name])
            dumps(rec.to_dict())  # strict JSON


def check_initial_params_are_the_harness(backend):
    for dtype in ("float32", "float64"):
        for level, arch in supported(backend):
            cell = make_cell(backend, level, arch, "xor", seed=3, dtype=dtype)
            rec = cached_run(cell)
            assert rec.status == "ok", rec.message
            want = init_params(cell)
            for name, value in want.items():
                # Bit-identical: the runner also rejects any mismatch.
                assert np.array_equal(np.asarray(rec.params_init[name], dtype=dtype), value)


def check_float64_matches_reference(backend):
    for level, arch in supported(backend):
        if level not in GRADIENT_LEVELS:
            continue
        for gate in GATES:
            for ref_level in GRADIENT_LEVELS:
                cell = make_cell(backend, level, arch, gate)
                ref = cached_run(make_cell("numpy", ref_level, arch, gate))
                rec = cached_run(cell)
                dev = relative_deviation(rec.params_final, ref.params_final)
                assert dev <= tolerance("float64", cell.epochs), (level, arch, gate, ref_level, dev)
                np.testing.assert_allclose(rec.probs, ref.probs, rtol=0, atol=1e-9)


def check_single_learns_linear_gates(backend):
    for level, arch in supported(backend):
        if arch != "single":
            continue
        for gate in LINEAR_GATES:
            assert cached_run(make_cell(backend, level, "single", gate)).learned, (level, gate)
        for gate in NOT_LINEARLY_SEPARABLE:
            assert not cached_run(make_cell(backend, level, "single", gate)).learned, (level, gate)


def check_multi_learns_xor(backend):
    assert cached_run(make_cell("numpy", "raw", "multi", "xor", seed=XOR_SEED)).learned
    levels = [lv for lv, arch in supported(backend) if arch == "multi"]
    assert levels
    for level in levels:
        for dtype in ("float32", "float64"):
            rec = cached_run(make_cell(backend, level, "multi", "xor", seed=XOR_SEED, dtype=dtype))
            assert rec.learned, (level, dtype, rec.probs)


CHECKS = [check_well_formed_records, check_initial_params_are_the_harness,
          check_float64_matches_reference, check_single_learns_linear_gates,
          check_multi_learns_xor]


@pytest.mark.parametrize(
    "backend,check",
    [(b, c) for b in registry.BACKENDS for c in CHECKS],
    ids=[f"{b}-{c.__name__.removeprefix('check_')}" for b in registry.BACKENDS for c in CHECKS])
def test_contract(backend, check):
    require(backend)
    check(backend)


@pytest.mark.parametrize("backend", list(registry.BACKENDS))
def test_unsupported_levels_say_why(backend):
    require(backend)
    for (name, level), reason in registry.known_gaps().items():
        if name != backend:
            continue
        rec = cached_run(make_cell(backend, level, "single", "and"))
        assert rec.status == "unsupported"
        assert rec.message == reason and len(reason) > 10
