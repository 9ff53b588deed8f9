"""Benchmark: seed sweeps batched (``harness run --batch-seeds``) against per seed.

    python scripts/bench_seeds.py                  # both tables
    python scripts/bench_seeds.py --only speedup --seeds 1000 --sample 20
    python scripts/bench_seeds.py --only speedup --backends numpy,jax
    python scripts/bench_seeds.py --only sweep --sweep-seeds 10000

``speedup``: for every backend and every level it declares batchable
(``BATCHED``), the multi-layer xor cell (1000 updates, float32), run in
one worker process of that backend as the harness runs it: one batch
request of N seeds (training, the oracle's verdicts, the records back to
this process) against per-seed requests for a sample of other seeds,
extrapolated to N (other seeds: the worker's oracle caches trajectories,
so a seed of the batch would be judged for free).  Framework imports are left out of both (a worker
imports once either way).  Prints seconds and the speed-up ratio.

``sweep``: wall time of the issue's sweep, ``harness run --seeds 0-9999
--batch-seeds`` of the multi-layer xor cell at the raw level of numpy,
torch and jax, verdicts and run folder included, as a user runs it, and
where the time went (the run's manifest.json).

Prints numbers only; it asserts nothing.
"""
from __future__ import annotations

import argparse
import json
import os
import select
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from harness import registry  # noqa: E402
from harness.execution import engine  # noqa: E402
from harness.execution.child import unpack_records  # noqa: E402
from harness.tasks import Cell  # noqa: E402


def _answer(w: engine.Worker, timeout: float = 3600) -> dict | None:
    end = time.monotonic() + timeout
    while True:
        if not select.select([w.fd], [], [], max(0.0, end - time.monotonic()))[0]:
            raise TimeoutError(f"{w.backend} did not answer")
        msgs = w.read()
        if msgs is None:
            raise RuntimeError(f"{w.backend} worker died: {w.death()}")
        if msgs:
            return msgs[0]
        if w.hello is not None and w.task is None:
            return None


def _ask(w: engine.Worker, request: dict) -> dict:
    w.task = True
    w.send(request)
    answer = None
    while answer is None:
        answer = _answer(w)
    w.task = None
    return answer


def speedup(seeds: int, sample: int, dtype: str, backends: list[str] | None = None) -> None:
    print(f"batched vs per seed: multi xor, 1000 updates, {dtype}, {seeds} seeds "
          f"(per seed: {sample} seeds, extrapolated); verdicts included")
    print(f"{'backend':<12} {'level':<10} {'batched s':>10} {'per seed s':>11} {'speed-up':>9}"
          f"  {'judged':>7}")
    for name in backends or registry.BACKENDS:
        spec = registry.backend(name)
        if not spec.batched:
            print(f"{name:<12} {'-':<10} no batched level")
            continue
        w = engine.Worker(name)
        try:
            _answer(w)  # hello
            if not w.ready:
                print(f"{name:<12} skipped: {w.hello['state']}: {w.hello['detail']}")
                continue
            for level in spec.batched:
                # Three sets of seeds: the worker's oracle keeps the
                # trajectories it computed, so a seed timed per seed must not
                # have been in the batch (or the warm-up) before.
                cells = [Cell(name, level, "multi", "xor", seed=s, dtype=dtype, hidden=2)
                         for s in range(seeds + sample + 2)]
                cells, fresh, warm = cells[:seeds], cells[seeds:-2], cells[-2:]
                if spec.batch_gap(cells[0]):  # harness run would run these per seed
                    print(f"{name:<12} {level:<10} per seed: {spec.batch_gap(cells[0])}")
                    continue
                _ask(w, {"batch": [c.to_dict() for c in warm]})  # warm-up (jit, caches)
                _ask(w, {"cell": warm[0].to_dict()})
                t0 = time.perf_counter()
                records = unpack_records(_ask(w, {"batch": [c.to_dict() for c in cells]}))
                batched = time.perf_counter() - t0
                t0 = time.perf_counter()
                for c in fresh:
                    _ask(w, {"cell": c.to_dict()})
                per_seed = (time.perf_counter() - t0) / sample * seeds
                judged = sum(r.agrees is not None or r.unjudged is not None for r in records)
                print(f"{name:<12} {level:<10} {batched:>10.2f} {per_seed:>11.1f} "
                      f"{per_seed / batched:>8.0f}x  {judged:>7}", flush=True)
        finally:
            w.kill()


def sweep(seeds: int, backends: str, extra: list[str]) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "run"
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(
            filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
        cmd = [sys.executable, "-m", "harness", "run", "--quiet", "--batch-seeds",
               "--backends", backends, "--levels", "raw", "--archs", "multi", "--gates", "xor",
               "--seeds", f"0-{seeds - 1}", "--out", str(out), *extra]
        t0 = time.perf_counter()
        r = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
        wall = time.perf_counter() - t0
        if r.returncode not in (0, 1):
            print(r.stdout[-2000:], r.stderr[-2000:])
            return
        timing = json.loads((out / "manifest.json").read_text())["timing"]
        size = sum(p.stat().st_size for p in out.iterdir()) / 2**20
        print(f"sweep: {seeds} seeds x {backends} (raw, multi xor) {' '.join(extra)}: "
              f"{wall:.1f} s wall, run folder {size:.0f} MiB, load {os.getloadavg()[0]:.1f}")
        for b, t in timing["backends"].items():
            print(f"  {b:<8} import {t['import_seconds']:.1f} s, train+judge "
                  f"{t['train_seconds']:.1f} s, {t['cells']} cells")
        print(f"  probe {timing['probe_seconds']:.1f} s; batching: {timing.get('batching')}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", choices=("speedup", "sweep"))
    ap.add_argument("--seeds", type=int, default=1000)
    ap.add_argument("--sample", type=int, default=20)
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--backends", help="speedup: comma list (default: every backend)")
    ap.add_argument("--sweep-seeds", type=int, default=10_000)
    ap.add_argument("--sweep-backends", default="numpy,torch,jax")
    ap.add_argument("extra", nargs="*", help="extra `harness run` flags for the sweep, after --")
    args = ap.parse_args()
    if args.only in (None, "speedup"):
        speedup(args.seeds, args.sample, args.dtype,
                args.backends.split(",") if args.backends else None)
    if args.only in (None, "sweep"):
        sweep(args.sweep_seeds, args.sweep_backends, args.extra)


if __name__ == "__main__":
    main()
