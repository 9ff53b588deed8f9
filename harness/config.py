"""Run configuration: TOML file + command-line flags -> one validated dict.

Keys mirror the flags of ``harness run``; flags override the file.  The
matrix's keys, defaults and checks come from the axes declared on
``harness.tasks.Cell``; ``RUN_OPTIONS`` are the keys that shape the run,
not its cells.  Files are
read with tomllib only; nothing in a config is ever executed.  Every invalid
value raises ConfigError with a one-line message naming the value and the
valid choices.
"""
from __future__ import annotations

import math
import re
import tomllib
from pathlib import Path
from typing import Any

from harness import registry
from harness.tasks import AXES, Axis

# key: (default, help).  timeout: seconds per cell before it is killed
# (None: no limit); repeat: runs per cell; executor, scheduler: where cells
# run (harness.runner.start_executor), which never changes a record.
RUN_OPTIONS: dict[str, tuple[Any, str]] = {
    "out": (None, "run folder (default results/<UTC timestamp>/)"),
    "timeout": (None, "seconds per cell; a cell past it is killed and recorded as `timeout` "
                      "(default: none)"),
    "repeat": (1, "run every cell this many times and flag any cell whose results are not "
                  "bit-identical (default 1)"),
    "executor": ("local", "where cells run: local (worker processes on this machine, the "
                          "default) or dask (a Dask cluster; needs the dask extra)"),
    "scheduler": (None, "with --executor dask: address of a running Dask scheduler, e.g. "
                        "tcp://HOST:8786 (default: a LocalCluster on 127.0.0.1)"),
}
EXECUTORS = ("local", "dask")
# [scheme://]host:port, host a name, an IPv4 address or a bracketed IPv6 one.
_ADDRESS = re.compile(r"(?:[a-z][a-z0-9+.-]*://)?(?:\[[0-9a-fA-F:.]+\]|[^\s/:\[\]]+):[0-9]{1,5}")
KEYS = (*(axis.key for _, axis in AXES), *RUN_OPTIONS)
DEFAULTS: dict[str, Any] = {**{axis.key: axis.default for _, axis in AXES},
                            **{k: d for k, (d, _) in RUN_OPTIONS.items()}}


class ConfigError(ValueError):
    """An invalid setting; its message is one line for the user."""


def parse_seeds(text: str | int | list) -> list[int]:
    """'0,3,5-9' -> [0, 3, 5, 6, 7, 8, 9]; also accepts an int or a list."""
    if isinstance(text, bool):
        raise ConfigError(f"Invalid seeds {text!r}. Expected integers and ranges like '0,3,5-9'.")
    if isinstance(text, int):
        text = str(text)
    if isinstance(text, list):
        text = ",".join(str(t) for t in text)
    seeds: list[int] = []
    for part in str(text).split(","):
        part = part.strip()
        try:
            if "-" in part[1:]:
                lo, hi = (int(v) for v in part.split("-", 1))
                if lo > hi:
                    raise ValueError
                seeds.extend(range(lo, hi + 1))
            else:
                seeds.append(int(part))
        except ValueError:
            raise ConfigError(f"Invalid seed range {part!r} in {str(text)!r}. Expected "
                              "non-negative integers and ascending ranges like '0,3,5-9'.") from None
    if any(s < 0 for s in seeds):
        raise ConfigError(f"Invalid seeds {str(text)!r}: seeds must be >= 0.")
    return sorted(set(seeds))


def _choices(kind: str, value: Any, valid) -> list[str]:
    if isinstance(value, str):
        items = [v.strip() for v in value.split(",")]
    elif isinstance(value, list):
        items = [str(v).strip() for v in value]
    else:
        raise ConfigError(f"Invalid {kind} {value!r}. Expected a comma-separated string or a list.")
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
    try:
        if isinstance(value, bool):
            raise ValueError
        number = kind(value)
        if kind is int and float(value) != number:
            raise ValueError
    except (TypeError, ValueError):
        raise ConfigError(f"Invalid {key} {value!r}. Expected {'an integer' if kind is int else 'a number'}.") from None
    if isinstance(number, float) and not math.isfinite(number):
        raise ConfigError(f"Invalid {key} {value!r}. Expected a finite number.")
    if minimum is not None and (number <= minimum if strict_min else number < minimum):
        op = ">" if strict_min else ">="
        raise ConfigError(f"Invalid {key} {value!r}. Expected a value {op} {minimum}.")
    return number


def load_toml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"Config file {str(path)!r} does not exist or is not a file.")
    try:
        with open(path, "rb") as fh:
            data = tomllib.load(fh)
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"Config file {str(path)!r} is not valid TOML: {exc}.") from None
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
        try:
            return registry.check_choice(axis.key, str(value), axis.valid())
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
    if cfg["dtype"] == "float32" and cfg["epochs"] is not None:
        # Every cell is judged against a tolerance measured for its step count;
        # past the table there is none, and we do not invent one.
        from harness.compare import FLOAT32_TOLERANCES

        limit = FLOAT32_TOLERANCES[-1][0]
        if cfg["epochs"] > limit:
            raise ConfigError(f"Invalid epochs {raw['epochs']!r} for float32: its tolerance "
                              f"(harness/compare.py) is measured up to {limit} steps. Expected "
                              f"epochs <= {limit}, or dtype float64.")
    cfg["out"] = None if raw["out"] is None else str(raw["out"])
    cfg["timeout"] = (None if raw["timeout"] is None
                      else _number("timeout", raw["timeout"], minimum=0, strict_min=True))
    cfg["repeat"] = _number("repeat", raw["repeat"], int, 1)
    cfg.update(executor_settings(raw["executor"], raw["scheduler"]))
    return cfg


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
