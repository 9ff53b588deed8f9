"""Run configuration: TOML file + command-line flags -> one validated dict.

Keys mirror the flags of ``harness run``; flags override the file.  The
matrix's keys, defaults and checks come from the axes declared on
``harness.tasks.Cell``; ``RUN_OPTIONS`` are the keys that shape the run,
not its cells.  Files are
read with tomllib only; nothing in a config is ever executed.  Every invalid
value raises ConfigError with a one-line message naming the value and the
valid choices.

Every value's type is checked for its key (a list where a string goes is
refused, never turned into a folder name), numbers from flags or strings
are ASCII only (``parse_int``, ``parse_number``), and a run is bounded
before any cell is made: at most MAX_SEEDS seeds and MAX_CELL_RUNS cell
runs.
"""
from __future__ import annotations

import math
import re
import tomllib
from pathlib import Path
from typing import Any

from harness import registry
from harness.tasks import AXES, GATES, HPARAM_DEFAULTS, HYPERPARAMETERS, OPTIMIZERS, Axis

# key: (default, help).  timeout: seconds per cell before it is killed
# (None: no limit); repeat: runs per cell; curves: where loss curves are
# stored (``curves_mode``, harness.results), which changes the files, never
# a value; executor, scheduler: where cells run
# (harness.runner.start_executor), which never changes a record.
RUN_OPTIONS: dict[str, tuple[Any, str]] = {
    "out": (None, "run folder (default results/<UTC timestamp>/)"),
    "timeout": (None, "seconds per cell; a cell past it is killed and recorded as `timeout` "
                      "(default: none)"),
    "repeat": (1, "run every cell this many times and flag any cell whose results are not "
                  "bit-identical (default 1)"),
    "batch_seeds": (False, "train the seeds of each family of cells (every other axis equal) as "
                           "one batched computation where the backend has a batched form of "
                           "the level; the rest run per seed, and the run says which (default: "
                           "per seed, the canonical records)"),
    "curves": ("auto", "where loss curves are stored: inline (in results.jsonl), file "
                       "(curves.f64 beside it, results.jsonl holding references) or auto "
                       "(file when the run has more than 100 seeds; the default)"),
    "executor": ("local", "where cells run: local (worker processes on this machine, the "
                          "default) or dask (a Dask cluster; needs the dask extra)"),
    "scheduler": (None, "with --executor dask: address of a running Dask scheduler, e.g. "
                        "tcp://HOST:8786 (default: a LocalCluster on 127.0.0.1)"),
}
EXECUTORS = ("local", "dask")
CURVES = ("inline", "file", "auto")
# --curves auto stores a run's curves in curves.f64 above this many seeds:
# below it results.jsonl stays one self-contained file, as it always was
# (the default matrix's, byte for byte); above it inline curves make the
# file large (~20 KB per 1000-update record) and slow to read.
AUTO_FILE_SEEDS = 100
# [scheme://]host:port, host a name, an IPv4 address or a bracketed IPv6 one.
_ADDRESS = re.compile(r"(?:[a-z][a-z0-9+.-]*://)?(?:\[[0-9a-fA-F:.]+\]|[^\s/:\[\]]+):[0-9]{1,5}")
KEYS = (*(axis.key for _, axis in AXES), *RUN_OPTIONS)
DEFAULTS: dict[str, Any] = {**{axis.key: axis.default for _, axis in AXES},
                            **{k: d for k, (d, _) in RUN_OPTIONS.items()}}


# A run has at most this many seeds and this many cell runs (cells times
# --repeat); both are checked before any cell is made, so a typo such as
# --seeds 0-99999999 is refused at once instead of filling memory.
MAX_SEEDS = 100_000
MAX_CELL_RUNS = 1_000_000
# Seeds are drawn by numpy.random.default_rng and written to results.csv:
# keep them within a signed 64-bit integer, which every CSV reader takes.
MAX_SEED = 2**63 - 1

