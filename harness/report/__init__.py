"""``harness report DIR``: DIR/report.html and DIR/report.md from a run folder.

* report.html is one self-contained file: styles inline, plots embedded as
  base64 PNGs, nothing fetched.  report.md has the same tables and links the
  same plots, written beside it as report-*.png.
* Plots aggregate over seeds (a hundred seeds make the same number of
  plots as one): the verdict matrix and the oracle_dev heatmap take the worst
  seed of each cell; loss curves and decision surfaces show one seed.
* matplotlib is the optional ``report`` extra, imported here only inside
  ``write_report`` (Agg backend, no display); without it ReportUnavailable
  says how to install it.
* Records written before verdicts existed are judged on the fly.
"""
from __future__ import annotations

import base64
import html
import io
import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from harness import analysis, oracle, registry, text
from harness.compare import tolerance
from harness.records import Record
from harness.registry import cell_order
from harness.results import atomic_write, load_run
from harness.tasks import ARCHS, GATES, GRADIENT_LEVELS, LEVELS, NOT_LINEARLY_SEPARABLE

INSTALL_HINT = "pip install 'feedforward-harness[report]'"


class ReportUnavailable(RuntimeError):
    """The report cannot be made here (matplotlib missing); one line."""


def _pyplot():
    try:
        import matplotlib
    except ImportError:
        raise ReportUnavailable(f"the report needs matplotlib, which is not installed: "
                                f"{INSTALL_HINT}") from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    plt.rcParams.update({"font.size": 9, "axes.titlesize": 10, "figure.dpi": 110,
                         "savefig.dpi": 110, "axes.spines.top": False,
                         "axes.spines.right": False})
    return plt


# --------------------------------------------------------------- the grid
# Rows: backend x level; columns: arch x gate; each cell holds its seeds.

CATEGORIES = {  # name: (colour, meaning)
    "agree": ("#a5d6a7", "ok, agrees with the oracle"),
    "finding": ("#ffb74d", "agrees, but learned single-layer xor/xnor"),
    "disagree": ("#e53935", "disagrees with the oracle"),
    "failed": ("#6a1b9a", "error or other failure"),
    "skipped": ("#fff59d", "skipped: framework not usable"),
    "unsupported": ("#e0e0e0", "unsupported: the framework lacks the level"),
}
DARK = {"disagree", "failed"}


@dataclass
class Grid:
    rows: list[tuple[str, str]]
    cols: list[tuple[str, str]]
    cells: dict[tuple[str, str, str, str], list[Record]]
    # Rows left out because the backend lacks the level: (backend, level, reason).
    hidden: list[tuple[str, str, str]]

    @classmethod
    def of(cls, records: list[Record], hide_unsupported: bool = True) -> "Grid":
        cells: dict = {}
        by_row: dict = {}
        for r in records:
            cells.setdefault((r.backend, r.level, r.arch, r.gate), []).append(r)
            by_row.setdefault((r.backend, r.level), []).append(r)
        order = list(registry.BACKENDS)
        rows = sorted(by_row, key=lambda k: (order.index(k[0]) if k[0] in order else len(order),
                                             LEVELS.index(k[1])))
        hidden = [(*row, by_row[row][0].message) for row in rows if hide_unsupported
                  and all(r.status == "unsupported" for r in by_row[row])]
        rows = [row for row in rows if (*row, by_row[row][0].message) not in hidden]
        cols = sorted({(r.arch, r.gate) for r in records},
                      key=lambda k: (ARCHS.index(k[0]), list(GATES).index(k[1])))
        return cls(rows, cols, cells, hidden)

    def get(self, row, col) -> list[Record]:
        return self.cells.get((*row, *col), [])


def category(recs: list[Record]) -> str | None:
    if not recs:
        return None
    statuses = {r.status for r in recs}
    ok = [r for r in recs if r.status == "ok"]
    if statuses - {"ok", "skipped", "unsupported"}:
        return "failed"
    if any(r.agrees is False for r in ok):
        return "disagree"
    if any(r.learned and r.arch == "single" and r.gate in NOT_LINEARLY_SEPARABLE for r in ok):
        return "finding"
    if ok:
        return "agree"
    return "skipped" if "skipped" in statuses else "unsupported"


