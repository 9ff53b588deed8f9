"""What a run's records say, as numbers: counts, verdicts, level agreement,
multi-seed convergence statistics and findings.

Everything here returns data (dataclasses, numbers, counters); the words
and tables the tool prints from it are in ``harness.text``, and the
report's figures and tables in ``harness.report``, so that a statistic is
computed once whichever of them shows it.

* Counts: cells per backend x level by status, learned, and not
  bit-identical across repeats.
* Verdicts come from ``harness.oracle`` (judged in the workers, or by the
  loader for records written before verdicts existed); ``verdict_rows``
  tallies them per backend x level.
* Level agreement: within one backend and mode, the gradient levels (raw,
  module, optimizer, custom) of the same cell must give the same params_final, to
  ``harness.compare.tolerance``.
* Convergence, per backend x level x arch x gate over seeds: the fraction of
  seeds learned with a 95% Wilson interval, and the median ``learned_epoch``
  (number of updates after which every row first came out right) over the
  learned cells that agree with the oracle.  Because every backend starts
  from the same parameters, a backend whose learned set differs from the
  oracle's is named.
* Modes ("does compiling change the numbers?"): per backend, dtype and
  mode, every cell run in that mode and in eager: the largest deviation of
  params_final from eager, how many are bit-identical (final parameters
  and loss curve), and the median time per epoch of each mode.
* Findings: disagreements, errors, levels that disagree, learned sets that
  differ, and single-layer xor/xnor learned (no threshold unit can represent
  them, so a cell that learns one is a finding, not a success).
"""
from __future__ import annotations

import math
import statistics
from collections import Counter
from dataclasses import dataclass

import numpy as np

from harness import oracle, registry
from harness.compare import NoTolerance, relative_deviation, tolerance
from harness.records import Record, Status, same_curve
from harness.registry import cell_order
from harness.tasks import (AXES, CELL_FIELDS, GRADIENT_LEVELS, HYPERPARAMETERS,
                           NOT_LINEARLY_SEPARABLE, OPTIMIZERS)

Z95 = 1.959963984540054


def wilson(k: int, n: int) -> tuple[float, float]:
    """95% Wilson score interval for k successes out of n."""
    if n == 0:
        return 0.0, 1.0
    p, z2 = k / n, Z95 * Z95
    centre = (p + z2 / (2 * n)) / (1 + z2 / n)
    half = Z95 * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n)) / (1 + z2 / n)
    return max(0.0, centre - half), min(1.0, centre + half)


@dataclass(frozen=True)
class ModeComparison:
    backend: str
    dtype: str
    mode: str  # compared with eager
    cells: int
    identical: int  # params_final and loss curve bit-identical to eager
    worst_dev: float  # largest relative_deviation of params_final from eager
    # Median seconds per epoch over these cells, in this mode and in eager.
    epoch_seconds: float
    eager_epoch_seconds: float


def mode_comparison(records: list[Record]) -> list[ModeComparison]:
    """Each non-eager mode against eager, for cells that ran ok in both."""
    by_cell: dict[tuple, dict[str, Record]] = {}
    for r in records:
        if r.status == Status.OK:
            key = tuple(getattr(r.cell, f) for f in CELL_FIELDS if f != "mode")
            by_cell.setdefault(key, {})[r.mode] = r
    groups: dict[tuple, list[tuple[Record, Record]]] = {}
    for modes in by_cell.values():
        eager = modes.get("eager")
        for mode, r in modes.items():
            if eager is not None and mode != "eager":
                groups.setdefault((r.backend, r.dtype, mode), []).append((r, eager))
    out = []
    for (backend, dtype, mode), pairs in groups.items():
        devs = [relative_deviation(r.params_final, e.params_final) for r, e in pairs]
        same = sum(r.params_final == e.params_final and same_curve(r.loss_curve, e.loss_curve)
                   for r, e in pairs)
        per_epoch = [(r.seconds or 0.0) / r.epochs for r, _ in pairs]
        eager_per_epoch = [(e.seconds or 0.0) / e.epochs for _, e in pairs]
        out.append(ModeComparison(backend, dtype, mode, len(pairs), same, max(devs),
                                  statistics.median(per_epoch),
                                  statistics.median(eager_per_epoch)))
    order = list(registry.BACKENDS)
    return sorted(out, key=lambda m: (order.index(m.backend) if m.backend in order else len(order),
                                      m.backend, m.dtype, m.mode))


