"""Records and run folders: results.jsonl, results.csv, manifest.json.

* results.jsonl: one strict-JSON object per cell (NaN and infinities are
  written as null), appended and flushed as each cell finishes.
* results.csv: one row per cell; nested values (parameters, curves) are JSON
  strings so a spreadsheet or pandas reads the file directly.
* manifest.json: schema version (``harness.records``), time, command line, resolved config,
  machine, package versions, git commit; at the end of a run, its timing.

CSV and manifest are written atomically (temporary file, then rename) so a
reader never sees half a file.  ``load_run`` is the one loader: it validates
a folder and upgrades what an older harness wrote (``harness.records``).

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
from typing import Any

import numpy as np

from harness.records import (RECORD_FIELDS, SCHEMA_VERSION, Record, Status,  # noqa: F401
                             _short, check, upgrade)
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
    path = Path(path)
    if isinstance(data, str):
        data = data.encode("utf-8")
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as exc:
        raise CannotWrite(path, exc) from None
    try:
        try:
            os.fchmod(fd, 0o644)  # mkstemp's 0600 would hide results from other users
            _write_all(fd, data)
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


class RecordWriter:
    """Appends one JSON line per record and flushes it, so a crash loses at
    most the line being written.  A write that fails (disk full) is cut back
    to the last whole line and raises CannotWrite: every record already in
    the file stays readable, and ``--resume`` runs the rest.  The file is
    opened without following a link."""

    def __init__(self, path: Path):
        self.path = path
        try:
            self._fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW
                               | os.O_CLOEXEC, 0o644)
        except OSError as exc:
            raise CannotWrite(path, exc) from None

    def write(self, record: Record) -> None:
        line = (dumps(record.to_dict()) + "\n").encode("utf-8")
        end = os.fstat(self._fd).st_size
        try:
            _write_all(self._fd, line)
            os.fsync(self._fd)
        except BaseException as exc:  # Ctrl-C between two writes too: no half line stays
            with contextlib.suppress(OSError):
                os.ftruncate(self._fd, end)  # shrinking needs no space
            if isinstance(exc, OSError):
                raise CannotWrite(self.path, exc) from None
            raise

    def close(self) -> None:
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
OUTPUT_NAMES = ("results.jsonl", "results.csv", "manifest.json", "report.html", "report.md",
                ".lock")


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


def read_records(path: Path, version: int = SCHEMA_VERSION) -> list[Record]:
    """Read results.jsonl written under schema ``version``, upgraded to the
    current one and validated field by field (``harness.records.check``).
    A torn last line (no newline: the writer was killed mid-line) is
    ignored; any other fault raises RunFolderError naming the line and the
    field."""
    with _open_regular(path, "has no results") as fh:
        return _records(path, version, fh)


def _records(path: Path, version: int, lines) -> list[Record]:
    """The records of results.jsonl's lines (bytes, each with its newline)."""
    records: list[Record] = []
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
            record = Record.from_dict(check(upgrade(rec, version)))
        except (TypeError, ValueError) as exc:
            raise RunFolderError(f"{path}:{n}: not a schema-{version} harness record: "
                                 f"{exc}.") from None
        if record.cell in seen:
            raise RunFolderError(f"{path}:{n}: a second record of the cell on line "
                                 f"{seen[record.cell]}; a run has one record per cell.")
        seen[record.cell] = n
        records.append(record)
    return records


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


def load_run(run_dir: str | Path) -> tuple[dict[str, Any], list[Record]]:
    """(manifest, records) of a run folder, validated and upgraded to the
    current schema (records without verdicts are judged here); the manifest
    keeps the ``schema_version`` it was written with.  RunFolderError
    otherwise: nothing is written before a folder has loaded."""
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
    man = check_manifest(man, man_path)
    records = read_records(run_dir / "results.jsonl", man["schema_version"])
    if any(r.status == Status.OK and r.agrees is None for r in records):
        from harness.oracle import judge_all  # records from before verdicts existed
        records = judge_all(records)
    return man, records


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


def csv_text(records: list[Record]) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=RECORD_FIELDS, lineterminator="\n")
    writer.writeheader()
    for rec in records:
        row = {}
        for key, value in strict(rec.to_dict()).items():
            if isinstance(value, (dict, list)):
                value = json.dumps(value, separators=(",", ":"))
            row[key] = "" if value is None else value
        writer.writerow(row)
    return buf.getvalue()


def write_tables(run_dir: Path, records: list[Record]) -> list[Record]:
    """Rewrite results.jsonl and results.csv sorted by cell, atomically."""
    records = sorted(records, key=cell_order)
    atomic_write(run_dir / "results.jsonl", "".join(dumps(r.to_dict()) + "\n" for r in records))
    atomic_write(run_dir / "results.csv", csv_text(records))
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
