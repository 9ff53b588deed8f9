"""Running the matrix: a resolved config -> a run folder.

The parent side only: ``run_matrix`` never trains in its own process; every
cell goes to a worker (harness/execution/), which sends back a judged
Record.  Cells a backend cannot run (unsupported) or whose framework is not
usable (skipped) get their records here without a worker.  Where workers
run is the executor's business (``start_executor``, the one place it is
chosen): the local engine, or a Dask cluster; the rest is the same.
"""
from __future__ import annotations

import contextlib
import dataclasses
import itertools
import signal
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness import registry
from harness.config import curves_mode
from harness.execution import engine
from harness.execution.dask_executor import ClusterLost
from harness.execution.child import unsupported
from harness.progress import NullProgress
from harness.records import RECORD_FIELDS, Record, Status
from harness.resume import Resume
from harness.results import (RecordWriter, RunFolderError, dumps, manifest, write_manifest,
                             write_tables)
from harness.tasks import AXES, Cell, family_key


def expand(config: dict[str, Any]) -> list[Cell]:
    """The cells of a resolved config: the cross product of its crossed axes
    (lists), every other axis's single value; sorted by ``cell_order``."""
    crossed = [(name, axis.key) for name, axis in AXES if axis.crossed]
    fixed = {name: config[axis.key] for name, axis in AXES if not axis.crossed}
    cells = {Cell(**fixed, **dict(zip((n for n, _ in crossed), combo)))
             for combo in itertools.product(*(config[key] for _, key in crossed))}
    return sorted(cells, key=registry.cell_order)


@dataclass
class RunOutcome:
    run_dir: Path
    records: list[Record] = field(default_factory=list)
    total: int = 0  # cells in the matrix
    # The signal that ended the run early (SIGINT, SIGTERM), or 0.
    interrupted: int = 0
    lost: str | None = None  # why the run stopped short, when not by a signal
    # --batch-seeds: what was batched, and why the rest ran per seed.
    batching: dict[str, Any] | None = None

    @property
    def errors(self) -> int:
        return sum(r.status.failed for r in self.records)


def run_matrix(config: dict[str, Any], run_dir: Path, argv: list[str], jobs: int = 1,
               progress=None, resume: Resume | None = None) -> RunOutcome:
    """Run a resolved config's matrix in worker processes and write the run folder.

    ``resume``: a run to finish (harness.resume): only cells without a record
    run, and the folder ends as an uninterrupted run would leave it.  Ctrl-C
    (KeyboardInterrupt; ``harness.cli`` turns SIGTERM into one with a
    ``signum``) ends the workers and keeps every finished record
    (``outcome.interrupted``).  A file that cannot be written raises
    ``results.CannotWrite`` once the workers have ended; every record
    appended before it stays in results.jsonl.
    """
    started = time.monotonic()
    progress = progress or NullProgress()
    cells = expand(config)
    done: dict[Cell, Record] = {}
    for rec in resume.records if resume else []:
        done.setdefault(rec.cell, rec)
    todo = [c for c in cells if c not in done]
    names = [b for b in registry.BACKENDS if any(c.backend == b for c in todo)]
    avail, pool = start_executor(config, names, jobs)
    probe_seconds = time.monotonic() - started
    try:
        versions = _versions(avail)
        if resume:
            resume.check_versions(versions)
            man = resume.manifest
        else:
            man = manifest(config, versions, argv)
            man["executor"] = pool.info
        try:
            run_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise RunFolderError(f"Run folder {str(run_dir)!r} cannot be created: "
                                 f"{exc.strerror}.") from None
        outcome = RunOutcome(run_dir, list(done.values()), len(cells))
        if resume:
            # Drops a torn last line before appending, and rewrites an older
            # schema's records in the current one before the manifest says so.
            outcome.records = write_tables(run_dir, outcome.records, curves_mode(config))
        write_manifest(run_dir, man)
        try:
            _run(config, cells, todo, avail, pool, outcome, progress,
                 f"harness: {len(cells)} cells, {len(todo)} to run, {pool.where} -> {run_dir}")
        finally:
            progress.finish()  # a live display must not outlive the run, however it ends
    finally:
        pool.shutdown()
    with _no_interrupts():
        outcome.records = write_tables(run_dir, outcome.records, curves_mode(config))
        timing = {"jobs": jobs, "wall_seconds": round(time.monotonic() - started, 3),
                  "probe_seconds": round(probe_seconds, 3),
                  "cells_recorded": len(outcome.records) - len(done),
                  "backends": {b: t.to_dict() for b, t in pool.timing.items()}}
        if outcome.batching is not None:
            timing["batching"] = outcome.batching
        if resume:
            resume.note(argv, timing, pool.info)
        else:
            man["timing"] = timing
            man["executor"] = pool.info  # with any Dask worker that joined mid-run
        write_manifest(run_dir, man)
    return outcome


