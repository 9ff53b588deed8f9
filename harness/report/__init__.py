"""``harness report DIR``: DIR/report.html and DIR/report.md from a run folder.

* report.html is one self-contained file: styles inline, plots embedded as
  base64 PNGs, nothing fetched.  report.md has the same tables and links the
  same plots, written beside it as report-*.png.
* Plots aggregate over seeds (ten thousand seeds make the same number of
  plots, of the same size, as one): the verdict matrix and the oracle_dev
  heatmap take the worst seed of each cell; loss curves and decision
  surfaces show one seed (their titles say which); the learned map bins
  seeds into at most ``figures.MAP_COLUMNS`` columns; the findings list
  stops at ``render.FINDINGS_LISTED`` (results.jsonl has every cell).
* The records are read once (``results.load_run``), their loss curves left
  in curves.f64 (memory-mapped) where the run stored them there: only the
  few curves a figure draws are read.
* matplotlib is the optional ``report`` extra, imported only once
  ``write_report`` runs (``figures.pyplot``: Agg backend, no display);
  without it ReportUnavailable says how to install it.
* Records written before verdicts existed are judged on the fly.

This module assembles the report's sections; the package holds the parts:
``grid`` (the backend x level by arch x gate model), ``figures`` (the five
plots), ``tables`` (the rows of its tables) and ``render`` (the HTML and
Markdown writers).  The statistics come from ``harness.analysis``, their
wording from ``harness.text``.
"""
from __future__ import annotations

from pathlib import Path

from harness import analysis, text
from harness.report.figures import (INSTALL_HINT, ReportUnavailable, curve_cells,
                                    fig_backend_agreement, fig_convergence,
                                    fig_deviation, fig_learned_map, fig_loss, fig_surfaces,
                                    fig_verdicts, png, pyplot)
from harness.records import Status
from harness.report.grid import Grid, hidden_note
from harness.report.render import Section, write_html, write_md, write_pngs
from harness.report.tables import convergence_table, manifest_rows, status_rows
from harness.results import load_run

__all__ = ["INSTALL_HINT", "ReportUnavailable", "write_report"]