def _cell_text(recs: list[Record], cat: str) -> str:
    if cat in ("skipped", "unsupported"):
        return "skip" if cat == "skipped" else "n/a"
    if cat == "failed":
        bad = [r.status for r in recs if r.status not in ("ok", "skipped", "unsupported")]
        return f"{bad[0]}" + (f" x{len(bad)}" if len(bad) > 1 else "")
    ok = [r for r in recs if r.status == "ok"]
    return f"{sum(bool(r.learned) for r in ok)}/{len(ok)}"


def _grid_axes(ax, grid: Grid):
    ax.set_xticks(range(len(grid.cols)), [g for _, g in grid.cols])
    ax.set_yticks(range(len(grid.rows)), [f"{b}  {lv}" for b, lv in grid.rows])
    ax.tick_params(length=0)
    ax.xaxis.tick_top()
    for i in range(1, len(grid.rows)):
        if grid.rows[i][0] != grid.rows[i - 1][0]:
            ax.axhline(i - 0.5, color="black", lw=1.5)
    for j in range(1, len(grid.cols)):
        if grid.cols[j][0] != grid.cols[j - 1][0]:
            ax.axvline(j - 0.5, color="black", lw=1.5)
    for arch in ARCHS:
        idx = [j for j, c in enumerate(grid.cols) if c[0] == arch]
        if idx:
            ax.text(sum(idx) / len(idx), -1.3, f"{arch}-layer" if arch == "single" else
                    "multi-layer", ha="center", va="bottom", fontsize=10, weight="bold")
    for spine in ax.spines.values():
        spine.set_visible(False)


def _grid_figure(plt, grid: Grid):
    width = 2.4 + 0.72 * len(grid.cols)
    height = 1.6 + 0.3 * len(grid.rows)
    return plt.subplots(figsize=(width, height))


def _hidden_note(grid: Grid) -> str:
    if not grid.hidden:
        return ""
    return (" Not shown (the framework lacks the level): "
            + ", ".join(f"{b} {lv}" for b, lv, _ in grid.hidden) + ".")


def fig_verdicts(plt, grid: Grid):
    from matplotlib.colors import to_rgb
    from matplotlib.patches import Patch

    fig, ax = _grid_figure(plt, grid)
    rgb = np.ones((len(grid.rows), len(grid.cols), 3))
    used = set()
    for i, row in enumerate(grid.rows):
        for j, col in enumerate(grid.cols):
            recs = grid.get(row, col)
            cat = category(recs)
            if cat is None:
                continue
            used.add(cat)
            rgb[i, j] = to_rgb(CATEGORIES[cat][0])
            ax.text(j, i, _cell_text(recs, cat), ha="center", va="center", fontsize=8,
                    color="white" if cat in DARK else "black")
    ax.imshow(rgb, aspect="auto", interpolation="nearest")
    _grid_axes(ax, grid)
    handles = [Patch(facecolor=c, edgecolor="#888", label=m) for k, (c, m) in CATEGORIES.items()
               if k in used]
    ax.legend(handles=handles, loc="upper center", bbox_to_anchor=(0.5, -0.02), ncol=2,
              frameon=False, fontsize=8)
    fig.tight_layout()
    return fig


