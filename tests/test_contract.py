"""One contract suite, generated from each backend's declared capabilities.

In the style of scikit-learn's ``parametrize_with_checks``: every check
states which (level, arch) pairs it applies to, and the cases are the
(backend, level, arch, check) combinations that a backend's ``TRAINERS`` and
``ARCH_LIMITS`` make applicable: ids read ``<backend>-<level>-<arch>-<check>``.
A backend gets no test code of its own.  A case where the backend's
``known_departure`` names a framework behaviour that makes it leave the
reference is a strict expected failure carrying that reason: if the
departure ever went away, the suite would say so.  A backend whose
framework is missing or broken is skipped with the probe's reason; a level
it lacks is checked to give `unsupported` with its declared reason.
"""
from dataclasses import dataclass
from typing import Callable

import numpy as np
import pytest

from harness import registry
from harness.compare import relative_deviation, tolerance
from harness.results import dumps
from harness.tasks import GATES, GRADIENT_LEVELS, NOT_LINEARLY_SEPARABLE, init_params

from conftest import applicable, cached_run, make_cell, require

LINEAR_GATES = ("and", "or", "nand", "nor", "not")
# A seed whose float64 and float32 reference learns xor with 2 hidden units.
XOR_SEED = 0


@dataclass(frozen=True)
class Check:
    fn: Callable[[str, str, str], None]
    applies: Callable[[str, str], bool] = lambda level, arch: True
    # The cell whose known departure (if any) makes this case an expected failure.
    probe_cell: Callable[[str, str, str], object] | None = None

    @property
    def name(self) -> str:
        return self.fn.__name__.removeprefix("check_")


def check_well_formed_records(backend, level, arch):
    for gate in GATES:
        rec = cached_run(make_cell(backend, level, arch, gate))
        assert rec.status == "ok", (gate, rec.message)
        rows = len(GATES[gate])
        assert len(rec.probs) == len(rec.preds) == rows
        assert set(rec.preds) <= {0, 1}
        assert len(rec.loss_curve) == rec.epochs
        assert np.isfinite(rec.loss_final) and rec.seconds >= 0
        assert rec.learned == (rec.accuracy == 1.0)
        for name, value in rec.params_final.items():
            assert np.shape(value) == np.shape(rec.params_init[name])
        dumps(rec.to_dict())  # strict JSON


def check_initial_params_are_the_harness(backend, level, arch):
    for dtype in ("float32", "float64"):
        cell = make_cell(backend, level, arch, "xor", seed=3, dtype=dtype)
        rec = cached_run(cell)
        assert rec.status == "ok", rec.message
        for name, value in init_params(cell).items():
            # Bit-identical: the runner also rejects any mismatch.
            assert np.array_equal(np.asarray(rec.params_init[name], dtype=dtype), value)


def check_float64_matches_reference(backend, level, arch):
    for gate in GATES:
        rec = cached_run(make_cell(backend, level, arch, gate))
        for ref_level in GRADIENT_LEVELS:
            ref = cached_run(make_cell("numpy", ref_level, arch, gate))
            dev = relative_deviation(rec.params_final, ref.params_final)
            assert dev <= tolerance("float64", rec.epochs), (gate, ref_level, dev)
            np.testing.assert_allclose(rec.probs, ref.probs, rtol=0, atol=1e-9)


def check_zero_start_agrees_with_oracle(backend, level, arch):
    rec = cached_run(make_cell(backend, level, arch, "nand", init="zeros"))
    assert rec.status == "ok", rec.message
    assert rec.agrees, (rec.oracle_dev, rec.departed, rec.first_departure)


def check_single_learns_linear_gates(backend, level, arch):
    for gate in LINEAR_GATES:
        assert cached_run(make_cell(backend, level, arch, gate)).learned, gate
    for gate in NOT_LINEARLY_SEPARABLE:
        assert not cached_run(make_cell(backend, level, arch, gate)).learned, gate


def check_multi_learns_xor(backend, level, arch):
    assert cached_run(make_cell("numpy", "raw", arch, "xor", seed=XOR_SEED)).learned
    for dtype in ("float32", "float64"):
        rec = cached_run(make_cell(backend, level, arch, "xor", seed=XOR_SEED, dtype=dtype))
        assert rec.learned, (dtype, rec.probs)


def _gradient(level, arch):
    return level in GRADIENT_LEVELS


CHECKS = [
    Check(check_well_formed_records),
    Check(check_initial_params_are_the_harness),
    Check(check_float64_matches_reference, _gradient),
    Check(check_zero_start_agrees_with_oracle, _gradient,
          lambda b, lv, a: make_cell(b, lv, a, "nand", init="zeros")),
    Check(check_single_learns_linear_gates, lambda level, arch: arch == "single"),
    Check(check_multi_learns_xor, lambda level, arch: arch == "multi" and _gradient(level, arch)),
]


def contract_cases():
    """(backend, level, arch, check) for every applicable combination, known
    departures marked as strict expected failures with their reason."""
    for backend in registry.BACKENDS:
        for level, arch in applicable(backend):
            for check in CHECKS:
                if not check.applies(level, arch):
                    continue
                marks = []
                if check.probe_cell:
                    why = registry.known_departure(check.probe_cell(backend, level, arch))
                    if why:
                        marks.append(pytest.mark.xfail(reason=f"known departure: {why}",
                                                       strict=True))
                yield pytest.param(backend, level, arch, check, marks=marks,
                                   id=f"{backend}-{level}-{arch}-{check.name}")


@pytest.mark.parametrize("backend,level,arch,check", list(contract_cases()))
def test_contract(backend, level, arch, check):
    require(backend)
    check.fn(backend, level, arch)


def test_known_departures_are_expected_failures():
    marked = {p.id for p in contract_cases() if p.marks}
    assert {"mxnet-module-single-zero_start_agrees_with_oracle",
            "mxnet-optimizer-multi-zero_start_agrees_with_oracle"} <= marked
    assert all(i.startswith("mxnet-") for i in marked)


@pytest.mark.parametrize("backend", list(registry.BACKENDS))
def test_unsupported_levels_say_why(backend):
    require(backend)
    for (name, level), reason in registry.known_gaps().items():
        if name != backend:
            continue
        rec = cached_run(make_cell(backend, level, "single", "and"))
        assert rec.status == "unsupported"
        assert rec.message == reason and len(reason) > 10
