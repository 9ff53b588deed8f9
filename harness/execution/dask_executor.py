"""The parent side of ``harness run --executor dask [--scheduler ADDR]``.

``DaskExecutor`` has the local ``engine.Engine``'s interface (``run(tasks,
on_results)``, ``shutdown()``, ``timing``), so the runner appends, shows
progress, handles Ctrl-C and writes tables exactly as it does locally;
``harness.runner.start_executor`` is the one place an executor is chosen.

Design, and why:

* **Isolation: a long-lived harness worker subprocess per framework on each
  Dask worker** (harness/execution/dask_worker.py), rather than importing a
  framework into the Dask worker process (one framework per worker through
  worker resources, or a per-framework plugin).  A framework that segfaults
  then kills only that subprocess: the task itself returns the cell's
  ``error`` record with the cause, the Dask worker stays up and the
  scheduler has nothing to retry, whatever the cluster's
  ``allowed-failures`` says.  With the framework inside the Dask worker, the
  segfault would kill the worker, and the scheduler would by default
  resubmit the cell to three more workers and kill them too.  The
  subprocess is the local engine's own (``engine.Worker``, the same JSON
  lines, the same ``child.run_cell``), so a record is the same bytes
  wherever it is computed; ``--timeout`` is enforced on it inside the task
  (Dask cannot interrupt a running task); and any Dask worker can serve any
  framework, so the cluster needs no per-framework resources or layout.
  A framework is imported once per Dask worker (and per thread running its
  cells at once), not per cell; a backend's subprocesses are let go on every
  worker as soon as its last cell is done.
* **Versions before anything is written**: ``Client.run`` asks every Dask
  worker to import each framework of the run in its subprocesses (never in
  the Dask worker process itself; those subprocesses then serve the first
  cells).  Workers that disagree on a framework's version or state, on
  Python, numpy or the harness's own code are refused (one line, exit 2),
  like ``--resume`` refuses a changed version.  A worker that joins later
  is checked per cell: a subprocess with another version gives that cell an
  ``error`` record saying so instead of a result from another version.  The
  manifest's ``executor`` entry names the scheduler and, per worker, its
  host and versions.
* **Pure tasks**: a cell's record depends only on its Cell, so where and in
  which order cells run changes nothing but ``seconds``.  Tasks are
  submitted with ``retries=0`` and priorities that run backends one after
  another (longest cells first), as the local engine does; records arrive
  through ``as_completed``, so progress counts cells across the cluster.
* **A Dask worker that disappears** (its host lost, the process killed):
  the LocalCluster's scheduler runs with ``allowed-failures`` 0, so the
  harness hears of it at once (``KilledWorker``); a cluster's own scheduler
  may first resubmit the task itself (``allowed-failures``, default 3),
  harmless because a framework crash never kills a Dask worker here.  The
  harness then **re-queues the cell itself**, once: a cell whose Dask worker
  dies a second time gets an ``error`` record saying so (it is probably the
  cause), so the run always completes.  Finished records are on disk
  already.  If the scheduler itself goes away, the run stops like Ctrl-C
  (records kept, exit 1) and ``--resume`` finishes it, with any executor.
* **LocalCluster** (``--executor dask`` without ``--scheduler``): one Dask
  worker process with ``--jobs`` threads, bound to 127.0.0.1 only (the
  scheduler, its HTTP endpoint, the nanny and the worker); its threads only
  wait on subprocesses, so one process is enough (measured: it starts in
  about 1 s and holds ~65 MB, plus ~13 MB for multiprocessing's resource
  tracker; the scheduler and nanny live in ``harness run``).
"""
from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import threading
import uuid
from collections import Counter
from concurrent.futures import CancelledError
from typing import Any, Callable

from harness.execution.engine import BackendTiming, Task
from harness.records import Record, Status
from harness.registry import Availability

INSTALL = "pip install 'feedforward-harness[dask]'"
CONNECT_TIMEOUT = 15.0
# A scheduler with no worker yet: how long to wait for one.
WORKER_WAIT = 30.0
# A cell re-queued after its Dask worker died gets an error record the
# time this many of its workers have died.
LOSSES = 2


