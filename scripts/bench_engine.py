"""Benchmark: wall time of the default matrix, and per backend the time its
workers spent importing the framework vs training.

    python scripts/bench_engine.py                 # --jobs = number of CPUs
    python scripts/bench_engine.py --jobs 1 2      # one run per value
    python scripts/bench_engine.py --jobs 2 -- --dtype float64   # extra `harness run` flags

Runs `harness run --quiet` as a user would (a fresh process, a temporary run
folder) and reads the timing the run wrote into its manifest.json.  Prints
numbers only; it asserts nothing.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from harness.cli import cpus  # noqa: E402


def bench(jobs: int, extra: list[str]) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "run"
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
        t0 = time.perf_counter()
        cpu0 = _children_cpu()
        r = subprocess.run([sys.executable, "-m", "harness", "run", "--quiet", "--jobs", str(jobs),
                            "--out", str(out), *extra], cwd=ROOT, env=env, capture_output=True,
                           text=True)
        wall = time.perf_counter() - t0
        cpu = _children_cpu() - cpu0
        if r.returncode not in (0, 1):
            sys.exit(f"harness run failed ({r.returncode}): {r.stderr.strip()}")
        man = json.loads((out / "manifest.json").read_text())
        cells = sum(1 for _ in open(out / "results.jsonl"))
    t = man["timing"]
    print(f"--jobs {jobs}: {cells} cells in {wall:.1f} s wall, {cpu:.1f} s CPU in all processes "
          f"({cpus()} CPUs, load average {os.getloadavg()[0]:.1f}); probing "
          f"(= starting the first workers) {t['probe_seconds']:.1f} s")
    print(f"  {'backend':<12}{'workers':>8}{'import s':>10}{'train s':>9}{'trained':>9}")
    for name, b in t["backends"].items():
        print(f"  {name:<12}{b['workers']:>8}{b['import_seconds']:>10.2f}"
              f"{b['train_seconds']:>9.2f}{b['cells']:>9}")


def _children_cpu() -> float:
    """CPU seconds of finished child processes, their own children included
    (the harness waits for its workers): a number other load does not inflate."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, nargs="+", default=[cpus()])
    parser.add_argument("extra", nargs="*", help="flags for `harness run` (after --)")
    args = parser.parse_args()
    for jobs in args.jobs:
        bench(jobs, args.extra)


if __name__ == "__main__":
    main()