def fig_deviation(plt, grid: Grid):
    from matplotlib.colors import TwoSlopeNorm

    fig, ax = _grid_figure(plt, grid)
    lo, hi = -8.0, 2.0
    val = np.full((len(grid.rows), len(grid.cols)), np.nan)
    texts = []
    for i, row in enumerate(grid.rows):
        for j, col in enumerate(grid.cols):
            ok = [r for r in grid.get(row, col) if r.status == "ok"]
            if not ok:
                continue
            worst = max(ok, key=lambda r: math.inf if r.oracle_dev is None
                        or not math.isfinite(r.oracle_dev) else r.oracle_dev / r.tolerance)
            dev = worst.oracle_dev
            ratio = math.inf if dev is None or not math.isfinite(dev) else dev / worst.tolerance
            val[i, j] = np.clip(math.log10(ratio) if ratio > 0 else lo, lo, hi)
            text = "inf" if ratio == math.inf else ("0" if dev == 0 else f"{dev:.0e}")
            texts.append((i, j, text.replace("e-0", "e-")))
    cmap = plt.get_cmap("RdYlGn_r").copy()
    cmap.set_bad("#f0f0f0")
    norm = TwoSlopeNorm(vmin=lo, vcenter=0, vmax=hi)
    im = ax.imshow(np.ma.masked_invalid(val), aspect="auto", cmap=cmap, norm=norm,
                   interpolation="nearest")
    for i, j, text in texts:
        r, g, b, _ = cmap(norm(val[i, j]))
        ax.text(j, i, text, ha="center", va="center", fontsize=7,
                color="white" if 0.299 * r + 0.587 * g + 0.114 * b < 0.5 else "black")
    for i, row in enumerate(grid.rows):
        for j, col in enumerate(grid.cols):
            if np.isnan(val[i, j]) and grid.get(row, col):
                ax.text(j, i, "n/a", ha="center", va="center", fontsize=7, color="#999")
    _grid_axes(ax, grid)
    bar = fig.colorbar(im, ax=ax, fraction=0.03, pad=0.02)
    ticks = list(range(int(lo), int(hi) + 1, 2))
    bar.set_ticks(ticks, labels=[f"1e{t}" if t else "1 = tol" for t in ticks])
    bar.set_label("worst oracle_dev / tolerance over seeds")
    fig.tight_layout()
    return fig


# -------------------------------------------------------------- loss curves

LEVEL_STYLES = {"raw": "-", "module": "--", "optimizer": ":"}


def _colours(plt, records):
    """One colour per backend, registry order first, stable across plots of one report."""
    names = list(dict.fromkeys([*registry.BACKENDS, *(r.backend for r in records)]))
    cycle = plt.get_cmap("tab10").colors
    return {name: cycle[i % len(cycle)] for i, name in enumerate(names)}


def curve_cells(records: list[Record]) -> list[tuple]:
    """(arch, gate, seed) to draw: per arch, the notebook's cell (single nand,
    multi xor) at the smallest seed, and the first cell where something
    departed from the oracle if that one did not."""
    ok = [r for r in records if r.status == "ok" and r.level in GRADIENT_LEVELS]
    picks: list[tuple] = []
    for arch, gate in (("single", "nand"), ("multi", "xor")):
        mine = [r for r in ok if r.arch == arch]
        if not mine:
            continue
        gates = {r.gate for r in mine}
        g = gate if gate in gates else min(gates, key=list(GATES).index)
        cell = (arch, g, min(r.seed for r in mine if r.gate == g))
        picks.append(cell)
        bad = sorted((r for r in mine if r.agrees is False),
                     key=lambda r: (r.seed, cell_order(r)))
        if bad and not any((r.arch, r.gate, r.seed) == cell for r in bad):
            picks.append((arch, bad[0].gate, bad[0].seed))
    return picks