@dataclass(frozen=True)
class BackendAgreement:
    """The porting question, per pair of backends: over the cells both ran
    ok (every axis equal but backend and mode), the largest deviation of
    one's params_final from the other's; and each one's worst oracle_dev."""

    backends: tuple[str, ...]
    worst: dict[tuple[str, str], float]  # (a, b), a before b; nan when no shared cell
    shared: dict[tuple[str, str], int]
    oracle: dict[str, float]


def backend_agreement(records: list[Record], level: str | None = None) -> BackendAgreement:
    """Pairwise agreement between backends (of one level, or all gradient levels)."""
    ok = [r for r in records if r.status == Status.OK and r.level in GRADIENT_LEVELS
          and (level is None or r.level == level)]
    order = list(registry.BACKENDS)
    backends = tuple(sorted({r.backend for r in ok},
                            key=lambda b: (order.index(b) if b in order else len(order), b)))
    by_key: dict[tuple, dict[str, list[Record]]] = {}
    for r in ok:
        key = tuple(getattr(r.cell, f) for f in CELL_FIELDS if f not in ("backend", "mode"))
        by_key.setdefault(key, {}).setdefault(r.backend, []).append(r)
    worst: dict[tuple[str, str], float] = {}
    shared: dict[tuple[str, str], int] = {}
    for i, a in enumerate(backends):
        for b in backends[i + 1:]:
            devs, n = [], 0
            for group in by_key.values():
                if a in group and b in group:
                    n += 1
                    devs += [relative_deviation(rb.params_final, ra.params_final)
                             for ra in group[a] for rb in group[b]]
            worst[(a, b)] = max(devs) if devs else math.nan
            shared[(a, b)] = n
    oracle_dev = {b: max((r.oracle_dev if r.oracle_dev is not None else math.inf)
                         for r in ok if r.backend == b) for b in backends}
    return BackendAgreement(backends, worst, shared, oracle_dev)


def label(rec) -> str:
    """A cell's name, e.g. in ``harness diff``, which pairs cells by it."""
    return f"{rec.backend} {rec.level} {rec.arch} {rec.gate} seed {rec.seed}"


def went_wrong(rec: Record) -> bool:
    """The cell should have trained and did not end ok: error, timeout, or
    diverged (which ``Status.failed`` leaves out: it does not fail a run)."""
    return rec.status != Status.OK and not rec.status.not_run


# --------------------------------------------------------------------- counts

def counts(records: list[Record]) -> dict[tuple[str, str], Counter]:
    """{(backend, level): Counter of statuses, "learned", "not-identical" and
    "cells"}, the keys in cell order."""
    table: dict[tuple[str, str], Counter] = {}
    for rec in sorted(records, key=cell_order):
        c = table.setdefault((rec.backend, rec.level), Counter())
        c[rec.status] += 1
        c["learned"] += bool(rec.learned)
        c["not-identical"] += bool(rec.repeat_mismatch)
        c["cells"] += 1
    return table


# ----------------------------------------------------------- level agreement

@dataclass(frozen=True)
class LevelMismatch:
    backend: str
    cell: str
    levels: tuple[str, str]
    dev: float
    tol: float
    # The oracle variant atoms that explain the second level's departure from
    # the first (its optimizer object's formula, a loss computed in float32,
    # beyond what both share),
    # when both follow the oracle: an explained difference, not a finding.
    explained_by: str | None = None


def _atoms(r: Record) -> list[str]:
    return r.explained_by.split("+") if r.explained_by else []


def _level_difference(first: Record, other: Record) -> str | None:
    """The variant atoms that explain why ``other``'s level differs from
    ``first``'s: the atoms of other's explanation that first's lacks, when
    both follow the oracle (each agrees or is explained); else None."""
    judged = (first.agrees or first.explained_by) and other.explained_by
    extra = [a for a in _atoms(other) if a not in _atoms(first)]
    return "+".join(extra) if judged and extra else None


