"""The parent side of the process boundary: worker processes, where cells
run and frameworks are probed.

* Every cell runs in a worker process (harness/execution/worker.py), never
  in the harness's own process, and every
  availability probe runs in a child process: a framework that segfaults,
  aborts, hangs or runs out of memory costs only the cell it was running,
  and the run carries on.
* A worker serves one backend, imports its framework once, and runs that
  backend's cells one at a time until none are left.  One framework per
  process also sidesteps frameworks that misbehave together.
* The probe is a worker too: ``start_workers`` starts one per backend at
  once, and each says whether its import worked.  A run keeps the ones that
  did as its first workers, so no framework is imported just to probe it;
  ``probe`` (``harness list``) lets them go.
* subprocess with JSON lines, not multiprocessing: nothing forks after a
  framework is loaded, nothing is pickled, a dead worker is simply a pipe at
  EOF plus an exit status, and its stderr sits in a file whose lines go
  into the cell's record.
* Workers start in isolated mode (``python -I``) with an explicit import
  path: the harness's root and the entries of PYTHONPATH, never the current
  directory, so a ``numpy.py`` where ``harness run`` starts is not imported.
* A worker dies with its parent (worker.die_with_parent): after kill -9 of
  ``harness run`` no worker goes on computing with no one to read it.
* Scheduling never changes a number: a cell is a pure function of its Cell
  (child.run_cell), and workers run math libraries single-threaded (unless
  the environment says otherwise) whatever ``--jobs`` is, so N workers use
  N cores and no cell depends on N.
"""
from __future__ import annotations

import dataclasses
import json
import os
import re
import select
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from harness.execution.child import unpack_records
from harness.records import Record, Status
from harness.registry import Availability
from harness.tasks import Cell

ROOT = Path(__file__).resolve().parents[2]
# A framework import that takes longer than this is reported as hung.
IMPORT_TIMEOUT = 120.0
# A worker computes in one thread (defaults: the environment may say
# otherwise): intra-op thread pools only add overhead on 4-row truth tables,
# and so does MXNet's default engine, which hands every operator to engine
# threads; NaiveEngine runs it in the calling thread (measured: the default
# mxnet matrix trains in 20.7 s against 28.0 s, records identical, float64
# adam/rmsprop/momentum and --batch-seeds too).
THREAD_VARS = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1",
               "TF_NUM_INTRAOP_THREADS": "1", "MXNET_ENGINE_TYPE": "NaiveEngine"}
STDERR_LINES = 30
# A backend gets a second (third...) worker only while it has at least this
# many queued cells per worker it already has: each worker imports anew.
CELLS_PER_EXTRA_WORKER = 4


def worker_env() -> dict[str, str]:
    env = dict(os.environ)
    for key, value in THREAD_VARS.items():
        env.setdefault(key, value)
    return env


