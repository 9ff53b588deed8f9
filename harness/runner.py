"""Running cells: one cell -> one Record, and the matrix -> a run folder.

``run_cell`` is a pure function of its Cell (no state survives between
cells): worker processes (harness/engine.py) call it, and where or in which
order a cell runs never changes its record.  ``run_matrix`` never trains in
its own process.
"""
from __future__ import annotations

import contextlib
import dataclasses
import itertools
import math
import signal
import threading
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from harness import engine, registry
from harness.oracle import judge
from harness.progress import NullProgress
from harness.results import (RECORD_FIELDS, Record, RecordWriter, RunFolderError, dumps,
                             git_info, manifest, now_utc, write_manifest, write_tables)
from harness.tasks import DEFAULT_EPOCHS, Cell, TrainResult, TrainSpec, init_params


def expand(config: dict[str, Any]) -> list[Cell]:
    """The cross product of a resolved config's axes, sorted by cell."""
    cells = set()
    for backend, level, arch, gate, seed in itertools.product(
            config["backends"], config["levels"], config["archs"], config["gates"],
            config["seeds"]):
        epochs = config.get("epochs") or DEFAULT_EPOCHS[arch]
        cells.add(Cell(backend=backend, level=level, arch=arch, gate=gate, seed=seed,
                       dtype=config["dtype"], init=config["init"],
                       init_scale=float(config["init_scale"]), lr=float(config["lr"]),
                       epochs=int(epochs),
                       hidden=int(config["hidden"]) if arch == "multi" else None))
    return sorted(cells, key=lambda c: c.key)


def _lists(params: dict[str, np.ndarray]) -> dict[str, list]:
    return {k: np.asarray(v, dtype=np.float64).tolist() for k, v in params.items()}


def _check_start(cell: Cell, expected: dict[str, np.ndarray], got: dict[str, np.ndarray]):
    """The backend must have loaded exactly the harness's parameters."""
    if list(got) != list(expected):
        raise AssertionError(f"backend returned parameters {list(got)}, expected {list(expected)}")
    for name, want in expected.items():
        have = np.asarray(got[name])
        if have.shape != want.shape or have.dtype != want.dtype or not np.array_equal(have, want):
            raise AssertionError(
                f"parameter {name} read back from {cell.backend} after loading is not the "
                f"harness's initial value (shape {have.shape} {have.dtype}, expected "
                f"{want.shape} {want.dtype})")


def divergence(result: TrainResult, epochs: int) -> tuple[int, str] | None:
    """(epoch, message) where the loss or parameters first became NaN or
    infinite, or None.  Only the loss is recorded per epoch; parameters are
    checked at the end."""
    for t, loss in enumerate(result.loss_curve):
        if not math.isfinite(loss):
            return t, f"diverged: loss is {loss} at epoch {t} (after {t} updates)"
    if not math.isfinite(result.loss_final):
        return epochs, f"diverged: final loss is {result.loss_final}"
    for name, value in result.params_final.items():
        if not np.all(np.isfinite(value)):
            return epochs, f"diverged: final parameter {name} is not finite"
    return None


def record_from_result(cell: Cell, version: str | None, result: TrainResult,
                       seconds: float) -> Record:
    y = np.array(TrainSpec.from_cell(cell).y).reshape(-1)
    probs = np.asarray(result.probs, dtype=np.float64).reshape(-1)
    preds = (probs > 0.5).astype(int)
    correct = preds == y
    status, message, epoch = "ok", "", None
    diverged = divergence(result, cell.epochs)
    if diverged:
        status = "diverged"
        epoch, message = diverged
    return Record.for_cell(
        cell, status, message, backend_version=version, diverged_epoch=epoch,
        params_init=_lists(result.params_start), params_final=_lists(result.params_final),
        probs=probs.tolist(), preds=preds.tolist(), accuracy=float(correct.mean()),
        learned=bool(correct.all()), loss_final=float(result.loss_final),
        loss_curve=[float(v) for v in result.loss_curve], seconds=seconds,
        info=dict(result.info))


def unsupported(cell: Cell, version: str | None = None) -> Record | None:
    """The `unsupported` record of a cell its backend cannot run, else None."""
    reason = registry.gap(cell.backend, cell.level, cell.arch)
    return Record.for_cell(cell, "unsupported", reason, backend_version=version) if reason else None


def run_cell(cell: Cell, version: str | None = None) -> Record:
    """Train one cell in this process.  Never raises for a backend failure:
    the failure becomes an ``error`` record with the exception."""
    gap = unsupported(cell, version)
    if gap:
        return gap
    mod = registry.backend_module(cell.backend)
    spec = TrainSpec.from_cell(cell)
    expected = init_params(cell)
    try:
        t0 = time.perf_counter()
        result = mod.train(spec)
        seconds = time.perf_counter() - t0
        _check_start(cell, expected, result.params_start)
        if len(result.loss_curve) != cell.epochs:
            raise AssertionError(f"loss_curve has {len(result.loss_curve)} entries, "
                                 f"expected one per epoch ({cell.epochs})")
    except Exception as exc:  # noqa: BLE001 - any backend failure is a finding, not a crash
        tb = traceback.format_exc(limit=-3).strip().splitlines()
        return Record.for_cell(cell, "error", f"{type(exc).__name__}: {exc}",
                               backend_version=version, info={"traceback": tb[-6:]})
    return judge(record_from_result(cell, version, result, seconds))