def level_agreement(records: list[Record]
                    ) -> tuple[dict[str, tuple[int, int]], list[LevelMismatch]]:
    """({backend: (cells agreeing, cells compared)}, mismatches)."""
    groups: dict[tuple, list[Record]] = {}
    for r in sorted(records, key=cell_order):
        if r.status == Status.OK and r.level in GRADIENT_LEVELS:
            # The same cell but for its level (modes compare among themselves).
            key = tuple(getattr(r.cell, f) for f in CELL_FIELDS if f != "level")
            groups.setdefault(key, []).append(r)
    tally: dict[str, list[int]] = {}
    mismatches = []
    # Each group is in cell order, that is by level: the others are compared
    # with the lowest level (raw when there is one).
    for key, group in groups.items():
        # Levels past the oracle's horizon are not compared: their end states
        # are round-off amplified, and each was judged up to the horizon.
        group = [r for r in group if r.horizon is None]
        if len(group) < 2:
            continue
        try:
            first = group[0]
            tol = tolerance(first.dtype, len(first.loss_curve), first.optimizer)
        except NoTolerance:
            continue
        bad = []
        for other in group[1:]:
            dev = relative_deviation(other.params_final, first.params_final)
            if not dev <= tol:
                cell = f"{first.arch} {first.gate} seed {first.seed}"
                why = _level_difference(first, other)
                bad.append(LevelMismatch(first.backend, cell, (first.level, other.level), dev, tol,
                                         why))
        c = tally.setdefault(first.backend, [0, 0])
        c[0] += not bad
        c[1] += 1
        mismatches.extend(bad)
    return {b: (c[0], c[1]) for b, c in tally.items()}, mismatches


# ---------------------------------------------------------------- convergence

@dataclass(frozen=True)
class Convergence:
    backend: str
    level: str
    arch: str
    gate: str
    n: int
    learned: int
    low: float
    high: float
    median_epoch: float | None
    oracle_learned: int
    # Seeds this backend learned and the oracle did not, and the reverse
    # (cells judged up to a horizon left out: round-off decides their end).
    only_backend: tuple[int, ...]
    only_oracle: tuple[int, ...]
    # The other crossed axes that vary between the run's cells (optimizer,
    # mode), as (axis, value): a row is one family of cells over its seeds,
    # so a seed is never counted twice.  () for the oracle's rows (its rule
    # is the level) and where nothing else varies.
    settings: tuple[tuple[str, object], ...] = ()

    @property
    def setting_text(self) -> str:
        return ", ".join(f"{k} {v}" for k, v in self.settings)

    @property
    def fraction(self) -> float:
        return self.learned / self.n if self.n else float("nan")

    @property
    def differs(self) -> bool:
        return bool(self.only_backend or self.only_oracle)


@dataclass(frozen=True, eq=False)
class SeedRow:
    """One row of the learned map: a backend x level x arch x gate, or the
    oracle's rule (backend ``oracle``) on an arch x gate, over the run's seeds."""

    backend: str
    level: str
    arch: str
    gate: str
    settings: str  # Convergence.setting_text of the row
    # Per seed of SeedMap.seeds: 1 learned, 0 not learned, -1 no ok cell.
    learned: np.ndarray
    # Per seed: the row's learned flag differs from the oracle's trajectory
    # from the same initial parameters (always False in the oracle's rows).
    differs: np.ndarray


@dataclass(frozen=True, eq=False)
class SeedMap:
    """Which seeds each row learned: the data of the report's learned map
    (one small array per row, not a record per seed)."""

    seeds: np.ndarray  # every seed with an ok cell, ascending
    rows: tuple[SeedRow, ...]  # the oracle's rows first, then cell order


# The oracle solves this many records' trajectories at a time: each chunk's
# trajectories are reduced to what convergence needs (learned, and when)
# before the next, so a sweep's trajectories are never all in memory.
SOLVE_CHUNK = 4096


def _solved(problems: list) -> list[tuple[bool, int | None]]:
    """Each problem's (learned, learned_epoch), solved ``SOLVE_CHUNK`` at a time."""
    out: list[tuple[bool, int | None]] = []
    for i in range(0, len(problems), SOLVE_CHUNK):
        out += [(t.learned, t.learned_epoch) for t in oracle.solve(problems[i:i + SOLVE_CHUNK])]
    return out


def convergence(records: list[Record]) -> list[Convergence]:
    """Per backend x level x arch x gate; the oracle's own rows come first, as
    backend ``oracle`` with its rule as level (``gradient`` for raw, module
    and optimizer, which share a trajectory), over the seeds any backend ran."""
    return convergence_and_seeds(records)[0]


