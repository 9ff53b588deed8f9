"""Time and peak memory of ``harness report`` and ``harness diff`` on a
sweep-sized run folder (tens of thousands of records with 1000-entry loss
curves), with curves in curves.f64 and, for comparison, inline.

    .venv/bin/python scripts/bench_sweep_report.py [--seeds 1000] [--rows 30000] [--inline]

What it builds, in ``--work`` (default: a temporary folder, removed after):

1. A real run: ``harness run --backends numpy --levels raw --archs multi
   --gates xor,xnor,and --seeds 0-<seeds-1> --batch-seeds --curves file
   --dtype float64 --no-report``: 3 x ``--seeds`` records of 1000 updates.
2. The sweep: those records REPLICATED to ``--rows`` rows.  Copy k of a
   record is the same record with seed ``seed + k * seeds``: its values
   (parameters, curve, verdict) are the real record's, not a run of that
   seed.  The report's oracle recomputes every row from its own
   params_init, which the copy keeps, so reading, judging and drawing do the
   same work per row as on a real sweep of that size; only the cost of
   training 30,000 cells is saved (batches of 10,000 seeds take minutes to
   travel from a worker today).  This is for this benchmark only: no test
   uses replicated records.
3. With ``--inline``: the same rows with every curve inline in
   results.jsonl (schema 4's only form), to compare.

Then ``harness report SWEEP`` and ``harness diff SWEEP COPY`` (COPY: the
folder copied, so that every pair of records is compared) each run in a
fresh process; the time is wall time, the peak RSS the child's own
``ru_maxrss`` (os.wait4), which counts the pages of curves.f64 the process
touched.  Printed side by side.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
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


def harness(*args: str) -> tuple[float, float, int]:
    """(wall seconds, peak RSS in MB, exit status) of one harness command."""
    t0 = time.monotonic()
    proc = subprocess.Popen([sys.executable, "-m", "harness", *args], cwd=ROOT, env=ENV,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.monotonic() - t0
    err = proc.stderr.read().decode()
    proc.stderr.close()
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode not in (0, 1):
        sys.exit(f"harness {' '.join(args)} failed ({proc.returncode}): {err.strip()}")
    return seconds, usage.ru_maxrss / 1024, proc.returncode


def build(work: Path, seeds: int, rows: int, inline: bool) -> dict[str, Path]:
    real = work / "real"
    t0 = time.monotonic()
    r = subprocess.run([sys.executable, "-m", "harness", "run", "--backends", "numpy",
                        "--levels", "raw", "--archs", "multi", "--gates", "xor,xnor,and",
                        "--seeds", f"0-{seeds - 1}", "--batch-seeds", "--curves", "file",
                        "--dtype", "float64", "--no-report", "--quiet", "--out", str(real)],
                       cwd=ROOT, env=ENV, capture_output=True, text=True)
    if r.returncode != 0:
        sys.exit(f"the real run failed: {r.stderr.strip()}")
    man, records = load_run(real)
    print(f"real run: {len(records)} records in {time.monotonic() - t0:.0f} s", flush=True)
    copies = -(-rows // len(records))
    sweep = [dataclasses.replace(rec, cell=dataclasses.replace(rec.cell, seed=rec.seed + k * seeds))
             for k in range(copies) for rec in records][:rows]
    man = {**man, "config": {**man["config"], "seeds": sorted({r.seed for r in sweep}),
                             "curves": "file"}}
    folders = {}
    for mode in ("file", "inline") if inline else ("file",):
        t0 = time.monotonic()
        folder = work / f"sweep-{mode}"
        folder.mkdir()
        write_manifest(folder, {**man, "config": {**man["config"], "curves": mode}})
        write_tables(folder, sweep, mode)
        copy = work / f"copy-{mode}"
        shutil.copytree(folder, copy)
        folders[mode] = folder
        print(f"sweep ({mode}): {len(sweep)} rows written in {time.monotonic() - t0:.0f} s",
              flush=True)
    return folders


def size_mb(path: Path) -> float:
    return path.stat().st_size / 1e6 if path.exists() else 0.0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seeds", type=int, default=1000, help="seeds of the real run (x3 records)")
    ap.add_argument("--rows", type=int, default=30_000, help="rows of the sweep")
    ap.add_argument("--inline", action="store_true", help="also measure inline curves")
    ap.add_argument("--work", help="folder to build in (kept); default: a temporary one")
    args = ap.parse_args()
    work = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="bench-sweep-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        folders = build(work, args.seeds, args.rows, args.inline)
        print(f"{'curves':<7} {'rows':>6} {'jsonl MB':>9} {'f64 MB':>7} | {'report s':>8} "
              f"{'RSS MB':>7} | {'diff s':>7} {'RSS MB':>7}")
        for mode, folder in folders.items():
            rows = sum(1 for _ in open(folder / "results.jsonl", "rb"))
            rep_s, rep_mb, _ = harness("report", str(folder))
            dif_s, dif_mb, code = harness("diff", str(folder), str(work / f"copy-{mode}"))
            print(f"{mode:<7} {rows:>6} {size_mb(folder / 'results.jsonl'):>9.1f} "
                  f"{size_mb(folder / 'curves.f64'):>7.1f} | {rep_s:>8.1f} {rep_mb:>7.0f} | "
                  f"{dif_s:>7.1f} {dif_mb:>7.0f}" + ("" if code == 0 else "  (diff found "
                                                     "differences)"), flush=True)
            report = folder / "report.html"
            print(f"        report.html {size_mb(report):.2f} MB, "
                  f"{len(list(folder.glob('report-*.png')))} figures", flush=True)
    finally:
        if not args.work:
            shutil.rmtree(work, ignore_errors=True)
    print(json.dumps({"python": sys.version.split()[0], "cpus": os.cpu_count()}))


if __name__ == "__main__":
    main()
