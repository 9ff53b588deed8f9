"""Time and peak memory of ``harness report`` and ``harness diff`` on a
sweep-sized run folder: 30,000 real records with 1000-entry loss curves,
stored in curves.f64 and, for comparison, inline.

    .venv/bin/python scripts/bench_sweep_report.py [--seeds 1429] [--inline] [--work DIR]

What it builds, in ``--work`` (default: a temporary folder in /dev/shm where
there is one, removed afterwards; results.jsonl is synced record by record,
which a tmpfs makes cheap, and this measures reading, not the disk):

1. A real sweep: ``harness run --backends numpy --levels raw --archs multi
   --gates and,or,nand,nor,xor,xnor,not --optimizer sgd,momentum,adam
   --seeds 0-<seeds-1> --batch-seeds --curves file --dtype float64
   --no-report``: 21 families of ``--seeds`` seeds (30,009 records with
   the default 1429), each trained and judged for real, each a distinct
   problem for the oracle (nothing is replicated; a copy of one record
   would let the report's oracle reuse one trajectory for both).
2. With ``--inline``: the same records with every curve inline in
   results.jsonl (schema 4's only form), written by ``write_tables``.

Then ``harness report SWEEP`` and ``harness diff SWEEP COPY`` (COPY: the
folder copied, so that every pair of records is compared) each run in a
fresh process.  Wall time depends on what else the machine runs, so CPU
time (user + system) is printed too; peak RSS is the child's own
``ru_maxrss`` (os.wait4), which counts the pages of curves.f64 it touched.
"""
from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from harness.results import load_run, write_manifest, write_tables  # noqa: E402

ENV = {**os.environ, "PYTHONPATH": str(ROOT)}


def harness(*args: str) -> tuple[float, float, float, int]:
    """(wall s, CPU s, peak RSS MB, exit status) of one harness command."""
    t0 = time.monotonic()
    proc = subprocess.Popen([sys.executable, "-m", "harness", *args], cwd=ROOT, env=ENV,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.monotonic() - t0
    err = proc.stderr.read().decode()
    proc.stderr.close()
    proc.returncode = code = os.waitstatus_to_exitcode(status)
    if code not in (0, 1):
        sys.exit(f"harness {' '.join(args)} failed ({code}): {err.strip()}")
    return wall, usage.ru_utime + usage.ru_stime, usage.ru_maxrss / 1024, code


def build(work: Path, seeds: int, inline: bool) -> dict[str, Path]:
    sweep = work / "sweep-file"
    t0 = time.monotonic()
    r = subprocess.run([sys.executable, "-m", "harness", "run", "--backends", "numpy",
                        "--levels", "raw", "--archs", "multi", "--gates",
                        "and,or,nand,nor,xor,xnor,not", "--optimizer", "sgd,momentum,adam",
                        "--seeds", f"0-{seeds - 1}", "--batch-seeds", "--curves", "file",
                        "--dtype", "float64", "--no-report", "--quiet", "--out", str(sweep)],
                       cwd=ROOT, env=ENV, capture_output=True, text=True)
    if r.returncode != 0:
        sys.exit(f"the sweep failed: {r.stderr.strip()}")
    print(f"sweep: {sum(1 for _ in open(sweep / 'results.jsonl', 'rb'))} records run in "
          f"{time.monotonic() - t0:.0f} s", flush=True)
    folders = {"file": sweep}
    if inline:
        t0 = time.monotonic()
        man, records = load_run(sweep)
        folder = work / "sweep-inline"
        folder.mkdir()
        write_manifest(folder, {**man, "config": {**man["config"], "curves": "inline"}})
        write_tables(folder, records, "inline")
        folders["inline"] = folder
        print(f"the same records inline: written in {time.monotonic() - t0:.0f} s", flush=True)
    for mode, folder in folders.items():
        shutil.copytree(folder, work / f"copy-{mode}")
    return folders


def size_mb(path: Path) -> float:
    return path.stat().st_size / 1e6 if path.exists() else 0.0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seeds", type=int, default=1429,
                    help="seeds per family (21 families; default 1429: 30,009 records)")
    ap.add_argument("--inline", action="store_true", help="also measure inline curves")
    ap.add_argument("--work", help="folder to build in (kept); default: a temporary one")
    args = ap.parse_args()
    shm = Path("/dev/shm")
    work = Path(args.work) if args.work else Path(tempfile.mkdtemp(
        prefix="bench-sweep-", dir=shm if shm.is_dir() and os.access(shm, os.W_OK) else None))
    work.mkdir(parents=True, exist_ok=True)
    try:
        folders = build(work, args.seeds, args.inline)
        print(f"{'curves':<7} {'rows':>6} {'jsonl MB':>9} {'f64 MB':>7} | "
              f"{'report: wall s':>14} {'CPU s':>6} {'RSS MB':>7} | "
              f"{'diff: wall s':>12} {'CPU s':>6} {'RSS MB':>7}")
        for mode, folder in folders.items():
            rows = sum(1 for _ in open(folder / "results.jsonl", "rb"))
            rep = harness("report", str(folder))
            dif = harness("diff", str(folder), str(work / f"copy-{mode}"))
            print(f"{mode:<7} {rows:>6} {size_mb(folder / 'results.jsonl'):>9.1f} "
                  f"{size_mb(folder / 'curves.f64'):>7.1f} | {rep[0]:>14.1f} {rep[1]:>6.1f} "
                  f"{rep[2]:>7.0f} | {dif[0]:>12.1f} {dif[1]:>6.1f} {dif[2]:>7.0f}"
                  + ("" if dif[3] == 0 else "  (diff found differences)"), flush=True)
            print(f"        report.html {size_mb(folder / 'report.html'):.2f} MB, "
                  f"{len(list(folder.glob('report-*.png')))} figures", flush=True)
    finally:
        if not args.work:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
