"""Running cells: one cell -> one Record, and the matrix -> a run folder.

``run_cell`` is a pure function of its Cell (no state survives between
cells), so cells can move to worker processes without changing results.
"""
from __future__ import annotations

import itertools
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

import numpy as np

from harness import registry
from harness.oracle import judge
from harness.results import Record, RecordWriter, manifest, write_manifest, write_tables
from harness.tasks import DEFAULT_EPOCHS, Cell, TrainResult, TrainSpec, init_params


def expand(config: dict[str, Any]) -> list[Cell]:
    """The cross product of a resolved config's axes, sorted by cell."""
    cells = set()
    for backend, level, arch, gate, seed in itertools.product(
            config["backends"], config["levels"], config["archs"], config["gates"],
            config["seeds"]):
        epochs = config.get("epochs") or DEFAULT_EPOCHS[arch]
        cells.add(Cell(backend=backend, level=level, arch=arch, gate=gate, seed=seed,
                       dtype=config["dtype"], init=config["init"],
                       init_scale=float(config["init_scale"]), lr=float(config["lr"]),
                       epochs=int(epochs),
                       hidden=int(config["hidden"]) if arch == "multi" else None))
    return sorted(cells, key=lambda c: c.key)


def _lists(params: dict[str, np.ndarray]) -> dict[str, list]:
    return {k: np.asarray(v, dtype=np.float64).tolist() for k, v in params.items()}


def _check_start(cell: Cell, expected: dict[str, np.ndarray], got: dict[str, np.ndarray]):
    """The backend must have loaded exactly the harness's parameters."""
    if list(got) != list(expected):
        raise AssertionError(f"backend returned parameters {list(got)}, expected {list(expected)}")
    for name, want in expected.items():
        have = np.asarray(got[name])
        if have.shape != want.shape or have.dtype != want.dtype or not np.array_equal(have, want):
            raise AssertionError(
                f"parameter {name} read back from {cell.backend} after loading is not the "
                f"harness's initial value (shape {have.shape} {have.dtype}, expected "
                f"{want.shape} {want.dtype})")


def record_from_result(cell: Cell, version: str | None, result: TrainResult,
                       seconds: float) -> Record:
    y = np.array(TrainSpec.from_cell(cell).y).reshape(-1)
    probs = np.asarray(result.probs, dtype=np.float64).reshape(-1)
    preds = (probs > 0.5).astype(int)
    correct = preds == y
    return Record.for_cell(
        cell, "ok", backend_version=version,
        params_init=_lists(result.params_start), params_final=_lists(result.params_final),
        probs=probs.tolist(), preds=preds.tolist(), accuracy=float(correct.mean()),
        learned=bool(correct.all()), loss_final=float(result.loss_final),
        loss_curve=[float(v) for v in result.loss_curve], seconds=seconds,
        info=dict(result.info))


def run_cell(cell: Cell, version: str | None = None) -> Record:
    """Train one cell in this process.  Never raises for a backend failure:
    the failure becomes an ``error`` record with the exception."""
    reason = registry.gap(cell.backend, cell.level, cell.arch)
    if reason:
        return Record.for_cell(cell, "unsupported", reason, backend_version=version)
    mod = registry.backend_module(cell.backend)
    spec = TrainSpec.from_cell(cell)
    expected = init_params(cell)
    try:
        t0 = time.perf_counter()
        result = mod.train(spec)
        seconds = time.perf_counter() - t0
        _check_start(cell, expected, result.params_start)
        if len(result.loss_curve) != cell.epochs:
            raise AssertionError(f"loss_curve has {len(result.loss_curve)} entries, "
                                 f"expected one per epoch ({cell.epochs})")
    except Exception as exc:  # noqa: BLE001 - any backend failure is a finding, not a crash
        tb = traceback.format_exc(limit=-3).strip().splitlines()
        return Record.for_cell(cell, "error", f"{type(exc).__name__}: {exc}",
                               backend_version=version, info={"traceback": tb[-6:]})
    return judge(record_from_result(cell, version, result, seconds))


@dataclass
class RunOutcome:
    run_dir: Path
    records: list[Record] = field(default_factory=list)

    @property
    def errors(self) -> int:
        return sum(r.status == "error" for r in self.records)


def run_matrix(cells: Iterable[Cell], run_dir: Path, config: dict[str, Any], argv: list[str],
               on_record: Callable[[Record], None] | None = None) -> RunOutcome:
    """Run every cell in this process and write the run folder."""
    cells = list(cells)
    names = sorted({c.backend for c in cells}, key=list(registry.BACKENDS).index)
    avail = {name: registry.probe(name) for name in names}
    run_dir.mkdir(parents=True, exist_ok=True)
    write_manifest(run_dir, manifest(config, _versions(avail), argv))
    outcome = RunOutcome(run_dir)
    writer = RecordWriter(run_dir / "results.jsonl")
    try:
        for cell in cells:
            a = avail[cell.backend]
            if a.ok:
                record = run_cell(cell, a.version)
            else:
                record = Record.for_cell(cell, "skipped", f"{a.backend} {a.state}: {a.detail}")
            writer.write(record)
            outcome.records.append(record)
            if on_record:
                on_record(record)
    finally:
        writer.close()
    outcome.records = write_tables(run_dir, outcome.records)
    return outcome


def _versions(avail: dict[str, registry.Availability]) -> dict[str, Any]:
    return {name: (a.version if a.ok else f"{a.state}: {a.detail}") for name, a in avail.items()}
