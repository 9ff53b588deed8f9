"""The report's pages: report.html, self-contained (styles inline, plots
embedded as base64 PNGs, nothing fetched), and report.md with the same
sections and tables, linking the same plots written beside it as
report-*.png.  Both are written from one list of ``Section``s, so that the
two pages cannot drift apart; every file is replaced atomically.
"""
from __future__ import annotations

import base64
import html
from dataclasses import dataclass
from pathlib import Path

from harness import text
from harness.results import atomic_write


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


# The findings table lists this many at most: a sweep with thousands of
# disagreeing or failed cells would otherwise make a report of megabytes.
# The grouped lines above it count every finding; results.jsonl has each cell.
FINDINGS_LISTED = 500


def _listed(found) -> tuple[list, str]:
    """The findings the table lists, and the note on those it does not."""
    if len(found) <= FINDINGS_LISTED:
        return list(found), ""
    return (list(found[:FINDINGS_LISTED]),
            f"The first {FINDINGS_LISTED} of {len(found)} findings; every cell is in "
            "results.jsonl.")


@dataclass
class Section:
    """One section of both pages, in order: a title, a paragraph, plots, tables."""

    title: str
    text: str = ""
    images: tuple = ()  # (file name, caption, png bytes)
    tables: tuple = ()  # (header, rows, collapsed label or "")


def write_pngs(run_dir: Path, sections) -> set[str]:
    """Every section's plots as run_dir/report-*.png; returns their names."""
    names = set()
    for s in sections:
        for name, _, data in s.images:
            atomic_write(run_dir / name, data)
            names.add(name)
    return names


def write_html(run_dir, sections, stats, headline, found, meta, good):
    e = html.escape
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>harness report: "
             f"{e(run_dir.name)}</title><style>{CSS}</style></head><body>",
             f"<h1>Harness report: {e(run_dir.name)}</h1><p class='sub'>{e(meta)}</p>",
             f"<div class='banner {'good' if good else 'bad'}'>{e(headline)}</div>",
             "<div class='stats'>" + "".join(f"<div class='stat'><b>{v}</b>{e(k)}</div>"
                                              for k, v in stats) + "</div>",
             "<h2>Findings</h2>"]
    if found:
        listed, note = _listed(found)
        parts.append("<ul class='findings'>" + "".join(
            f"<li>{e(f)}</li>" for f in text.summarize_findings(found)) + "</ul>")
        parts.append(f"<details><summary>all {len(found)} findings</summary>"
                     + (f"<p>{e(note)}</p>" if note else "")
                     + _html_table(["finding", "where", "cell"],
                                   [[f.kind, f.group, text.finding_detail(f)] for f in listed])
                     + "</details>")
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


def write_md(run_dir, sections, stats, headline, found, meta):
    lines = [f"# Harness report: {run_dir.name}", "", meta, "", f"**{headline}**", "",
             " · ".join(f"{k}: {v}" for k, v in stats), "", "## Findings", ""]
    lines += [f"- {f}" for f in text.summarize_findings(found)] or ["None."]
    if found:
        listed, note = _listed(found)
        lines += ["", f"All {len(found)} findings:", "", *([note, ""] if note else []),
                  _md_table(["finding", "where", "cell"],
                            [[f.kind, f.group, text.finding_detail(f)] for f in listed])]
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
