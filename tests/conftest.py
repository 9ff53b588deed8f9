import atexit
import functools
import select
import time

import pytest

from harness import registry
from harness.execution import engine
from harness.execution.child import run_batch, run_cell, unpack_records
from harness.records import Record
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


def require_in_process(name: str) -> registry.Availability:
    """``require``, and skip a backend that must run in its own worker (it
    sets environment variables before importing its framework)."""
    a = require(name)
    env = registry.backend(name).env
    if env:
        pytest.skip(f"{name} runs only in its own worker process (it sets "
                    f"{', '.join(env)} before import); its cells are checked there")
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


# Long-lived workers for backends that set their environment before import
# (harness.contract ENV: JAX's x64, Keras' backend): they cannot share the
# test process with the other frameworks.
_WORKERS: dict[str, engine.Worker] = {}


def _answer(w: engine.Worker, timeout: float = 900) -> dict | None:
    """The worker's next answer, or None once its hello has arrived."""
    end = time.monotonic() + timeout
    while True:
        left = end - time.monotonic()
        if left <= 0 or not select.select([w.fd], [], [], left)[0]:
            raise TimeoutError(f"{w.backend} worker did not answer in {timeout} s")
        msgs = w.read()
        if msgs is None:
            raise RuntimeError(f"{w.backend} worker died: {w.death()} {w.stderr_lines()[-5:]}")
        if msgs:
            return msgs[0]
        if w.hello is not None and w.task is None:
            return None


def run_in_worker(cell: Cell):
    w = _worker(cell.backend)
    w.task = cell  # marks a request in flight
    w.send({"cell": cell.to_dict()})
    answer = None
    while answer is None:
        answer = _answer(w)
    w.task = None
    return Record.from_dict(answer["record"])


def _worker(backend: str) -> engine.Worker:
    w = _WORKERS.get(backend)
    if w is None or w.proc.poll() is not None:
        w = _WORKERS[backend] = engine.Worker(backend)
        _answer(w)  # its hello
    return w


@functools.lru_cache(maxsize=None)
def cached_batch(cells: tuple[Cell, ...]) -> tuple[Record, ...]:
    """``child.run_batch`` of cells differing only in their seed, once per
    session, where ``cached_run`` would run them."""
    backend = cells[0].backend
    if not (backend in registry.BACKENDS and registry.backend(backend).env):
        return tuple(run_batch(list(cells), availability(backend).version))
    w = _worker(backend)
    w.task = cells[0]
    w.send({"batch": [c.to_dict() for c in cells]})
    answer = None
    while answer is None:
        answer = _answer(w)
    w.task = None
    return tuple(unpack_records(answer))


@atexit.register
def _stop_workers():
    for w in _WORKERS.values():
        w.kill()


@functools.lru_cache(maxsize=None)
def cached_run(cell: Cell):
    """Cells are pure functions of their spec: run each one once per session
    (in this process, or in the backend's own worker when it needs one)."""
    if cell.backend in registry.BACKENDS and registry.backend(cell.backend).env:
        return run_in_worker(cell)
    return run_cell(cell, availability(cell.backend).version)


def run_recipe(backend, level, family, arch="single", gate="and", **kw):
    """One recipe cell of ``backend``, cached: 60 updates at lr 0.125; RMSprop
    with eps 1e-2 unless given (with eps 1e-8, g / sqrt(s) is sign-like near a
    stationary point and amplifies round-off past the float64 tolerance, the
    numpy reference's too: harness.oracle's horizon)."""
    require(backend)
    kw.setdefault("epochs", 60)
    kw.setdefault("lr", 0.125)
    if family == "rmsprop" and kw.get("hparams") != "defaults":
        kw.setdefault("eps", 1e-2)
    return cached_run(make_cell(backend, level, arch, gate, optimizer=family, **kw))
