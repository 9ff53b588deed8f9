"""``harness run --resume DIR``: finishing an interrupted run, all in one place.

A run folder is resumable when it loads (``results.load_run``: every record
valid, old schemas upgraded), its manifest's config still resolves, and
every record it holds is a cell of that config's matrix.  All of that is
checked before anything runs or is written.  The run keeps its own
settings (only --jobs, --quiet, and --executor/--scheduler, which never
change a record, apply), runs only the cells without a record, refuses a framework whose version changed since the run started,
and appends a ``resumed`` entry to the manifest when it ends.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harness.config import KEYS, ConfigError, executor_settings, resolve
from harness.records import SCHEMA_VERSION, Record
from harness.results import RunFolderError, git_info, load_run, now_utc


@dataclass
class Resume:
    run_dir: Path
    manifest: dict[str, Any]
    records: list[Record]
    config: dict[str, Any]

    def check_versions(self, versions: dict[str, Any]) -> None:
        """A resumed run must use the frameworks it started with.  Every
        backend a run starts is in its manifest's versions (the loader made
        sure they are a mapping), so a missing one is not skipped: it means
        the check cannot be made."""
        before = self.manifest["versions"]
        for name, now in versions.items():
            if name not in before:
                raise RunFolderError(
                    f"{self.run_dir / 'manifest.json'}: field 'versions' has no entry for "
                    f"{name}, so this resume cannot check that {name} is the version the run "
                    "started with.")
            if before[name] != now:
                raise RunFolderError(
                    f"{self.run_dir / 'manifest.json'}: this run started with {name} "
                    f"{before[name]!r}, now it is {now!r}; resume it where the same versions "
                    "are installed.")

    def note(self, argv: list[str], timing: dict[str, Any], executor: dict[str, Any]) -> None:
        """Record this session in the manifest (written by the runner)."""
        self.manifest.setdefault("resumed", []).append(
            {"at": now_utc(), "command": argv, "git": git_info(), "timing": timing,
             "executor": executor})

    def with_executor(self, executor: str | None, scheduler: str | None) -> dict[str, Any]:
        """The config this session runs with: the run's own, with --executor
        and --scheduler (if given) in place of its executor settings; they
        never change a record, so any executor can finish any run."""
        if executor is None and scheduler is None:
            return self.config
        return {**self.config, **executor_settings(executor or "local", scheduler)}


def open_resume(folder: str | Path) -> Resume:
    """The run in ``folder`` to finish, checked; RunFolderError otherwise."""
    from harness.runner import expand

    man, records = load_run(folder)
    man_path = Path(folder) / "manifest.json"
    config = man.get("config")
    if not isinstance(config, dict) or set(config) - set(KEYS):
        raise RunFolderError(f"{man_path}: 'config' is not a harness run configuration.")
    try:
        cfg = resolve(config, {})
    except ConfigError as exc:
        raise RunFolderError(f"{man_path}: {exc}") from None
    matrix = set(expand(cfg))
    for n, rec in enumerate(records, 1):
        if rec.cell not in matrix:
            raise RunFolderError(f"{Path(folder) / 'results.jsonl'}:{n}: this cell is not in "
                                 f"the matrix of {man_path}.")
    # The records are upgraded in memory; the runner rewrites results.jsonl
    # in the current schema before the manifest says so.
    man["schema_version"] = SCHEMA_VERSION
    return Resume(Path(folder), man, records, cfg)