class ClusterError(ValueError):
    """A cluster the harness will not use; one line, exit 2, nothing written."""


class ClusterLost(RuntimeError):
    """The scheduler went away mid-run; finished records are kept."""


def require_distributed() -> None:
    try:
        import distributed  # noqa: F401
    except ImportError:
        raise ClusterError(f"--executor dask needs the distributed package: {INSTALL}") from None


def _local_cluster(jobs: int):
    import dask
    from distributed import LocalCluster

    # allowed-failures 0: a task whose worker died is reported, not resubmitted
    # by the scheduler (the harness decides; see the module docstring).
    # Ctrl-C on a terminal reaches the whole process group; the worker
    # process is started with SIGINT ignored (inherited through exec), so
    # that only `harness run` decides what happens, as with local workers.
    with dask.config.set({"distributed.scheduler.allowed-failures": 0}), _sigint_ignored():
        return LocalCluster(n_workers=1, threads_per_worker=jobs, processes=True,
                            host="127.0.0.1", scheduler_port=0,
                            dashboard_address="127.0.0.1:0", silence_logs=logging.ERROR)


@contextlib.contextmanager
def _sigint_ignored():
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def _where(addr: str, infos: dict[str, dict]) -> str:
    return f"{infos[addr]['host']} ({addr})"


def check_agreement(infos: dict[str, dict]) -> None:
    """Refuse workers that would not compute the same records."""
    def facts(info: dict) -> dict[str, Any]:
        out = {"Python": info["python"], "numpy": info["numpy"],
               "the harness's code (harness/, backends/)": info["harness"]}
        for name, b in info["backends"].items():
            out[name] = b["version"] if b["state"] == "ok" else b["state"]
        return out

    per_worker = {addr: facts(info) for addr, info in infos.items()}
    keys = dict.fromkeys(k for f in per_worker.values() for k in f)
    for key in keys:
        groups: dict[Any, list[str]] = {}
        for addr, f in per_worker.items():
            groups.setdefault(f.get(key), []).append(addr)
        if len(groups) > 1:
            says = "; ".join(f"{value} on {', '.join(_where(a, infos) for a in addrs[:3])}"
                             + (f" and {len(addrs) - 3} more" if len(addrs) > 3 else "")
                             for value, addrs in groups.items())
            raise ClusterError(f"the Dask workers disagree on {key}: {says}. Give every worker "
                               "the same environment (constraints/reference.txt) and harness.")


