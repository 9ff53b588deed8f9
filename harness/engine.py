"""Worker processes: where cells run and frameworks are probed.

* Every cell runs in a worker process (``python -m harness.worker BACKEND``,
  see harness/worker.py), never in the harness's own process, and every
  availability probe runs in a child process: a framework that segfaults,
  aborts, hangs or runs out of memory costs only the cell it was running,
  and the run carries on.
* A worker serves one backend, imports its framework once, and runs that
  backend's cells one at a time until none are left.  One framework per
  process also sidesteps frameworks that misbehave together.
* subprocess with JSON lines, not multiprocessing: nothing forks after a
  framework is loaded, nothing is pickled, a dead worker is simply a pipe at
  EOF plus an exit status, and its stderr sits in a file whose lines go
  into the cell's record.
* Scheduling never changes a number: a cell is a pure function of its Cell
  (runner.run_cell), and workers run math libraries single-threaded (unless
  the environment says otherwise) whatever ``--jobs`` is, so N workers use
  N cores and no cell depends on N.
"""
from __future__ import annotations

import json
import os
import re
import select
import signal
import subprocess
import sys
import tempfile
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from harness.registry import Availability
from harness.results import Record
from harness.tasks import Cell

ROOT = Path(__file__).resolve().parent.parent
# A framework import that takes longer than this is reported as hung.
IMPORT_TIMEOUT = 120.0
# Intra-op thread pools only add overhead on 4-row truth tables.
THREAD_VARS = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1",
               "TF_NUM_INTRAOP_THREADS": "1"}
STDERR_LINES = 30
# A backend gets a second (third...) worker only while it has at least this
# many queued cells per worker it already has: each worker imports anew.
CELLS_PER_EXTRA_WORKER = 4


def worker_env() -> dict[str, str]:
    env = dict(os.environ)
    for key, value in THREAD_VARS.items():
        env.setdefault(key, value)
    # Workers import the same harness as this process, wherever it came from.
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    return env


def _spawn(args: list[str], stdin) -> tuple[subprocess.Popen, object]:
    err = tempfile.TemporaryFile()
    proc = subprocess.Popen([sys.executable, "-m", "harness.worker", *args], stdin=stdin,
                            stdout=subprocess.PIPE, stderr=err, env=worker_env())
    return proc, err


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


# ------------------------------------------------------------------- probing