def convergence_and_seeds(records: list[Record]) -> tuple[list[Convergence], SeedMap]:
    """``convergence`` and the seed-by-seed map it is computed from."""
    ok = sorted((r for r in records if r.status == Status.OK), key=cell_order)
    # Per ok record: the oracle's (learned, learned_epoch) from its start.
    verdicts = _solved([oracle.Problem.of(r) for r in ok])
    # A cell explained by a variant is compared with the variant's outcome
    # (its textbook verdict still feeds the oracle's own rows).
    explained = [i for i, r in enumerate(ok) if r.explained_by]
    variant = dict(zip(explained, _solved(
        [oracle.Problem.of(ok[i], tuple(_atoms(ok[i]))) for i in explained])))
    # Settings other than the row's own that vary between cells (a crossed
    # optimizer or mode): each value is a row of its own.
    varying = [f for f, axis in AXES if axis.crossed
               and f not in ("backend", "level", "arch", "gate", "seed")
               and len({getattr(r.cell, f) for r in ok}) > 1]
    groups: dict[tuple, list] = {}
    ref: dict[tuple, dict] = {}
    for i, (r, t) in enumerate(zip(ok, verdicts)):
        settings = tuple((f, getattr(r.cell, f)) for f in varying)
        groups.setdefault((r.backend, r.level, r.arch, r.gate, settings), []).append(
            (r, variant.get(i, t)))
        ref.setdefault((oracle.rule_of(r.level, r.optimizer), r.arch, r.gate), {}).setdefault(
            r.seed, t)
    seeds = np.array(sorted({r.seed for r in ok}), dtype=np.int64)
    column = {int(s): i for i, s in enumerate(seeds)}
    out, rows = [], []
    for (level, arch, gate), by_seed in ref.items():
        epochs = [epoch for learned, epoch in by_seed.values() if learned]
        k = len(epochs)
        out.append(Convergence("oracle", level, arch, gate, len(by_seed), k, *wilson(k, len(by_seed)),
                               statistics.median(epochs) if epochs else None, k, (), ()))
        flags = np.full(len(seeds), -1, dtype=np.int8)
        for seed, (learned, _) in by_seed.items():
            flags[column[seed]] = learned
        rows.append(SeedRow("oracle", level, arch, gate, "", flags, np.zeros(len(seeds), bool)))
    for (backend, level, arch, gate, settings), group in groups.items():
        learned = {r.seed for r, _ in group if r.learned}
        by_oracle = {r.seed for r, (t_learned, _) in group if t_learned}
        # A cell judged only up to its horizon has an end state round-off
        # decided, the oracle's included: its seed is not compared.
        past = {r.seed for r, _ in group if r.horizon is not None}
        epochs = [r.learned_epoch for r, _ in group if r.learned_epoch is not None]
        out.append(Convergence(backend, level, arch, gate, len(group), len(learned),
                               *wilson(len(learned), len(group)),
                               statistics.median(epochs) if epochs else None, len(by_oracle),
                               tuple(sorted(learned - by_oracle - past)),
                               tuple(sorted(by_oracle - learned - past)), settings))
        flags = np.full(len(seeds), -1, dtype=np.int8)
        differs = np.zeros(len(seeds), bool)
        for r, _ in group:
            flags[column[r.seed]] = bool(r.learned)
        for seed in (learned ^ by_oracle) - past:
            differs[column[seed]] = True
        rows.append(SeedRow(backend, level, arch, gate, out[-1].setting_text, flags, differs))
    return out, SeedMap(seeds, tuple(rows))


# ------------------------------------------------------------------- findings

# The kinds of finding, most serious first; a cell that should have trained
# and did not is a finding whose kind is its Status.
DISAGREES = "disagrees with the oracle"
LEVELS_DISAGREE = "levels disagree"
IMPOSSIBLE = "learned single-layer xor/xnor (impossible for one threshold unit)"
LEARNED_SET = "learned set differs from the oracle's"


@dataclass(frozen=True)
class Finding:
    """One finding, as data; ``harness.text`` words it."""

    kind: str  # one of the kinds above, or the Status of a cell that went wrong
    group: str  # backend and level, or backend: findings are summarized per group
    cell: str  # where in the group: arch, gate and (but for learned sets) seed
    # What was found: the cell's Record, the LevelMismatch, or the Convergence
    # whose learned set differs.
    subject: Record | LevelMismatch | Convergence
    # Why the cell is known to depart (its backend says so), or None.
    known: str | None = None

    @property
    def detail(self) -> str:
        """The cell and the numbers, in words (``harness.text.finding_detail``)."""
        # Imported here: harness.text imports this module, and the wording
        # belongs with the rest of the tool's text.
        from harness.text import finding_detail
        return finding_detail(self)


