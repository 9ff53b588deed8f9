"""Records and run folders: results.jsonl, curves.f64, results.csv, manifest.json.

* results.jsonl: one strict-JSON object per cell (NaN and infinities are
  written as null), appended and flushed as each cell finishes.
* curves.f64 (schema 5, ``--curves file``; ``auto`` above 100 seeds): the
  loss curves, little-endian float64, appended in the order cells finish;
  a record's ``loss_curve`` is then ``{"file": "curves.f64", "offset": K,
  "length": N}`` (K counted in values).  A curve's values are written, and
  synced, before the line that refers to them, so every reference a
  reader meets is to values already there; bytes no record refers to (a
  curve whose line was never written, the room a killed run had reserved
  at the end) are ignored.  A reference past the file's end is refused.
  Without it, every curve is inline, as in schema 4.
* results.csv: one row per cell; nested values (parameters, curves) are JSON
  strings so a spreadsheet or pandas reads the file directly (a stored
  curve is its reference there too).
* manifest.json: schema version (``harness.records``), time, command line, resolved config,
  machine, package versions, git commit; at the end of a run, its timing.

CSV and manifest are written atomically (temporary file, then rename) so a
reader never sees half a file.  ``iter_records`` is the one reader: it
validates a folder record by record and upgrades what an older harness
wrote (``harness.records``), holding one line at a time and each stored
curve as a view of the memory-mapped curves file; ``load_run`` is the list
of it, for callers that need every record at once.

A run folder is untrusted input: the loader checks every record field by
field and the manifest key by key, refuses JSON nested deeper than
MAX_DEPTH and files that are links (RunFolderError: one line naming file,
line and field).  Writers never follow a link and leave no temporary file;
a write that fails raises CannotWrite (path and reason).  ``RunLock`` lets
one harness process at a time write a folder.
"""
from __future__ import annotations

import contextlib
import csv
import dataclasses
import datetime as _dt
import errno
import fcntl
import io
import json
import math
import os
import platform
import stat
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any, Iterable, Iterator

import numpy as np

from harness.records import (CURVE_DTYPE, CURVES_FILE, RECORD_FIELDS,  # noqa: F401
                             SCHEMA_VERSION, Record, Status, _short, check, curve_values,
                             is_curve_ref, upgrade)
from harness.registry import cell_order
from harness.tasks import Cell


