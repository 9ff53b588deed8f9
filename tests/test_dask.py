"""``harness run --executor dask`` end to end, on a cluster these tests start
themselves: a ``dask scheduler`` and two ``dask worker`` processes (one
thread each, with their nannies), all bound to 127.0.0.1, stopped (process
groups killed) at the end of the module.

Faults come from test backends (tests/faulty_backend.py: xor segfaults,
xnor exits 3, nand hangs; tests/killparent_backend.py kills its Dask
worker).  The cluster's workers run faulty's cells 0.2 s slower
(FAULTY_SLEEP), so that a worker can be killed mid-run, and log every cell
they start (FAULTY_LOG), so that a test can tell how often a cell ran.
"""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
EXTRA = ("faulty=tests.faulty_backend,importcrash=tests.importcrash_backend,"
         "killparent=tests.killparent_backend")
try:
    import distributed  # noqa: F401
    import psutil
except ImportError:
    HAVE_DASK = False
else:
    HAVE_DASK = True
needs_dask = pytest.mark.skipif(not HAVE_DASK, reason="the dask extra is not installed "
                                "(pip install -e .[dask])")
LOOPBACK = {"127.0.0.1", "::1"}
# The matrix of the kill tests: 36 cells, half of them faulty's (0.2 s each
# on the cluster).
KILL_MATRIX = ["--backends", "numpy,faulty", "--levels", "raw,perceptron", "--archs", "single",
               "--gates", "and,or,not", "--seeds", "0-2", "--dtype", "float64", "--no-report"]


def env(**extra):
    return {**os.environ, "PYTHONPATH": str(ROOT), "HARNESS_EXTRA_BACKENDS": EXTRA, **extra}


def harness(*args, **extra_env):
    return subprocess.run([sys.executable, "-m", "harness", *args], capture_output=True,
                          text=True, cwd=ROOT, env=env(**extra_env), timeout=300)