def findings(records: list[Record], conv: list[Convergence] | None = None,
             levels: list[LevelMismatch] | None = None) -> list[Finding]:
    """Every finding, most serious kind first."""
    records = sorted(records, key=cell_order)
    out = []

    def where(r):
        return f"{r.backend} {r.level}", f"{r.arch} {r.gate} seed {r.seed}"

    for r in records:
        if r.status == Status.OK and r.agrees is False and not r.explained_by:
            out.append(Finding(DISAGREES, *where(r), r, registry.known_departure(r.cell)))
    for r in records:
        if went_wrong(r):
            out.append(Finding(r.status, *where(r), r))
    if levels is None:
        levels = level_agreement(records)[1]
    for m in levels:
        if not m.explained_by:
            out.append(Finding(LEVELS_DISAGREE, m.backend, m.cell, m))
    for r in records:
        if (r.status == Status.OK and r.learned and r.arch == "single"
                and r.gate in NOT_LINEARLY_SEPARABLE):
            out.append(Finding(IMPOSSIBLE, *where(r), r))
    for c in conv if conv is not None else convergence(records):
        if c.differs:
            out.append(Finding(LEARNED_SET, f"{c.backend} {c.level}",
                               " ".join(x for x in (c.arch, c.gate, c.setting_text) if x), c))
    return out


# ------------------------------------------------------------------- verdicts

@dataclass(frozen=True)
class Verdicts:
    """The verdicts of one backend x level's ok cells."""

    backend: str
    level: str
    ok: int
    agree: int
    # Departs from the textbook, reproduced by its backend's named variant.
    explained: int
    # Departs, and nothing explains it (a finding).
    disagree: int
    # Not judged (no tolerance measured for so many float32 updates).
    unjudged: int
    # The worst oracle_dev / tolerance over judged cells (inf when a
    # deviation is not finite); explained cells count by their variant's
    # agreement, so they are left out.
    worst: float


def verdict_rows(records: list[Record]) -> list[Verdicts]:
    """One row per backend x level with ok cells, in cell order."""
    table: dict[tuple[str, str], list] = {}
    for r in sorted(records, key=cell_order):
        if r.status != Status.OK:
            continue
        row = table.setdefault((r.backend, r.level), [0, 0, 0, 0, 0, 0.0])
        row[0] += 1
        row[1] += r.agrees is True
        row[2] += r.agrees is False and bool(r.explained_by)
        row[3] += r.agrees is False and not r.explained_by
        row[4] += r.agrees is None
        if r.agrees is None or r.explained_by or r.horizon is not None:
            continue
        ratio = (r.oracle_dev / r.tolerance if r.oracle_dev is not None
                 and math.isfinite(r.oracle_dev) else float("inf"))
        row[5] = max(row[5], ratio)
    return [Verdicts(b, lv, *row) for (b, lv), row in table.items()]


# ------------------------------------------------------------------- recipes

def outcome(r: Record) -> str:
    """One ok cell's verdict in words: "textbook", the explaining variant,
    "unexplained" or "unjudged"."""
    if r.agrees is None:
        return "unjudged"
    if r.agrees:
        return "textbook"
    return r.explained_by or "unexplained"


def recipe_outcomes(records: list[Record]) -> dict[str, dict[tuple[str, str], Counter]]:
    """{optimizer family: {(backend, level): Counter of outcomes}}, for the
    gradient levels' ok cells, families and keys in cell order."""
    out: dict[str, dict[tuple[str, str], Counter]] = {}
    for r in sorted(records, key=cell_order):
        if r.status == Status.OK and r.level in GRADIENT_LEVELS:
            table = out.setdefault(r.optimizer, {})
            table.setdefault((r.backend, r.level), Counter())[outcome(r)] += 1
    return {f: out[f] for f in OPTIMIZERS if f in out}


def default_differences(records: list[Record]) -> dict[str, dict[str, dict[str, float]]]:
    """With --hparams defaults: {family: {hyperparameter: {backend: value}}}
    for each hyperparameter whose default differs between frameworks (read
    back from each framework's optimizer object, at the optimizer level
    where it ran, else any gradient level)."""
    seen: dict[tuple[str, str], dict[str, float]] = {}
    for r in sorted(records, key=lambda r: (r.level != "optimizer", cell_order(r))):
        if (r.status == Status.OK and r.hparams == "defaults" and r.hparams_used
                and r.level in GRADIENT_LEVELS):
            seen.setdefault((r.optimizer, r.backend), r.hparams_used)
    out: dict[str, dict[str, dict[str, float]]] = {}
    for family in OPTIMIZERS:
        for name in HYPERPARAMETERS[family]:
            values = {b: hp[name] for (f, b), hp in seen.items() if f == family and name in hp}
            if len(set(values.values())) > 1:
                out.setdefault(family, {})[name] = values
    return out