_INTEGER = re.compile(r"[+-]?[0-9]+", re.ASCII)
_DECIMAL = re.compile(r"[+-]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?", re.ASCII)


class ConfigError(ValueError):
    """An invalid setting; its message is one line for the user."""


def parse_int(text: str) -> int:
    """An integer written in ASCII digits with an optional sign, nothing else:
    no spaces, no underscores (``int`` takes '1_0'), no digits of other
    scripts (``int`` and ``str.isdigit`` take '٣').  ValueError otherwise."""
    if not isinstance(text, str) or not _INTEGER.fullmatch(text):
        raise ValueError(f"not an integer in ASCII digits: {text!r}")
    return int(text)


def parse_number(text: str) -> float:
    """A decimal number in ASCII (digits, point, exponent), nothing else:
    ``float`` would take '1_0', ' 5', '٣', 'nan' and 'infinity'."""
    if not isinstance(text, str) or not _DECIMAL.fullmatch(text):
        raise ValueError(f"not a decimal number in ASCII: {text!r}")
    return float(text)


def _seed_intervals(text: str) -> list[tuple[int, int]]:
    intervals = []
    for part in text.split(","):
        part = part.strip()
        try:
            if "-" in part[1:]:
                lo, hi = (parse_int(v) for v in part.split("-", 1))
                if lo > hi:
                    raise ValueError
            else:
                lo = hi = parse_int(part)
        except ValueError:
            raise ConfigError(f"Invalid seed range {part!r} in {text!r}. Expected non-negative "
                              "integers in ASCII digits and ascending ranges like "
                              "'0,3,5-9'.") from None
        if lo < 0 or hi > MAX_SEED:
            raise ConfigError(f"Invalid seeds {text!r}: seeds must be from 0 to {MAX_SEED}.")
        intervals.append((lo, hi))
    return intervals


def parse_seeds(text: str | int | list) -> list[int]:
    """'0,3,5-9' -> [0, 3, 5, 6, 7, 8, 9]; also accepts an int or a list of
    ints and such strings.  At most MAX_SEEDS seeds, counted before any is
    listed."""
    if isinstance(text, list) and all(type(t) is int or isinstance(t, str) for t in text):
        text = ",".join(str(t) for t in text)
    elif type(text) is int:
        text = str(text)
    elif not isinstance(text, str):
        raise ConfigError(f"Invalid seeds {text!r}. Expected integers and ranges like '0,3,5-9' "
                          "(a string, an integer or a list of them).")
    intervals = sorted(_seed_intervals(text))
    count, reach = 0, -1  # seeds in the union of the intervals, without listing them
    for lo, hi in intervals:
        if hi > reach:
            count += hi - max(lo, reach + 1) + 1
            reach = hi
    if count > MAX_SEEDS:
        raise ConfigError(f"Invalid seeds {text!r}: {count} seeds. Expected at most {MAX_SEEDS} "
                          "seeds per run.")
    seeds: set[int] = set()
    for lo, hi in intervals:
        seeds.update(range(lo, hi + 1))
    return sorted(seeds)


def _choices(kind: str, value: Any, valid) -> list[str]:
    if isinstance(value, str):
        items = [v.strip() for v in value.split(",")]
    elif isinstance(value, list) and all(isinstance(v, str) for v in value):
        items = [v.strip() for v in value]
    else:
        raise ConfigError(f"Invalid {kind} {value!r}. Expected a comma-separated string or a "
                          "list of strings.")
    if items == ["all"]:
        return list(valid)
    if not items or any(not v for v in items):
        raise ConfigError(f"Empty {kind} in {value!r}. Expected one or more of "
                          f"{{{', '.join(valid)}}} or 'all'.")
    for item in items:
        try:
            registry.check_choice(kind.rstrip("s"), item, valid)
        except registry.UnknownChoice as exc:
            raise ConfigError(str(exc)) from None
    # Keep the canonical order and drop repeats.
    return [v for v in valid if v in items]