class DaskExecutor:
    """Runs tasks on a Dask cluster, each cell in a harness subprocess kept
    by the Dask worker that runs it (harness/execution/dask_worker.py)."""

    def __init__(self, client, cluster, timeout: float | None, versions: dict[str, str | None],
                 infos: dict[str, dict]):
        self.client, self.cluster, self.timeout, self.versions = client, cluster, timeout, versions
        # A lost scheduler is reported as ClusterLost, in one line.
        self._quieted = _quiet_connection_errors_on(_distributed_loggers())
        self.timing: dict[str, BackendTiming] = {}
        self.futures: dict[Any, tuple[Task, int]] = {}
        self.closed = False
        self.known = set(infos)
        for info in infos.values():
            for name, seconds in info["import_seconds"].items():
                t = self.timing.setdefault(name, BackendTiming())
                t.workers += 1
                t.import_seconds += seconds
        threads = sum(client.nthreads().values())
        self.where = (f"Dask scheduler {client.scheduler.address} ({len(infos)} workers, "
                      f"{threads} threads)")
        self.info = {
            "kind": "dask", "scheduler": client.scheduler.address,
            "cluster": "LocalCluster started by the harness" if cluster else "external",
            "workers": [{"address": addr, "host": info["host"], "python": info["python"],
                         "numpy": info["numpy"], "harness": info["harness"],
                         "versions": {n: b["version"] if b["state"] == "ok" else b["state"]
                                      for n, b in info["backends"].items()}}
                        for addr, info in sorted(infos.items())]}

    # ------------------------------------------------------------- starting

    @classmethod
    def start(cls, names: list[str], scheduler: str | None, jobs: int, timeout: float | None
              ) -> tuple[dict[str, Availability], "DaskExecutor"]:
        """Connect (or start a LocalCluster), probe every worker, check they
        agree: (availability of each backend, the executor).  ClusterError
        for a cluster the harness will not use."""
        require_distributed()
        from distributed import Client

        from harness.execution import dask_worker

        cluster = client = None
        try:
            if scheduler is None:
                cluster = _local_cluster(jobs)
                client = Client(cluster, set_as_default=False)
            else:
                try:
                    client = Client(scheduler, timeout=CONNECT_TIMEOUT, set_as_default=False)
                except (OSError, TimeoutError) as exc:
                    raise ClusterError(f"cannot reach the Dask scheduler at {scheduler}: "
                                       f"{str(exc).splitlines()[0]}") from None
            try:
                client.wait_for_workers(1, timeout=WORKER_WAIT)
            except TimeoutError:
                raise ClusterError(f"the Dask scheduler at {client.scheduler.address} has no "
                                   f"worker (waited {WORKER_WAIT:g} s); start `dask worker "
                                   f"{client.scheduler.address}` on each host.") from None
            infos = client.run(dask_worker.probe_async, list(names), on_error="return")
            for addr, info in infos.items():
                if isinstance(info, BaseException):
                    first = (str(info).splitlines() or [""])[0]
                    raise ClusterError(f"the Dask worker {addr} cannot run the harness "
                                       f"({type(info).__name__}: {first}); install it there "
                                       "with the reference environment.")
            check_agreement(infos)
            client.register_plugin(dask_worker.HarnessWorkers())
            first = infos[min(infos)]
            avail = {n: Availability(n, b["state"], b["version"], b["detail"])
                     for n, b in first["backends"].items()}
            executor = cls(client, cluster, timeout,
                           {n: a.version for n, a in avail.items()}, infos)
            return avail, executor
        except BaseException:
            _close(client, cluster)
            raise

    # -------------------------------------------------------------- running

    def _submit(self, task: Task, priority: int, losses: int = 0):
        from harness.execution import dask_worker

        c = task.cell
        key = (f"harness-{c.backend}-{c.level}-{c.arch}-{c.gate}-s{c.seed}-r{task.repeat}-"
               f"{uuid.uuid4().hex[:12]}")
        future = self.client.submit(dask_worker.run_task, c.to_dict(),
                                    self.versions.get(c.backend), self.timeout, key=key,
                                    pure=False, retries=0, priority=priority)
        self.futures[future] = (task, losses)
        return future

    def run(self, tasks: list[Task], on_results: Callable[[list[tuple[Task, Record]]], None]
            ) -> dict[str, BackendTiming]:
        """Run every task on the cluster; on_results([(task, record)]) as
        each ends, in completion order (tasks are single cells here)."""
        from distributed import as_completed

        from harness.execution import dask_worker

        backends = list(dict.fromkeys(t.cell.backend for t in tasks))
        ranked = sorted(tasks, key=lambda t: (backends.index(t.cell.backend), -t.cost))
        priority = {id(t): len(ranked) - i for i, t in enumerate(ranked)}
        left = Counter(t.cell.backend for t in tasks)
        for b in backends:
            self.timing.setdefault(b, BackendTiming())
        done = as_completed([self._submit(t, priority[id(t)]) for t in ranked],
                            loop=self.client.loop)
        for future in done:
            task, losses = self.futures.pop(future)
            cell, record = task.cell, None
            out, killed = _outcome(future, self.info["scheduler"])
            if killed is not None:
                losses += 1
                reason = (f"its Dask worker died while running it ({killed.allowed_failures + 1} "
                          f"time(s) in a row; last {killed.last_worker.address})")
            elif out["record"] is None:  # its task saw itself cancelled: lost
                losses += 1
                reason = f"its task was cancelled on {out['worker']}"
            else:
                record = Record.from_dict(out["record"])
                self._note(out, cell.backend)
            if record is None:
                if losses < LOSSES:
                    done.add(self._submit(task, priority[id(task)], losses))
                    continue
                record = Record.for_cell(cell, Status.ERROR,
                                         f"{reason}, again after being re-queued; not run again",
                                         backend_version=self.versions.get(cell.backend))
            self.timing[cell.backend].cells += 1
            self.timing[cell.backend].train_seconds += record.seconds or 0.0
            on_results([(task, record)])
            left[cell.backend] -= 1
            if not left[cell.backend]:  # its subprocesses are let go everywhere
                try:
                    self.client.run(dask_worker.release_async, cell.backend, wait=False,
                                    on_error="ignore")
                except (OSError, CancelledError) as exc:  # blocks while it reconnects
                    raise _lost(self.info["scheduler"], exc) from None
        return self.timing

    def _note(self, out: dict, backend: str) -> None:
        if out["import_seconds"] is not None:
            t = self.timing[backend]
            t.workers += 1
            t.import_seconds += out["import_seconds"]
        if out["worker"] and out["worker"] not in self.known:
            self.known.add(out["worker"])
            self.info["workers"].append({"address": out["worker"], "host": out["host"],
                                         "joined": "during the run; versions checked per cell"})

    def shutdown(self) -> None:
        """Cancel what has not run, let every harness subprocess go, close
        the client (and the LocalCluster).  Idempotent."""
        if self.closed:
            return
        self.closed = True
        from harness.execution import dask_worker

        try:
            if self.client.status == "running":
                if self.futures:
                    self.client.cancel(list(self.futures), force=True)
                self.client.run(dask_worker.release_async, on_error="ignore")
        except Exception:  # noqa: BLE001 - the cluster may be gone already
            pass
        finally:
            _close(self.client, self.cluster)
            for logger in self._quieted:
                logger.removeFilter(_quiet_connection_errors)