def strict(value):
    """Replace NaN and infinities by None, recursively, so JSON stays strict."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: strict(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [strict(v) for v in value]
    if isinstance(value, np.ndarray):  # a batch's loss curves (child.unpack_records)
        return strict(value.tolist())
    return value


def dumps(obj) -> str:
    try:
        # The common case, at C speed: nothing to replace (the encoder
        # refuses NaN and infinities, and numpy arrays, which strict turns
        # into lists: then the same text through strict).
        return json.dumps(obj, allow_nan=False, separators=(",", ":"))
    except (ValueError, TypeError):
        return json.dumps(strict(obj), allow_nan=False, separators=(",", ":"))


class CannotWrite(Exception):
    """A file of a run folder could not be written (disk full, read-only,
    over a size limit): exit status 3.  The message is one line naming the
    path and the reason; ``hint`` says what is kept and how to go on."""

    def __init__(self, path: Path, reason: OSError | str, hint: str = ""):
        if isinstance(reason, OSError):
            reason = reason.strerror or str(reason)
        self.path, self.reason, self.hint = Path(path), reason, hint
        super().__init__(f"cannot write {self.path}: {reason}" + (f"; {hint}" if hint else ""))

    def with_hint(self, hint: str) -> "CannotWrite":
        return CannotWrite(self.path, self.reason, hint)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def atomic_write(path: Path, data: str | bytes) -> None:
    """Replace path with data, so that a reader sees the old file or the new
    one, never half of one.  The temporary file gets a fresh random name
    with exclusive creation that never follows a link (tempfile.mkstemp:
    O_CREAT | O_EXCL | O_NOFOLLOW), so nothing planted in the folder is
    written through; rename then replaces a link at ``path`` itself, not
    its target.  On any failure the temporary file is removed and the old
    file is left as it was; an OSError becomes CannotWrite."""
    atomic_write_chunks(path, (data,))


# Streamed writes are gathered into pieces of this size: one system call
# per piece instead of one per line of a 30,000-line table.
_PIECE = 1 << 20


def atomic_write_chunks(path: Path, chunks) -> None:
    """``atomic_write`` of the concatenation of ``chunks`` (str or bytes,
    from any iterable, e.g. a generator of lines), never all in memory."""
    path = Path(path)
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as exc:
        raise CannotWrite(path, exc) from None
    try:
        try:
            os.fchmod(fd, 0o644)  # mkstemp's 0600 would hide results from other users
            piece = bytearray()
            for chunk in chunks:
                piece += chunk.encode("utf-8") if isinstance(chunk, str) else chunk
                if len(piece) >= _PIECE:
                    _write_all(fd, piece)
                    piece.clear()
            _write_all(fd, piece)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException as exc:  # Ctrl-C too: no temporary file is left behind
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        if isinstance(exc, OSError):
            raise CannotWrite(path, exc) from None
        raise


# ---------------------------------------------------------------- curves file
#
# A stored curve in memory is a view of a read-only memory map of the
# run's curves.f64: the writer's (CurveFile) or the reader's (_CurveMap).
# Which values it is follows from the view itself (its address within the
# map, and the map's file), so a record carries no extra bookkeeping and a
# rewrite of results.jsonl (sorting, --resume) writes the same reference
# again: a curve already in the file is never copied.


def _real(path) -> str:
    return os.path.realpath(os.fspath(path))


def _same_file(mapped: str, path: Path) -> bool:
    """Whether a memory map's file (np.memmap keeps it absolute) is ``path``:
    equal absolute names are (the common case, without the lstat per path
    component realpath costs); otherwise compare where symlinks lead."""
    return mapped == os.path.abspath(path) or _real(mapped) == _real(path)


def stored_ref(curve: Any, run_dir: Path) -> dict[str, Any] | None:
    """The reference of a curve held in ``run_dir``'s curves file (a view of
    one of its memory maps), or None for any other curve (a list, an array
    a batch handed over, a view of another folder's file)."""
    if (not isinstance(curve, np.ndarray) or curve.ndim != 1 or curve.dtype != CURVE_DTYPE
            or not curve.flags.c_contiguous or not len(curve)):
        return None
    root, base = None, curve
    while isinstance(base, np.ndarray):  # a view of a view of ... the map itself
        if isinstance(base, np.memmap) and not isinstance(base.base, np.ndarray):
            root = base
        base = base.base
    if root is None or root.filename is None or not _same_file(root.filename,
                                                               Path(run_dir) / CURVES_FILE):
        return None
    start = curve.ctypes.data - root.ctypes.data + root.offset
    if start % CURVE_DTYPE.itemsize:
        return None
    return {"file": CURVES_FILE, "offset": start // CURVE_DTYPE.itemsize, "length": len(curve)}


def disk_dict(record: Record, run_dir: Path | None) -> dict[str, Any]:
    """A record's flat form as written to results.jsonl and results.csv: a
    curve held in ``run_dir``'s curves file as its reference, any other
    curve inline (an array as its list: NaN and infinities become null)."""
    d = record.to_dict()
    curve = d["loss_curve"]
    if isinstance(curve, np.ndarray):
        ref = stored_ref(curve, run_dir) if run_dir is not None else None
        d["loss_curve"] = ref if ref is not None else curve.tolist()
    return d


def _nofollow(path, flags):
    return os.open(path, flags | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)


class CurveFile:
    """The writing side of a run's curves.f64: ``append`` writes a curve's
    values at the end of the data and returns their offset (in values) and
    a read-only view of them in the file's memory map.

    The file grows ahead of the data (ftruncate, a sparse region that costs
    no disk) in steps that double from 64 KiB to 8 MiB, and each step is
    mapped once: a run of 30,000 curves keeps a few dozen maps, not one per
    curve, and holds its curves in the page cache, not in its own memory.
    ``close`` cuts the file back to the data.  A run killed before that
    leaves the reserved region (zeros no record refers to); the next writer
    starts after it, never over a byte already in the file.  Opened without
    following a link."""

    GROW_MIN = 1 << 16
    GROW_MAX = 1 << 23

    def __init__(self, run_dir: Path):
        self.path = Path(run_dir) / CURVES_FILE
        try:
            # r+b: read and write without O_APPEND, under which Linux's
            # pwrite ignores its offset; created when missing.
            self._fh = open(self.path, "r+b", buffering=0,
                            opener=lambda p, f: _nofollow(p, f | os.O_CREAT))
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                raise RunFolderError(f"{self.path}: a symbolic link; the harness neither reads "
                                     "nor writes run files through links. Remove it.") from None
            raise CannotWrite(self.path, exc) from None
        size = os.fstat(self._fh.fileno()).st_size
        if not stat.S_ISREG(os.fstat(self._fh.fileno()).st_mode):
            self._fh.close()
            raise RunFolderError(f"{self.path}: not a regular file.")
        item = CURVE_DTYPE.itemsize
        self.end = -(-size // item) * item  # bytes of data; a torn value is left alone
        self.size = size
        self._map: np.ndarray | None = None
        self._map_start = self._map_stop = 0

    def append(self, values) -> tuple[int, np.ndarray]:
        data = np.ascontiguousarray(values, dtype=CURVE_DTYPE)
        start, stop = self.end, self.end + data.nbytes
        if stop > self.size:
            self._grow(stop)
        try:
            view = memoryview(data).cast("B")
            at = start
            while view:
                n = os.pwrite(self._fh.fileno(), view, at)
                view, at = view[n:], at + n
        except OSError as exc:
            raise CannotWrite(self.path, exc) from None
        self.end = stop
        return start // CURVE_DTYPE.itemsize, self._view(start, len(data))

    def _grow(self, stop: int) -> None:
        step = min(max(self.size, self.GROW_MIN), self.GROW_MAX)
        size = max(stop, self.size + step)
        size += -size % CURVE_DTYPE.itemsize
        try:
            os.ftruncate(self._fh.fileno(), size)
        except OSError as exc:
            # No room to reserve (a file-size limit): reserve nothing, so
            # that a curve that fits is still written.
            try:
                os.ftruncate(self._fh.fileno(), size := stop)
            except OSError:
                raise CannotWrite(self.path, exc) from None
        self.size = size
        self._map = None  # the old map ends where the file did

    def _view(self, start: int, n: int) -> np.ndarray:
        if not n:
            out = np.empty(0, dtype=CURVE_DTYPE)
            out.flags.writeable = False
            return out
        stop = start + n * CURVE_DTYPE.itemsize
        if self._map is None or not self._map_start <= start < stop <= self._map_stop:
            # From this curve to the end of the reserved region: the curves
            # appended until the next growth are views of this one map.
            length = (self.size - start) // CURVE_DTYPE.itemsize
            self._map = np.memmap(self._fh, dtype=CURVE_DTYPE, mode="r", offset=start,
                                  shape=(length,))
            self._map_start, self._map_stop = start, start + length * CURVE_DTYPE.itemsize
        i = (start - self._map_start) // CURVE_DTYPE.itemsize
        return self._map[i:i + n]

    def sync(self) -> None:
        """Make the appended values durable before a line refers to them."""
        try:
            os.fdatasync(self._fh.fileno())
        except OSError as exc:
            raise CannotWrite(self.path, exc) from None

    def rollback(self, end: int) -> None:
        """Forget the values appended after byte ``end`` (their lines were
        not written): the next curve goes there."""
        self.end = end

    def close(self) -> None:
        if self._fh.closed:
            return
        if self.size > self.end:
            # Only the reserved region, which no view reaches, goes; a
            # failure leaves zeros no record refers to.
            with contextlib.suppress(OSError):
                os.ftruncate(self._fh.fileno(), self.end)
        self._fh.close()

    def __enter__(self) -> "CurveFile":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _place(record: Record, curves: CurveFile | None, run_dir: Path) -> Record:
    """The record with its curve in the curves file (when there is one to
    write to): a curve already there stays where it is."""
    curve = record.loss_curve
    if curves is None or curve is None or stored_ref(curve, run_dir) is not None:
        return record
    _, view = curves.append(curve_values(curve))
    return dataclasses.replace(record, loss_curve=view)


CURVE_MODES = ("inline", "file")


class RecordWriter:
    """Appends one JSON line per record and flushes it, so a crash loses at
    most the line being written.  A write that fails (disk full) is cut back
    to the last whole line and raises CannotWrite: every record already in
    the file stays readable, and ``--resume`` runs the rest.  The file is
    opened without following a link.

    ``curves``: ``inline`` writes each curve into its line (an array as its
    list); ``file`` appends it to curves.f64 first (``CurveFile``: written
    and synced before the line that refers to it) and writes the reference.
    Either way a curve already in this folder's curves.f64 is written as its
    reference.  A record's curve may be a list or a float64 array.
    ``write`` and ``write_many`` return the records as stored: with
    ``file``, each curve is then a read-only view of curves.f64, so a caller
    that keeps these instead of the records it handed over keeps no curve
    in memory."""

    def __init__(self, path: Path, curves: str = "inline"):
        if curves not in CURVE_MODES:
            raise ValueError(f"curves {curves!r}, expected one of {CURVE_MODES}")
        self.path = Path(path)
        self.run_dir = self.path.parent
        try:
            self._fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW
                               | os.O_CLOEXEC, 0o644)
        except OSError as exc:
            raise CannotWrite(path, exc) from None
        self._curves = None
        if curves == "file":
            try:
                self._curves = CurveFile(self.run_dir)
            except BaseException:
                os.close(self._fd)
                raise

    def write(self, record: Record) -> Record:
        return self.write_many([record])[0]

    def write_many(self, records: list[Record]) -> list[Record]:
        """Append records (e.g. a batch of seeds) with one sync of each file."""
        mark = self._curves.end if self._curves else 0
        end = os.fstat(self._fd).st_size
        try:
            stored = [_place(r, self._curves, self.run_dir) for r in records]
            if self._curves and self._curves.end != mark:
                self._curves.sync()  # the values are on disk before a line refers to them
            lines = "".join(dumps(disk_dict(r, self.run_dir)) + "\n" for r in stored)
            _write_all(self._fd, lines.encode("utf-8"))
            os.fsync(self._fd)
        except BaseException as exc:  # Ctrl-C between two writes too: no half line stays
            with contextlib.suppress(OSError):
                os.ftruncate(self._fd, end)  # shrinking needs no space
            if self._curves:
                self._curves.rollback(mark)
            if isinstance(exc, OSError):
                raise CannotWrite(self.path, exc) from None
            raise
        return stored

    def close(self) -> None:
        if self._curves:
            self._curves.close()
        os.close(self._fd)


class RunFolderError(ValueError):
    """A folder that is not a readable run folder; the message is one line
    naming the file (and line, and field) at fault."""


REQUIRED_FIELDS = ("backend", "level", "arch", "gate", "seed", "dtype", "status")
# Deeper JSON than any record or manifest the harness writes (a manifest's
# resumed/timing/backends entries are 6 levels deep) is refused when read:
# recursive code further on (the strict() cleaner, the JSON writer) would
# otherwise overflow the stack with a RecursionError after a resume has
# already run cells.
MAX_DEPTH = 16
# The files a run folder's writers replace or append to.  A symbolic link at
# one of these names is refused: writing through it would change a file
# outside the folder.
OUTPUT_NAMES = ("results.jsonl", CURVES_FILE, "results.csv", "manifest.json", "report.html",
                "report.md", ".lock")


def _depth(value: Any) -> int:
    """Nesting depth of decoded JSON (0 for a scalar), without recursion;
    counting stops past MAX_DEPTH."""
    depth, level = 0, [value]
    while depth <= MAX_DEPTH:
        containers = [v for v in level if isinstance(v, (dict, list))]
        if not containers:
            break
        depth += 1
        level = [c for v in containers for c in (v.values() if isinstance(v, dict) else v)]
    return depth


def _reject_constant(token: str):
    raise ValueError(f"{token} is not strict JSON (the harness writes null)")


def _parse(text: str | bytes) -> Any:
    """Strict JSON no deeper than MAX_DEPTH; ValueError says why not."""
    try:
        value = json.loads(text, parse_constant=_reject_constant)
    except json.JSONDecodeError as exc:
        raise ValueError(f"not valid JSON ({exc.msg} at column {exc.colno})") from None
    except RecursionError:
        raise ValueError(f"nested more than {MAX_DEPTH} levels deep") from None
    except ValueError as exc:  # NaN, or an integer too long to convert
        raise ValueError(f"not valid JSON ({exc})") from None
    if _depth(value) > MAX_DEPTH:
        raise ValueError(f"nested more than {MAX_DEPTH} levels deep")
    return value


def check_folder_names(run_dir: Path) -> None:
    """Refuse a run folder where a file the harness writes is a symbolic link."""
    names = [*OUTPUT_NAMES, *(p.name for p in run_dir.glob("report-*.png"))]
    for name in names:
        if (run_dir / name).is_symlink():
            raise RunFolderError(f"{run_dir / name}: a symbolic link; the harness neither reads "
                                 "nor writes run files through links. Remove it.")


@contextlib.contextmanager
def _open_regular(path: Path, what: str):
    """A regular file (not a link, a FIFO or a folder) open for reading in
    binary; a read error becomes RunFolderError too."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
    except FileNotFoundError:
        raise RunFolderError(f"{path}: missing; {str(path.parent)!r} {what}.") from None
    except OSError as exc:
        raise RunFolderError(f"{path}: cannot be read ({exc.strerror}).") from None
    with os.fdopen(fd, "rb") as fh:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise RunFolderError(f"{path}: not a regular file.")
        try:
            yield fh
        except OSError as exc:
            raise RunFolderError(f"{path}: cannot be read ({exc.strerror}).") from None


class _CurveMap:
    """The reading side of a run's curves.f64: mapped read-only, whole, when
    the first record refers to it, and again if a reference reaches past
    the map (a run still appending to it).  A record's curve is a view of
    the map: nothing is read until something looks at the curve."""

    def __init__(self, run_dir: Path):
        self.path = Path(run_dir) / CURVES_FILE
        self.values: np.ndarray | None = None

    def _map(self, where: str) -> None:
        try:
            # Opened by name (not from a descriptor) so that the map knows
            # its file: stored_ref recognizes its views when the folder's
            # tables are rewritten.
            fh = open(self.path, "rb", opener=lambda p, f: _nofollow(p, f | os.O_NONBLOCK))
        except FileNotFoundError:
            raise RunFolderError(f"{self.path}: missing; {where} refers to it.") from None
        except OSError as exc:
            raise RunFolderError(f"{self.path}: cannot be read ({exc.strerror}).") from None
        with fh:
            st = os.fstat(fh.fileno())
            if not stat.S_ISREG(st.st_mode):
                raise RunFolderError(f"{self.path}: not a regular file.")
            n = st.st_size // CURVE_DTYPE.itemsize
            try:
                self.values = (np.memmap(fh, dtype=CURVE_DTYPE, mode="r", shape=(n,)) if n
                               else np.empty(0, dtype=CURVE_DTYPE))
            except OSError as exc:
                raise RunFolderError(f"{self.path}: cannot be read ({exc.strerror}).") from None

    def view(self, ref: dict[str, Any], where: str) -> np.ndarray:
        k, n = ref["offset"], ref["length"]
        if self.values is None or k + n > len(self.values):
            self._map(where)
        if k + n > len(self.values):
            raise RunFolderError(
                f"{self.path}: holds {len(self.values)} values, but {where} refers to values "
                f"{k} to {k + n - 1}: the file is truncated, or not this run's.")
        return self.values[k:k + n]


def read_records(path: Path, version: int = SCHEMA_VERSION) -> list[Record]:
    """Read results.jsonl written under schema ``version``, upgraded to the
    current one and validated field by field (``harness.records.check``),
    without judging; ``iter_records`` is the reader behind every command."""
    path = Path(path)
    with _open_regular(path, "has no results") as fh:
        return list(_records(path, version, fh, _CurveMap(path.parent)))


def _records(path: Path, version: int, lines, curves: _CurveMap) -> Iterator[Record]:
    """The records of results.jsonl's lines (bytes, each with its newline),
    one at a time.  A torn last line (no newline: the writer was killed
    mid-line) is ignored; any other fault raises RunFolderError naming the
    line and the field."""
    seen: dict[Cell, int] = {}
    for n, raw in enumerate(lines, 1):  # one line at a time: a run can be large
        if not raw.endswith(b"\n"):
            break  # the torn last line
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise RunFolderError(f"{path}:{n}: not UTF-8 text (byte {exc.start + 1} of the "
                                 "line).") from None
        try:
            rec = _parse(line)
        except ValueError as exc:
            raise RunFolderError(f"{path}:{n}: not a JSON line: {exc}.") from None
        if not isinstance(rec, dict) or any(k not in rec for k in REQUIRED_FIELDS):
            raise RunFolderError(f"{path}:{n}: not a harness record (expected fields "
                                 f"{', '.join(REQUIRED_FIELDS)}).")
        try:
            if version < 5 and is_curve_ref(rec.get("loss_curve")):
                raise ValueError(f"field 'loss_curve' is {_short(rec['loss_curve'])}, expected a "
                                 f"list of numbers (schema {version} has no {CURVES_FILE})")
            d = check(upgrade(rec, version))
        except (TypeError, ValueError) as exc:
            raise RunFolderError(f"{path}:{n}: not a schema-{version} harness record: "
                                 f"{exc}.") from None
        if is_curve_ref(d.get("loss_curve")):
            d["loss_curve"] = curves.view(d["loss_curve"], f"{path}:{n}")
        for name in _SHARED:  # one string object per value, not one per record
            if type(d.get(name)) is str:
                d[name] = sys.intern(d[name])
        record = Record.from_dict(d)
        if record.cell in seen:
            raise RunFolderError(f"{path}:{n}: a second record of the cell on line "
                                 f"{seen[record.cell]}; a run has one record per cell.")
        seen[record.cell] = n
        yield record


# The string fields whose values repeat from record to record.
_SHARED = (*(f for f in RECORD_FIELDS if f in Cell.__dataclass_fields__), "status",
           "backend_version", "rule", "explained_by", "unjudged")

# Records without verdicts (written before verdicts existed) are judged in
# batches of this many: the oracle batches trajectories of one shape.
JUDGE_BATCH = 1024


def _judged(records: Iterable[Record]) -> Iterator[Record]:
    """The records, in order, each ok one without a verdict judged."""
    batch: list[Record] = []
    for record in records:
        batch.append(record)
        if len(batch) >= JUDGE_BATCH:
            yield from _judge(batch)
            batch = []
    yield from _judge(batch)


def _judge(batch: list[Record]) -> list[Record]:
    todo = [i for i, r in enumerate(batch) if r.status == Status.OK and r.agrees is None]
    if todo:
        from harness.oracle import judge_all  # records from before verdicts existed
        for i, judged in zip(todo, judge_all([batch[i] for i in todo])):
            batch[i] = judged
    return batch


# manifest key: (expected type in words, check); keys not listed are kept as
# they are (shown in the report's manifest table).
_MANIFEST = {
    "config": ("a harness run configuration (a mapping of settings)", lambda v: isinstance(v, dict)),
    "versions": ("a mapping of framework names to version strings",
                 lambda v: isinstance(v, dict) and all(isinstance(x, str) for x in v.values())),
    "created_at": ("a string", lambda v: isinstance(v, str)),
    "command": ("a list of strings", lambda v: isinstance(v, list)
                and all(isinstance(x, str) for x in v)),
    "machine": ("a mapping", lambda v: isinstance(v, dict)),
    "git": ("a mapping with commit (string or null) and dirty (true, false or null)",
            lambda v: isinstance(v, dict) and isinstance(v.get("commit"), (str, type(None)))
            and isinstance(v.get("dirty"), (bool, type(None)))),
    "timing": ("a mapping", lambda v: isinstance(v, dict)),
    "resumed": ("a list of mappings", lambda v: isinstance(v, list)
                and all(isinstance(x, dict) for x in v)),
}
_REQUIRED_MANIFEST = ("config", "versions")


def check_manifest(man: Any, path: Path) -> dict[str, Any]:
    """The manifest if its fields have their types; RunFolderError naming
    the field otherwise."""
    version = man.get("schema_version") if isinstance(man, dict) else None
    if type(version) is not int or not 1 <= version <= SCHEMA_VERSION:
        raise RunFolderError(f"{path}: not a harness manifest with a schema_version from 1 "
                             f"to {SCHEMA_VERSION} (this harness reads those; a newer harness "
                             "wrote a higher one).")
    for key in _REQUIRED_MANIFEST:
        if key not in man:
            raise RunFolderError(f"{path}: field {key!r} is missing, expected "
                                 f"{_MANIFEST[key][0]}.")
    for key, (expected, ok) in _MANIFEST.items():
        if key in man and not ok(man[key]):
            raise RunFolderError(f"{path}: field {key!r} is {_short(man[key])}, expected "
                                 f"{expected}.")
    seeds = man["config"].get("seeds")
    if isinstance(seeds, list) and not all(type(s) is int and s >= 0 for s in seeds):
        raise RunFolderError(f"{path}: field 'config.seeds' is {_short(seeds)}, expected a list "
                             "of integers >= 0.")
    return man


def folder_state(run_dir: str | Path) -> tuple:
    """What identifies the contents of a folder's record files (inode, size,
    modification time of each): equal before and after, nothing wrote them."""
    out = []
    for name in ("manifest.json", "results.jsonl", CURVES_FILE):
        try:
            st = os.stat(Path(run_dir) / name, follow_symlinks=False)
        except OSError:
            out.append(None)
        else:
            out.append((st.st_ino, st.st_size, st.st_mtime_ns))
    return tuple(out)


def read_manifest(run_dir: str | Path) -> dict[str, Any]:
    """A run folder's manifest, validated (``check_manifest``), after the
    folder's own checks (a folder, no links where the harness writes);
    RunFolderError otherwise."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise RunFolderError(f"Run folder {str(run_dir)!r} does not exist or is not a folder.")
    check_folder_names(run_dir)
    man_path = run_dir / "manifest.json"
    with _open_regular(man_path, "is not a harness run folder") as fh:
        text = fh.read()
    try:
        man = _parse(text.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise RunFolderError(f"{man_path}: not UTF-8 text (byte {exc.start + 1}).") from None
    except ValueError as exc:
        raise RunFolderError(f"{man_path}: {exc}.") from None
    return check_manifest(man, man_path)


def iter_records(run_dir: str | Path, version: int | None = None) -> Iterator[Record]:
    """The records of a run folder, one at a time, in file order: each line
    validated and upgraded to the current schema as it is read (a folder
    that fails raises RunFolderError at the line at fault, so a caller that
    must not write before the folder has loaded reads it to the end
    first), records without verdicts judged in batches, and each stored
    curve a read-only view of the memory-mapped curves.f64.  ``version``:
    the manifest's schema_version (read from the manifest when None)."""
    run_dir = Path(run_dir)
    if version is None:
        version = read_manifest(run_dir)["schema_version"]
    path = run_dir / "results.jsonl"
    with _open_regular(path, "has no results") as fh:
        yield from _judged(_records(path, version, fh, _CurveMap(run_dir)))


def load_run(run_dir: str | Path) -> tuple[dict[str, Any], list[Record]]:
    """(manifest, records) of a run folder, validated and upgraded to the
    current schema (records without verdicts are judged here); the manifest
    keeps the ``schema_version`` it was written with.  RunFolderError
    otherwise: nothing is written before a folder has loaded.  The list of
    ``iter_records``: stored curves stay in the file until read."""
    man = read_manifest(run_dir)
    return man, list(iter_records(run_dir, man["schema_version"]))


# --------------------------------------------------------------------- lock

LOCK_NAME = ".lock"


class RunLock:
    """An advisory lock (``flock``) on DIR/.lock, held by the one harness
    process that writes a run folder (``harness run``, ``--resume``,
    ``harness report``) for as long as it runs; another one gets
    RunFolderError naming the holder (pid, host, command), which the file
    holds.  The kernel drops the lock when its process ends in any way, kill
    -9 included, so a lock is never stale; a file left by a killed run is
    simply locked again.  The holder removes the file when it releases the
    lock, so a finished (or refused) command leaves the folder as it was; a
    process that locked a file its previous holder had just removed sees
    that it is no longer the file at DIR/.lock and tries again.  Worker
    processes do not inherit it (file descriptors are not inherited)."""

    def __init__(self, run_dir: Path):
        self.path = Path(run_dir) / LOCK_NAME
        for _ in range(10):
            self.fd = self._open()
            try:
                try:
                    fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    raise RunFolderError(
                        f"Run folder {str(run_dir)!r} is in use by another harness process "
                        f"({self._holder()}); wait until it ends, then try again.") from None
                if self._current():
                    return
            except BaseException:
                os.close(self.fd)
                raise
            os.close(self.fd)  # its previous holder removed it: lock the new one
        raise RunFolderError(f"Run folder {str(run_dir)!r}: {LOCK_NAME} keeps being replaced; "
                             "is another program using the folder?")

    def _open(self) -> int:
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                raise RunFolderError(f"{self.path}: a symbolic link; the harness neither reads "
                                     "nor writes run files through links. Remove it.") from None
            raise CannotWrite(self.path, exc) from None
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            os.close(fd)
            raise RunFolderError(f"{self.path}: not a regular file.")
        return fd

    def _current(self) -> bool:
        """Whether DIR/.lock is still the file this process has open."""
        try:
            here = os.stat(self.path, follow_symlinks=False)
        except FileNotFoundError:
            return False
        mine = os.fstat(self.fd)
        return (here.st_dev, here.st_ino) == (mine.st_dev, mine.st_ino)

    def _holder(self) -> str:
        """Who holds the lock, from the file (written by another process:
        read defensively)."""
        try:
            info = json.loads(os.pread(self.fd, 4096, 0).decode("utf-8", "replace"))
            words = (f"pid {int(info['pid'])} on {info['host']}, {info['command']}, since "
                     f"{info['since']}")
        except (ValueError, TypeError, KeyError, OSError):
            return "holder unknown"
        return "".join(c if c.isprintable() else "?" for c in words)[:300]

    def claim(self, argv: list[str]) -> None:
        """Write this process's pid, host and command into the lock file."""
        import socket

        info = {"pid": os.getpid(), "host": socket.gethostname(),
                "command": " ".join(["harness", *argv[1:]])[:200], "since": now_utc()}
        try:
            os.ftruncate(self.fd, 0)
            os.pwrite(self.fd, (json.dumps(info) + "\n").encode("utf-8"), 0)
        except OSError as exc:
            raise CannotWrite(self.path, exc) from None

    def release(self) -> None:
        if self.fd >= 0:
            if self._current():  # removed while locked: no one else can hold this file
                with contextlib.suppress(OSError):
                    os.unlink(self.path)
            os.close(self.fd)  # closing the last descriptor drops the flock
            self.fd = -1

    def __enter__(self) -> "RunLock":
        return self

    def __exit__(self, *exc) -> None:
        self.release()


def csv_rows(records: Iterable[Record], run_dir: Path | None = None) -> Iterator[str]:
    """results.csv, a line at a time: the header, then one row per record
    (``disk_dict``: a curve stored in ``run_dir``'s curves.f64 as its
    reference)."""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=RECORD_FIELDS, lineterminator="\n")
    writer.writeheader()
    for rec in records:
        row = {}
        for key, value in disk_dict(rec, run_dir).items():
            if isinstance(value, float) and not math.isfinite(value):
                value = None
            elif isinstance(value, (dict, list, tuple, np.ndarray)):
                value = dumps(value)
            row[key] = "" if value is None else value
        writer.writerow(row)
        yield buf.getvalue()
        buf.seek(0)
        buf.truncate()
    yield buf.getvalue()


def csv_text(records: list[Record], run_dir: Path | None = None) -> str:
    return "".join(csv_rows(records, run_dir))


def write_tables(run_dir: Path, records: list[Record], curves: str = "inline") -> list[Record]:
    """Rewrite results.jsonl and results.csv sorted by cell, atomically,
    streamed; return the records as written.  A curve already in the
    folder's curves.f64 stays there (its reference is written again); any
    other goes where ``curves`` says (``RecordWriter``), e.g. a record an
    interrupted run held in memory but had not yet written."""
    run_dir = Path(run_dir)
    records = sorted(records, key=cell_order)
    if curves == "file" and any(r.loss_curve is not None
                                and stored_ref(r.loss_curve, run_dir) is None for r in records):
        with CurveFile(run_dir) as cf:
            records = [_place(r, cf, run_dir) for r in records]
            cf.sync()
    atomic_write_chunks(run_dir / "results.jsonl",
                        (dumps(disk_dict(r, run_dir)) + "\n" for r in records))
    atomic_write_chunks(run_dir / "results.csv", csv_rows(records, run_dir))
    return records


def _git(*args: str) -> str | None:
    try:
        out = subprocess.run(["git", *args], capture_output=True, text=True, timeout=10,
                             cwd=Path(__file__).resolve().parent.parent)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def machine_info() -> dict[str, Any]:
    return {
        "python": sys.version.split()[0],
        "implementation": platform.python_implementation(),
        "platform": platform.platform(),
        "machine": platform.machine(),
        "processor": platform.processor(),
        "cpu_count": os.cpu_count(),
    }


def git_info() -> dict[str, Any]:
    commit = _git("rev-parse", "HEAD")
    status = _git("status", "--porcelain", "--untracked-files=no")
    return {"commit": commit, "dirty": bool(status) if status is not None else None}


def now_utc() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def manifest(config: dict[str, Any], versions: dict[str, Any], argv: list[str]) -> dict[str, Any]:
    """The manifest a run starts with.  The runner adds ``timing`` (this
    session's wall, probe, import and training seconds) when the run ends, and
    a ``resumed`` entry per ``--resume``."""
    import numpy

    return {
        "schema_version": SCHEMA_VERSION,
        "created_at": now_utc(),
        "command": argv,
        "config": config,
        "machine": machine_info(),
        "versions": {"numpy": numpy.__version__, **versions},
        "git": git_info(),
    }


def write_manifest(run_dir: Path, data: dict[str, Any]) -> None:
    atomic_write(run_dir / "manifest.json", json.dumps(strict(data), indent=2, allow_nan=False) + "\n")
