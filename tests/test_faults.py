"""Faults from outside a run: a full disk, a read-only folder.

Real processes and real files: a full disk is a file-size limit
(RLIMIT_FSIZE, everywhere) or a small tmpfs (where this process may mount
one).  In every case nothing that was recorded is lost and ``--resume``
finishes the run.
"""
import json
import os
import resource
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from test_engine import SMALL, env, harness

ROOT = Path(__file__).resolve().parent.parent


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