def _number(key: str, value: Any, kind=float, minimum=None, strict_min=False) -> Any:
    """An int or float setting: a TOML number of that kind (an integer
    setting takes no float), or a string of ASCII digits (the flags)."""
    expected = "an integer such as 10" if kind is int else "a number such as 0.5"
    try:
        if isinstance(value, str):
            number = parse_int(value) if kind is int else parse_number(value)
        elif type(value) is int or (kind is float and type(value) is float):
            number = kind(value)
        else:
            raise ValueError
    except (ValueError, OverflowError):
        raise ConfigError(f"Invalid {key} {value!r}. Expected {expected} (ASCII digits "
                          "only).") from None
    if isinstance(number, float) and not math.isfinite(number):
        raise ConfigError(f"Invalid {key} {value!r}. Expected a finite number.")
    if minimum is not None and (number <= minimum if strict_min else number < minimum):
        op = ">" if strict_min else ">="
        raise ConfigError(f"Invalid {key} {value!r}. Expected a value {op} {minimum}.")
    return number


def _out(value: Any) -> str | None:
    """The run folder: a non-empty path (an empty one would be the current
    directory)."""
    if value is None:
        return None
    if not isinstance(value, str) or not value or "\0" in value:
        raise ConfigError(f"Invalid out {value!r}. Expected the path of a run folder: a "
                          "non-empty string.")
    return value


def load_toml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"Config file {str(path)!r} does not exist or is not a file.")
    try:
        with open(path, "rb") as fh:
            data = tomllib.load(fh)
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"Config file {str(path)!r} is not valid TOML: {exc}.") from None
    except RecursionError:
        raise ConfigError(f"Config file {str(path)!r} is nested too deeply to be a harness "
                          "config.") from None
    except OSError as exc:
        raise ConfigError(f"Config file {str(path)!r} cannot be read: {exc.strerror}.") from None
    unknown = sorted(set(data) - set(KEYS))
    if unknown:
        raise ConfigError(f"Unknown key {unknown[0]!r} in config file {str(path)!r}. "
                          f"Expected one of {{{', '.join(KEYS)}}}.")
    return data


def _axis_value(axis: Axis, value: Any) -> Any:
    """One axis's value from the file or a flag, validated."""
    if axis.kind == "choices":
        return _choices(axis.key, value, axis.valid())
    if axis.kind == "seeds":
        return parse_seeds(value)
    if axis.kind == "choice":
        if not isinstance(value, str):
            raise ConfigError(f"Invalid {axis.key} {value!r}. Expected a string, one of "
                              f"{{{', '.join(axis.valid())}}}.")
        try:
            return registry.check_choice(axis.key, value, axis.valid())
        except registry.UnknownChoice as exc:
            raise ConfigError(str(exc)) from None
    if value is None and axis.default is None:
        return None
    kind = int if axis.kind == "int" else float
    return _number(axis.key, value, kind, axis.minimum, axis.above)


