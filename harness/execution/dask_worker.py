"""What runs inside each Dask worker process (``--executor dask``).

The Dask worker never imports a framework and never trains.  It keeps
harness worker subprocesses (``engine.Worker``: the local engine's worker
process and JSON-lines protocol, unchanged) in a per-process pool keyed by
backend, and each Dask task (``run_task``) borrows one for its cell's
backend, hands it the cell and waits for the judged record.  So:

* a framework imports once per Dask worker (per thread that runs its cells
  at the same time), not once per cell; the probe's subprocesses are the
  pool's first members;
* a framework that segfaults, aborts or exits kills only its subprocess:
  the task returns that cell's ``error`` record (``engine.lose``: the cause,
  the crash site, the subprocess's stderr), the Dask worker stays up, and
  the scheduler has nothing to retry; a fresh subprocess takes the next
  cell;
* ``--timeout`` is enforced here, on the subprocess (``timeout`` record),
  because Dask cannot interrupt a running task;
* a cell whose future was cancelled (Ctrl-C, or the client went away) kills
  its subprocess within ``POLL`` seconds instead of running on.

Everything the parent needs comes back as plain data (dicts of JSON types).
This module imports distributed; only ``--executor dask`` loads it.
"""
from __future__ import annotations

import asyncio
import hashlib
import os
import platform
import select
import socket
import threading
import time
from pathlib import Path

from distributed import WorkerPlugin, get_worker

from harness.execution import engine
from harness.records import Record, Status
from harness.tasks import Cell

# How often a task waiting on its subprocess checks whether it was cancelled.
POLL = 0.5

_lock = threading.Lock()
_idle: dict[str, list[engine.Worker]] = {}  # ready subprocesses by backend
_busy: set[engine.Worker] = set()


def _borrow(backend: str) -> engine.Worker:
    with _lock:
        idle = _idle.get(backend)
        w = idle.pop() if idle else engine.Worker(backend)
        _busy.add(w)
        return w


def _give_back(w: engine.Worker) -> None:
    """Back to the pool if it can serve another cell, else ended."""
    alive = w.ready and w.task is None and w.proc.poll() is None
    with _lock:
        _busy.discard(w)
        if alive:
            _idle.setdefault(w.backend, []).append(w)
    if not alive:
        w.kill()


def release(backend: str | None = None) -> int:
    """Let the idle subprocesses of one backend (all: None) exit; how many."""
    with _lock:
        if backend is None:
            gone = [w for ws in _idle.values() for w in ws]
            _idle.clear()
        else:
            gone = _idle.pop(backend, [])
    for w in gone:
        w.close()
    for w in gone:
        engine.let_exit(w, 10)
    return len(gone)


def kill_all() -> None:
    """End every subprocess, busy ones too (their tasks end with them)."""
    with _lock:
        gone = [w for ws in _idle.values() for w in ws] + list(_busy)
        _idle.clear()
    for w in gone:
        if w.proc.poll() is None:
            w.proc.kill()


async def release_async(backend: str | None = None) -> int:
    """``release`` for Client.run, off the worker's event loop."""
    return await asyncio.get_running_loop().run_in_executor(None, release, backend)


class HarnessWorkers(WorkerPlugin):
    """Ends this Dask worker's harness subprocesses when it closes."""

    name = "harness-workers"

    def teardown(self, worker) -> None:
        kill_all()


# ------------------------------------------------------------------- probing

def source_digest() -> str:
    """sha256 of the harness's own code here (harness/ and backends/), so a
    host with another checkout of the harness is noticed."""
    h = hashlib.sha256()
    for folder in ("harness", "backends"):
        for path in sorted((engine.ROOT / folder).rglob("*.py")):
            h.update(str(path.relative_to(engine.ROOT)).encode() + b"\0" + path.read_bytes())
    return h.hexdigest()[:16]