def start_executor(config: dict[str, Any], names: list[str], jobs: int):
    """The one place an executor is chosen: (availability of each backend,
    an executor with ``run(tasks, on_results)``, ``shutdown()``, ``timing``,
    ``where`` (for the header) and ``info`` (for the manifest)).

    local: the probe starts one worker per backend, kept as the run's first
    workers.  dask: every Dask worker is probed and must agree
    (harness/execution/dask_executor.py)."""
    if config["executor"] == "dask":
        from harness.execution.dask_executor import DaskExecutor

        return DaskExecutor.start(names, config["scheduler"], jobs, config["timeout"])
    avail, ready = engine.start_workers(names)
    pool = engine.Engine({n: a.version for n, a in avail.items()}, jobs, config["timeout"], ready)
    return avail, pool


def _run(config, cells: list[Cell], todo: list[Cell], avail, pool,
         outcome: RunOutcome, progress, header: str) -> None:
    """Record every cell of todo, appending each record to results.jsonl as
    it ends; Ctrl-C sets outcome.interrupted."""
    progress.start(cells, outcome.records, header)
    writer = RecordWriter(outcome.run_dir / "results.jsonl", curves_mode(config))

    def emit(*records: Record) -> None:
        # Memory first: after Ctrl-C the tables are rewritten from memory, so
        # a record must not reach the file without being there.  Then the
        # records as stored take their place: with --curves file a curve is
        # a view of curves.f64, and a sweep's curves stay out of memory.  A
        # batch's records are stored together, with one sync (a sync per
        # record cost a 10,000-seed batch 23 s).
        first = len(outcome.records)
        outcome.records.extend(records)
        outcome.records[first:] = stored = writer.write_many(list(records))
        for record in stored:
            progress.update(record)

    repeat = config["repeat"]
    runs: dict[Cell, dict[int, Record]] = {}

    def on_results(results: list[tuple[engine.Task, Record]]) -> None:
        done = []
        for task, record in results:
            runs.setdefault(task.cell, {})[task.repeat] = record
            if len(runs[task.cell]) == repeat:
                done.append(_compare_repeats(runs.pop(task.cell)) if repeat > 1 else record)
        if done:
            emit(*done)

    try:
        tasks = []
        for cell in todo:
            a = avail[cell.backend]
            if not a.ok:
                emit(Record.for_cell(cell, Status.SKIPPED, f"{a.backend} {a.state}: {a.detail}"))
            elif gap := unsupported(cell, a.version):
                emit(gap)
            else:
                tasks += [engine.Task(cell, r) for r in range(repeat)]
        if config.get("batch_seeds"):
            tasks, outcome.batching = batch_seeds(tasks, config["executor"])
        pool.run(sorted(tasks, key=lambda t: registry.cell_order(t.cell)), on_results)
    except KeyboardInterrupt as exc:
        outcome.interrupted = getattr(exc, "signum", signal.SIGINT)
    except ClusterLost as exc:
        outcome.lost = str(exc)
    finally:
        writer.close()


def batch_seeds(tasks: list[engine.Task], executor: str
                ) -> tuple[list[engine.Task], dict[str, Any]]:
    """--batch-seeds: the tasks of each family of cells that differ only in
    their seed, as one batch task where the backend has a batched form of
    the level (``BATCHED``, harness.contract); the others stay per seed.
    Returns the tasks and what was batched and why the rest was not:
    {"batches", "batched_cells", "per_seed": {"backend level": reason}}."""
    per_seed: dict[str, str] = {}
    groups: dict[tuple, list[engine.Task]] = {}
    out = []
    for task in tasks:
        cell = task.cell
        why = ("the dask executor runs cells one at a time" if executor != "local"
               else registry.backend(cell.backend).batch_gap(cell))
        if why:
            per_seed.setdefault(f"{cell.backend} {cell.level}", why)
            out.append(task)
        else:
            groups.setdefault((family_key(cell), task.repeat), []).append(task)
    batches = 0
    for (_, repeat), group in groups.items():
        if len(group) == 1:
            out.extend(group)
            continue
        cells = tuple(sorted((t.cell for t in group), key=lambda c: c.seed))
        out.append(engine.Task(cells[0], repeat, cells))
        batches += 1
    batched = sum(len(t.batch) for t in out)
    return out, {"batches": batches, "batched_cells": batched, "per_seed": per_seed}


def batching_note(batching: dict[str, Any]) -> str:
    """One line for the run's header: what --batch-seeds batched, and what not."""
    text = (f"--batch-seeds: {batching['batched_cells']} cells in {batching['batches']} "
            "batch(es)")
    if batching["per_seed"]:
        text += "; per seed: " + "; ".join(f"{k} ({why})"
                                           for k, why in batching["per_seed"].items())
    return text


def _compare_repeats(runs: dict[int, Record]) -> Record:
    """The first run's record, with the fields any other run disagrees on."""
    first = runs[0]
    fields = [f for f in RECORD_FIELDS if f not in ("seconds", "repeat_mismatch")]
    mismatch = [f for f in fields
                if any(dumps(getattr(r, f)) != dumps(getattr(first, f)) for r in runs.values())]
    return dataclasses.replace(first, repeat_mismatch=mismatch)


@contextlib.contextmanager
def _no_interrupts():
    """Let the final writes finish even if Ctrl-C is pressed again or
    SIGTERM arrives (they take milliseconds; the records are safe either way)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {s: signal.signal(s, signal.SIG_IGN) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


def _versions(avail: dict[str, registry.Availability]) -> dict[str, Any]:
    return {name: (a.version if a.ok else f"{a.state}: {a.detail}") for name, a in avail.items()}