def fig_loss(plt, records: list[Record], arch: str, gate: str, seed: int):
    recs = sorted((r for r in records if r.status == "ok" and r.level in GRADIENT_LEVELS
                   and (r.arch, r.gate, r.seed) == (arch, gate, seed)), key=cell_order)
    traj = oracle.trajectory(recs[0])
    ref = np.append(traj.loss_curve, traj.loss_final)
    t = np.arange(len(ref))
    colours = _colours(plt, records)
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(9.5, 6.2), sharex=True,
                                      gridspec_kw={"height_ratios": [3, 2]})
    top.plot(t, ref, color="#bbbbbb", lw=6, label="oracle", solid_capstyle="round")
    floor = 1e-18
    tol = tolerance(recs[0].dtype, recs[0].epochs)
    for r in recs:
        curve = np.array([np.nan if v is None else v for v in [*r.loss_curve, r.loss_final]])
        style = dict(color=colours.get(r.backend, "black"), ls=LEVEL_STYLES[r.level], lw=1.3)
        top.plot(t, curve, **style)
        band = np.abs(curve - ref) / np.maximum(np.abs(ref), 1.0)
        bottom.plot(t, np.maximum(band, floor), **style)
        if r.first_departure is not None:
            k = r.first_departure
            for ax, y in ((top, curve[k]), (bottom, max(band[k], floor))):
                ax.plot([k], [y], marker="X", ms=11, color=style["color"], mec="black", zorder=5)
            bottom.annotate(f"{r.backend} {r.level}: leaves the band at epoch {k}",
                            (k, max(band[k], floor)), xytext=(12, -14), textcoords="offset points",
                            fontsize=8, color=style["color"], weight="bold")
    bottom.axhline(tol, color="#c62828", ls="--", lw=1)
    bottom.text(t[-1], tol, f"tolerance {tol:g} ", color="#c62828", ha="right", va="bottom",
                fontsize=8)
    top.set_yscale("log")
    bottom.set_yscale("log")
    bottom.set_ylim(floor / 3, max(1.0, np.nanmax(np.abs(ref))) * 3)
    top.set_ylabel("summed cross-entropy")
    bottom.set_ylabel("|loss - oracle| / max(|oracle|, 1)")
    bottom.set_xlabel("epoch (the last point is loss_final)")
    dtype = recs[0].dtype
    top.set_title(f"{arch}-layer {gate}, seed {seed} ({dtype}): every backend and level over the "
                  f"oracle (grey); exact zeros drawn at {floor:g}", loc="left")
    # Colour says the backend, line style the level: a legend of 9, not 18.
    from matplotlib.lines import Line2D
    handles = [Line2D([], [], color="#bbbbbb", lw=6, label="oracle")]
    handles += [Line2D([], [], color=colours.get(b, "black"), lw=2, label=b)
                for b in dict.fromkeys(r.backend for r in recs)]
    handles += [Line2D([], [], color="black", ls=LEVEL_STYLES[lv], lw=1.3, label=lv)
                for lv in GRADIENT_LEVELS if any(r.level == lv for r in recs)]
    top.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False,
               fontsize=8)
    fig.tight_layout()
    return fig


# ------------------------------------------------------- decision surfaces

def surface_record(records: list[Record], arch: str, gate: str) -> Record | None:
    """The record whose surface is drawn: smallest seed, then the first
    backend and level that agrees with the oracle (any ok one if none does)."""
    ok = sorted((r for r in records if r.status == "ok" and (r.arch, r.gate) == (arch, gate)),
                key=lambda r: (r.seed, r.agrees is not True, cell_order(r)))
    return ok[0] if ok else None


def fig_surfaces(plt, records: list[Record], grid: Grid):
    archs = [a for a in ARCHS if any(c[0] == a for c in grid.cols)]
    gates = [g for g in GATES if any(c[1] == g for c in grid.cols)]
    fig, axes = plt.subplots(len(archs), len(gates), figsize=(1.9 * len(gates) + 1.0,
                                                               2.3 * len(archs) + 0.6),
                             squeeze=False, layout="constrained")
    n = 121
    u = np.linspace(0, 1, n)
    gx, gy = np.meshgrid(u, u)
    image = None
    for i, arch in enumerate(archs):
        for j, gate in enumerate(gates):
            ax = axes[i, j]
            ax.set_xticks([0, 1])
            ax.set_yticks([0, 1])
            rec = surface_record(records, arch, gate)
            if rec is None:
                ax.set_axis_off()
                continue
            rule = oracle.rule_of(rec.level)
            one_input = np.shape(rec.params_final.get("W", rec.params_final.get("W1")))[0] == 1
            if one_input:
                p = oracle.probability(rec.params_final, u[:, None], rule)
                surface = np.tile(p, (n, 1))
                pts, targets = np.array([[0, 0.5], [1, 0.5]]), np.array(GATES[gate])
                ax.set_yticks([])
            else:
                surface = oracle.probability(rec.params_final, np.c_[gx.ravel(), gy.ravel()],
                                             rule).reshape(n, n)
                pts = np.array([[0, 0], [0, 1], [1, 0], [1, 1]], dtype=float)
                targets = np.array(GATES[gate])
            image = ax.imshow(surface, origin="lower", extent=(0, 1, 0, 1), cmap="RdBu_r",
                              vmin=0, vmax=1, interpolation="bilinear")
            if 0 < surface.min() < 0.5 < surface.max() and not one_input:
                ax.contour(gx, gy, surface, levels=[0.5], colors="black", linewidths=1)
            wrong = (np.asarray(rec.preds) != targets)
            ax.scatter(pts[:, 0], pts[:, 1], c=targets, cmap="RdBu_r", vmin=-0.3, vmax=1.3, s=70,
                       edgecolors="black", linewidths=1.2, zorder=3, clip_on=False)
            if wrong.any():
                ax.scatter(pts[wrong, 0], pts[wrong, 1], s=260, facecolors="none",
                           edgecolors="#ffb300", linewidths=2.5, zorder=4, clip_on=False)
            learned = [r for r in records if r.status == "ok" and (
                r.backend, r.level, r.arch, r.gate) == (rec.backend, rec.level, arch, gate)]
            k = sum(bool(r.learned) for r in learned)
            ax.set_title(f"{gate}: {'learned' if rec.learned else 'NOT learned'}",
                         color="black" if rec.learned else "#b71c1c", fontsize=9, pad=9)
            ax.set_xlabel(f"{rec.backend} {rec.level} s{rec.seed}; {k}/{len(learned)} seeds",
                          fontsize=7, labelpad=1)
        axes[i, 0].set_ylabel(f"{arch}-layer", fontsize=10, weight="bold")
    if image is not None:
        bar = fig.colorbar(image, ax=axes, fraction=0.015, pad=0.02)
        bar.set_label("P(y = 1)")
    fig.suptitle("Decision surfaces: probability over [0,1]² from params_final; points are the "
                 "truth table (red = 1, blue = 0); orange ring = predicted wrong",
                 fontsize=10, x=0.01, ha="left")
    return fig


