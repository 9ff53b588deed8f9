"""The rows of the report's tables, as strings, shared by its HTML and
Markdown writers (``render``); the plain-text phrases they reuse (seed
ranges) come from ``harness.text``."""
from __future__ import annotations

from harness import analysis, text
from harness.records import Status


def convergence_row(c: analysis.Convergence, settings: bool = False) -> list[str]:
    """A row of CONV_HEADER; with ``settings``, of conv_header's settings column too."""
    med = "" if c.median_epoch is None else f"{c.median_epoch:g}"
    vs = "same as oracle" if c.backend != "oracle" and not c.differs else ""
    if c.differs:
        vs = "; ".join(x for x in (
            f"+{text.seed_ranges(c.only_backend)}" if c.only_backend else "",
            f"-{text.seed_ranges(c.only_oracle)}" if c.only_oracle else "") if x)
    return [c.backend, c.level, c.arch, c.gate, *([c.setting_text] if settings else []),
            str(c.n), str(c.learned), f"{c.fraction:.2f}", f"[{c.low:.2f}, {c.high:.2f}]", med, vs]


CONV_HEADER = ["backend", "level", "arch", "gate", "seeds", "learned", "fraction", "95% interval",
               "median epoch", "vs oracle's learned set"]


def convergence_table(conv: list[analysis.Convergence]) -> tuple[list[str], list[list[str]]]:
    """Header and rows of every backend's convergence; a settings column
    where a row is one of several settings (optimizers, modes) of a cell."""
    rows = [c for c in conv if c.backend != "oracle"]
    settings = any(c.settings for c in rows)
    header = CONV_HEADER[:4] + ["settings"] * settings + CONV_HEADER[4:]
    return header, [convergence_row(c, settings) for c in rows]


def status_rows(records) -> tuple[list[str], list[list[str]]]:
    """Counts per backend x level, every row (the summary hides unsupported
    ones): these columns always, then any other count that occurs."""
    table = analysis.counts(records)
    cols = ["cells", Status.OK, "learned", Status.UNSUPPORTED, Status.SKIPPED, Status.ERROR]
    extra = sorted({s for c in table.values() for s in c} - set(cols))
    return ["backend", "level", *cols, *extra], [[b, lv, *(str(c[col]) for col in cols + extra)]
                                                 for (b, lv), c in table.items()]


def manifest_rows(man: dict) -> list[list[str]]:
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
    executor = man.get("executor") or {}
    if executor.get("kind") == "dask":
        rows.append(["executor", f"dask: scheduler {executor.get('scheduler')} "
                                 f"({executor.get('cluster')})"])
        for w in executor.get("workers", []):
            versions = ", ".join(f"{k} {v}" for k, v in w.get("versions", {}).items())
            rows.append([f"worker {w.get('address')}",
                         f"{w.get('host')}" + (f": {versions}" if versions else
                                               f" ({w.get('joined', '')})")])
    return rows