def _outcome(future, scheduler: str) -> tuple[dict | None, Any]:
    """(what the task returned, None), or (None, the KilledWorker) when
    its Dask worker died; ClusterLost when the scheduler is gone.  Any
    other exception is the harness's own bug and propagates.

    One call, ``future.result()``, and no look at ``future.status``
    first: when the client loses the scheduler it cancels every future
    it holds, finished ones too (``Client._reconnect``), so a future
    read as finished could raise FutureCancelledError a moment later
    (it escaped as a traceback in CI once, 2026-12-03)."""
    from distributed import KilledWorker

    try:
        return future.result(), None
    except KilledWorker as exc:
        return None, exc
    except (OSError, CancelledError, asyncio.CancelledError) as exc:
        raise _lost(scheduler, exc) from None


def _lost(scheduler: str, why) -> ClusterLost:
    return ClusterLost(f"lost the Dask scheduler at {scheduler} "
                       f"({str(why).splitlines()[0].strip()})")


def _quiet_connection_errors(record: logging.LogRecord) -> bool:
    """Drop distributed's tracebacks about a connection to the scheduler
    that broke or was refused (the client logs them while it tries to
    reconnect; distributed.batched when a write finds the stream closed),
    and its own line on giving up: ClusterLost says it in the harness's."""
    exc = record.exc_info[1] if record.exc_info else None
    if isinstance(exc, (OSError, asyncio.CancelledError)):
        return False
    return not record.getMessage().startswith("Failed to reconnect to scheduler")


def _distributed_loggers() -> list[logging.Logger]:
    """Every distributed logger there is once the client has connected
    ("distributed.batched", "distributed.core", ... as well as
    "distributed.client"). A filter goes on each logger, not on a handler:
    which handler prints their records depends on who configured logging
    first (distributed's own on "distributed", or the root logger's)."""
    names = sorted(n for n in logging.root.manager.loggerDict
                   if n == "distributed" or n.startswith("distributed."))
    return [logging.getLogger(n) for n in names]


def _quiet_connection_errors_on(loggers: list[logging.Logger]) -> list[logging.Logger]:
    for logger in loggers:
        logger.addFilter(_quiet_connection_errors)
    return loggers


def _close(client, cluster) -> None:
    for thing in (client, cluster):
        if thing is not None:
            try:
                thing.close()
            except Exception:  # noqa: BLE001 - closing what may be gone
                pass