@dataclass
class RunOutcome:
    run_dir: Path
    records: list[Record] = field(default_factory=list)
    total: int = 0  # cells in the matrix
    interrupted: bool = False

    @property
    def errors(self) -> int:
        return sum(r.status in ("error", "timeout") for r in self.records)


def run_matrix(config: dict[str, Any], run_dir: Path, argv: list[str], jobs: int = 1,
               progress=None, resume: tuple[dict, list[Record]] | None = None) -> RunOutcome:
    """Run a resolved config's matrix in worker processes and write the run folder.

    ``resume``: (manifest, records) already in run_dir.  Only cells without a
    record run, and the folder ends as an uninterrupted run would leave it;
    the manifest keeps its original fields and gains a ``resumed`` entry.
    Ctrl-C ends the workers and keeps every finished record
    (``outcome.interrupted``).
    """
    started = time.monotonic()
    progress = progress or NullProgress()
    cells = expand(config)
    done: dict[Cell, Record] = {}
    for rec in resume[1] if resume else []:
        done.setdefault(rec.cell, rec)
    todo = [c for c in cells if c not in done]
    names = [b for b in registry.BACKENDS if any(c.backend == b for c in todo)]
    # The probe: one worker per backend, kept as the run's first workers.
    avail, ready = engine.start_workers(names)
    probe_seconds = time.monotonic() - started
    pool = engine.Engine({n: a.version for n, a in avail.items()}, jobs, config["timeout"], ready)
    try:
        if resume:
            man = resume[0]
            _check_versions(run_dir, man, avail)
        else:
            man = manifest(config, _versions(avail), argv)
        try:
            run_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise RunFolderError(f"Run folder {str(run_dir)!r} cannot be created: "
                                 f"{exc.strerror}.") from None
        write_manifest(run_dir, man)
        outcome = RunOutcome(run_dir, list(done.values()), len(cells))
        if resume:
            write_tables(run_dir, outcome.records)  # drops a torn last line before appending
        _run(config, cells, todo, avail, pool, outcome, progress,
             f"harness: {len(cells)} cells, {len(todo)} to run, {jobs} jobs -> {run_dir}")
    finally:
        pool.shutdown()
    with _no_interrupts():
        outcome.records = write_tables(run_dir, outcome.records)
        timing = {"jobs": jobs, "wall_seconds": round(time.monotonic() - started, 3),
                  "probe_seconds": round(probe_seconds, 3),
                  "cells_recorded": len(outcome.records) - len(done),
                  "backends": {b: t.to_dict() for b, t in pool.timing.items()}}
        if resume:
            man.setdefault("resumed", []).append({"at": now_utc(), "command": argv,
                                                  "git": git_info(), "timing": timing})
        else:
            man["timing"] = timing
        write_manifest(run_dir, man)
    progress.finish()
    return outcome


def _run(config, cells: list[Cell], todo: list[Cell], avail, pool: engine.Engine,
         outcome: RunOutcome, progress, header: str) -> None:
    """Record every cell of todo, appending each record to results.jsonl as
    it ends; Ctrl-C sets outcome.interrupted."""
    progress.start(cells, outcome.records, header)
    writer = RecordWriter(outcome.run_dir / "results.jsonl")

    def emit(record: Record) -> None:
        # Memory first: after Ctrl-C the tables are rewritten from memory, so
        # a record must not reach the file without being there.
        outcome.records.append(record)
        writer.write(record)
        progress.update(record)

    repeat = config["repeat"]
    runs: dict[Cell, dict[int, Record]] = {}

    def on_result(task: engine.Task, record: Record) -> None:
        runs.setdefault(task.cell, {})[task.repeat] = record
        if len(runs[task.cell]) == repeat:
            emit(_compare_repeats(runs.pop(task.cell)) if repeat > 1 else record)

    try:
        tasks = []
        for cell in todo:
            a = avail[cell.backend]
            if not a.ok:
                emit(Record.for_cell(cell, "skipped", f"{a.backend} {a.state}: {a.detail}"))
            elif gap := unsupported(cell, a.version):
                emit(gap)
            else:
                tasks += [engine.Task(cell, r) for r in range(repeat)]
        order = list(registry.BACKENDS)
        pool.run(sorted(tasks, key=lambda t: order.index(t.cell.backend)), on_result)
    except KeyboardInterrupt:
        outcome.interrupted = True
    finally:
        writer.close()


def _compare_repeats(runs: dict[int, Record]) -> Record:
    """The first run's record, with the fields any other run disagrees on."""
    first = runs[0]
    fields = [f for f in RECORD_FIELDS if f not in ("seconds", "repeat_mismatch")]
    mismatch = [f for f in fields
                if any(dumps(getattr(r, f)) != dumps(getattr(first, f)) for r in runs.values())]
    return dataclasses.replace(first, repeat_mismatch=mismatch)


def _check_versions(run_dir: Path, man: dict, avail: dict[str, registry.Availability]) -> None:
    """A resumed run must use the frameworks it started with."""
    before = man.get("versions") or {}
    for name, now in _versions(avail).items():
        if name in before and before[name] != now:
            raise RunFolderError(f"{run_dir / 'manifest.json'}: this run started with {name} "
                                 f"{before[name]!r}, now it is {now!r}; resume it where the "
                                 "same versions are installed.")


@contextlib.contextmanager
def _no_interrupts():
    """Let the final writes finish even if Ctrl-C is pressed again."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def _versions(avail: dict[str, registry.Availability]) -> dict[str, Any]:
    return {name: (a.version if a.ok else f"{a.state}: {a.detail}") for name, a in avail.items()}