def write_report(run_dir, loaded=None) -> Path:
    """Write DIR/report.html, DIR/report.md and DIR/report-*.png; return the
    html path.  ``loaded``: the folder's (manifest, records) when the caller
    has just read them (``harness report`` reads before it locks)."""
    run_dir = Path(run_dir)
    man, records = loaded if loaded is not None else load_run(run_dir)
    plt = pyplot()
    grid = Grid.of(records)
    ok = [r for r in records if r.status == Status.OK]
    agree_counts, mismatches = analysis.level_agreement(records)
    conv, seed_map = analysis.convergence_and_seeds(records) if ok else ([], None)
    found = analysis.findings(records, conv, mismatches)
    seeds = sorted({r.seed for r in records})

    sections = []
    if grid.rows:
        sections.append(Section(
            "Verdict matrix",
            "Each square is one backend and level (rows) on one gate and architecture (columns), "
            "over every seed: its colour is the worst verdict against the float64 oracle, its "
            "text the seeds learned. Single-layer xor and xnor are expected not to be learned."
            + hidden_note(grid),
            (("report-verdicts.png", "verdict matrix", png(fig_verdicts(plt, grid))),)))
    if ok:
        sections.append(Section(
            "Deviation from the oracle",
            "Worst oracle_dev (largest relative deviation of params_final from the oracle's) "
            "over seeds, coloured by its ratio to the tolerance: green is far inside, red "
            "outside.",
            (("report-oracle-dev.png", "oracle_dev heatmap", png(fig_deviation(plt, grid))),),
            ((text.VERDICT_HEADER,
              [text.verdict_cells(v) for v in analysis.verdict_rows(records)], ""),)))
        curves = tuple((f"report-loss-{i + 1}.png", f"loss curves {a} {g} seed {s}",
                        png(fig_loss(plt, records, a, g, s)))
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
              png(fig_surfaces(plt, records, grid))),)))
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
                       png(fig_convergence(plt, conv))),)
        sections.append(Section(
            "Convergence",
            f"Over {len(seeds)} seed(s): seeds learned / n [95% Wilson interval] @ median epoch "
            "at which every row first came out right (the oracle's trajectory; per backend, "
            "over its cells that agree). 'vs oracle' names seeds only the backend learned (+) "
            "or only the oracle learned (-).", images,
            ((header, orows, ""),
             (*convergence_table(conv), "every backend x level x arch x gate"))))
        if len(seeds) > 1:
            sections.append(Section(
                "Learned seeds",
                "Which seeds each backend and level learned (every row of the truth table right "
                "at the end), next to the oracle's trajectory from the same initial parameters: "
                "one row per backend x level x arch x gate, one column per seed (or per run of "
                "consecutive seeds in a large sweep, shaded by the fraction learned). Red marks "
                "seeds whose learned flag differs from the oracle's; the convergence table lists "
                "them as ranges.",
                (("report-learned-map.png", "learned seeds",
                  png(fig_learned_map(plt, seed_map))),)))
    outcomes = analysis.recipe_outcomes(records)
    if set(outcomes) - {"sgd"} or any(k != "textbook" for t in outcomes.values()
                                      for c in t.values() for k in c):
        diffs = analysis.default_differences(records)
        sections.append(Section(
            "Optimizers: textbook, variant or unexplained",
            "Per optimizer family, each framework and level: 'textbook' counts cells that agree "
            "with the family's textbook rule (harness/recipes.py); a variant's name counts "
            "cells that depart from it and are reproduced, within the same tolerance, by that "
            "oracle variant (harness/oracle.py VARIANTS; the backend's docstring says why); "
            "'unexplained' counts cells that match neither.",
            tables=tuple((*text.recipe_rows(table), f"optimizer {family}")
                         for family, table in outcomes.items())
            + tuple((["hyperparameter", *sorted({b for v in names.values() for b in v})],
                     [[name, *(f"{values[b]:g}" if b in values else "" for b in
                               sorted({b for v in names.values() for b in v}))]
                      for name, values in names.items()],
                     f"{family}: defaults that differ between frameworks (--hparams defaults)")
                    for family, names in diffs.items())))
    agreement = analysis.backend_agreement(records)
    if len(agreement.backends) > 1:
        sections.append(Section(
            "Framework against framework",
            "The porting question: does my model give the same numbers after the move? For "
            "every pair of backends, the largest relative deviation between their params_final "
            "over the cells both ran (same level, arch, gate, seed and settings; any mode); the "
            "diagonal is each backend's worst deviation from the oracle.",
            (("report-frameworks.png", "framework against framework",
              png(fig_backend_agreement(plt, agreement))),),
            (text.agreement_rows(agreement) + ("",),)))
    modes = analysis.mode_comparison(records)
    if modes:
        sections.append(Section(
            "Does compiling change the numbers?",
            "Every cell that ran in a compiled or graph mode and eagerly, compared: the largest "
            "deviation of params_final from the eager run, how many are bit-identical (final "
            "parameters and loss curve), and the median training time per epoch of each "
            "(compiling pays off only when a step costs more than the tracing and dispatch "
            "it saves; these networks are tiny).",
            tables=(text.mode_rows(modes) + ("",),)))
    status_header, by_status = status_rows(records)
    sections.append(Section("Cells by status", tables=((status_header, by_status, ""),)))
    sections.append(Section("Manifest", tables=((["key", "value"], manifest_rows(man), ""),)))

    n_ok = len(ok)
    n_agree = sum(r.agrees is True for r in ok)
    n_explained = sum(r.agrees is False and bool(r.explained_by) for r in ok)
    stats = [("cells", len(records)), ("ok", n_ok), ("agree", n_agree),
             ("explained", n_explained),
             ("unexplained", sum(r.agrees is False and not r.explained_by for r in ok)),
             ("unjudged", sum(r.agrees is None for r in ok)),
             ("learned", sum(bool(r.learned) for r in ok)),
             ("unsupported", sum(r.status == Status.UNSUPPORTED for r in records)),
             ("skipped", sum(r.status == Status.SKIPPED for r in records)),
             ("failed", sum(map(analysis.went_wrong, records))),
             ("findings", len(found))]
    groups = text.summarize_findings(found)
    headline = ("No ok cells to judge." if not ok and not found else
                "Every ok cell agrees with the oracle; no findings." if not found
                and n_agree == n_ok else
                "No findings: every ok cell agrees with the oracle, is explained by a named "
                "variant or is judged up to its horizon, or is unjudged." if not found else
                f"{len(found)} finding(s) in {len(groups)} group(s): "
                + "; ".join(g.split(", e.g.")[0] for g in groups[:3])
                + ("; ..." if len(groups) > 3 else ""))
    meta = (f"{man.get('created_at', '')} · seeds {text.seed_ranges(seeds)} · "
            f"dtype {', '.join(sorted({r.dtype for r in records}))} · commit "
            f"{(man.get('git', {}).get('commit') or 'unknown')[:12]}")

    written = write_pngs(run_dir, sections)
    write_html(run_dir, sections, stats, headline, found, meta, not found)
    write_md(run_dir, sections, stats, headline, found, meta)
    for stale in run_dir.glob("report-*.png"):
        if stale.name not in written:
            stale.unlink()
    return run_dir / "report.html"
