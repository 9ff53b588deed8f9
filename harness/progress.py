"""Progress of a run, on stderr (the summary goes to stdout).

* On a terminal: a live display drawn by rich (an optional extra): cells
  done / total, elapsed time and ETA, one bar per backend with its counts
  by status, errors so far.
* Otherwise (CI, pipes, or rich not installed): one plain line per backend
  as its last cell finishes.
* ``--quiet``: nothing; only the final summary is printed.
"""
from __future__ import annotations

import sys
import time
from collections import Counter

from harness.records import FAILED, Record, Status


class NullProgress:
    """The interface, doing nothing (--quiet)."""

    def start(self, cells, done: list[Record], header: str) -> None:
        """cells: the whole matrix; done: records that exist already
        (--resume); header: one line saying what is about to run."""

    def update(self, record: Record) -> None:
        """A cell has finished."""

    def finish(self) -> None:
        """The run has ended (completely or not)."""


def status_text(counts: Counter) -> str:
    return ", ".join(f"{s} {counts[s]}" for s in Status if counts[s])


class PlainProgress(NullProgress):
    def __init__(self, stream):
        self.stream = stream

    def start(self, cells, done, header):
        print(header, file=self.stream, flush=True)
        self.started = time.monotonic()
        self.total = Counter(c.backend for c in cells)
        self.counts: dict[str, Counter] = {b: Counter() for b in self.total}
        for record in done:
            self.counts[record.backend][record.status] += 1

    def update(self, record):
        counts = self.counts[record.backend]
        counts[record.status] += 1
        n, total = sum(counts.values()), self.total[record.backend]
        if n == total:
            print(f"harness: {record.backend:<10} {n}/{total} cells done at "
                  f"{time.monotonic() - self.started:.1f} s: {status_text(counts)}",
                  file=self.stream, flush=True)


class RichProgress(NullProgress):
    def __init__(self, console):
        from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn,
                                   TimeElapsedColumn, TimeRemainingColumn)

        self.progress = Progress(TextColumn("{task.description:<10}"), BarColumn(),
                                 MofNCompleteColumn(), TimeElapsedColumn(),
                                 TimeRemainingColumn(), TextColumn("{task.fields[stats]}"),
                                 console=console)

    def start(self, cells, done, header):
        self.progress.console.print(header, highlight=False)
        total = Counter(c.backend for c in cells)
        self.counts: dict[str, Counter] = {b: Counter() for b in total}
        for record in done:
            self.counts[record.backend][record.status] += 1
        self.overall = self.progress.add_task("all cells", total=sum(total.values()),
                                              completed=len(done), stats="")
        self.tasks = {b: self.progress.add_task(b, total=n, completed=sum(self.counts[b].values()),
                                                stats=status_text(self.counts[b]))
                      for b, n in total.items()}
        self._update_overall()
        self.progress.start()

    def _update_overall(self):
        failed = sum(c[s] for c in self.counts.values() for s in FAILED)
        self.progress.update(self.overall, stats=f"[red]errors so far: {failed}" if failed
                             else "errors so far: 0")

    def update(self, record):
        counts = self.counts[record.backend]
        counts[record.status] += 1
        self.progress.update(self.tasks[record.backend], advance=1, stats=status_text(counts))
        self.progress.update(self.overall, advance=1)
        if record.status in FAILED:
            self._update_overall()

    def finish(self):
        self.progress.stop()


def make_progress(quiet: bool, stream=None) -> NullProgress:
    stream = stream or sys.stderr
    if quiet:
        return NullProgress()
    if stream.isatty():
        try:
            from rich.console import Console
        except ImportError:
            pass
        else:
            return RichProgress(Console(file=stream))
    return PlainProgress(stream)
