"""Command line: ``harness run``, ``list``, ``gradcheck``, ``report`` and ``diff``.

Exit statuses (the README lists them too):

* 0: done; 1: a cell ended in `error` or `timeout` (``harness diff``: the
  runs differ; ``harness gradcheck``: a mismatch);
* 2: bad input (flags, config file, a run folder that does not load, a run
  folder in use by another harness process): one line on stderr, before
  anything is written;
* 3: a file could not be written (disk full, read-only, over a size
  limit): one line naming the path and the reason; what was written
  before stays, and ``--resume`` finishes the run;
* 128 + signal: interrupted: 130 after Ctrl-C (SIGINT), 143 after SIGTERM;
  finished records are kept and the tables written.
"""
from __future__ import annotations

import argparse
import contextlib
import datetime as _dt
import os
import signal
import sys
import threading
from pathlib import Path

from harness import registry
from harness.config import KEYS, RUN_OPTIONS, ConfigError, load_toml, parse_int, resolve
from harness.contract import ContractError
from harness.execution.dask_executor import ClusterError
from harness.results import LOCK_NAME, CannotWrite, RunFolderError, RunLock
from harness.tasks import ARCHS, AXES, GATES, LEVELS

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_CONFIG = ROOT / "configs" / "default.toml"


# Settings --resume takes from its flags: where cells run, never what they give.
SESSION_KEYS = ("executor", "scheduler")


class UsageError(Exception):
    """Bad input: printed as one line, exit status 2."""


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised where Ctrl-C's KeyboardInterrupt would be, so that it
    is handled the same way everywhere (records kept, tables written,
    workers ended); ``signum`` sets the exit status, 128 + signum."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def _raise_terminated(signum, frame):
    raise Terminated(signum)


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # argparse would print the whole usage block
        raise UsageError(message)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="harness", description="Train logic gates in several frameworks from "
                     "identical initial weights and compare what they compute.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    run = sub.add_parser("run", help="run the matrix of cells (default: configs/default.toml)")
    run.add_argument("--config", help="TOML file whose keys mirror these flags")
    for _, axis in AXES:  # one flag per matrix axis, declared on Cell
        choices = f" ({','.join(axis.valid())})" if axis.kind == "choices" else ""
        run.add_argument(axis.flag, dest=axis.key, help=axis.help + choices)
    for key, (default, text) in RUN_OPTIONS.items():
        if isinstance(default, bool):  # a switch: given means true
            run.add_argument("--" + key.replace("_", "-"), dest=key, help=text,
                             action="store_const", const=True)
        else:
            run.add_argument("--" + key.replace("_", "-"), dest=key, help=text)
    run.add_argument("--no-report", dest="no_report", action="store_true",
                     help="do not write report.html / report.md at the end")
    run.add_argument("--jobs", help="cells run at once, each in a worker process (default: "
                     "number of CPUs); results do not depend on it")
    run.add_argument("--resume", metavar="DIR", help="finish the interrupted run in DIR with "
                     "its own settings (--executor/--scheduler may differ): only cells without "
                     "a record run")
    run.add_argument("--quiet", action="store_true", help="print only the final summary")

    sub.add_parser("list", help="backends with state, version and levels; gates; archs")

    grad = sub.add_parser("gradcheck", help="loss and gradient of every backend's raw level "
                          "against the oracle and finite differences")
    grad.add_argument("--backends", default="all", help="comma list, or 'all'")
    grad.add_argument("--seed", default="0", help="seed of the initial-parameter points (default 0)")
    grad.add_argument("--gate", default="xor", help="truth table of those points (default xor)")
    grad.add_argument("--dtype", default="float64", help="float64 (default) or float32")

    rep = sub.add_parser("report", help="write DIR/report.html and DIR/report.md")
    rep.add_argument("dir", help="a run folder")

    dif = sub.add_parser("diff", help="compare two run folders cell by cell")
    dif.add_argument("run_a")
    dif.add_argument("run_b")
    return parser