def _interruptible():
    # As in test_engine: a suite started in the background inherits SIGINT
    # ignored; the run must get Ctrl-C as a terminal would send it.
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def start(*args, **extra_env):
    return subprocess.Popen([sys.executable, "-m", "harness", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, cwd=ROOT, env=env(**extra_env),
                            start_new_session=True, preexec_fn=_interruptible)


def records(out):
    return [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]


def key(d):
    return (d["backend"], d["level"], d["arch"], d["gate"], d["seed"])


def results(out):
    """Every record of a run folder but its `seconds`, by cell."""
    return {key(d): {k: v for k, v in d.items() if k != "seconds"} for d in records(out)}


def complete_lines(out):
    path = out / "results.jsonl"
    return path.read_text().count("\n") if path.exists() else 0


def wait_for(predicate, timeout=120):
    end = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < end, "timed out waiting"
        time.sleep(0.05)


def one_line_exit_2(r, needle):
    assert r.returncode == 2, r.stdout + r.stderr
    assert r.stderr.count("\n") == 1 and needle in r.stderr, r.stderr
    assert "Traceback" not in r.stderr


def listening(pid):
    """(process, ip, port) of every listening inet socket of pid and its descendants."""
    try:
        top = psutil.Process(pid)
        procs = [top, *top.children(recursive=True)]
    except psutil.NoSuchProcess:
        return []
    out = []
    for p in procs:
        try:
            out += [(p.pid, c.laddr.ip, c.laddr.port) for c in p.net_connections("inet")
                    if c.status == psutil.CONN_LISTEN]
        except psutil.NoSuchProcess:
            pass
    return out


class Cluster:
    """A `dask scheduler` and `dask worker` processes on 127.0.0.1, each in
    its own process group."""

    def __init__(self, folder: Path):
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)
        self.file = folder / "scheduler.json"
        self.log = folder / "cells.log"  # FAULTY_LOG
        self.pidfile = folder / "hung.pid"  # FAULTY_PIDFILE
        self.procs: list[subprocess.Popen] = []
        self.env = env(FAULTY_SLEEP="0.2", FAULTY_LOG=str(self.log),
                       FAULTY_PIDFILE=str(self.pidfile),
                       # The harness, not the scheduler, decides about a task
                       # whose worker died (see dask_executor's docstring).
                       DASK_DISTRIBUTED__SCHEDULER__ALLOWED_FAILURES="0")
        self.scheduler = self._spawn("scheduler", "--host", "127.0.0.1", "--port", "0",
                                     "--dashboard-address", "127.0.0.1:0")
        wait_for(lambda: self.file.exists() and self.file.stat().st_size > 0, 60)
        wait_for(lambda: "address" in self.file.read_text(), 60)
        self.address = json.loads(self.file.read_text())["address"]
        self.workers = [self.add_worker() for _ in range(2)]
        self.wait_for_workers(2)

    def _spawn(self, what, *args, **extra_env):
        log = open(self.folder / f"{what}-{len(self.procs)}.log", "w")
        p = subprocess.Popen([sys.executable, "-m", "dask", what, *args, "--scheduler-file",
                              str(self.file)], stdout=log, stderr=subprocess.STDOUT, cwd=ROOT,
                             env={**self.env, **extra_env}, start_new_session=True)
        self.procs.append(p)
        return p

    def add_worker(self, **extra_env):
        return self._spawn("worker", "--host", "127.0.0.1", "--nthreads", "1",
                           "--dashboard-address", "127.0.0.1:0", **extra_env)

    def client(self):
        from distributed import Client

        return Client(self.address, timeout=30, set_as_default=False)

    def wait_for_workers(self, n):
        """Until exactly n workers are connected (nannies restart killed ones)."""
        with self.client() as c:
            wait_for(lambda: len(c.scheduler_info(n_workers=-1)["workers"]) == n, 120)

    def worker_pids(self):
        """{Dask worker process pid: its nanny's `dask worker` process}."""
        out = {}
        for w in self.workers:
            for child in psutil.Process(w.pid).children():
                if "spawn_main" in " ".join(child.cmdline()):
                    out[child.pid] = w.pid
        return out

    def stop(self, proc):
        for sig in (signal.SIGTERM, signal.SIGKILL):
            try:
                os.killpg(proc.pid, sig)
                proc.wait(timeout=15)
                break
            except subprocess.TimeoutExpired:
                continue
            except ProcessLookupError:
                break
        proc.wait()

    def close(self):
        for p in reversed(self.procs):
            self.stop(p)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    c = Cluster(tmp_path_factory.mktemp("dask"))
    try:
        yield c
    finally:
        c.close()


@pytest.fixture(scope="module")
def kill_baseline(tmp_path_factory):
    """KILL_MATRIX run by the local executor."""
    out = tmp_path_factory.mktemp("baseline") / "run"
    r = harness("run", *KILL_MATRIX, "--out", str(out))
    assert r.returncode == 0, r.stderr
    return results(out)


def assert_loopback_only(*pids):
    seen = [s for pid in pids for s in listening(pid)]
    assert seen, "no listening socket found: the check would prove nothing"
    assert {ip for _, ip, _ in seen} <= LOOPBACK, seen


def log_lines(cluster):
    return cluster.log.read_text().splitlines() if cluster.log.exists() else []


# --------------------------------------------------------------- the checks

