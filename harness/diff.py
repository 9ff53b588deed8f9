"""``harness diff RUN_A RUN_B``: two run folders compared cell by cell.

Cells are matched on backend, level, arch, gate and seed (plus any setting
that varies inside one run), so two runs that differ in a setting -- a
learning rate, a dtype -- still pair up; the setting's change is printed once.
A pair differs when its status, verdict (agrees, learned) or first
divergence differ, or when params_final or probs differ by more than
``harness.compare.tolerance`` (the looser of the two cells' entries).  Cells
present in only one run are listed and count as differences.

Both runs are read record by record (``results.iter_records``) and each
record is kept only in the part the comparison reads (``_compared``): no
loss curve, initial parameters or info, so two sweeps of tens of thousands
of cells compare in a fraction of the memory their curves would take.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import numpy as np

from harness.analysis import label
from harness.compare import NoTolerance, relative_deviation, tolerance
from harness.records import CELL_FIELDS, Record, Status
from harness.registry import cell_order
from harness.results import iter_records, read_manifest
from harness.tasks import updates

BASE_KEY = ("backend", "level", "arch", "gate", "seed")
# Every other axis: cells pair up across a change of setting.
SETTINGS = tuple(f for f in CELL_FIELDS if f not in BASE_KEY)


@dataclass
class RunDiff:
    settings: list[str] = field(default_factory=list)
    versions: list[str] = field(default_factory=list)
    differing: list[tuple[str, list[str]]] = field(default_factory=list)
    only_a: list[str] = field(default_factory=list)
    only_b: list[str] = field(default_factory=list)
    compared: int = 0

    @property
    def clean(self) -> bool:
        return not (self.differing or self.only_a or self.only_b)


def _key_fields(*runs: list[Record]) -> tuple[str, ...]:
    varying = [s for s in SETTINGS if any(len({getattr(r, s) for r in run}) > 1 for run in runs)]
    return (*BASE_KEY, *varying)


def compare_records(a: Record, b: Record) -> list[str]:
    """Why two records of the same cell differ (empty when they do not)."""
    why = []
    if a.status != b.status:
        return [f"status {a.status} -> {b.status}"]
    if a.status != Status.OK:
        return []
    try:
        # updates(cell): the curve's length, which the loader checked.
        tol = max(tolerance(a.dtype, updates(a.cell), a.optimizer),
                  tolerance(b.dtype, updates(b.cell), b.optimizer))
    except NoTolerance:
        tol = 0.0  # past the measured table: any change in the numbers is reported
    shapes_a = {k: np.shape(v) for k, v in a.params_final.items()}
    if shapes_a != {k: np.shape(v) for k, v in b.params_final.items()}:
        why.append("parameter shapes differ")
    else:
        dev = relative_deviation(b.params_final, a.params_final)
        if not dev <= tol:
            why.append(f"params_final dev {dev:.1e} > {tol:g}")
    if len(a.probs) != len(b.probs):
        why.append("probs lengths differ")
    else:
        gap = float(np.max(np.abs(np.asarray(b.probs, float) - np.asarray(a.probs, float))))
        if not gap <= tol:
            why.append(f"probs differ by {gap:.1e} > {tol:g}")
    for name in ("learned", "agrees", "first_departure"):
        va, vb = getattr(a, name), getattr(b, name)
        if va != vb:
            why.append(f"{name} {va} -> {vb}")
    return why


def _compared(r: Record) -> Record:
    """The record without what ``compare_records`` never reads."""
    return dataclasses.replace(r, params_init=None, loss_curve=None, info={}, message="",
                               hparams_used=None)


def _read(run_dir) -> tuple[dict, list[Record]]:
    man = read_manifest(run_dir)
    return man, [_compared(r) for r in iter_records(run_dir, man["schema_version"])]


def diff_runs(dir_a, dir_b) -> RunDiff:
    man_a, recs_a = _read(dir_a)
    man_b, recs_b = _read(dir_b)
    fields = _key_fields(recs_a, recs_b)
    index_a = {tuple(getattr(r, f) for f in fields): r for r in recs_a}
    index_b = {tuple(getattr(r, f) for f in fields): r for r in recs_b}
    out = RunDiff()
    changed: dict[str, set] = {}
    for key in sorted(index_a.keys() & index_b.keys(), key=lambda k: cell_order(index_a[k])):
        a, b = index_a[key], index_b[key]
        out.compared += 1
        for s in SETTINGS:
            if getattr(a, s) != getattr(b, s):
                changed.setdefault(s, set()).add((getattr(a, s), getattr(b, s)))
        why = compare_records(a, b)
        if why:
            out.differing.append((label(a), why))
    for s, pairs in changed.items():
        out.settings += [f"{s}: {va} (A) vs {vb} (B)" for va, vb in sorted(pairs, key=str)]
    va, vb = man_a.get("versions", {}), man_b.get("versions", {})
    out.versions = [f"{k}: {va.get(k)} (A) vs {vb.get(k)} (B)"
                    for k in sorted(va.keys() | vb.keys()) if va.get(k) != vb.get(k)]
    out.only_a = [label(r) for r in sorted((index_a[k] for k in index_a.keys() - index_b.keys()),
                                           key=cell_order)]
    out.only_b = [label(r) for r in sorted((index_b[k] for k in index_b.keys() - index_a.keys()),
                                           key=cell_order)]
    return out

