"""Every plain-text table and line the tool prints, from the numbers others compute.

``harness.analysis`` (counts, verdicts, level agreement, convergence,
findings), ``harness.gradcheck`` and ``harness.diff`` compute, and this
module words: the run's summary table and verdicts (``harness run``), the
gradient check's table (``harness gradcheck``) and the listing of
``harness diff``.  Wording lives in one place so that the same
number reads the same everywhere, in one table layout (``format_table``);
the report (``harness.report``) reuses the phrases below (seed ranges,
convergence cells, findings) in its HTML and Markdown tables.
"""
from __future__ import annotations

import math
from collections import Counter

from harness import analysis, gradcheck, oracle
from harness.analysis import Convergence, Finding, Verdicts
from harness.compare import FINITE_DIFFERENCE_TOLERANCE, tolerance
from harness.diff import RunDiff
from harness.records import Record, Status
from harness.registry import cell_order
from harness.tasks import ARCHS, GATES, GRADIENT_LEVELS, OPTIMIZERS


def format_table(header: list[str], rows: list[list[str]], left=(0, 1),
                 total: list[str] | None = None) -> str:
    """Plain-text table: a rule under the header, and above ``total`` (a last
    row) when there is one; columns whose index is in ``left`` are
    left-aligned, the others right-aligned."""
    every = [header, *rows, *([total] if total is not None else [])]
    widths = [max(len(str(r[i])) for r in every) for i in range(len(header))]

    def fmt(r):
        return "  ".join(str(v).ljust(w) if i in left else str(v).rjust(w)
                         for i, (v, w) in enumerate(zip(r, widths))).rstrip()

    rule = fmt(["-" * w for w in widths])
    lines = [fmt(header), rule, *map(fmt, rows)]
    if total is not None:
        lines += [rule, fmt(total)]
    return "\n".join(lines)


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


def _num(v) -> str:
    return "inf/NaN" if v is None or not math.isfinite(v) else f"{v:.1e}"


# ---------------------------------------------------------------- the summary

# Status columns shown even at zero: that no cell errored or was skipped is news too.
ALWAYS_SHOWN = frozenset({Status.OK, Status.UNSUPPORTED, Status.SKIPPED, Status.ERROR})


def summary_table(records: list[Record]) -> str:
    """The compact table printed at the end of a run: backend x level counts.

    `diverged` and `timeout` columns appear when some cell has that status;
    a `not-identical` column, and one line per backend, when --repeat found
    cells whose runs were not bit-identical."""
    table = analysis.counts(records)
    total = Counter()
    for c in table.values():
        total.update(c)
    cols = ["cells", Status.OK, "learned",
            *(s for s in Status if s != Status.OK and (s in ALWAYS_SHOWN or total[s]))]
    if total["not-identical"]:
        cols.append("not-identical")
    # A level a framework lacks fills whole rows with `unsupported`; those
    # rows are named once below the table instead of drowning the real ones.
    lacking = [k for k, c in table.items() if c[Status.UNSUPPORTED] == c["cells"]]
    rows = [[b, lv, *(str(c[col]) for col in cols)] for (b, lv), c in table.items()
            if (b, lv) not in lacking]
    text = format_table(["backend", "level", *cols], rows,
                        total=["total", "", *(str(total[col]) for col in cols)])
    return "\n".join([text, *unsupported_rows(lacking), *nondeterminism(records)])


def unsupported_rows(lacking: list[tuple[str, str]]) -> list[str]:
    """One line naming every (backend, level) whose cells are all unsupported."""
    if not lacking:
        return []
    by_level: dict[str, list[str]] = {}
    for backend, level in lacking:
        by_level.setdefault(level, []).append(backend)
    groups: dict[tuple[str, ...], list[str]] = {}
    for level, backends in by_level.items():
        groups.setdefault(tuple(backends), []).append(level)
    parts = [f"{', '.join(levels)} on {', '.join(backends)}" for backends, levels in groups.items()]
    return [f"unsupported, not shown (reasons in each record's message): {'; '.join(parts)}"]


def nondeterminism(records: list[Record]) -> list[str]:
    """Per backend: how many repeated cells were not bit-identical, and the first."""
    records = sorted(records, key=cell_order)
    lines = []
    for backend in dict.fromkeys(r.backend for r in records):
        repeated = [r for r in records if r.backend == backend and r.repeat_mismatch is not None]
        differing = [r for r in repeated if r.repeat_mismatch]
        if differing:
            r = differing[0]
            lines.append(f"not bit-identical across repeats: {backend} {len(differing)} of "
                         f"{len(repeated)} cells (e.g. {r.level}/{r.arch}/{r.gate}/seed {r.seed}: "
                         f"{', '.join(r.repeat_mismatch)})")
    return lines


# ------------------------------------------------------------------- findings