@needs_dask
def test_cluster_gives_the_records_of_the_local_executor(cluster, tmp_path):
    args = ["run", "--backends", "numpy,faulty", "--levels", "raw,module", "--archs", "single",
            "--gates", "and,or,xor,nand", "--dtype", "float64", "--timeout", "1",
            "--no-report", "--jobs", "2"]
    r = harness(*args, "--out", str(tmp_path / "local"))
    assert r.returncode == 1, r.stderr  # the segfaults and the timeouts
    r = harness(*args, "--executor", "dask", "--scheduler", cluster.address,
                "--out", str(tmp_path / "dask"))
    assert r.returncode == 1, r.stderr
    local, dask = results(tmp_path / "local"), results(tmp_path / "dask")
    assert len(local) == 16 and dask == local  # params_final, statuses, verdicts, stderr...
    assert {d["status"] for k, d in dask.items() if k[3] == "xor" and k[0] == "faulty"} == {"error"}
    assert {d["status"] for k, d in dask.items() if k[3] == "nand" and k[0] == "faulty"} == {"timeout"}
    # Progress counts the cells done across the cluster, one line per backend.
    assert f"Dask scheduler {cluster.address} (2 workers, 2 threads)" in r.stderr
    assert sorted(ln.split()[1] for ln in r.stderr.splitlines() if "cells done" in ln) == \
        ["faulty", "numpy"]
    man = json.loads((tmp_path / "dask" / "manifest.json").read_text())
    assert man["config"]["executor"] == "dask" and man["config"]["scheduler"] == cluster.address
    ex = man["executor"]
    assert ex["kind"] == "dask" and ex["scheduler"] == cluster.address and ex["cluster"] == "external"
    assert len(ex["workers"]) == 2
    for w in ex["workers"]:
        assert w["address"].startswith("tcp://127.0.0.1:") and w["host"]
        assert w["versions"] == {"numpy": man["versions"]["numpy"], "faulty": man["versions"]["faulty"]}
    assert json.loads((tmp_path / "local" / "manifest.json").read_text())["executor"] == {"kind": "local"}
    from harness.report.tables import manifest_rows  # the report's manifest section shows them

    rows = dict(manifest_rows(man))
    assert rows["executor"] == f"dask: scheduler {cluster.address} (external)"
    assert sum(k.startswith("worker tcp://127.0.0.1:") for k in rows) == 2


@needs_dask
def test_a_segfault_costs_only_its_cells_and_is_never_retried(cluster, tmp_path):
    before = cluster.worker_pids()
    cluster.log.write_text("")
    out = tmp_path / "run"
    r = harness("run", "--backends", "faulty", "--levels", "raw,module", "--archs", "single",
                "--gates", "and,xor,xnor,or", "--dtype", "float64", "--executor", "dask",
                "--scheduler", cluster.address, "--no-report", "--out", str(out))
    assert r.returncode == 1, r.stderr
    recs = results(out)
    for level in ("raw", "module"):
        segv = recs[("faulty", level, "single", "xor", 0)]
        assert segv["status"] == "error" and "killed by SIGSEGV" in segv["message"]
        assert "faulty: failing on purpose at epoch 50" in segv["info"]["stderr"]
        exit3 = recs[("faulty", level, "single", "xnor", 0)]
        assert exit3["status"] == "error" and "exited with status 3" in exit3["message"]
        for gate in ("and", "or"):
            assert recs[("faulty", level, "single", gate, 0)]["status"] == "ok"
    # Each crashing cell ran once: no Dask worker died, nothing was retried.
    started = [line.split()[:2] for line in log_lines(cluster)]
    assert sorted(started) == sorted([g, lv] for g in ("and", "xor", "xnor", "or")
                                     for lv in ("raw", "module"))
    assert cluster.worker_pids() == before


@needs_dask
def test_killing_a_dask_worker_mid_run_loses_no_record(cluster, tmp_path, kill_baseline):
    cluster.log.write_text("")
    out = tmp_path / "run"
    proc = start("run", *KILL_MATRIX, "--executor", "dask", "--scheduler", cluster.address,
                 "--out", str(out))
    try:
        # As soon as a faulty cell starts (each takes 0.2 s there), kill the
        # Dask worker running it.
        wait_for(lambda: complete_lines(out) >= 4)
        workers = cluster.worker_pids()
        seen = len(log_lines(cluster))
        end = time.monotonic() + 60
        while len(log_lines(cluster)) == seen and time.monotonic() < end:
            time.sleep(0.005)
        gate, level, seed, pid = log_lines(cluster)[seen].split()
        victim = psutil.Process(int(pid)).parent()
        victim.kill()
        assert victim.pid in workers
        kept = records(out)
        stdout, stderr = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == 0, stderr
    assert len(kept) < 36, "the run finished before a worker could be killed"
    final = {key(d): d for d in records(out)}
    assert all(final[key(d)] == d for d in kept)  # finished records are kept as they were
    assert results(out) == kill_baseline
    # The cell that lost its worker was re-queued by the harness and ran again.
    assert log_lines(cluster).count(f"{gate} {level} {seed} {pid}") == 1
    assert sum(line.startswith(f"{gate} {level} {seed} ") for line in log_lines(cluster)) == 2
    cluster.wait_for_workers(2)  # the nanny restarted it