def worker_command(backend: str) -> list[str]:
    """The worker's command line: isolated mode, so neither the current
    directory nor PYTHON* variables shape its imports (bytecode is written
    or not as in this process); the import path is
    this harness's root (workers import the same harness as this process,
    wherever it came from), then PYTHONPATH's entries made absolute (an
    empty entry, which means the current directory, is dropped)."""
    extra = [os.path.abspath(p) for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    paths = list(dict.fromkeys([str(ROOT), *extra]))
    boot = (f"import sys; sys.path[:0] = {paths!r}; "
            "from harness.execution.worker import main; sys.exit(main(sys.argv[1:]))")
    # Isolated mode ignores PYTHONDONTWRITEBYTECODE: pass on this process's choice.
    flags = ["-I", *(["-B"] if sys.dont_write_bytecode else [])]
    # Our pid: the worker ends itself when its parent is no longer this process.
    started_by = "main" if threading.current_thread() is threading.main_thread() else "thread"
    return [sys.executable, *flags, "-c", boot, backend, str(os.getpid()), started_by]


def exit_cause(returncode: int) -> str:
    """'killed by SIGSEGV' or 'exited with status 3'."""
    if returncode < 0:
        try:
            name = signal.Signals(-returncode).name
        except ValueError:
            name = f"signal {-returncode}"
        hint = " (out of memory, or killed from outside)" if name == "SIGKILL" else ""
        return f"killed by {name}{hint}"
    return f"exited with status {returncode}"


def _stderr_lines(err, start: int = 0) -> list[str]:
    """What err received since byte offset start, for a record: memory
    addresses blanked (so the same crash reads the same in every run), the
    list of loaded extension modules dropped, long output cut in the middle."""
    size = os.fstat(err.fileno()).st_size
    begin = max(start, size - 256 * 1024)
    text = os.pread(err.fileno(), size - begin, begin).decode("utf-8", "replace")
    lines = [re.sub(r"0x[0-9a-fA-F]{6,}", "0x?", ln.rstrip())[:500] for ln in text.splitlines()]
    lines = [ln for ln in lines if ln.strip() and not ln.startswith("Extension modules:")]
    return lines if len(lines) <= STDERR_LINES else [*lines[:10], "...", *lines[-20:]]


def crash_site(lines: list[str]) -> str:
    """The line that best says where a process died: the innermost frame of
    a faulthandler dump, else the last line (an exception's message)."""
    for i, line in enumerate(lines[:-1]):
        if "most recent call first" in line:
            return lines[i + 1].strip()
    return lines[-1].strip() if lines else ""


@dataclass(frozen=True)
class Task:
    """One run of a cell; --repeat runs the same cell as several tasks.
    ``batch``: with --batch-seeds, the cells (differing only in their seed)
    trained together, ``cell`` being the first; the task ends with one
    record per cell."""

    cell: Cell
    repeat: int = 0
    batch: tuple[Cell, ...] = ()

    @property
    def cells(self) -> tuple[Cell, ...]:
        return self.batch or (self.cell,)

    @property
    def cost(self) -> int:
        # A batch costs far less than its cells one by one; this only orders
        # the queue and decides extra workers.
        return self.cell.epochs * (1 + len(self.batch) // 100)


class Frames:
    """The protocol's decoder (worker.py): JSON lines, where a line that
    announces ``payload_bytes`` n is followed by n raw bytes, handed over
    with its message as ``"payload"``."""

    def __init__(self):
        # What was read and not yet handed over: a line not yet ended, or
        # the part of a payload read so far (``payload_for``: the message
        # waiting for it and the payload's size).
        self.pending: list[bytes] = []
        self.pending_size = 0
        self.payload_for: tuple[dict, int] | None = None

    def feed(self, data: bytes) -> list[dict]:
        """The messages that ``data``, read after what came before, completes."""
        self.pending.append(data)
        self.pending_size += len(data)
        # A batch's answer is one line, or a payload, of many megabytes:
        # joined once, when it is all here (joining at every read was
        # quadratic).
        if self.payload_for is not None:
            if self.pending_size < self.payload_for[1]:
                return []
        elif b"\n" not in data:
            return []
        buf = b"".join(self.pending)
        messages, at = [], 0
        while True:
            if self.payload_for is not None:
                msg, size = self.payload_for
                if len(buf) - at < size:
                    break
                msg["payload"] = buf[at:at + size]
                at += size
                self.payload_for = None
                messages.append(msg)
                continue
            end = buf.find(b"\n", at)
            if end < 0:
                break
            msg = json.loads(buf[at:end])
            at = end + 1
            if "payload_bytes" in msg:
                self.payload_for = (msg, msg.pop("payload_bytes"))
            else:
                messages.append(msg)
        rest = buf[at:]
        self.pending, self.pending_size = ([rest] if rest else []), len(rest)
        return messages


class Worker:
    """A worker process for one backend, running at most one task at a time.

    Its first message (``hello``) says whether the framework imported; until
    then ``deadline`` is the import's.
    """

    def __init__(self, backend: str):
        self.backend = backend
        self.err = tempfile.TemporaryFile()
        self.proc = subprocess.Popen(worker_command(backend),
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=self.err, env=worker_env())
        self.fd = self.proc.stdout.fileno()
        self.frames = Frames()
        self.hello: dict | None = None
        self.task: Task | None = None
        self.deadline: float | None = time.monotonic() + IMPORT_TIMEOUT
        self.err_start = 0

    @property
    def ready(self) -> bool:
        return self.hello is not None and self.hello["state"] == "ok"

    @property
    def idle(self) -> bool:
        return self.ready and self.task is None

    def assign(self, task: Task, deadline: float | None) -> None:
        self.task = task
        if self.ready:
            self.deadline = deadline
        self.send({"batch": [c.to_dict() for c in task.batch]} if task.batch else
                  {"cell": task.cell.to_dict()})

    def send(self, request: dict) -> None:
        self.err_start = os.fstat(self.err.fileno()).st_size
        try:
            self.proc.stdin.write((json.dumps(request) + "\n").encode())
            self.proc.stdin.flush()
        except BrokenPipeError:
            pass  # it died; EOF on its stdout reports it

    def read(self) -> list[dict] | None:
        """Answers received so far (the hello is kept aside), or None at EOF."""
        data = os.read(self.fd, 1 << 20)
        if not data:
            return None
        messages = self.frames.feed(data)
        for msg in messages:
            if "state" in msg:
                self.hello, self.deadline = msg, None
        return [msg for msg in messages if "state" not in msg]

    def death(self, doing: str = "running this cell") -> str:
        """Why this worker's process ended, in words (after EOF)."""
        self.proc.wait()
        if self.hello and not self.ready:
            return f"worker could not import {self.backend} ({self.hello['state']}: " \
                   f"{self.hello['detail']})"
        where = f"while {doing}" if self.ready else f"while importing {self.backend}"
        return f"worker process {exit_cause(self.proc.returncode)} {where}"

    def stderr_lines(self) -> list[str]:
        return _stderr_lines(self.err, self.err_start)

    def close(self) -> None:
        """Stop gracefully: the worker exits when its stdin closes."""
        try:
            self.proc.stdin.close()
        except BrokenPipeError:
            pass

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        for fh in (self.proc.stdin, self.proc.stdout, self.err):
            try:
                fh.close()
            except BrokenPipeError:
                pass


# ------------------------------------------------------------------- probing

def start_workers(names, timeout: float = IMPORT_TIMEOUT
                  ) -> tuple[dict[str, Availability], list[Worker]]:
    """Start one worker per backend, all at once, and wait for each to import
    its framework: (availability of each, the workers that are ready).  A
    worker that dies or hangs while importing makes its backend `broken`."""
    workers = [Worker(name) for name in names]
    try:
        waiting = list(workers)
        deadline = time.monotonic() + timeout
        while waiting and time.monotonic() < deadline:
            readable, _, _ = select.select([w.fd for w in waiting], [], [],
                                           max(0.0, deadline - time.monotonic()))
            for w in [w for w in waiting if w.fd in readable]:
                if w.read() is None:
                    w.proc.wait()  # EOF: it has exited, or is about to
                    waiting.remove(w)
                elif w.hello:
                    waiting.remove(w)
        avail = {w.backend: _availability(w, timeout) for w in workers}
    except BaseException:
        for w in workers:
            w.kill()
        raise
    for w in workers:
        if not w.ready:
            w.kill()
    return avail, [w for w in workers if w.ready]


def _availability(w: Worker, timeout: float) -> Availability:
    if w.hello:
        return Availability(w.backend, w.hello["state"], w.hello["version"], w.hello["detail"])
    if w.proc.poll() is None:
        return Availability(w.backend, "broken", None, f"import did not finish within {timeout:g} s")
    site = crash_site(_stderr_lines(w.err))
    return Availability(w.backend, "broken", None,
                        f"import {exit_cause(w.proc.returncode)}" + (f": {site}" if site else ""))


def probe(names, timeout: float = IMPORT_TIMEOUT) -> dict[str, Availability]:
    """Availability of each backend, each imported in a child process."""
    avail, workers = start_workers(names, timeout)
    for w in workers:
        w.close()
    for w in workers:
        let_exit(w, 10)
    return avail


def ask(workers: list[Worker], request: dict, timeout: float | None = None
        ) -> dict[str, dict | str]:
    """Send one request to each ready worker and wait for the answers:
    {backend: answer, or why its worker died}.  Every worker has ended when
    this returns."""
    out: dict[str, dict | str] = {}
    try:
        for w in workers:
            w.send(request)
        waiting = list(workers)
        deadline = None if timeout is None else time.monotonic() + timeout
        while waiting:
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            readable, _, _ = select.select([w.fd for w in waiting], [], [], left)
            if not readable:
                for w in waiting:
                    out[w.backend] = f"no answer within {timeout:g} s; worker killed"
                break
            for w in [w for w in waiting if w.fd in readable]:
                answers = w.read()
                if answers is None:
                    out[w.backend] = (f"{w.death('answering this request')} "
                                      f"({crash_site(w.stderr_lines())})")
                    waiting.remove(w)
                elif answers:
                    out[w.backend] = answers[0]
                    waiting.remove(w)
                    w.close()
    finally:
        for w in workers:
            if isinstance(out.get(w.backend), dict):
                let_exit(w, 10)  # answered: it exits on its own
            else:
                w.kill()
    return out


def let_exit(w: Worker, seconds: float) -> None:
    """Give a closed worker time to exit on its own, then make sure."""
    try:
        w.proc.wait(timeout=seconds)
    except subprocess.TimeoutExpired:
        pass
    w.kill()


# ------------------------------------------------------------------- running

@dataclass
class BackendTiming:
    workers: int = 0
    import_seconds: float = 0.0
    train_seconds: float = 0.0
    cells: int = 0

    def to_dict(self) -> dict:
        return {"workers": self.workers, "import_seconds": round(self.import_seconds, 3),
                "train_seconds": round(self.train_seconds, 3), "cells": self.cells}


class Engine:
    """Runs tasks with at most `jobs` of them at a time, each in a worker
    for its backend.  ``workers``: ready workers from start_workers."""

    def __init__(self, versions: dict[str, str | None], jobs: int, timeout: float | None,
                 workers: list[Worker] = ()):
        self.versions, self.jobs, self.timeout = versions, jobs, timeout
        self.where = f"{jobs} jobs"  # for the run's header
        self.info = {"kind": "local"}  # for the manifest
        self.queues: dict[str, deque[Task]] = {}
        self.workers: list[Worker] = []
        self.closing: list[Worker] = []
        self.timing: dict[str, BackendTiming] = {}
        for w in workers:
            self._adopt(w)

    def _adopt(self, w: Worker) -> None:
        self.workers.append(w)
        self.timing.setdefault(w.backend, BackendTiming()).workers += 1

    def run(self, tasks: list[Task], on_results: Callable[[list[tuple[Task, Record]]], None]
            ) -> dict[str, BackendTiming]:
        """Run every task; on_results([(task, record), ...]) as each ends, in
        completion order: one call per task, with every record of a batch
        task (each with its own cell) at once, so that the runner can store
        them with one sync.  Every worker has ended when this returns."""
        self.on_results = on_results
        # Backends in the order given; within one, the longest cells first,
        # so that no long cell is left for the end.
        for backend in dict.fromkeys(t.cell.backend for t in tasks):
            mine = [t for t in tasks if t.cell.backend == backend]
            self.queues[backend] = deque(sorted(mine, key=lambda t: -t.cost))
            self.timing.setdefault(backend, BackendTiming())
        for w in self.workers:
            self.timing[w.backend].import_seconds += w.hello["import_seconds"]
        try:
            while True:
                self._dispatch()  # starts tasks while fewer than `jobs` run
                if not self.workers:
                    break
                self._wait()
            for w in self.closing:
                let_exit(w, 10)
        finally:
            self.shutdown()
        return self.timing

    def shutdown(self) -> None:
        """Kill every worker (idempotent)."""
        for w in self.workers + self.closing:
            w.kill()

    def _dispatch(self) -> None:
        for w in list(self.workers):
            if w.idle and not self.queues.get(w.backend):
                w.close()
                self.workers.remove(w)
                self.closing.append(w)
        while sum(w.task is not None for w in self.workers) < self.jobs:
            backend = self._next_backend()
            if backend is None:
                break
            w = next((w for w in self.workers if w.backend == backend and w.idle), None)
            if w is None:
                w = Worker(backend)
                self._adopt(w)
            w.assign(self.queues[backend].popleft(), self._deadline())

    def _next_backend(self) -> str | None:
        """Where the next task comes from: the first backend (in task order)
        with an idle worker, so that backends finish one after another; else
        the backend with the most queued work per worker, if that is worth a
        new worker (each one imports its framework anew)."""
        queued = [b for b, queue in self.queues.items() if queue]
        for backend in queued:
            if any(w.backend == backend and w.idle for w in self.workers):
                return backend
        best, best_share = None, 0.0
        for backend in queued:
            n = sum(w.backend == backend for w in self.workers)
            queue = self.queues[backend]
            share = sum(t.cost for t in queue) / (n + 1)
            if len(queue) >= CELLS_PER_EXTRA_WORKER * n and share > best_share:
                best, best_share = backend, share
        return best

    def _deadline(self) -> float | None:
        return None if self.timeout is None else time.monotonic() + self.timeout

    def _wait(self) -> None:
        deadlines = [w.deadline for w in self.workers if w.deadline is not None]
        wait = max(0.0, min(deadlines) - time.monotonic()) if deadlines else None
        readable, _, _ = select.select([w.fd for w in self.workers], [], [], wait)
        for w in [w for w in self.workers if w.fd in readable]:
            self._receive(w)
        now = time.monotonic()
        for w in [w for w in self.workers if w.deadline is not None and now >= w.deadline]:
            if w.ready:
                self._lose(w, Status.TIMEOUT, timeout_message(self.timeout))
            else:
                self._lose(w, Status.ERROR, import_hang_message(w.backend))

    def _receive(self, w: Worker) -> None:
        was_ready = w.ready
        records = w.read()
        if records is None:
            self._lose(w, Status.ERROR, w.death())
            return
        if w.ready and not was_ready:
            self.timing[w.backend].import_seconds += w.hello["import_seconds"]
            w.deadline = self._deadline()  # its task's clock starts now
        for msg in records:
            task, w.task, w.deadline = w.task, None, None
            got = unpack_records(msg) if "records" in msg else [Record.from_dict(msg["record"])]
            timing = self.timing[w.backend]
            for record in got:
                timing.cells += 1
                timing.train_seconds += record.seconds or 0.0
            self.on_results([(dataclasses.replace(task, cell=r.cell, batch=()), r) for r in got])

    def _lose(self, w: Worker, status: Status, message: str) -> None:
        """End worker w; its current task, if any, gets this status."""
        task = w.task
        records = lost_records(w, status, message, self.versions.get(w.backend))
        self.workers.remove(w)
        self.timing[w.backend].cells += len(records)
        self.on_results([(dataclasses.replace(task, cell=r.cell, batch=()), r) for r in records])


def timeout_message(timeout: float) -> str:
    return f"killed after {timeout:g} s (--timeout)"


def import_hang_message(backend: str) -> str:
    return f"importing {backend} did not finish within {IMPORT_TIMEOUT:g} s; worker killed"


def lost_records(w: Worker, status: Status, message: str, version: str | None
                 ) -> list[Record]:
    """End worker w.  Each cell of its current task, if any (every seed of a
    batch), gets a record with this status and message (plus, when the
    process died, the site of the crash), its stderr in ``info.stderr``."""
    if w.proc.poll() is None:
        w.proc.kill()
    w.proc.wait()
    lines = w.stderr_lines()
    w.kill()
    if w.task is None:
        return []
    died = status == Status.ERROR and w.proc.returncode != 0
    site = crash_site(lines) if died else ""
    info = {"stderr": lines} if lines else {}
    if w.task.batch:
        info["batched"] = len(w.task.batch)
    return [Record.for_cell(cell, status, message + (f" ({site})" if site else ""),
                            backend_version=version, info=dict(info))
            for cell in w.task.cells]


def lose(w: Worker, status: Status, message: str, version: str | None) -> Record | None:
    """``lost_records`` for a worker running one cell (or none): its record."""
    records = lost_records(w, status, message, version)
    return records[0] if records else None
