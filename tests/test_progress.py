"""Progress display: plain lines off a terminal, rich on one, nothing when quiet."""
import io

import pytest

from harness.progress import NullProgress, PlainProgress, RichProgress, make_progress
from harness.execution.child import run_cell
from harness.records import Record

from conftest import make_cell

CELLS = [make_cell("numpy", "raw", "single", g) for g in ("and", "or")] + \
        [make_cell("numpy", "module", "single", "and", epochs=5)]


def records():
    recs = [run_cell(c) for c in CELLS[:2]]
    return recs + [Record.for_cell(CELLS[2], "error", "worker process killed by SIGSEGV")]


def test_plain_progress_prints_one_line_per_backend_when_it_is_done():
    stream = io.StringIO()
    progress = PlainProgress(stream)
    progress.start(CELLS, [], "harness: 3 cells")
    for rec in records():
        progress.update(rec)
    progress.finish()
    lines = stream.getvalue().splitlines()
    assert lines[0] == "harness: 3 cells"
    assert len(lines) == 2 and "numpy" in lines[1] and "3/3 cells done" in lines[1]
    assert lines[1].endswith("ok 2, error 1")


def test_plain_progress_counts_records_kept_by_resume():
    stream = io.StringIO()
    progress = PlainProgress(stream)
    recs = records()
    progress.start(CELLS, recs[:2], "header")
    progress.update(recs[2])
    assert "3/3 cells done" in stream.getvalue()


def test_rich_progress_shows_totals_backends_and_errors():
    rich_console = pytest.importorskip("rich.console")
    stream = io.StringIO()
    progress = RichProgress(rich_console.Console(file=stream, force_terminal=True, width=150))
    progress.start(CELLS, [], "harness: 3 cells")
    for rec in records():
        progress.update(rec)
    progress.finish()
    out = stream.getvalue()
    assert "harness: 3 cells" in out and "all cells" in out and "3/3" in out
    assert "numpy" in out and "ok 2, error 1" in out and "errors so far: 1" in out


def test_make_progress_chooses_by_terminal_and_quiet():
    assert type(make_progress(True, io.StringIO())) is NullProgress
    assert type(make_progress(False, io.StringIO())) is PlainProgress