@needs_dask
def test_resume_on_the_cluster_finishes_a_killed_run(cluster, tmp_path, kill_baseline):
    out = tmp_path / "run"
    proc = start("run", *KILL_MATRIX, "--executor", "dask", "--scheduler", cluster.address,
                 "--out", str(out))
    try:
        wait_for(lambda: complete_lines(out) >= 8)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
    kept = complete_lines(out)
    assert kept < 36
    # Any executor finishes any run: here the cluster again, then locally (a no-op).
    r = harness("run", "--resume", str(out), "--executor", "dask", "--scheduler", cluster.address,
                "--no-report")
    assert r.returncode == 0, r.stderr
    assert results(out) == kill_baseline
    man = json.loads((out / "manifest.json").read_text())
    assert man["executor"]["kind"] == "dask"
    assert man["resumed"][0]["executor"]["scheduler"] == cluster.address
    assert man["resumed"][0]["timing"]["cells_recorded"] == 36 - kept
    r = harness("run", "--resume", str(out), "--executor", "local", "--quiet", "--no-report")
    assert r.returncode == 0 and results(out) == kill_baseline
    assert json.loads((out / "manifest.json").read_text())["resumed"][1]["executor"] == \
        {"kind": "local"}


@needs_dask
def test_ctrl_c_cancels_the_cluster_s_cells_and_keeps_records(cluster, tmp_path):
    out = tmp_path / "run"
    cluster.pidfile.unlink(missing_ok=True)
    proc = start("run", "--backends", "numpy,faulty", "--levels", "raw", "--archs", "single",
                 "--gates", "and,nand", "--executor", "dask", "--scheduler", cluster.address,
                 "--no-report", "--out", str(out))
    try:
        wait_for(lambda: cluster.pidfile.exists() and complete_lines(out) == 3)
        proc.send_signal(signal.SIGINT)
        stdout, stderr = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 130, stderr
    assert "interrupted" in stderr and "--resume" in stderr and "total" in stdout
    assert sorted((d["backend"], d["gate"]) for d in records(out)) == \
        [("faulty", "and"), ("numpy", "and"), ("numpy", "nand")]
    hung = int(cluster.pidfile.read_text())
    # The Dask worker saw its task cancelled and killed the hung subprocess.
    wait_for(lambda: not psutil.pid_exists(hung) or
             psutil.Process(hung).status() == psutil.STATUS_ZOMBIE, 10)


@needs_dask
def test_a_cell_that_kills_its_dask_worker_twice_is_an_error(cluster, tmp_path):
    out = tmp_path / "run"
    r = harness("run", "--backends", "numpy,killparent", "--levels", "raw", "--archs", "single",
                "--gates", "and", "--executor", "dask", "--scheduler", cluster.address,
                "--no-report", "--out", str(out))
    assert r.returncode == 1, r.stderr
    recs = results(out)
    assert recs[("numpy", "raw", "single", "and", 0)]["status"] == "ok"
    lost = recs[("killparent", "raw", "single", "and", 0)]
    assert lost["status"] == "error" and "Dask worker died while running it" in lost["message"]
    assert "again after being re-queued" in lost["message"]
    cluster.wait_for_workers(2)