# ---------------------------------------------------------------- convergence

RULE_COLOURS = {"gradient": "#1e88e5", "perceptron": "#8e24aa", "perceptron-batch": "#43a047"}


def fig_convergence(plt, conv: list[analysis.Convergence]):
    mine = [c for c in conv if c.backend == "oracle"]
    archs = [a for a in ARCHS if any(c.arch == a for c in mine)]
    fig, axes = plt.subplots(len(archs), 1, figsize=(9.5, 2.4 * len(archs) + 0.4), squeeze=False)
    for ax, arch in zip(axes[:, 0], archs):
        rules = [r for r in oracle.RULES if any((c.level, c.arch) == (r, arch) for c in mine)]
        width = 0.8 / len(rules)
        gates = [g for g in GATES if any(c.arch == arch and c.gate == g for c in mine)]
        for k, rule in enumerate(rules):
            for j, gate in enumerate(gates):
                c = next((c for c in mine if (c.level, c.arch, c.gate) == (rule, arch, gate)), None)
                if c is None:
                    continue
                x = j + (k - (len(rules) - 1) / 2) * width
                ax.bar(x, c.fraction, width * 0.9, color=RULE_COLOURS[rule],
                       label=rule if j == 0 else None)
                # Clipped: round-off can put the interval a hair inside the fraction.
                ax.errorbar(x, c.fraction, yerr=[[max(c.fraction - c.low, 0)],
                                                 [max(c.high - c.fraction, 0)]],
                            color="black", capsize=2, lw=1)
                if c.median_epoch is not None:
                    ax.text(x, min(c.high, 1.0) + 0.03, f"{c.median_epoch:g}", ha="center",
                            fontsize=7, rotation=90, va="bottom")
        ax.set_xticks(range(len(gates)), gates)
        ax.set_ylim(0, 1.45)
        ax.set_yticks([0, 0.5, 1])
        ax.set_ylabel(f"{arch}-layer\nfraction learned")
        ax.legend(loc="upper right", ncol=len(rules), frameon=False, fontsize=8)
    n = max(c.n for c in mine)
    axes[0, 0].set_title(f"Oracle: fraction of {n} seeds learned, 95% Wilson interval; number = "
                         "median epoch every row first came out right", loc="left")
    fig.tight_layout()
    return fig


# ------------------------------------------------------------------- tables

