"""The execution engine end to end: worker processes, crashes, hangs,
timeouts, --jobs, Ctrl-C, kill -9 and --resume, --repeat, divergence.

Faults are injected with test-only backends registered through
HARNESS_EXTRA_BACKENDS (tests/faulty_backend.py: by gate, xor segfaults,
xnor exits 3, nand hangs, nor is not deterministic; importcrash segfaults on
import; hangimport never finishes importing).
"""
import csv
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from harness import registry
from harness.execution import engine
from harness.records import Status

from conftest import availability

ROOT = Path(__file__).resolve().parent.parent
EXTRA = "faulty=tests.faulty_backend,importcrash=tests.importcrash_backend"
SMALL = ["--levels", "raw", "--archs", "single"]


def env(**extra):
    return {**os.environ, "PYTHONPATH": str(ROOT), "HARNESS_EXTRA_BACKENDS": EXTRA, **extra}


def harness(*args, **extra_env):
    return subprocess.run([sys.executable, "-m", "harness", *args], capture_output=True,
                          text=True, cwd=ROOT, env=env(**extra_env), timeout=600)


def _interruptible():
    # A shell without job control starts background commands with SIGINT
    # ignored, and a child inherits that (nohup-style runs of this suite):
    # the run must get Ctrl-C as a terminal would send it.
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def start(*args, **extra_env):
    """A run in its own process group, so that a test can kill the group,
    with SIGINT's default disposition, so that a test can interrupt it."""
    return subprocess.Popen([sys.executable, "-m", "harness", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, cwd=ROOT, env=env(**extra_env),
                            start_new_session=True, preexec_fn=_interruptible)


def records(out):
    return [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]


def by_cell(recs):
    return {(d["backend"], d["level"], d["arch"], d["gate"], d["seed"]): d for d in recs}


def wait_for(predicate, timeout=120):
    end = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < end, "timed out waiting"
        time.sleep(0.05)


def complete_lines(out):
    path = out / "results.jsonl"
    return path.read_text().count("\n") if path.exists() else 0


def without(d, *keys):
    return {k: v for k, v in d.items() if k not in keys}


def same_folder(a: Path, b: Path, manifest_ignore=("created_at", "timing", "resumed")):
    """Assert two run folders hold the same files and the same results, apart
    from what is run-specific: each cell's `seconds`, and manifest fields."""
    assert sorted(p.name for p in a.iterdir()) == sorted(p.name for p in b.iterdir())
    ra, rb = (a / "results.jsonl").read_text(), (b / "results.jsonl").read_text()
    assert [without(json.loads(x), "seconds") for x in ra.splitlines()] == \
           [without(json.loads(x), "seconds") for x in rb.splitlines()]
    ca, cb = (list(csv.DictReader(io.StringIO((p / "results.csv").read_text()))) for p in (a, b))
    assert [without(r, "seconds") for r in ca] == [without(r, "seconds") for r in cb]
    ma, mb = (json.loads((p / "manifest.json").read_text()) for p in (a, b))
    assert without(ma, *manifest_ignore) == without(mb, *manifest_ignore)


# ------------------------------------------------------------- crashes, hangs

def test_segfault_mid_training_costs_only_that_cell(tmp_path):
    out = tmp_path / "run"
    r = harness("run", "--backends", "numpy,faulty", "--levels", "raw,module", "--archs",
                "single", "--gates", "and,xor,xnor,or", "--dtype", "float64", "--jobs", "2",
                "--out", str(out))
    assert r.returncode == 1, r.stderr  # errors
    recs = by_cell(records(out))
    assert len(recs) == 16
    for level in ("raw", "module"):
        segv = recs[("faulty", level, "single", "xor", 0)]
        assert segv["status"] == "error" and "killed by SIGSEGV" in segv["message"]
        assert "faulty_backend.py" in "\n".join(segv["info"]["stderr"])  # faulthandler's trace
        assert "faulty: failing on purpose at epoch 50" in segv["info"]["stderr"]
        exit3 = recs[("faulty", level, "single", "xnor", 0)]
        assert exit3["status"] == "error" and "exited with status 3" in exit3["message"]
        for gate in ("and", "or"):
            # Fresh workers took over: the cells after each crash are ok, and
            # bit-identical to the numpy reference the faulty backend wraps.
            ok, ref = recs[("faulty", level, "single", gate, 0)], recs[("numpy", level, "single", gate, 0)]
            assert ok["status"] == "ok" and ok["params_final"] == ref["params_final"]
    assert {d["status"] for k, d in recs.items() if k[0] == "numpy"} == {"ok"}
    assert "error" in r.stdout  # the summary
    # Not a terminal: one plain progress line per backend.
    assert sorted(ln.split()[1] for ln in r.stderr.splitlines() if "cells done" in ln) == \
        ["faulty", "numpy"]


def test_framework_that_segfaults_on_import_is_broken_and_the_run_goes_on(tmp_path):
    r = harness("list")
    assert r.returncode == 0, r.stderr
    line = next(ln for ln in r.stdout.splitlines() if "importcrash" in ln)
    assert "broken" in line and "killed by SIGSEGV" in line and "in string_at" in line
    out = tmp_path / "run"
    r = harness("run", "--backends", "numpy,importcrash", *SMALL, "--gates", "and", "--out", str(out))
    assert r.returncode == 0, r.stderr
    recs = by_cell(records(out))
    assert recs[("numpy", "raw", "single", "and", 0)]["status"] == "ok"
    skipped = recs[("importcrash", "raw", "single", "and", 0)]
    assert skipped["status"] == "skipped" and "killed by SIGSEGV" in skipped["message"]


def test_hanging_import_is_broken(monkeypatch):
    monkeypatch.setenv("HARNESS_EXTRA_BACKENDS", "hangimport=tests.hangimport_backend")
    t0 = time.monotonic()
    a = engine.probe(["hangimport", "numpy"], timeout=3)
    assert a["hangimport"].state == "broken" and "did not finish within 3 s" in a["hangimport"].detail
    assert a["numpy"].ok and time.monotonic() - t0 < 60


def test_timeout_kills_the_cell_and_the_run_goes_on(tmp_path):
    out = tmp_path / "run"
    t0 = time.monotonic()
    r = harness("run", "--backends", "faulty", *SMALL, "--gates", "and,nand,or", "--timeout", "1",
                "--jobs", "1", "--out", str(out))
    assert r.returncode == 1, r.stderr
    assert time.monotonic() - t0 < 60
    recs = by_cell(records(out))
    hung = recs[("faulty", "raw", "single", "nand", 0)]
    assert hung["status"] == "timeout" and "killed after 1 s" in hung["message"]
    assert recs[("faulty", "raw", "single", "and", 0)]["status"] == "ok"
    assert recs[("faulty", "raw", "single", "or", 0)]["status"] == "ok"
    assert "timeout" in r.stdout.splitlines()[0]  # the summary's header


# ----------------------------------------------------------- determinism

def test_jobs_1_and_jobs_2_give_identical_files(tmp_path):
    backends = "numpy,torch" if availability("torch").ok else "numpy"
    out = tmp_path / "run"
    args = ["run", "--backends", backends, "--gates", "and,xor,not", "--epochs", "30",
            "--out", str(out)]
    assert harness(*args, "--jobs", "1").returncode == 0
    shutil.move(out, tmp_path / "jobs1")
    assert harness(*args, "--jobs", "2").returncode == 0
    # The manifest's command line differs by its --jobs value, and nothing else.
    same_folder(tmp_path / "jobs1", out, ("created_at", "timing", "command"))
    jobs = [json.loads((p / "manifest.json").read_text())["timing"]["jobs"]
            for p in (tmp_path / "jobs1", out)]
    assert jobs == [1, 2]


def test_repeat_flags_cells_that_are_not_bit_identical(tmp_path):
    out = tmp_path / "run"
    r = harness("run", "--backends", "numpy,faulty", *SMALL, "--gates", "and,nor", "--repeat", "2",
                "--out", str(out))
    assert r.returncode == 0, r.stderr
    recs = by_cell(records(out))
    # The verdict is computed from params_final, so it differs with it.
    assert recs[("faulty", "raw", "single", "nor", 0)]["repeat_mismatch"] == ["params_final",
                                                                              "oracle_dev"]
    for key in [("faulty", "raw", "single", "and", 0), ("numpy", "raw", "single", "nor", 0),
                ("numpy", "raw", "single", "and", 0)]:
        assert recs[key]["repeat_mismatch"] == []
    assert "not bit-identical across repeats: faulty 1 of 2 cells" in r.stdout
    line = next(x for x in r.stdout.splitlines() if "not bit-identical" in x)
    assert "numpy" not in line


def test_lr_1000_diverges_in_strict_json(tmp_path):
    out = tmp_path / "run"
    r = harness("run", "--backends", "numpy", "--levels", "raw", "--archs", "single,multi",
                "--gates", "and,xor", "--lr", "1000", "--out", str(out))
    assert r.returncode == 0, r.stderr

    def reject(token):
        raise ValueError(f"not strict JSON: {token}")

    recs = [json.loads(line, parse_constant=reject)
            for line in (out / "results.jsonl").read_text().splitlines()]
    assert {d["status"] for d in recs} == {"diverged"}
    for d in recs:
        t = d["diverged_epoch"]
        assert 0 <= t < d["epochs"] and d["loss_curve"][t] is None
        assert all(v is not None for v in d["loss_curve"][:t])
        assert f"at epoch {t}" in d["message"]
    assert "diverged" in r.stdout.splitlines()[0]
    assert "nan" not in (out / "results.csv").read_text().lower().replace("nand", "")
    json.loads((out / "manifest.json").read_text(), parse_constant=reject)


# ------------------------------------------------- interruption and resume

def test_ctrl_c_ends_workers_keeps_records_and_exits_130(tmp_path):
    out, pidfile = tmp_path / "run", tmp_path / "hung.pid"
    proc = start("run", "--backends", "numpy,faulty", *SMALL, "--gates", "and,nand", "--jobs", "2",
                 "--out", str(out), FAULTY_PIDFILE=str(pidfile))
    try:
        # numpy's two cells and faulty's `and` finish; faulty's `nand` hangs.
        wait_for(lambda: pidfile.exists() and complete_lines(out) == 3)
        proc.send_signal(signal.SIGINT)
        stdout, stderr = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 130, stderr
    assert "total" in stdout and "interrupted" in stderr and "--resume" in stderr
    recs = records(out)
    assert [(d["backend"], d["gate"]) for d in recs] == [("numpy", "and"), ("numpy", "nand"),
                                                          ("faulty", "and")]
    assert (out / "results.csv").exists() and "timing" in json.loads((out / "manifest.json").read_text())
    with pytest.raises(ProcessLookupError):
        os.kill(int(pidfile.read_text()), 0)  # the hung worker is gone


def test_kill_9_then_resume_leaves_the_folder_an_uninterrupted_run_leaves(tmp_path):
    out = tmp_path / "run"
    args = ["run", "--backends", "numpy,faulty", "--levels", "raw,perceptron", "--archs",
            "single,multi", "--gates", "and,or,not", "--seeds", "0-1", "--jobs", "2",
            "--out", str(out)]
    slow = {"FAULTY_SLEEP": "0.1"}
    assert harness(*args, **slow).returncode == 0
    shutil.move(out, tmp_path / "uninterrupted")
    total = len(records(tmp_path / "uninterrupted"))
    assert total == 48

    proc = start(*args, **slow)
    try:
        wait_for(lambda: complete_lines(out) >= 30)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
    kept = complete_lines(out)
    assert kept < total, "the run finished before it could be killed"
    for line in (out / "results.jsonl").read_text().splitlines(keepends=True):
        assert line.endswith("\n") and json.loads(line)  # every complete line parses
    with open(out / "results.jsonl", "a") as fh:
        fh.write('{"backend": "faulty", "lev')  # as if killed in the middle of a line

    r = harness("run", "--resume", str(out), "--jobs", "1")
    assert r.returncode == 0, r.stderr
    same_folder(tmp_path / "uninterrupted", out)
    resumed = json.loads((out / "manifest.json").read_text())["resumed"]
    assert len(resumed) == 1 and resumed[0]["timing"]["cells_recorded"] == total - kept
    assert "--resume" in resumed[0]["command"]

    # Resuming a finished run runs nothing and changes no result.
    before = (out / "results.jsonl").read_text()
    r = harness("run", "--resume", str(out), "--quiet")
    assert r.returncode == 0 and r.stderr == "" and r.stdout.startswith("backend")
    assert (out / "results.jsonl").read_text() == before


# ------------------------------------------------------------------- units

def test_gradcheck_runs_in_workers_and_survives_crashes():
    # A framework that segfaults on import is reported broken, the others
    # are checked; one that segfaults mid-check costs only its own rows.
    r = harness("gradcheck", "--backends", "numpy,importcrash,faulty", "--gate", "and")
    assert r.returncode == 0, r.stdout + r.stderr
    rows = {line.split()[0]: line for line in r.stdout.splitlines()[3:] if line.strip()}
    assert "broken: import killed by SIGSEGV" in rows["importcrash"]
    assert "ok" in rows["faulty"] and "ok" in rows["numpy"]
    r = harness("gradcheck", "--backends", "numpy,importcrash,faulty", "--gate", "xnor")
    assert r.returncode == 1
    died = [line for line in r.stdout.splitlines() if line.startswith("faulty")]
    assert len(died) == 1 and "MISMATCH" in died[0] and "SIGSEGV" in died[0]
    assert sum(line.startswith("numpy") and " ok" in line for line in r.stdout.splitlines()) == 3


def test_workers_import_nothing_from_the_current_directory(tmp_path):
    # A numpy.py where `harness run` starts must not reach the workers (the
    # parent runs with -P, as the `harness` script does, so it is not shadowed).
    (tmp_path / "numpy.py").write_text("raise SystemExit('the shadowing numpy.py was imported')")
    out = tmp_path / "run"
    r = subprocess.run([sys.executable, "-P", "-m", "harness", "run", "--backends", "numpy",
                        *SMALL, "--gates", "and", "--out", str(out), "--no-report"],
                       capture_output=True, text=True, cwd=tmp_path, env=env(), timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    assert [d["status"] for d in records(out)] == ["ok"]


def test_extra_backends_hook_parsing():
    extra, problem = registry._extra_backends("a=x.y, b = z ,")
    assert extra == {"a": "x.y", "b": "z"} and problem is None
    assert "'nonsense'" in registry._extra_backends("nonsense")[1]
    assert "already registered" in registry._extra_backends("numpy=x.y")[1]


def test_exit_cause_names_the_signal():
    assert engine.exit_cause(-11) == "killed by SIGSEGV"
    assert engine.exit_cause(-9).startswith("killed by SIGKILL (out of memory")
    assert engine.exit_cause(3) == "exited with status 3"


def test_statuses():
    assert [s.value for s in Status] == ["ok", "diverged", "unsupported", "skipped", "error",
                                         "timeout"]


def test_frames_hand_over_lines_and_payloads_however_the_bytes_arrive():
    """The protocol's decoder: JSON lines, and a line announcing
    payload_bytes followed by that many raw bytes (a batch's curves, which
    hold newline bytes), read back whole wherever the reads split them."""
    import random

    from harness.execution.engine import Frames

    rng = random.Random(0)
    payload = bytes(rng.randrange(256) for _ in range(5000)) + b"\n\n" + b"\n" * 10
    stream = (b'{"state":"ok"}\n{"record":1}\n{"records":[],"payload_bytes":%d}\n' % len(payload)
              + payload + b'{"record":2}\n{"records":[],"payload_bytes":3}\n\n\n\n'
              + b'{"record":3}\n')
    want = [{"state": "ok"}, {"record": 1}, {"records": [], "payload": payload},
            {"record": 2}, {"records": [], "payload": b"\n\n\n"}, {"record": 3}]
    for trial in range(200):
        cuts = sorted(rng.sample(range(1, len(stream)), rng.randrange(0, 12)))
        frames, got = Frames(), []
        for a, b in zip([0, *cuts], [*cuts, len(stream)]):
            got += frames.feed(stream[a:b])
        assert got == want, f"trial {trial}, cuts {cuts}"
        assert frames.pending == [] and frames.payload_for is None
