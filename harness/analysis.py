"""What a run's records say, beyond counts: verdicts, level agreement,
multi-seed convergence statistics and findings.

* Verdicts come from ``harness.oracle`` (judged in the workers, or by the
  loader for records written before verdicts existed).
* Level agreement: within one backend, the gradient levels (raw, module,
  optimizer) of the same cell must give the same params_final, to
  ``harness.compare.tolerance``.
* Convergence, per backend x level x arch x gate over seeds: the fraction of
  seeds learned with a 95% Wilson interval, and the median ``learned_epoch``
  (number of updates after which every row first came out right) over the
  learned cells that agree with the oracle.  Because every backend starts
  from the same parameters, a backend whose learned set differs from the
  oracle's is named.
* Findings: disagreements, errors, levels that disagree, learned sets that
  differ, and single-layer xor/xnor learned (no threshold unit can represent
  them, so a cell that learns one is a finding, not a success).
"""
from __future__ import annotations

import math
import statistics
from dataclasses import dataclass

from harness import oracle, registry
from harness.compare import relative_deviation, tolerance
from harness.records import Record, Status
from harness.registry import cell_order
from harness.tasks import ARCHS, GATES, GRADIENT_LEVELS, LEVELS, NOT_LINEARLY_SEPARABLE

Z95 = 1.959963984540054