def _fmt_conv(c: analysis.Convergence) -> list[str]:
    med = "" if c.median_epoch is None else f"{c.median_epoch:g}"
    vs = "same as oracle" if c.backend != "oracle" and not c.differs else ""
    if c.differs:
        vs = "; ".join(x for x in (
            f"+{text.seed_ranges(c.only_backend)}" if c.only_backend else "",
            f"-{text.seed_ranges(c.only_oracle)}" if c.only_oracle else "") if x)
    return [c.backend, c.level, c.arch, c.gate, str(c.n), str(c.learned), f"{c.fraction:.2f}",
            f"[{c.low:.2f}, {c.high:.2f}]", med, vs]


CONV_HEADER = ["backend", "level", "arch", "gate", "seeds", "learned", "fraction", "95% interval",
               "median epoch", "vs oracle's learned set"]


def _status_rows(records):
    table = analysis.counts(records)
    keys = Grid.of(records, hide_unsupported=False).rows
    cols = ["cells", "ok", "learned", "unsupported", "skipped", "error"]
    extra = sorted({s for c in table.values() for s in c} - set(cols))
    return ["backend", "level", *cols, *extra], [[b, lv, *(str(table[(b, lv)][c]) for c in
                                                         cols + extra)] for b, lv in keys]


def _manifest_rows(man: dict) -> list[list[str]]:
    rows = [["created", str(man.get("created_at", ""))],
            ["command", " ".join(map(str, man.get("command", [])))]]
    git = man.get("git", {})
    rows.append(["commit", f"{git.get('commit')}" + (" (dirty)" if git.get("dirty") else "")])
    for k, v in man.get("machine", {}).items():
        rows.append([f"machine.{k}", str(v)])
    for k, v in man.get("versions", {}).items():
        rows.append([f"version.{k}", str(v)])
    for k, v in man.get("config", {}).items():
        rows.append([f"config.{k}", text.seed_ranges(v) if k == "seeds" and isinstance(v, list)
                     else str(v)])
    return rows


# ---------------------------------------------------------------- rendering

def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", bbox_inches="tight")
    import matplotlib.pyplot as plt
    plt.close(fig)
    return buf.getvalue()


def _html_table(header, rows, cls="") -> str:
    head = "".join(f"<th>{html.escape(str(h))}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(v))}</td>" for v in r) + "</tr>"
                   for r in rows)
    return f'<table class="{cls}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def _md_table(header, rows) -> str:
    def cell(v):
        return str(v).replace("|", "\\|").replace("\n", " ")
    lines = ["| " + " | ".join(map(cell, header)) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(map(cell, r)) + " |" for r in rows]
    return "\n".join(lines)


CSS = """
body{font-family:system-ui,-apple-system,'Segoe UI',Roboto,sans-serif;margin:24px auto;
max-width:1250px;color:#222;padding:0 16px;line-height:1.4}
h1{margin-bottom:4px} h2{border-bottom:2px solid #eee;padding-bottom:4px;margin-top:36px}
.sub{color:#666;margin-top:0}
.banner{padding:12px 16px;border-radius:6px;font-size:1.15em;margin:16px 0}
.good{background:#e8f5e9;border-left:6px solid #43a047}
.bad{background:#ffebee;border-left:6px solid #e53935}
.stats{display:flex;gap:12px;flex-wrap:wrap;margin:12px 0}
.stat{background:#f5f5f5;border-radius:6px;padding:8px 14px;min-width:90px}
.stat b{display:block;font-size:1.5em}
table{border-collapse:collapse;font-size:13px;margin:8px 0}
th,td{border:1px solid #ddd;padding:3px 8px;text-align:left}
th{background:#fafafa} tr:nth-child(even) td{background:#fcfcfc}
td:nth-child(n+3){font-variant-numeric:tabular-nums}
img{max-width:100%;border:1px solid #eee;margin:8px 0}
.findings li{margin:2px 0}
details summary{cursor:pointer;color:#1565c0;margin:8px 0}
"""


@dataclass
class Section:
    title: str
    text: str = ""
    images: tuple = ()  # (file name, caption, png bytes)
    tables: tuple = ()  # (header, rows, collapsed label or "")