def resolve(file_values: dict[str, Any], flag_values: dict[str, Any]) -> dict[str, Any]:
    """Merge defaults < file < flags and validate every value."""
    raw = dict(DEFAULTS)
    raw.update(file_values)
    raw.update({k: v for k, v in flag_values.items() if v is not None})
    cfg: dict[str, Any] = {axis.key: _axis_value(axis, raw[axis.key]) for _, axis in AXES}
    check_recipe(cfg)
    cfg["out"] = _out(raw["out"])
    cfg["timeout"] = (None if raw["timeout"] is None
                      else _number("timeout", raw["timeout"], minimum=0, strict_min=True))
    cfg["repeat"] = _number("repeat", raw["repeat"], int, 1)
    if not isinstance(raw["batch_seeds"], bool):
        raise ConfigError(f"Invalid batch_seeds {raw['batch_seeds']!r}. Expected true or false.")
    cfg["batch_seeds"] = raw["batch_seeds"]
    if not isinstance(raw["curves"], str):
        raise ConfigError(f"Invalid curves {raw['curves']!r}. Expected a string, one of "
                          f"{{{', '.join(CURVES)}}}.")
    try:
        cfg["curves"] = registry.check_choice("curves", raw["curves"], CURVES)
    except registry.UnknownChoice as exc:
        raise ConfigError(str(exc)) from None
    cfg.update(executor_settings(raw["executor"], raw["scheduler"]))
    runs = cfg["repeat"]
    for _, axis in AXES:
        if axis.crossed:
            runs *= len(cfg[axis.key])
    if runs > MAX_CELL_RUNS:
        raise ConfigError(f"Invalid matrix: {runs} cell runs (cells times repeat). Expected at "
                          f"most {MAX_CELL_RUNS} per run; split it into several runs.")
    return cfg


# Hyperparameters that are decay rates: a value of 1 or more never forgets.
_UNIT_INTERVAL = ("momentum", "beta1", "beta2", "rho")


def check_recipe(cfg: dict[str, Any]) -> None:
    """The recipe keys against each other and the matrix: each
    hyperparameter given applies to a chosen family, and only with --hparams
    explicit; decay rates in [0, 1); a batch no larger than a table."""
    families = cfg["optimizer"]
    for name in HPARAM_DEFAULTS:
        value = cfg[name]
        if value is None:
            continue
        users = [f for f in OPTIMIZERS if name in HYPERPARAMETERS[f]]
        if not any(f in families for f in users):
            raise ConfigError(f"Invalid {name} {value!r} with optimizer "
                              f"{','.join(families)}: it applies to {', '.join(users)}. "
                              f"Expected it only with {' or '.join(users)}.")
        if cfg["hparams"] == "defaults":
            raise ConfigError(f"Invalid {name} {value!r} with hparams 'defaults', which passes "
                              "only the learning rate. Expected hparams 'explicit' to set it.")
        if name in _UNIT_INTERVAL and not 0 <= value < 1:
            raise ConfigError(f"Invalid {name} {value!r}. Expected a value in [0, 1).")
    size = cfg["batch_size"]
    if size is not None:
        for gate in cfg["gates"]:
            rows = len(GATES[gate])
            if size > rows:
                raise ConfigError(f"Invalid batch_size {size!r}: gate {gate!r} has {rows} rows. "
                                  f"Expected 1 to {rows} with these gates (default: all rows).")


def curves_mode(cfg: dict[str, Any]) -> str:
    """Where a resolved config's run stores its curves: ``inline`` or
    ``file`` (``auto``: file above AUTO_FILE_SEEDS seeds).  A config from
    before the setting existed has no ``curves`` key and means auto."""
    mode = cfg.get("curves", "auto")
    if mode == "auto":
        return "file" if len(cfg["seeds"]) > AUTO_FILE_SEEDS else "inline"
    return mode


def executor_settings(executor: Any, scheduler: Any) -> dict[str, Any]:
    """The validated ``executor`` and ``scheduler`` keys (also what --resume
    takes from its flags: they never change a record)."""
    try:
        executor = registry.check_choice("executor", str(executor), EXECUTORS)
    except registry.UnknownChoice as exc:
        raise ConfigError(str(exc)) from None
    if scheduler is not None:
        if not isinstance(scheduler, str) or not _ADDRESS.fullmatch(scheduler):
            raise ConfigError(f"Invalid scheduler {scheduler!r}. Expected a Dask scheduler "
                              "address like tcp://HOST:8786.")
        if executor != "dask":
            raise ConfigError(f"Invalid scheduler {scheduler!r} with executor {executor!r}: a "
                              "scheduler address needs executor 'dask' (--executor dask).")
    return {"executor": executor, "scheduler": scheduler}