@needs_dask
def test_a_lost_scheduler_stops_the_run_and_resume_finishes_it(tmp_path, kill_baseline):
    doomed = Cluster(tmp_path / "cluster")  # this test kills its scheduler
    try:
        out = tmp_path / "run"
        proc = start("run", *KILL_MATRIX, "--executor", "dask", "--scheduler", doomed.address,
                     "--out", str(out))
        try:
            wait_for(lambda: complete_lines(out) >= 6)
            doomed.stop(doomed.scheduler)
            stdout, stderr = proc.communicate(timeout=120)
        finally:
            proc.kill()
    finally:
        doomed.close()
    assert proc.returncode == 1, stderr
    assert f"harness: stopped: lost the Dask scheduler at {doomed.address}" in stderr
    assert "Finish with: harness run --resume" in stderr and "Traceback" not in stderr
    kept = complete_lines(out)
    assert 6 <= kept < 36
    r = harness("run", "--resume", str(out), "--executor", "local", "--no-report")
    assert r.returncode == 0, r.stderr
    assert results(out) == kill_baseline


@needs_dask
def test_workers_that_disagree_on_a_version_are_refused(cluster, tmp_path):
    odd = cluster.add_worker(FAULTY_VERSION="0.0-other")
    try:
        cluster.wait_for_workers(3)
        out = tmp_path / "run"
        r = harness("run", "--backends", "numpy,faulty", "--levels", "raw", "--archs", "single",
                    "--gates", "and", "--executor", "dask", "--scheduler", cluster.address,
                    "--out", str(out))
        one_line_exit_2(r, "the Dask workers disagree on faulty: ")
        assert "0.0-other on " in r.stderr and "127.0.0.1" in r.stderr
        assert not out.exists()
    finally:
        cluster.stop(odd)
        cluster.procs.remove(odd)
    cluster.wait_for_workers(2)


@needs_dask
def test_nothing_listens_beyond_loopback(cluster, tmp_path, kill_baseline):
    # The cluster these tests started (the restarted workers too)...
    assert_loopback_only(*(p.pid for p in cluster.procs))
    # ...and the LocalCluster `harness run --executor dask` starts, watched
    # while it runs; it also gives the local executor's records.
    out = tmp_path / "run"
    proc = start("run", *KILL_MATRIX, "--executor", "dask", "--jobs", "2", "--out", str(out),
                 FAULTY_SLEEP="0.1")
    seen = set()
    try:
        while proc.poll() is None:
            seen.update(listening(proc.pid))
            time.sleep(0.1)
        stdout, stderr = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 0, stderr
    assert len({port for _, _, port in seen}) >= 4, seen  # scheduler, nanny, worker, HTTP
    assert {ip for _, ip, _ in seen} <= LOOPBACK, seen
    assert results(out) == kill_baseline
    man = json.loads((out / "manifest.json").read_text())
    assert man["executor"]["cluster"] == "LocalCluster started by the harness"
    assert man["executor"]["scheduler"].startswith("tcp://127.0.0.1:")


# ---------------------------------------------------- without the cluster

def test_executor_and_scheduler_are_checked(tmp_path):
    out = tmp_path / "run"
    one_line_exit_2(harness("run", "--scheduler", "tcp://127.0.0.1:8786", "--out", str(out)),
                    "needs executor 'dask'")
    one_line_exit_2(harness("run", "--executor", "dusk", "--out", str(out)),
                    "Unknown executor 'dusk'. Did you mean 'dask'?")
    one_line_exit_2(harness("run", "--executor", "dask", "--scheduler", "nowhere",
                            "--out", str(out)), "Invalid scheduler 'nowhere'")
    cfg = tmp_path / "c.toml"
    cfg.write_text('executor = "local"\nscheduler = "tcp://127.0.0.1:8786"\n')
    one_line_exit_2(harness("run", "--config", str(cfg), "--out", str(out)),
                    "needs executor 'dask'")
    assert not out.exists()


def test_without_distributed_dask_says_how_to_install_it(tmp_path):
    # A `distributed` that cannot be imported, first on the path.
    shadow = tmp_path / "shadow" / "distributed"
    shadow.mkdir(parents=True)
    (shadow / "__init__.py").write_text("raise ImportError('not installed here')\n")
    out = tmp_path / "run"
    r = harness("run", "--backends", "numpy", "--executor", "dask", "--out", str(out),
                PYTHONPATH=f"{shadow.parent}{os.pathsep}{ROOT}")
    one_line_exit_2(r, "pip install 'feedforward-harness[dask]'")
    assert not out.exists()