def write_report(run_dir) -> Path:
    """Write DIR/report.html, DIR/report.md and DIR/report-*.png; return the html path."""
    run_dir = Path(run_dir)
    man, records = load_run(run_dir)
    plt = _pyplot()
    grid = Grid.of(records)
    ok = [r for r in records if r.status == "ok"]
    agree_counts, mismatches = analysis.level_agreement(records)
    conv = analysis.convergence(records) if ok else []
    found = analysis.findings(records, conv, mismatches)
    seeds = sorted({r.seed for r in records})

    sections = []
    if grid.rows:
        sections.append(Section(
            "Verdict matrix",
            "Each square is one backend and level (rows) on one gate and architecture (columns), "
            "over every seed: its colour is the worst verdict against the float64 oracle, its "
            "text the seeds learned. Single-layer xor and xnor are expected not to be learned."
            + _hidden_note(grid),
            (("report-verdicts.png", "verdict matrix", _png(fig_verdicts(plt, grid))),)))
    if ok:
        sections.append(Section(
            "Deviation from the oracle",
            "Worst oracle_dev (largest relative deviation of params_final from the oracle's) "
            "over seeds, coloured by its ratio to the tolerance: green is far inside, red "
            "outside.",
            (("report-oracle-dev.png", "oracle_dev heatmap", _png(fig_deviation(plt, grid))),),
            ((["backend", "level", "ok", "agree", "disagree", "worst dev/tol"],
              [text.verdict_cells(v) for v in analysis.verdict_rows(records)], ""),)))
        curves = tuple((f"report-loss-{i + 1}.png", f"loss curves {a} {g} seed {s}",
                        _png(fig_loss(plt, records, a, g, s)))
                       for i, (a, g, s) in enumerate(curve_cells(records)))
        if curves:
            sections.append(Section(
                "Loss curves",
                "Every backend and gradient level of one cell drawn over the oracle's curve: "
                "where they agree they lie on one line. The lower panel is the band test "
                "(distance from the oracle's loss, relative with a unit floor); a cross marks "
                "the first epoch a curve leaves the tolerance band.", curves))
        sections.append(Section(
            "Decision surfaces", "",
            (("report-surfaces.png", "decision surfaces",
              _png(fig_surfaces(plt, records, grid))),)))
        level_rows = [[b, f"{a}/{n}", "yes" if a == n else "NO"]
                      for b, (a, n) in agree_counts.items()]
        level_text = ("Within one backend, raw, module and optimizer of the same cell must give "
                      "the same params_final (to the tolerance).")
        sections.append(Section("Level agreement", level_text,
                                tables=((["backend", "cells whose levels agree", "all"],
                                         level_rows, ""),) if level_rows else ()))
        header, orows = text.oracle_convergence_rows(conv)
        images = ()
        if len(seeds) > 1:
            images = (("report-convergence.png", "convergence",
                       _png(fig_convergence(plt, conv))),)
        sections.append(Section(
            "Convergence",
            f"Over {len(seeds)} seed(s): seeds learned / n [95% Wilson interval] @ median epoch "
            "at which every row first came out right (the oracle's trajectory; per backend, "
            "over its cells that agree). 'vs oracle' names seeds only the backend learned (+) "
            "or only the oracle learned (-).", images,
            ((header, orows, ""),
             (CONV_HEADER, [_fmt_conv(c) for c in conv if c.backend != "oracle"],
              "every backend x level x arch x gate"))))
    status_header, status_rows = _status_rows(records)
    sections.append(Section("Cells by status", tables=((status_header, status_rows, ""),)))
    sections.append(Section("Manifest", tables=((["key", "value"], _manifest_rows(man), ""),)))

    n_ok, n_dis = len(ok), sum(r.agrees is False for r in ok)
    stats = [("cells", len(records)), ("ok", n_ok), ("agree", n_ok - n_dis),
             ("disagree", n_dis), ("learned", sum(bool(r.learned) for r in ok)),
             ("unsupported", sum(r.status == "unsupported" for r in records)),
             ("skipped", sum(r.status == "skipped" for r in records)),
             ("failed", sum(r.status not in ("ok", "unsupported", "skipped") for r in records)),
             ("findings", len(found))]
    groups = text.summarize_findings(found)
    headline = ("No ok cells to judge." if not ok and not found else
                "Every ok cell agrees with the oracle; no findings." if not found else
                f"{len(found)} finding(s) in {len(groups)} group(s): "
                + "; ".join(g.split(", e.g.")[0] for g in groups[:3])
                + ("; ..." if len(groups) > 3 else ""))
    meta = (f"{man.get('created_at', '')} · seeds {text.seed_ranges(seeds)} · "
            f"dtype {', '.join(sorted({r.dtype for r in records}))} · commit "
            f"{(man.get('git', {}).get('commit') or 'unknown')[:12]}")

    written = _write_pngs(run_dir, sections)
    _write_html(run_dir, sections, stats, headline, found, meta, not found)
    _write_md(run_dir, sections, stats, headline, found, meta)
    for stale in run_dir.glob("report-*.png"):
        if stale.name not in written:
            stale.unlink()
    return run_dir / "report.html"