def wilson(k: int, n: int) -> tuple[float, float]:
    """95% Wilson score interval for k successes out of n."""
    if n == 0:
        return 0.0, 1.0
    p, z2 = k / n, Z95 * Z95
    centre = (p + z2 / (2 * n)) / (1 + z2 / n)
    half = Z95 * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n)) / (1 + z2 / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def label(rec) -> str:
    return f"{rec.backend} {rec.level} {rec.arch} {rec.gate} seed {rec.seed}"


# ----------------------------------------------------------- level agreement

@dataclass(frozen=True)
class LevelMismatch:
    backend: str
    cell: str
    levels: tuple[str, str]
    dev: float
    tol: float


def level_agreement(records: list[Record]
                    ) -> tuple[dict[str, tuple[int, int]], list[LevelMismatch]]:
    """({backend: (cells agreeing, cells compared)}, mismatches)."""
    groups: dict[tuple, list[Record]] = {}
    for r in sorted(records, key=cell_order):
        if r.status == "ok" and r.level in GRADIENT_LEVELS:
            key = (r.backend, r.arch, r.gate, r.seed, r.dtype, r.init, r.init_scale, r.lr,
                   r.epochs, r.hidden)
            groups.setdefault(key, []).append(r)
    counts: dict[str, list[int]] = {}
    mismatches = []
    for key, group in groups.items():
        if len(group) < 2:
            continue
        group.sort(key=lambda r: GRADIENT_LEVELS.index(r.level))
        first, tol = group[0], tolerance(group[0].dtype, group[0].epochs)
        bad = []
        for other in group[1:]:
            dev = relative_deviation(other.params_final, first.params_final)
            if not dev <= tol:
                cell = f"{first.arch} {first.gate} seed {first.seed}"
                bad.append(LevelMismatch(first.backend, cell, (first.level, other.level), dev, tol))
        c = counts.setdefault(first.backend, [0, 0])
        c[0] += not bad
        c[1] += 1
        mismatches.extend(bad)
    return {b: (c[0], c[1]) for b, c in counts.items()}, mismatches


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
    # Seeds this backend learned and the oracle did not, and the reverse.
    only_backend: tuple[int, ...]
    only_oracle: tuple[int, ...]

    @property
    def fraction(self) -> float:
        return self.learned / self.n if self.n else float("nan")

    @property
    def differs(self) -> bool:
        return bool(self.only_backend or self.only_oracle)


def convergence(records: list[Record]) -> list[Convergence]:
    """Per backend x level x arch x gate; the oracle's own rows come first, as
    backend ``oracle`` with its rule as level (``gradient`` for raw, module
    and optimizer, which share a trajectory), over the seeds any backend ran."""
    ok = sorted((r for r in records if r.status == "ok"),
                key=cell_order)
    pairs = list(zip(ok, oracle.solve([oracle.Problem.of(r) for r in ok])))
    groups: dict[tuple, list] = {}
    for r, t in pairs:
        groups.setdefault((r.backend, r.level, r.arch, r.gate), []).append((r, t))
    ref: dict[tuple, dict] = {}
    for r, t in pairs:
        ref.setdefault((oracle.rule_of(r.level), r.arch, r.gate), {}).setdefault(r.seed, t)
    out = []
    for (level, arch, gate), by_seed in ref.items():
        epochs = [t.learned_epoch for t in by_seed.values() if t.learned]
        k = len(epochs)
        out.append(Convergence("oracle", level, arch, gate, len(by_seed), k, *wilson(k, len(by_seed)),
                               statistics.median(epochs) if epochs else None, k, (), ()))
    for (backend, level, arch, gate), group in groups.items():
        learned = {r.seed for r, _ in group if r.learned}
        by_oracle = {r.seed for r, t in group if t.learned}
        epochs = [r.learned_epoch for r, _ in group if r.learned_epoch is not None]
        out.append(Convergence(backend, level, arch, gate, len(group), len(learned),
                               *wilson(len(learned), len(group)),
                               statistics.median(epochs) if epochs else None, len(by_oracle),
                               tuple(sorted(learned - by_oracle)),
                               tuple(sorted(by_oracle - learned))))
    return out


# ------------------------------------------------------------------- findings

def seed_ranges(seeds) -> str:
    """Sorted ints as ranges: 0-99, 3, 5-7."""
    out: list[list[int]] = []
    for s in sorted(seeds):
        if out and s == out[-1][1] + 1:
            out[-1][1] = s
        else:
            out.append([s, s])
    text = [f"{a}" if a == b else f"{a}-{b}" for a, b in out]
    return ", ".join(text[:8]) + (f" (+{len(text) - 8} more)" if len(text) > 8 else "")


@dataclass(frozen=True)
class Finding:
    kind: str  # e.g. "disagrees with the oracle"
    group: str  # backend and level, or backend: findings are summarized per group
    detail: str  # the cell and the numbers

    def __str__(self) -> str:
        return f"{self.kind}: {self.group} {self.detail}"


def findings(records: list[Record], conv: list[Convergence] | None = None,
             levels: list[LevelMismatch] | None = None) -> list[Finding]:
    """Every finding, most serious kind first."""
    records = sorted(records, key=cell_order)
    out = []

    def where(r):
        return f"{r.backend} {r.level}", f"{r.arch} {r.gate} seed {r.seed}"

    for r in records:
        if r.status == Status.OK and r.agrees is False:
            why = registry.known_departure(r.cell)
            out.append(Finding("disagrees with the oracle", where(r)[0],
                               f"{where(r)[1]}: {departure(r)}"
                               + (f" (known: {why})" if why else "")))
    for r in records:
        if r.status != Status.OK and not r.status.not_run:
            msg = r.message.splitlines()[0] if r.message else ""
            out.append(Finding(r.status, where(r)[0], f"{where(r)[1]}: {msg}"))
    if levels is None:
        levels = level_agreement(records)[1]
    for m in levels:
        out.append(Finding("levels disagree", m.backend, f"{m.cell}: {m.levels[1]} vs "
                           f"{m.levels[0]} dev {_num(m.dev)} > {m.tol:g}"))
    for r in records:
        if (r.status == Status.OK and r.learned and r.arch == "single"
                and r.gate in NOT_LINEARLY_SEPARABLE):
            out.append(Finding("learned single-layer xor/xnor (impossible for one threshold "
                               "unit)", where(r)[0], where(r)[1]))
    for c in conv if conv is not None else convergence(records):
        if c.differs:
            parts = []
            if c.only_backend:
                parts.append(f"learned only by {c.backend}: seeds {seed_ranges(c.only_backend)}")
            if c.only_oracle:
                parts.append(f"learned only by the oracle: seeds {seed_ranges(c.only_oracle)}")
            out.append(Finding("learned set differs from the oracle's", f"{c.backend} {c.level}",
                               f"{c.arch} {c.gate}: {'; '.join(parts)}"))
    return out


def departure(r: Record) -> str:
    """How a disagreeing cell departs: which band it left, by how much, when."""
    departed = r.departed or []
    params = (f"params_final left its band (oracle_dev {_num(r.oracle_dev)} > {r.tolerance:g})"
              if "params_final" in departed else
              f"params_final within its band (oracle_dev {_num(r.oracle_dev)})")
    curve = (f"loss curve left its band at epoch {r.first_departure}"
             if "loss_curve" in departed else "loss curve within its band")
    return f"{params}, {curve}"


def summarize_findings(found: list[Finding]) -> list[str]:
    """One line per kind and group: the count and the first example."""
    groups: dict[tuple[str, str], list[Finding]] = {}
    for f in found:
        groups.setdefault((f.kind, f.group), []).append(f)
    return [str(fs[0]) if len(fs) == 1 else
            f"{kind}: {group}: {len(fs)} cells, e.g. {fs[0].detail}"
            for (kind, group), fs in groups.items()]


def _num(v) -> str:
    return "inf/NaN" if v is None or not math.isfinite(v) else f"{v:.1e}"


# -------------------------------------------------------------------- summary

def verdict_rows(records: list[Record]) -> list[list[str]]:
    """backend, level, ok, agree, disagree, worst oracle_dev / tolerance."""
    table: dict[tuple[str, str], list] = {}
    for r in sorted(records, key=cell_order):
        if r.status != "ok":
            continue
        row = table.setdefault((r.backend, r.level), [0, 0, 0, 0.0])
        row[0] += 1
        row[1] += r.agrees is True
        row[2] += r.agrees is False
        ratio = (r.oracle_dev / r.tolerance if r.oracle_dev is not None
                 and math.isfinite(r.oracle_dev) else float("inf"))
        row[3] = max(row[3], ratio)
    return [[b, lv, str(ok), str(agree), str(dis), f"{worst:.1e}"]
            for (b, lv), (ok, agree, dis, worst) in table.items()]


def format_table(header: list[str], rows: list[list[str]], left=(0, 1)) -> str:
    """Plain-text table; columns whose index is in ``left`` are left-aligned."""
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]

    def fmt(r):
        return "  ".join(str(v).ljust(w) if i in left else str(v).rjust(w)
                         for i, (v, w) in enumerate(zip(r, widths))).rstrip()

    return "\n".join([fmt(header), fmt(["-" * w for w in widths]), *map(fmt, rows)])


