"""Faults from outside a run: SIGTERM, the parent killed under its workers,
two harness processes on one folder, a full disk, a read-only folder.

Real processes, real signals, real files: a hanging cell comes from the
test-only faulty backend (tests/faulty_backend.py: gate `nand` hangs and
writes its worker's pid to $FAULTY_PIDFILE; $FAULTY_SLEEP slows every cell);
a full disk is a file-size limit (RLIMIT_FSIZE, everywhere) or a small
tmpfs (where this process may mount one).  In every case nothing that was
recorded is lost and ``--resume`` finishes the run.
"""
import contextlib
import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from test_engine import SMALL, complete_lines, env, harness, records, start, wait_for

ROOT = Path(__file__).resolve().parent.parent


def gone(pid: int) -> bool:
    """Whether a process has ended (a zombie nobody reaped has ended too)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        return stat.rsplit(")", 1)[1].split()[0] in ("Z", "X")
    except FileNotFoundError:
        return True
    except OSError:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        return False


def one_line(r, code, needle):
    assert r.returncode == code, r.stdout + r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and needle in lines[0] and "Traceback" not in r.stderr, r.stderr
    return lines[0]


def no_leftovers(folder: Path):
    """No temporary file and no lock file left in a run folder."""
    assert [p.name for p in folder.iterdir() if p.name.startswith(".")] == []


def whole_lines(folder: Path) -> list[dict]:
    text = (folder / "results.jsonl").read_text()
    assert text == "" or text.endswith("\n")
    return [json.loads(line) for line in text.splitlines()]


# ------------------------------------------------------------------- signals

def test_sigterm_is_handled_like_ctrl_c(tmp_path):
    out, pidfile = tmp_path / "run", tmp_path / "hung.pid"
    args = ["run", "--backends", "numpy,faulty", *SMALL, "--gates", "and,nand", "--jobs", "2",
            "--timeout", "5", "--no-report", "--quiet", "--out", str(out)]
    proc = start(*args, FAULTY_PIDFILE=str(pidfile))
    try:
        wait_for(lambda: pidfile.exists() and complete_lines(out) == 3)
        proc.send_signal(signal.SIGTERM)  # the parent only, as `kill PID` does
        stdout, stderr = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 143, stderr
    assert "total" in stdout and "Traceback" not in stderr
    assert "interrupted by SIGTERM" in stderr and f"harness run --resume {out}" in stderr
    assert [(d["backend"], d["gate"]) for d in records(out)] == [
        ("numpy", "and"), ("numpy", "nand"), ("faulty", "and")]
    assert (out / "results.csv").read_text().count("\n") == 4  # header and the three cells
    assert "timing" in json.loads((out / "manifest.json").read_text())
    hung = int(pidfile.read_text())
    wait_for(lambda: gone(hung), timeout=10)  # the hung cell's worker was ended
    no_leftovers(out)
    # Nothing lost: the resume runs the one cell left (it times out again).
    r = harness("run", "--resume", str(out), "--quiet")
    assert r.returncode == 1, r.stderr
    recs = {d["gate"] + "-" + d["backend"]: d["status"] for d in records(out)}
    assert recs == {"and-numpy": "ok", "nand-numpy": "ok", "and-faulty": "ok",
                    "nand-faulty": "timeout"}


def test_sigterm_to_the_process_group_reaches_only_the_parent(tmp_path):
    # A service manager or `kill -- -PGID` signals every process in the
    # group; workers leave the decision to their parent, so the cells that
    # finished are recorded as they were, not as killed by SIGTERM.
    out = tmp_path / "run"
    proc = start("run", "--backends", "faulty", *SMALL, "--gates", "and,or,not", "--jobs", "1",
                 "--no-report", "--out", str(out), FAULTY_SLEEP="1")
    try:
        wait_for(lambda: complete_lines(out) >= 1)
        os.killpg(proc.pid, signal.SIGTERM)
        _, stderr = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 143, stderr
    assert {d["status"] for d in records(out)} == {"ok"}


def test_workers_die_with_their_parent(tmp_path):
    # kill -9 of `harness run` alone: its worker is in the middle of a cell
    # that never ends and would otherwise run on with no one to read it.
    out, pidfile = tmp_path / "run", tmp_path / "hung.pid"
    proc = start("run", "--backends", "faulty", *SMALL, "--gates", "nand", "--timeout", "3600",
                 "--no-report", "--out", str(out), FAULTY_PIDFILE=str(pidfile))
    try:
        wait_for(lambda: pidfile.exists())
        worker = int(pidfile.read_text())
        assert not gone(worker)
        os.kill(proc.pid, signal.SIGKILL)
        proc.communicate(timeout=60)
        t0 = time.monotonic()
        wait_for(lambda: gone(worker), timeout=10)
        assert time.monotonic() - t0 < 5
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)


def test_worker_whose_parent_is_already_gone_exits():
    # The window before the death signal is armed: a worker started for a
    # parent that is no longer its parent exits at once.
    from harness.execution.engine import worker_command

    cmd = worker_command("numpy")
    assert cmd[-3:] == ["numpy", str(os.getpid()), "main"]
    cmd[-2] = "1"  # not our pid: as if we had died and it had been re-parented
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=60, input="")
    assert r.returncode == 1 and r.stdout == ""


# ---------------------------------------------------------------- the lock

def test_a_running_folder_is_locked(tmp_path):
    out, pidfile = tmp_path / "run", tmp_path / "hung.pid"
    proc = start("run", "--backends", "numpy,faulty", *SMALL, "--gates", "and,nand",
                 "--no-report", "--out", str(out), FAULTY_PIDFILE=str(pidfile))
    try:
        wait_for(lambda: pidfile.exists() and complete_lines(out) == 3)
        before = {p.name: p.read_bytes() for p in out.iterdir()}
        assert ".lock" in before and f'"pid": {proc.pid}' in before[".lock"].decode()
        for args in (["run", "--resume", str(out)], ["report", str(out)]):
            r = harness(*args)
            if args[0] == "report" and "matplotlib" in r.stderr:
                continue  # refused before the lock: the report needs matplotlib
            line = one_line(r, 2, f"Run folder {str(out)!r} is in use by another harness")
            assert f"pid {proc.pid} on " in line and "harness run --backends" in line
        assert {p.name: p.read_bytes() for p in out.iterdir()} == before  # nothing written
        proc.send_signal(signal.SIGINT)
        proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 130
    no_leftovers(out)  # the lock file goes with its holder


def test_two_runs_started_at_once_on_one_folder(tmp_path):
    # Both find the new folder empty; one gets it, the other is refused,
    # and the winner's records are all there.
    out = tmp_path / "run"
    gates = {"and": "and,or", "xor": "xor,xnor"}
    procs = {g: start("run", "--backends", "faulty", *SMALL, "--gates", gates[g], "--jobs", "1",
                      "--no-report", "--out", str(out), FAULTY_SLEEP="1")
             for g in gates}
    results = {g: p.communicate(timeout=300) + (p.returncode,) for g, p in procs.items()}
    codes = sorted(code for _, _, code in results.values())
    assert codes[0] in (0, 1) and codes[1] == 2, results  # xor and xnor crash on purpose: 1
    winner = next(g for g, (_, _, code) in results.items() if code != 2)
    loser = results[next(g for g in gates if g != winner)]
    lines = loser[1].strip().splitlines()
    assert len(lines) == 1 and str(out) in lines[0] and "Traceback" not in loser[1]
    assert "in use by another harness" in lines[0] or "is not empty" in lines[0]
    assert sorted(d["gate"] for d in records(out)) == sorted(gates[winner].split(","))
    man = json.loads((out / "manifest.json").read_text())
    assert man["config"]["gates"] == gates[winner].split(",")
    no_leftovers(out)


# ------------------------------------------------------ full disk, read-only

def limit_file_size(nbytes):
    """preexec_fn: files this process (and its workers) write stop growing
    at nbytes; a write past it fails with EFBIG (Python ignores SIGXFSZ)."""
    def apply():
        resource.setrlimit(resource.RLIMIT_FSIZE, (nbytes, nbytes))
    return apply


def run_limited(args, nbytes):
    # No bytecode: CPython writes .pyc files without checking for a short
    # write, and a truncated one would break every later import.
    return subprocess.run([sys.executable, "-m", "harness", *args], capture_output=True,
                          text=True, cwd=ROOT, env=env(PYTHONDONTWRITEBYTECODE="1"),
                          timeout=600, preexec_fn=limit_file_size(nbytes))


def test_file_size_limit_mid_run_keeps_records_and_resumes(tmp_path):
    out = tmp_path / "run"
    args = ["run", "--backends", "numpy", *SMALL, "--seeds", "0-3", "--jobs", "1",
            "--no-report", "--quiet", "--out", str(out)]
    r = run_limited(args, 20_000)  # room for a few of the 28 records
    line = one_line(r, 3, f"cannot write {out / 'results.jsonl'}: File too large")
    assert f"harness run --resume {out}" in line
    kept = whole_lines(out)  # every line whole: the failed one was cut back
    assert 0 < len(kept) < 28
    assert not (out / "results.csv").exists()
    no_leftovers(out)
    r = harness("run", "--resume", str(out), "--quiet")
    assert r.returncode == 0, r.stderr
    recs = whole_lines(out)
    assert len(recs) == 28 and {d["status"] for d in recs} == {"ok"}
    assert all(d in recs for d in kept)


def test_file_size_limit_in_the_report_leaves_no_temporary_file(tmp_path):
    pytest.importorskip("matplotlib")
    # matplotlib's font cache, built on first use, must not meet the limit.
    subprocess.run([sys.executable, "-c", "import matplotlib.pyplot"], check=True,
                   capture_output=True)
    out = tmp_path / "run"
    r = run_limited(["run", "--backends", "numpy", *SMALL, "--gates", "and,or", "--quiet",
                     "--out", str(out)], 8_000)  # the tables fit, the plots do not
    line = one_line(r, 3, "File too large")
    assert "cannot write " + str(out / "report-") in line and f"harness report {out}" in line
    assert len(whole_lines(out)) == 2 and (out / "results.csv").exists()
    no_leftovers(out)
    r = harness("report", str(out))
    assert r.returncode == 0 and (out / "report.html").exists(), r.stderr
    no_leftovers(out)


@pytest.fixture
def small_disk(tmp_path):
    """A 64 KiB tmpfs at tmp_path/disk, where this process may mount one."""
    where = tmp_path / "disk"
    where.mkdir()
    if os.geteuid() != 0 or not shutil.which("mount"):
        pytest.skip("mounting a small tmpfs needs root and mount(8)")
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(where)],
                       capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {r.stderr.strip()}")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False)


def remount(where, options):
    subprocess.run(["mount", "-o", f"remount,{options}", str(where)], check=True)


def test_full_disk_then_read_only_folder(small_disk):
    out = small_disk / "run"
    args = ["run", "--backends", "numpy", *SMALL, "--seeds", "0-9", "--jobs", "1",
            "--no-report", "--quiet", "--out", str(out)]
    r = harness(*args)
    line = one_line(r, 3, "No space left on device")
    assert line.startswith(f"harness: error: cannot write {out}/")
    assert f"harness run --resume {out}" in line
    kept = whole_lines(out)
    assert 0 < len(kept) < 70
    no_leftovers(out)

    remount(small_disk, "size=2m")
    r = harness("run", "--resume", str(out), "--quiet")
    assert r.returncode == 0, r.stderr
    recs = whole_lines(out)
    assert len(recs) == 70 and all(d in recs for d in kept)

    remount(small_disk, "ro")
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    r = harness("run", "--resume", str(out))
    line = one_line(r, 3, "Read-only file system")
    assert line.startswith(f"harness: error: cannot write {out}/")
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