def probe(names, timeout: float = IMPORT_TIMEOUT) -> dict[str, Availability]:
    """Availability of each backend, each imported in its own child process
    (all at once).  A child that dies or hangs makes its backend `broken`."""
    children = {}
    try:
        for name in names:
            children[name] = _spawn(["--probe", name], subprocess.DEVNULL)
        deadline = time.monotonic() + timeout
        out = {}
        for name, (proc, err) in children.items():
            try:
                # All started together; one that finished in time reads at once.
                stdout, _ = proc.communicate(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
                out[name] = Availability(name, "broken", None,
                                         f"import did not finish within {timeout:g} s")
                continue
            out[name] = _availability(name, proc.returncode, stdout, err)
        return out
    finally:
        for proc, err in children.values():
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            err.close()


def _availability(name: str, returncode: int, stdout: bytes, err) -> Availability:
    first = stdout.split(b"\n", 1)[0]
    try:
        hello = json.loads(first)
        # The answer stands even if the child crashed afterwards, at exit.
        return Availability(name, hello["state"], hello["version"], hello["detail"])
    except (ValueError, KeyError, TypeError):
        site = crash_site(_stderr_lines(err))
        return Availability(name, "broken", None,
                            f"import {exit_cause(returncode)}" + (f": {site}" if site else ""))


# ------------------------------------------------------------------- running

@dataclass(frozen=True)
class Task:
    """One run of a cell; --repeat runs the same cell as several tasks."""

    cell: Cell
    repeat: int = 0

    @property
    def cost(self) -> int:
        return self.cell.epochs


class Worker:
    """A worker process for one backend, running at most one task at a time."""

    def __init__(self, backend: str, task: Task):
        self.backend = backend
        self.proc, self.err = _spawn([backend], subprocess.PIPE)
        self.fd = self.proc.stdout.fileno()
        self.buffer = b""
        self.ready = False
        self.import_seconds = 0.0
        self.refused = ""  # set when this worker could not import its framework
        self.task: Task | None = None
        self.deadline: float | None = None
        self.assign(task, time.monotonic() + IMPORT_TIMEOUT)

    def assign(self, task: Task, deadline: float | None) -> None:
        self.task, self.deadline = task, deadline
        self.err_start = os.fstat(self.err.fileno()).st_size
        try:
            self.proc.stdin.write((json.dumps(task.cell.to_dict()) + "\n").encode())
            self.proc.stdin.flush()
        except BrokenPipeError:
            pass  # it died; EOF on its stdout reports it

    def read(self) -> list[dict] | None:
        """Complete messages received so far, or None at EOF."""
        data = os.read(self.fd, 1 << 16)
        if not data:
            return None
        *lines, self.buffer = (self.buffer + data).split(b"\n")
        return [json.loads(line) for line in lines]

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
            fh.close()


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
    """Runs tasks in at most `jobs` workers; calls on_result(task, record)
    as each task ends, in completion order."""

    def __init__(self, versions: dict[str, str | None], jobs: int, timeout: float | None,
                 on_result: Callable[[Task, Record], None]):
        self.versions, self.jobs, self.timeout = versions, jobs, timeout
        self.on_result = on_result
        self.queues: dict[str, deque[Task]] = {}
        self.workers: list[Worker] = []
        self.closing: list[Worker] = []
        self.timing: dict[str, BackendTiming] = {}

    def run(self, tasks: list[Task]) -> dict[str, BackendTiming]:
        # Longest first, so that no long cell is left for the end.
        for task in sorted(tasks, key=lambda t: -t.cost):
            self.queues.setdefault(task.cell.backend, deque()).append(task)
            self.timing.setdefault(task.cell.backend, BackendTiming())
        try:
            while True:
                self._dispatch()  # starts workers while any cell is queued
                if not self.workers:
                    break
                self._wait()
            for w in self.closing:
                try:
                    w.proc.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    pass
        finally:
            for w in self.workers + self.closing:
                w.kill()
        return self.timing

    def _dispatch(self) -> None:
        for w in list(self.workers):
            if w.ready and w.task is None:
                queue = self.queues[w.backend]
                if queue:
                    w.assign(queue.popleft(), self._deadline())
                else:
                    w.close()
                    self.workers.remove(w)
                    self.closing.append(w)
        while len(self.workers) < self.jobs:
            backend = self._backend_for_new_worker()
            if backend is None:
                break
            self.workers.append(Worker(backend, self.queues[backend].popleft()))
            self.timing[backend].workers += 1

    def _backend_for_new_worker(self) -> str | None:
        best, best_share = None, 0.0
        for backend, queue in self.queues.items():
            n = sum(w.backend == backend for w in self.workers)
            if not queue or len(queue) < CELLS_PER_EXTRA_WORKER * n:
                continue
            share = sum(t.cost for t in queue) / (n + 1)
            if share > best_share:
                best, best_share = backend, share
        return best

    def _deadline(self) -> float | None:
        return None if self.timeout is None else time.monotonic() + self.timeout

    def _wait(self) -> None:
        deadlines = [w.deadline for w in self.workers if w.deadline is not None]
        wait = max(0.0, min(deadlines) - time.monotonic()) if deadlines else None
        readable, _, _ = select.select([w.fd for w in self.workers], [], [], wait)
        for w in list(self.workers):
            if w.fd in readable:
                self._receive(w)
        now = time.monotonic()
        for w in list(self.workers):
            if w.deadline is not None and now >= w.deadline:
                if w.ready:
                    self._lose(w, "timeout", f"killed after {self.timeout:g} s (--timeout)")
                else:
                    self._lose(w, "error", f"importing {w.backend} did not finish within "
                                           f"{IMPORT_TIMEOUT:g} s; worker killed")

    def _receive(self, w: Worker) -> None:
        messages = w.read()
        if messages is None:
            w.proc.wait()
            cause = w.refused or f"worker process {exit_cause(w.proc.returncode)}"
            where = "while running this cell" if w.ready else f"while importing {w.backend}"
            self._lose(w, "error", f"{cause} {where}" if not w.refused else cause)
            return
        for msg in messages:
            if "record" in msg:
                task, record = w.task, Record.from_dict(msg["record"])
                w.task, w.deadline = None, None
                timing = self.timing[w.backend]
                timing.cells += 1
                timing.train_seconds += record.seconds or 0.0
                self.on_result(task, record)
            elif msg.get("state") == "ok":
                w.ready, w.import_seconds = True, msg["import_seconds"]
                self.timing[w.backend].import_seconds += w.import_seconds
                w.deadline = self._deadline()
            else:
                w.refused = (f"worker could not import {w.backend} ({msg.get('state')}: "
                             f"{msg.get('detail')})")

    def _lose(self, w: Worker, status: str, message: str) -> None:
        """End worker w; its current task, if any, gets this status."""
        if w.proc.poll() is None:
            w.proc.kill()
        w.proc.wait()
        lines = w.stderr_lines()
        w.kill()
        self.workers.remove(w)
        if w.task is not None:
            site = crash_site(lines) if status == "error" and not w.refused else ""
            record = Record.for_cell(w.task.cell, status, message + (f" ({site})" if site else ""),
                                     backend_version=self.versions.get(w.backend),
                                     info={"stderr": lines} if lines else {})
            self.timing[w.backend].cells += 1
            self.on_result(w.task, record)