def departure(r: Record) -> str:
    """How a disagreeing cell departs: which band it left, by how much, when."""
    departed = r.departed or []
    params = (f"params_final left its band (oracle_dev {_num(r.oracle_dev)} > {r.tolerance:g})"
              if "params_final" in departed else
              f"params_final within its band (oracle_dev {_num(r.oracle_dev)})")
    curve = (f"loss curve left its band at epoch {r.first_departure}"
             if "loss_curve" in departed else "loss curve within its band")
    return f"{params}, {curve}"


def finding_detail(f: Finding) -> str:
    """The cell and the numbers of a finding."""
    s = f.subject
    if f.kind == analysis.DISAGREES:
        return f"{f.cell}: {departure(s)}" + (f" (known: {f.known})" if f.known else "")
    if f.kind == analysis.LEVELS_DISAGREE:
        return f"{f.cell}: {s.levels[1]} vs {s.levels[0]} dev {_num(s.dev)} > {s.tol:g}"
    if f.kind == analysis.IMPOSSIBLE:
        return f.cell
    if f.kind == analysis.LEARNED_SET:
        parts = []
        if s.only_backend:
            parts.append(f"learned only by {s.backend}: seeds {seed_ranges(s.only_backend)}")
        if s.only_oracle:
            parts.append(f"learned only by the oracle: seeds {seed_ranges(s.only_oracle)}")
        return f"{f.cell}: {'; '.join(parts)}"
    # A cell that went wrong: the first line of its message.
    return f"{f.cell}: {s.message.splitlines()[0] if s.message else ''}"


def finding_text(f: Finding) -> str:
    return f"{f.kind}: {f.group} {finding_detail(f)}"


def summarize_findings(found: list[Finding]) -> list[str]:
    """One line per kind and group: the count and the first example."""
    groups: dict[tuple[str, str], list[Finding]] = {}
    for f in found:
        groups.setdefault((f.kind, f.group), []).append(f)
    return [finding_text(fs[0]) if len(fs) == 1 else
            f"{kind}: {group}: {len(fs)} cells, e.g. {finding_detail(fs[0])}"
            for (kind, group), fs in groups.items()]


# ------------------------------------------------------------------- verdicts

VERDICT_HEADER = ["backend", "level", "ok", "agree", "explained", "unexplained", "unjudged",
                  "dev/tol"]


def verdict_cells(v: Verdicts) -> list[str]:
    """The VERDICT_HEADER columns of one backend x level."""
    return [v.backend, v.level, str(v.ok), str(v.agree), str(v.explained), str(v.disagree),
            str(v.unjudged), f"{v.worst:.1e}"]


def recipe_rows(table: dict) -> tuple[list[str], list[list[str]]]:
    """One optimizer family's outcomes: a row per backend, a column per
    level; each entry counts its cells by outcome, e.g. "textbook 14" or
    "eps-hat 12, unexplained 2"."""
    levels = [lv for lv in GRADIENT_LEVELS if any(k[1] == lv for k in table)]
    backends = list(dict.fromkeys(b for b, _ in table))
    rows = []
    for b in backends:
        cells = []
        for lv in levels:
            c = table.get((b, lv))
            cells.append(", ".join(f"{k} {n}" for k, n in sorted(
                c.items(), key=lambda kv: (kv[0] != "textbook", kv[0]))) if c else "")
        rows.append([b, *cells])
    return ["backend", *levels], rows


def recipe_summary(records: list[Record]) -> list[str]:
    """Per optimizer family, whether each framework x level follows the
    textbook rule, a named variant, or nothing known; then, with --hparams
    defaults, the defaults that differ between frameworks."""
    lines = []
    outcomes = analysis.recipe_outcomes(records)
    interesting = set(outcomes) != {"sgd"} or any(
        k != "textbook" for t in outcomes.values() for c in t.values() for k in c)
    if interesting:
        lines.append("per optimizer family: textbook = agrees with the family's textbook rule; "
                     "a variant's name = departs, reproduced by that oracle variant; "
                     "unexplained = neither")
        for family, table in outcomes.items():
            lines += [f"optimizer {family}:", format_table(*recipe_rows(table))]
    diffs = analysis.default_differences(records)
    for family, names in diffs.items():
        lines.append(f"defaults that differ between frameworks ({family}): " + "; ".join(
            f"{name}: " + ", ".join(f"{b} {v:g}" for b, v in values.items())
            for name, values in names.items()))
    return lines


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
    names = {f: f"{f} (gradient levels)" for f in OPTIMIZERS}
    return ["arch", "gate", *(names.get(lv, lv) for lv in levels)], rows