def _write_pngs(run_dir: Path, sections) -> set[str]:
    names = set()
    for s in sections:
        for name, _, data in s.images:
            tmp = run_dir / f".{name}.tmp"
            tmp.write_bytes(data)
            os.replace(tmp, run_dir / name)
            names.add(name)
    return names


def _write_html(run_dir, sections, stats, headline, found, meta, good):
    e = html.escape
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>harness report: "
             f"{e(run_dir.name)}</title><style>{CSS}</style></head><body>",
             f"<h1>Harness report: {e(run_dir.name)}</h1><p class='sub'>{e(meta)}</p>",
             f"<div class='banner {'good' if good else 'bad'}'>{e(headline)}</div>",
             "<div class='stats'>" + "".join(f"<div class='stat'><b>{v}</b>{e(k)}</div>"
                                              for k, v in stats) + "</div>",
             "<h2>Findings</h2>"]
    if found:
        parts.append("<ul class='findings'>" + "".join(
            f"<li>{e(f)}</li>" for f in text.summarize_findings(found)) + "</ul>")
        parts.append(f"<details><summary>all {len(found)} findings</summary>"
                     + _html_table(["finding", "where", "cell"],
                                   [[f.kind, f.group, text.finding_detail(f)] for f in found]) + "</details>")
    else:
        parts.append("<p>None: every ok cell agrees with the oracle, the levels of each backend "
                     "agree, learned sets match the oracle's, and no single-layer xor/xnor was "
                     "learned.</p>")
    for s in sections:
        parts.append(f"<h2>{e(s.title)}</h2>")
        if s.text:
            parts.append(f"<p>{e(s.text)}</p>")
        for name, caption, data in s.images:
            b64 = base64.b64encode(data).decode("ascii")
            parts.append(f"<img alt='{e(caption)}' src='data:image/png;base64,{b64}'>")
        for header, rows, collapsed in s.tables:
            table = _html_table(header, rows)
            parts.append(f"<details><summary>{e(collapsed)} ({len(rows)} rows)</summary>{table}"
                         "</details>" if collapsed else table)
    parts.append("</body></html>")
    atomic_write(run_dir / "report.html", "\n".join(parts))


def _write_md(run_dir, sections, stats, headline, found, meta):
    lines = [f"# Harness report: {run_dir.name}", "", meta, "", f"**{headline}**", "",
             " · ".join(f"{k}: {v}" for k, v in stats), "", "## Findings", ""]
    lines += [f"- {f}" for f in text.summarize_findings(found)] or ["None."]
    if found:
        lines += ["", f"All {len(found)} findings:", "",
                  _md_table(["finding", "where", "cell"],
                            [[f.kind, f.group, text.finding_detail(f)] for f in found])]
    for s in sections:
        lines += ["", f"## {s.title}", ""]
        if s.text:
            lines += [s.text, ""]
        for name, caption, _ in s.images:
            lines += [f"![{caption}]({name})", ""]
        for header, rows, collapsed in s.tables:
            if collapsed:
                lines += [f"### {collapsed[0].upper()}{collapsed[1:]}", ""]
            lines += [_md_table(header, rows), ""]
    atomic_write(run_dir / "report.md", "\n".join(lines) + "\n")