def convergence_cell(c: Convergence) -> str:
    med = "-" if c.median_epoch is None else f"{c.median_epoch:g}"
    return f"{c.learned}/{c.n} [{c.low:.2f},{c.high:.2f}] @{med}"


def oracle_convergence_rows(conv: list[Convergence]) -> tuple[list[str], list[list[str]]]:
    """The oracle's rows as a table: arch x gate, one column per rule."""
    mine = {(c.level, c.arch, c.gate): c for c in conv if c.backend == "oracle"}
    levels = [lv for lv in oracle.RULES if any(k[0] == lv for k in mine)]
    rows = []
    for arch in ARCHS:
        for gate in GATES:
            if any((lv, arch, gate) in mine for lv in levels):
                rows.append([arch, gate, *(convergence_cell(mine[(lv, arch, gate)])
                                           if (lv, arch, gate) in mine else "" for lv in levels)])
    names = {"gradient": "gradient (raw, module, optimizer)"}
    return ["arch", "gate", *(names.get(lv, lv) for lv in levels)], rows


def verdict_summary(records: list[Record]) -> str:
    """The text ``harness run`` prints after its counts."""
    rows = verdict_rows(records)
    if not rows:
        return "verdicts: no ok cells to judge"
    lines = ["verdicts against the float64 oracle (dev/tol: worst oracle_dev / tolerance):",
             format_table(["backend", "level", "ok", "agree", "disagree", "dev/tol"], rows)]
    agree, mismatches = level_agreement(records)
    if agree:
        lines.append("levels agree within each backend: " + ", ".join(
            f"{b} {a}/{n} cells" for b, (a, n) in agree.items()))
    conv = convergence(records)
    if len({r.seed for r in records}) > 1:
        header, rows = oracle_convergence_rows(conv)
        lines += ["convergence over seeds (oracle): learned/n [95% interval] @median epoch "
                  "every row first came out right",
                  format_table(header, rows)]
    found = findings(records, conv, mismatches)
    lines.append(f"findings: {len(found)}" if found else "findings: none")
    lines += [f"  {f}" for f in summarize_findings(found)]
    return "\n".join(lines)