def probe(names: list[str]) -> dict:
    """This Dask worker's view of the run's frameworks, each imported in a
    harness subprocess (kept as the pool's first members: a previous run's
    are let go first, so that this run's code and environment are used)."""
    import numpy

    release()
    avail, ready = engine.start_workers(names)
    with _lock:
        for w in ready:
            _idle.setdefault(w.backend, []).append(w)
    return {"host": socket.gethostname(), "pid": os.getpid(),
            "python": platform.python_version(), "numpy": numpy.__version__,
            "harness": source_digest(),
            "backends": {n: {"state": a.state, "version": a.version, "detail": a.detail}
                         for n, a in avail.items()},
            "import_seconds": {w.backend: w.hello["import_seconds"] for w in ready}}


async def probe_async(names: list[str]) -> dict:
    """``probe`` for Client.run, off the worker's event loop."""
    return await asyncio.get_running_loop().run_in_executor(None, probe, names)


# ------------------------------------------------------------------- running

def _cancel_check():
    """A function saying whether the Dask task running in this thread has
    been cancelled (the client cancelled it or went away)."""
    try:
        from distributed.worker import thread_state

        worker, key = get_worker(), thread_state.key
    except (AttributeError, ValueError, ImportError):
        return lambda: False

    def cancelled() -> bool:
        ts = worker.state.tasks.get(key)
        return ts is None or ts.state == "cancelled"

    return cancelled


def run_task(cell: dict, version: str | None, timeout: float | None) -> dict:
    """The Dask task: one cell in a harness subprocess of this Dask worker.

    ``version``: the run's version of the cell's framework (a subprocess that
    imports another one, on a worker that joined after the probe, gives an
    ``error`` record instead of a result from another version).  Returns
    ``{"record": Record.to_dict() or None (cancelled), "import_seconds":
    seconds if a subprocess was started for it else None, "worker", "host"}``.
    """
    task = engine.Task(Cell.from_dict(cell))
    w = _borrow(task.cell.backend)
    fresh = w.hello is None
    try:
        record = _serve(w, task, version, timeout, _cancel_check())
    finally:
        _give_back(w)
    try:
        address = get_worker().address
    except ValueError:
        address = None
    return {"record": None if record is None else record.to_dict(),
            "import_seconds": w.hello["import_seconds"] if fresh and w.hello else None,
            "worker": address, "host": socket.gethostname()}


def _serve(w: engine.Worker, task: engine.Task, version: str | None, timeout: float | None,
           cancelled) -> Record | None:
    """Run task on w, as the local engine would; None if cancelled."""
    w.task = task  # so that a death or a timeout is recorded against this cell
    if not w.ready:  # a fresh subprocess: its import first, then the cell
        record = _wait(w, time.monotonic() + engine.IMPORT_TIMEOUT, version, cancelled,
                       Status.ERROR, engine.import_hang_message(w.backend))
        if record is not None or not w.ready:
            return record
        if w.hello["version"] != version:
            return Record.for_cell(
                task.cell, Status.ERROR,
                f"this Dask worker ({socket.gethostname()}) has {w.backend} "
                f"{w.hello['version']}, the run uses {version}; cell not run",
                backend_version=version)
    w.assign(task, None if timeout is None else time.monotonic() + timeout)
    return _wait(w, w.deadline, version, cancelled, Status.TIMEOUT,
                 engine.timeout_message(timeout) if timeout is not None else "")


def _wait(w: engine.Worker, deadline: float | None, version, cancelled, late: Status,
          late_message: str) -> Record | None:
    """Wait for w's next answer: its hello (then None, w ready), or the
    task's record; the record of its death, or `late` past the deadline;
    None (subprocess killed) if the task was cancelled."""
    was_ready = w.ready
    while True:
        left = POLL if deadline is None else min(POLL, max(0.0, deadline - time.monotonic()))
        readable, _, _ = select.select([w.fd], [], [], left)
        if readable:
            answers = w.read()
            if answers is None:
                return engine.lose(w, Status.ERROR, w.death(), version)
            if answers:
                w.task = None
                return Record.from_dict(answers[0]["record"])
            if w.ready and not was_ready:
                return None
        if deadline is not None and time.monotonic() >= deadline:
            return engine.lose(w, late, late_message, version)
        if cancelled():
            w.task = None
            engine.lose(w, Status.ERROR, "cancelled", version)
            return None
