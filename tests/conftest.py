import functools

import pytest

from harness import registry
from harness.execution import engine
from harness.execution.child import run_cell
from harness.tasks import ARCHS, DEFAULT_EPOCHS, Cell


@functools.lru_cache(maxsize=None)
def _probed() -> dict[str, registry.Availability]:
    # In child processes, as the harness does: a framework whose import
    # kills the interpreter is skipped instead of ending the test session.
    return engine.probe(registry.BACKENDS)


def availability(name: str) -> registry.Availability:
    return _probed()[name]


def require(name: str) -> registry.Availability:
    """Skip the calling test, with the probe's reason, when a framework is unusable."""
    a = availability(name)
    if not a.ok:
        pytest.skip(f"{name} {a.state}: {a.detail}")
    return a


def make_cell(backend, level, arch, gate, seed=0, dtype="float64", **kw) -> Cell:
    kw.setdefault("epochs", DEFAULT_EPOCHS[arch])
    kw.setdefault("hidden", 2)
    return Cell(backend=backend, level=level, arch=arch, gate=gate, seed=seed, dtype=dtype, **kw)


def applicable(backend: str, levels=None) -> list[tuple[str, str]]:
    """The (level, arch) pairs a backend declares it can run (of ``levels``)."""
    spec = registry.backend(backend)
    return [(level, arch) for level in spec.levels for arch in ARCHS
            if (levels is None or level in levels) and spec.gap(level, arch) is None]


def applicable_modes(backend: str) -> list[tuple[str, str, str]]:
    """(level, arch, mode) for every mode a backend declares, default first."""
    spec = registry.backend(backend)
    return [(level, arch, mode) for level, arch in applicable(backend)
            for mode in spec.modes[level]]


@functools.lru_cache(maxsize=None)
def cached_run(cell: Cell):
    """Cells are pure functions of their spec: run each one once per session."""
    return run_cell(cell, availability(cell.backend).version)
