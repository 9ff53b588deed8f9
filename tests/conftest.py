import functools

import pytest

from harness import engine, registry
from harness.runner import run_cell
from harness.tasks import DEFAULT_EPOCHS, Cell


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
    kw.setdefault("hidden", 2 if arch == "multi" else None)
    return Cell(backend=backend, level=level, arch=arch, gate=gate, seed=seed, dtype=dtype, **kw)


@functools.lru_cache(maxsize=None)
def cached_run(cell: Cell):
    """Cells are pure functions of their spec: run each one once per session."""
    return run_cell(cell, availability(cell.backend).version)
