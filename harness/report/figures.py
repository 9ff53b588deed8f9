"""The report's five figures: verdict matrix, oracle_dev heatmap, loss
curves, decision surfaces and convergence, each a matplotlib Figure.

matplotlib is the optional ``report`` extra: it is imported only by
``pyplot()`` (Agg backend, no display) and inside the functions that draw,
so that importing the harness never imports it; without it ``pyplot()``
raises ReportUnavailable, which says how to install it.  Which cells the
loss curves and decision surfaces show is chosen here too
(``curve_cells``, ``surface_record``): each plot shows one seed.
"""
from __future__ import annotations

import io
import math

import numpy as np

from harness import analysis, oracle, registry
from harness.compare import NoTolerance, tolerance
from harness.records import Record, Status, curve_values
from harness.registry import cell_order
from harness.report.grid import CATEGORIES, DARK, Grid, category, cell_text
from harness.tasks import ARCHS, CELL_FIELDS, GATES, GRADIENT_LEVELS

INSTALL_HINT = "pip install 'feedforward-harness[report]'"


class ReportUnavailable(RuntimeError):
    """The report cannot be made here (matplotlib missing); one line."""


def pyplot():
    """matplotlib.pyplot on the Agg backend, styled for the report."""
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


# ------------------------------------------- verdict matrix, oracle_dev heatmap

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
            ax.text(j, i, cell_text(recs, cat), ha="center", va="center", fontsize=8,
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
            # Unjudged cells (no tolerance measured) have no ratio to show.
            ok = [r for r in grid.get(row, col) if r.status == Status.OK and r.tolerance]
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

LEVEL_STYLES = {"raw": "-", "module": "--", "optimizer": ":", "custom": "-."}


def _colours(plt, records):
    """One colour per backend, registry order first, stable across plots of one report."""
    names = list(dict.fromkeys([*registry.BACKENDS, *(r.backend for r in records)]))
    cycle = plt.get_cmap("tab10").colors
    return {name: cycle[i % len(cycle)] for i, name in enumerate(names)}


def curve_cells(records: list[Record]) -> list[tuple]:
    """(arch, gate, seed) to draw: per arch, the notebook's cell (single nand,
    multi xor) at the smallest seed, and the first cell where something
    departed from the oracle if that one did not."""
    ok = [r for r in records if r.status == Status.OK and r.level in GRADIENT_LEVELS]
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


def _recipe(r) -> tuple:
    return tuple(getattr(r.cell, f) for f in CELL_FIELDS if f not in ("backend", "level", "mode"))


def fig_loss(plt, records: list[Record], arch: str, gate: str, seed: int):
    recs = sorted((r for r in records if r.status == Status.OK and r.level in GRADIENT_LEVELS
                   and (r.arch, r.gate, r.seed) == (arch, gate, seed)), key=cell_order)
    # One recipe per figure: the first cell's (its oracle curve is drawn).
    recs = [r for r in recs if _recipe(r) == _recipe(recs[0])]
    traj = oracle.trajectory(recs[0])
    ref = np.append(traj.loss_curve, traj.loss_final)
    t = np.arange(len(ref))
    colours = _colours(plt, records)
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(9.5, 6.2), sharex=True,
                                      gridspec_kw={"height_ratios": [3, 2]})
    top.plot(t, ref, color="#bbbbbb", lw=6, label="oracle", solid_capstyle="round")
    floor = 1e-18
    try:
        tol = tolerance(recs[0].dtype, len(recs[0].loss_curve), recs[0].optimizer)
    except NoTolerance:
        tol = None
    for r in recs:
        curve = np.append(curve_values(r.loss_curve), r.loss_final)
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
    if tol is not None:
        bottom.axhline(tol, color="#c62828", ls="--", lw=1)
        bottom.text(t[-1], tol, f"tolerance {tol:g} ", color="#c62828", ha="right",
                    va="bottom", fontsize=8)
    top.set_yscale("log")
    bottom.set_yscale("log")
    bottom.set_ylim(floor / 3, max(1.0, np.nanmax(np.abs(ref))) * 3)
    top.set_ylabel("summed cross-entropy")
    bottom.set_ylabel("|loss - oracle| / max(|oracle|, 1)")
    bottom.set_xlabel("epoch (the last point is loss_final)")
    dtype = recs[0].dtype
    n_seeds = len({r.seed for r in records})
    drawn = f"seed {seed}" + (f" (one of the run's {n_seeds} seeds)" if n_seeds > 1 else "")
    top.set_title(f"{arch}-layer {gate}, {drawn} ({dtype}): every backend and level over the "
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
    ok = sorted((r for r in records if r.status == Status.OK and (r.arch, r.gate) == (arch, gate)),
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
            rule = oracle.rule_of(rec.level, rec.optimizer)
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
            learned = [r for r in records if r.status == Status.OK and (
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

RULE_COLOURS = {"sgd": "#1e88e5", "momentum": "#00897b", "nesterov": "#6d4c41", "adam": "#e53935",
                "rmsprop": "#fb8c00", "perceptron": "#8e24aa", "perceptron-batch": "#43a047"}


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


# ------------------------------------------------------------- learned map

# The map draws at most MAP_COLUMNS columns (consecutive seeds share a
# column beyond that, shaded by the fraction learned) and MAP_ROWS rows, so
# that a 10,000-seed sweep makes an image of the same size as a 500-seed one.
MAP_COLUMNS = 500
MAP_ROWS = 120
_NOT_LEARNED, _LEARNED, _DIFFERS = "#bdbdbd", "#2e7d32", "#e53935"


def map_rows(smap: analysis.SeedMap) -> tuple[list[analysis.SeedRow], int]:
    """The rows the map draws, grouped by arch and gate (the oracle's rows
    first in each), and how many were left out: past MAP_ROWS, the oracle's
    rows and the rows whose learned set differs from the oracle's come first."""
    order = {(a, g): i for i, (a, g) in enumerate((a, g) for a in ARCHS for g in GATES)}
    rows = sorted(smap.rows, key=lambda r: (order[(r.arch, r.gate)], r.backend != "oracle"))
    if len(rows) <= MAP_ROWS:
        return rows, 0
    keep = {id(r) for r in sorted(rows, key=lambda r: (r.backend != "oracle",
                                                       not r.differs.any()))[:MAP_ROWS]}
    return [r for r in rows if id(r) in keep], len(rows) - MAP_ROWS


def fig_learned_map(plt, smap: analysis.SeedMap):
    """Learned (green) or not (grey) per seed, one row per backend x level x
    arch x gate and per oracle rule; red where a row's learned flag differs
    from the oracle's for the same seed."""
    from matplotlib.colors import to_rgb

    rows, left_out = map_rows(smap)
    n = len(smap.seeds)
    per = -(-n // MAP_COLUMNS)  # seeds per column
    cols = -(-n // per)
    pad = cols * per - n
    grey, green, red = (np.array(to_rgb(c)) for c in (_NOT_LEARNED, _LEARNED, _DIFFERS))
    rgb = np.ones((len(rows), cols, 3))
    for i, row in enumerate(rows):
        flags = np.append(row.learned, np.full(pad, -1, np.int8)).reshape(cols, per)
        ran = (flags >= 0).sum(axis=1)
        with np.errstate(invalid="ignore"):
            frac = np.where(flags == 1, 1.0, 0.0).sum(axis=1) / ran
        shade = grey + np.nan_to_num(frac)[:, None] * (green - grey)
        rgb[i] = np.where((ran > 0)[:, None], shade, 1.0)
        differs = np.append(row.differs, np.zeros(pad, bool)).reshape(cols, per).any(axis=1)
        rgb[i, differs] = red
    fig, ax = plt.subplots(figsize=(9.5, 0.9 + 0.17 * len(rows)))
    ax.imshow(rgb, aspect="auto", interpolation="nearest")
    ax.set_yticks(range(len(rows)), [" ".join(x for x in (r.backend, r.level, "·", r.arch, r.gate,
                                                           r.settings) if x) for r in rows],
                  fontsize=7)
    for i in range(1, len(rows)):
        if (rows[i].arch, rows[i].gate) != (rows[i - 1].arch, rows[i - 1].gate):
            ax.axhline(i - 0.5, color="black", lw=1)
    ticks = np.unique(np.linspace(0, cols - 1, min(cols, 6)).round().astype(int))
    ax.set_xticks(ticks, [str(smap.seeds[min(t * per, n - 1)]) for t in ticks], fontsize=7)
    ax.set_xlabel("seed" + (f" (each column: {per} consecutive seeds of the run, shaded by the "
                            "fraction learned)" if per > 1 else ""), fontsize=8)
    ax.tick_params(length=0)
    ax.set_title(f"Learned (green) or not (grey), per seed: {n} seeds; red: the learned flag "
                 "differs from the oracle's" + (f"; {left_out} rows not drawn (the convergence "
                                                 "table has them)" if left_out else ""),
                 loc="left", fontsize=9)
    fig.tight_layout()
    return fig


def png(fig) -> bytes:
    """The figure as PNG bytes; the figure is closed."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", bbox_inches="tight")
    import matplotlib.pyplot as plt
    plt.close(fig)
    return buf.getvalue()


# ----------------------------------------------------------- porting matrix

def fig_backend_agreement(plt, agreement, title: str = ""):
    """Backend x backend: the largest params_final deviation between two
    backends over the cells both ran; the diagonal is each one's worst
    deviation from the oracle."""
    from matplotlib.colors import LogNorm

    names = agreement.backends
    n = len(names)
    val = np.full((n, n), np.nan)
    for i, a in enumerate(names):
        val[i, i] = agreement.oracle[a]
        for j, b in enumerate(names[i + 1:], i + 1):
            val[i, j] = val[j, i] = agreement.worst[(a, b)]
    shown = np.where(np.isfinite(val), np.maximum(val, 1e-17), np.nan)
    fig, ax = plt.subplots(figsize=(1.0 + 0.9 * n, 0.6 + 0.75 * n))
    cmap = plt.get_cmap("RdYlGn_r").copy()
    cmap.set_bad("#f0f0f0")
    norm = LogNorm(vmin=1e-17, vmax=1e-1)
    im = ax.imshow(np.ma.masked_invalid(shown), cmap=cmap, norm=norm, interpolation="nearest")
    for i in range(n):
        for j in range(n):
            v = val[i, j]
            text = "n/a" if np.isnan(v) else ("0" if v == 0 else f"{v:.0e}".replace("e-0", "e-"))
            ax.text(j, i, text, ha="center", va="center", fontsize=7,
                    weight="bold" if i == j else "normal")
    ax.set_xticks(range(n), names, rotation=35, ha="right", fontsize=8)
    ax.set_yticks(range(n), names, fontsize=8)
    ax.set_title(title or "largest params_final deviation between backends "
                 "(diagonal: vs the oracle)", fontsize=9)
    bar = fig.colorbar(im, ax=ax, fraction=0.04, pad=0.03)
    bar.set_label("relative deviation (unit floor)", fontsize=8)
    fig.tight_layout()
    return fig