def verdict_summary(records: list[Record]) -> str:
    """The text ``harness run`` prints after its counts."""
    verdicts = analysis.verdict_rows(records)
    if not verdicts:
        return "verdicts: no ok cells to judge"
    lines = ["verdicts against the float64 oracle (dev/tol: worst oracle_dev / tolerance):",
             format_table(VERDICT_HEADER, [verdict_cells(v) for v in verdicts])]
    lines += recipe_summary(records)
    agree, mismatches = analysis.level_agreement(records)
    if agree:
        lines.append("levels agree within each backend: " + ", ".join(
            f"{b} {a}/{n} cells" for b, (a, n) in agree.items()))
        explained: dict[tuple[str, str, str], int] = {}
        for m in mismatches:
            if m.explained_by:
                key = (m.backend, m.levels[1], m.explained_by)
                explained[key] = explained.get(key, 0) + 1
        if explained:
            lines.append("levels that differ where one level departs from the textbook by "
                         "more named oracle variants than the other (an optimizer object's "
                         "formula, a loss computed in float32; explained, not findings): "
                         + ", ".join(
                             f"{b} {lv} {n} cells ({v})" for (b, lv, v), n in explained.items()))
    conv = analysis.convergence(records)
    if len({r.seed for r in records}) > 1:
        header, rows = oracle_convergence_rows(conv)
        lines += ["convergence over seeds (oracle): learned/n [95% interval] @median epoch "
                  "every row first came out right",
                  format_table(header, rows)]
    modes = analysis.mode_comparison(records)
    if modes:
        lines += ["does compiling change the numbers? each mode against eager, same cells:",
                  format_table(*mode_rows(modes))]
    found = analysis.findings(records, conv, mismatches)
    lines.append(f"findings: {len(found)}" if found else "findings: none")
    lines += [f"  {line}" for line in summarize_findings(found)]
    return "\n".join(lines)


def agreement_rows(agreement: analysis.BackendAgreement) -> tuple[list[str], list[list[str]]]:
    """Header and rows: each pair of backends, cells shared, worst deviation."""
    rows = [[a, b, str(agreement.shared[(a, b)]), _num(agreement.worst[(a, b)])
             if agreement.shared[(a, b)] else "-"] for a, b in agreement.worst]
    rows += [[b, "oracle", "", _num(agreement.oracle[b])] for b in agreement.backends]
    return ["backend", "vs", "shared cells", "worst dev"], rows


MODE_HEADER = ["backend", "dtype", "mode", "cells", "bit-identical", "worst dev",
               "ms/epoch", "eager ms/epoch"]


def mode_rows(modes: list[analysis.ModeComparison]) -> tuple[list[str], list[list[str]]]:
    """Header and rows of the mode comparison (compiled or graph vs eager)."""
    return MODE_HEADER, [[m.backend, m.dtype, m.mode, str(m.cells), f"{m.identical}/{m.cells}",
                          _num(m.worst_dev), f"{1e3 * m.epoch_seconds:.3f}",
                          f"{1e3 * m.eager_epoch_seconds:.3f}"] for m in modes]


# ------------------------------------------------------------ gradient check

def gradcheck_table(rows: list[gradcheck.Row], dtype: str) -> str:
    """``harness gradcheck``'s table, under a header saying what passes."""
    def e(v):
        return "" if v is None else f"{v:.1e}"

    body = [[r.backend, r.point, "" if r.loss is None else f"{r.loss:.16g}", e(r.loss_err),
             e(r.grad_err), e(r.fd_err),
             ("departs" if r.known else {True: "ok", False: "MISMATCH", None: "skipped"}[r.ok])
             + (f"  {r.note}" if r.note else "")]
            for r in rows]
    head = (f"gradient check ({dtype}): loss and gradient of each backend's raw level vs the "
            f"oracle's closed form (pass at {tolerance(dtype, 1):g}) and vs a central finite "
            f"difference (pass at {max(tolerance(dtype, 1), FINITE_DIFFERENCE_TOLERANCE):g}); "
            "errors relative with a unit floor.\nThe oracle's notebook row is against the "
            f"notebook's printed loss {gradcheck.NOTEBOOK_LOSS} and gradient "
            f"{gradcheck.NOTEBOOK_GRAD} (each component, 8 decimals: pass at "
            f"{gradcheck.NOTEBOOK_GRAD_PRECISION:g}).")
    return head + "\n" + format_table(
        ["backend", "point", "loss", "loss err", "grad err", "vs fd", "verdict"], body,
        left=(0, 1, 6))


# ----------------------------------------------------------------------- diff

def format_diff(d: RunDiff, dir_a, dir_b) -> str:
    """``harness diff``'s listing: what differs, then one line of counts."""
    lines = [f"A: {dir_a}", f"B: {dir_b}"]
    if d.settings:
        lines += ["settings differ:", *(f"  {s}" for s in d.settings)]
    if d.versions:
        lines += ["versions differ:", *(f"  {v}" for v in d.versions)]
    if d.differing:
        lines.append("cells that differ:")
        lines += [f"  {name}: {'; '.join(why)}" for name, why in d.differing]
    for side, cells in (("A", d.only_a), ("B", d.only_b)):
        if cells:
            lines.append(f"only in {side}:")
            lines += [f"  {c}" for c in cells]
    lines.append(f"{len(d.differing)} of {d.compared} matched cells differ; {len(d.only_a)} only "
                 f"in A, {len(d.only_b)} only in B")
    return "\n".join(lines)