def _resolve_out(out: str | None) -> Path:
    if out is None:
        stamp = _dt.datetime.now(_dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
        path = ROOT / "results" / stamp
        n = 1
        while path.exists():
            n += 1
            path = ROOT / "results" / f"{stamp}-{n}"
        return path
    path = Path(out)
    if path.is_symlink() and not path.is_dir():
        raise UsageError(f"--out {out!r} is a symbolic link that leads to no folder. Expected a "
                         "folder that is new or empty.")
    if path.exists() and not path.is_dir():
        raise UsageError(f"--out {out!r} is a file. Expected a folder that is new or empty.")
    if path.is_dir() and any(path.iterdir()):
        raise UsageError(f"--out {out!r} is not empty. Expected a folder that is new or empty.")
    probe = path
    while not probe.exists():
        probe = probe.parent
    if not probe.is_dir():
        raise UsageError(f"--out {out!r} cannot be created: {str(probe)!r} is a file.")
    if not os.access(probe, os.W_OK):
        raise UsageError(f"--out {out!r} cannot be created: {str(probe)!r} is not writable.")
    return path


def _create_run_folder(run_dir: Path) -> RunLock:
    """Create the new run's folder and lock it.  Two runs started at once
    with the same --out both passed the emptiness check; one of them gets
    the lock, the other finds it held, or finds the folder no longer empty."""
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise RunFolderError(f"Run folder {str(run_dir)!r} cannot be created: "
                             f"{exc.strerror}.") from None
    lock = RunLock(run_dir)
    try:
        if any(p.name != LOCK_NAME for p in run_dir.iterdir()):
            raise UsageError(f"--out {str(run_dir)!r} is not empty: another run has written to "
                             "it. Expected a folder that is new or empty.")
        lock.claim(sys.argv)
    except BaseException:
        lock.release()
        raise
    return lock


def cpus() -> int:
    """CPUs this process may use (a container or taskset may allow fewer than exist)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def _jobs(value: str | None) -> int:
    if value is None:
        return cpus()
    try:
        jobs = parse_int(value)
    except ValueError:
        jobs = 0
    if jobs < 1:
        raise UsageError(f"Invalid --jobs {value!r}. Expected a whole number >= 1.")
    return jobs


def cmd_run(args) -> int:
    flags = {k: getattr(args, k) for k in KEYS}
    jobs = _jobs(args.jobs)
    if args.resume is not None:
        from harness.resume import open_resume

        used = [f"--{k.replace('_', '-')}" for k, v in flags.items()
                if v is not None and k not in SESSION_KEYS]
        used += ["--config"] * bool(args.config)
        if used:
            raise UsageError(f"{used[0]} cannot be combined with --resume: the run keeps the "
                             f"settings in {args.resume}/manifest.json (only --jobs, --quiet, "
                             "--executor and --scheduler apply).")
        # Checked before the lock file is created (nothing is written for a
        # folder that does not load), and read again under the lock: the run
        # that held it may have added records since.
        resume = open_resume(args.resume)
        for name in resume.config["backends"]:
            registry.backend(name)  # a backend that breaks the contract stops here
        lock = RunLock(resume.run_dir)
        try:
            resume = open_resume(args.resume)
            lock.claim(sys.argv)
        except BaseException:
            lock.release()
            raise
        cfg = resume.with_executor(flags["executor"], flags["scheduler"])
        run_dir = resume.run_dir
    else:
        config_path = args.config or (DEFAULT_CONFIG if not any(v is not None for v in flags.values())
                                      else None)
        file_values = load_toml(config_path) if config_path else {}
        cfg = resolve(file_values, flags)
        run_dir, resume = _resolve_out(cfg["out"]), None
        for name in cfg["backends"]:
            registry.backend(name)  # a backend that breaks the contract stops here
        if cfg["executor"] == "dask":
            from harness.execution.dask_executor import require_distributed

            require_distributed()  # one line and exit 2 without the dask extra
        created = not run_dir.exists()
        lock = _create_run_folder(run_dir)
    try:
        return _run_locked(args, cfg, run_dir, resume, jobs, lock)
    except (ClusterError, RunFolderError, UsageError, ConfigError, ContractError):
        # Refused before anything was recorded (e.g. a cluster whose workers
        # disagree): the folder this command made goes again.
        if resume is None and created and run_dir.is_dir() and not any(run_dir.iterdir()):
            run_dir.rmdir()
        raise


def _run_locked(args, cfg, run_dir: Path, resume, jobs: int, lock) -> int:
    from harness.progress import make_progress
    from harness.runner import run_matrix
    from harness.text import summary_table

    with lock:
        try:
            outcome = run_matrix(cfg, run_dir, sys.argv, jobs=jobs,
                                 progress=make_progress(args.quiet), resume=resume)
        except CannotWrite as exc:
            raise exc.with_hint(
                f"every record appended before it is kept; once it can be written: harness run "
                f"--resume {run_dir}" if (run_dir / "manifest.json").is_file() else
                "nothing was recorded") from None
        print(summary_table(outcome.records))
        print(f"results: {run_dir}/results.jsonl, results.csv, manifest.json")
        if outcome.batching is not None:
            from harness.runner import batching_note
            print(batching_note(outcome.batching))
        if outcome.interrupted or outcome.lost:
            why = (f"stopped: {outcome.lost}" if outcome.lost else
                   f"interrupted by {signal.Signals(outcome.interrupted).name}")
            print(f"harness: {why}; {len(outcome.records)} of {outcome.total} cells have "
                  f"records. Finish with: harness run --resume {run_dir}", file=sys.stderr)
            return 1 if outcome.lost else 128 + outcome.interrupted
        _verdicts_and_report(run_dir, outcome.records, not args.no_report)
    return 1 if outcome.errors else 0


def _verdicts_and_report(run_dir: Path, records, report: bool) -> None:
    from harness.text import verdict_summary

    print(verdict_summary(records))
    if report:
        from harness.report import ReportUnavailable, write_report
        try:
            print(f"report: {write_report(run_dir)}")
        except ReportUnavailable as exc:
            print(f"report: skipped: {exc}")
        except CannotWrite as exc:
            raise exc.with_hint(f"the records and tables are complete; once it can be "
                                f"written: harness report {run_dir}") from None


def cmd_list(args) -> int:
    from harness.execution.engine import probe

    invalid = {}
    for name in registry.BACKENDS:
        try:
            registry.backend(name)
        except ContractError as exc:
            invalid[name] = str(exc)
    avail = probe([n for n in registry.BACKENDS if n not in invalid])
    print("backends:")
    for name in registry.BACKENDS:
        if name in invalid:
            print(f"  {name:<11} invalid: {invalid[name]}")
            continue
        a = avail[name]
        state = f"ok {a.version}" if a.ok else f"{a.state} ({a.detail})"
        print(f"  {name:<11} {state:<28} levels: {', '.join(registry.backend(name).levels)}")
    print(f"gates: {', '.join(GATES)}")
    print(f"archs: {', '.join(ARCHS)}")
    print(f"levels: {', '.join(LEVELS)}")
    return 0


def _choice_list(kind: str, text: str, valid) -> list[str]:
    items = [v.strip() for v in text.split(",")]
    if items == ["all"]:
        return list(valid)
    return [registry.check_choice(kind, v, valid) for v in items]


def cmd_gradcheck(args) -> int:
    from harness.gradcheck import check
    from harness.tasks import DTYPES
    from harness.text import gradcheck_table

    backends = _choice_list("backend", args.backends, registry.BACKENDS)
    registry.check_choice("gate", args.gate, GATES)
    registry.check_choice("dtype", args.dtype, DTYPES)
    try:
        seed = parse_int(args.seed)
    except ValueError:
        seed = -1
    if seed < 0:
        raise UsageError(f"Invalid seed {args.seed!r}. Expected a non-negative integer in ASCII "
                         "digits.")
    rows = check(backends, seed=seed, gate=args.gate, dtype=args.dtype)
    print(gradcheck_table(rows, args.dtype))
    bad = [r for r in rows if r.ok is False and not r.known]
    known = sum(r.ok is False and bool(r.known) for r in rows)
    if bad:
        print(f"gradcheck: {len(bad)} mismatch(es)")
    elif known:
        print(f"gradcheck: no unexplained mismatch; {known} known departure(s), reasons above")
    else:
        print("gradcheck: every backend agrees")
    return 1 if bad else 0


def cmd_report(args) -> int:
    from harness.report import ReportUnavailable, write_report
    from harness.report.figures import pyplot
    from harness.results import folder_state, load_run

    run_dir = Path(args.dir)
    # Everything that can refuse is checked before the lock file is created.
    state = folder_state(run_dir)
    loaded = load_run(run_dir)
    try:
        pyplot()
    except ReportUnavailable as exc:
        raise UsageError(str(exc)) from None
    with RunLock(run_dir) as lock:  # a run or resume writing this folder has it
        lock.claim(sys.argv)
        # Read once, not twice (a sweep takes seconds to read), unless a run
        # wrote the folder between the read and the lock.
        print(f"report: {write_report(run_dir, loaded if folder_state(run_dir) == state else None)}")
    return 0


def cmd_diff(args) -> int:
    from harness.diff import diff_runs
    from harness.text import format_diff

    d = diff_runs(args.run_a, args.run_b)
    print(format_diff(d, args.run_a, args.run_b))
    return 0 if d.clean else 1


def main(argv: list[str] | None = None) -> int:

    argv = sys.argv[1:] if argv is None else argv
    with _sigterm_as_interrupt():
        try:
            if registry.EXTRA_BACKENDS_ERROR:
                raise UsageError(registry.EXTRA_BACKENDS_ERROR)
            args = build_parser().parse_args(argv)
            return {"run": cmd_run, "list": cmd_list, "gradcheck": cmd_gradcheck,
                    "report": cmd_report, "diff": cmd_diff}[args.command](args)
        except (UsageError, ConfigError, registry.UnknownChoice, RunFolderError,
                ContractError, ClusterError) as exc:
            print(f"harness: error: {exc}", file=sys.stderr)
            return 2
        except CannotWrite as exc:
            print(f"harness: error: {exc}", file=sys.stderr)
            return 3
        except KeyboardInterrupt as exc:
            signum = getattr(exc, "signum", signal.SIGINT)
            print(f"harness: interrupted by {signal.Signals(signum).name}", file=sys.stderr)
            return 128 + signum


@contextlib.contextmanager
def _sigterm_as_interrupt():
    """SIGTERM (kill, a service manager, a CI timeout) is handled like
    Ctrl-C instead of ending the process on the spot with nothing written."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


if __name__ == "__main__":
    sys.exit(main())
