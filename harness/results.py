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
"""
from __future__ import annotations

import csv
import datetime as _dt
import io
import json
import math
import os
import platform
import subprocess
import sys
from pathlib import Path
from typing import Any

from harness.records import (RECORD_FIELDS, SCHEMA_VERSION, Record, Status,  # noqa: F401
                             upgrade)
from harness.registry import cell_order


def strict(value):
    """Replace NaN and infinities by None, recursively, so JSON stays strict."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: strict(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [strict(v) for v in value]
    return value


def dumps(obj) -> str:
    return json.dumps(strict(obj), allow_nan=False, separators=(",", ":"))


def atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w", encoding="utf-8", newline="") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


class RecordWriter:
    """Appends one JSON line per record and flushes it, so a crash loses at
    most the line being written."""

    def __init__(self, path: Path):
        self.path = path
        self._fh = open(path, "a", encoding="utf-8")

    def write(self, record: Record) -> None:
        self._fh.write(dumps(record.to_dict()) + "\n")
        self._fh.flush()
        os.fsync(self._fh.fileno())

    def close(self) -> None:
        self._fh.close()


class RunFolderError(ValueError):
    """A folder that is not a readable run folder; the message is one line
    naming the file (and line) at fault."""


REQUIRED_FIELDS = ("backend", "level", "arch", "gate", "seed", "dtype", "status")


def read_records(path: Path, version: int = SCHEMA_VERSION) -> list[Record]:
    """Read results.jsonl written under schema ``version``, upgraded to the
    current one.  A torn last line (no newline: the writer was killed
    mid-line) is ignored; any other malformed line raises RunFolderError."""
    records = []
    with open(path, encoding="utf-8") as fh:
        for n, line in enumerate(fh, 1):
            if not line.endswith("\n"):
                break
            try:
                data = json.loads(line)
            except json.JSONDecodeError as exc:
                raise RunFolderError(f"{path}:{n}: not a JSON line ({exc.msg}).") from None
            if not isinstance(data, dict) or any(k not in data for k in REQUIRED_FIELDS):
                raise RunFolderError(f"{path}:{n}: not a harness record (expected fields "
                                     f"{', '.join(REQUIRED_FIELDS)}).")
            try:
                records.append(Record.from_dict(upgrade(data, version)))
            except (TypeError, ValueError) as exc:
                raise RunFolderError(f"{path}:{n}: not a schema-{version} harness record "
                                     f"({exc}).") from None
    return records


def load_run(run_dir: str | Path) -> tuple[dict[str, Any], list[Record]]:
    """(manifest, records) of a run folder, validated and upgraded to the
    current schema (records without verdicts are judged here); the manifest
    keeps the ``schema_version`` it was written with.  RunFolderError
    otherwise."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise RunFolderError(f"Run folder {str(run_dir)!r} does not exist or is not a folder.")
    man_path = run_dir / "manifest.json"
    try:
        man = json.loads(man_path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise RunFolderError(f"{man_path}: missing; {str(run_dir)!r} is not a harness run folder.") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise RunFolderError(f"{man_path}: not valid JSON ({exc}).") from None
    version = man.get("schema_version") if isinstance(man, dict) else None
    if type(version) is not int or not 1 <= version <= SCHEMA_VERSION:
        raise RunFolderError(f"{man_path}: not a harness manifest with a schema_version from 1 "
                             f"to {SCHEMA_VERSION} (this harness reads those; a newer harness "
                             "wrote a higher one).")
    res_path = run_dir / "results.jsonl"
    if not res_path.is_file():
        raise RunFolderError(f"{res_path}: missing; {str(run_dir)!r} has no results.")
    records = read_records(res_path, version)
    if any(r.status == Status.OK and r.agrees is None for r in records):
        from harness.oracle import judge_all  # records from before verdicts existed
        records = judge_all(records)
    return man, records


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