def test_check_agreement_names_what_differs():
    from harness.execution.dask_executor import ClusterError, check_agreement

    def info(host, torch="2.13.0", numpy="1.23.5"):
        return {"host": host, "python": "3.11.7", "numpy": numpy, "harness": "abc",
                "backends": {"torch": {"state": "ok", "version": torch, "detail": ""},
                             "mxnet": {"state": "missing", "version": None, "detail": "x"}}}

    check_agreement({"tcp://a:1": info("a"), "tcp://b:1": info("b")})
    with pytest.raises(ClusterError, match=r"disagree on torch: 2.13.0 on a \(tcp://a:1\); "
                                           r"2.12.0 on b \(tcp://b:1\)"):
        check_agreement({"tcp://a:1": info("a"), "tcp://b:1": info("b", torch="2.12.0")})
    with pytest.raises(ClusterError, match="disagree on numpy"):
        check_agreement({"tcp://a:1": info("a"), "tcp://b:1": info("b", numpy="2.0.0")})


@needs_dask
def test_a_worker_with_another_framework_version_does_not_run_the_cell():
    # What a Dask worker that joined after the probe does with a cell whose
    # framework it has in another version: an error record, no result.
    from harness.execution import dask_worker, engine
    from conftest import make_cell

    w = engine.Worker("numpy")
    try:
        record = dask_worker._serve(w, engine.Task(make_cell("numpy", "raw", "single", "and")),
                                    "0.0-run", None, lambda: False)
    finally:
        w.kill()
    assert record.status.value == "error" and record.backend_version == "0.0-run"
    assert "has numpy " in record.message and "the run uses 0.0-run; cell not run" in record.message


@needs_dask
def test_distributed_s_connection_tracebacks_are_dropped_from_every_logger(capfd, caplog):
    # The kill test above meets these only when the scheduler dies mid-write
    # (CI did: distributed.batched logged "Error in batched write" with a
    # CommClosedError traceback, while the filter sat on distributed.client
    # alone).
    import logging

    from distributed.comm.core import CommClosedError
    from harness.execution import dask_executor

    loggers = dask_executor._quiet_connection_errors_on(dask_executor._distributed_loggers())
    assert {"distributed.batched", "distributed.client"} <= {lg.name for lg in loggers}
    try:
        for name in ("distributed.batched", "distributed.client", "distributed.core"):
            try:
                raise CommClosedError("in <TCP (closed)>: Stream is closed")
            except CommClosedError:
                logging.getLogger(name).exception("Error in batched write")
        logging.getLogger("distributed.client").error(
            "Failed to reconnect to scheduler after 15.00 seconds, closing client")
        logging.getLogger("distributed.batched").error("something else went wrong")
    finally:
        for logger in loggers:
            logger.removeFilter(dask_executor._quiet_connection_errors)
    err = capfd.readouterr().err + caplog.text
    assert "Traceback" not in err and "Failed to reconnect" not in err
    assert "something else went wrong" in err  # only connection errors are dropped


@needs_dask
def test_a_future_that_finished_before_the_scheduler_was_lost_means_a_lost_cluster(tmp_path):
    # CI, 2026-12-03: the client cancels every future it holds when it loses
    # the scheduler, finished ones too.  The executor read a future's status
    # ("finished"), then its result, which by then raised
    # FutureCancelledError, and a traceback ended the run.  _outcome reads
    # the future once; here the cancellation comes before it, for certain.
    from harness.execution.dask_executor import ClusterLost, _outcome

    doomed = Cluster(tmp_path / "cluster")
    try:
        with doomed.client() as client:
            future = client.submit(sum, [1, 2], pure=False)
            assert _outcome(future, doomed.address) == (3, None)
            doomed.stop(doomed.scheduler)
            wait_for(lambda: future.status == "cancelled", 60)
            with pytest.raises(ClusterLost, match="lost the Dask scheduler at .*"
                               "cancelled for reason: scheduler-connection-lost"):
                _outcome(future, doomed.address)
    finally:
        doomed.close()
