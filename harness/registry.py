"""Lazy registry of backends: name -> "module.path", checked when fetched.

Importing this module imports no framework, and neither does looking a
backend up: ``backend(name)`` imports the backend *module* (which imports
its framework only inside its functions, see ``harness.contract``) and
validates it against the contract once, raising ``ContractError`` (one
line, naming the backend and the broken rule) or ``UnknownChoice`` (with
"Did you mean").  Registration order is presentation order, and
``cell_order`` is the one order of cells everywhere (tables, files, report).

Extra backends (a plug-in and test hook): ``HARNESS_EXTRA_BACKENDS`` holds
``name=module.path`` entries separated by commas; they are registered after
the built-in ones.  It is an environment variable, not a flag, so it reaches
the worker processes that run cells.  The test suite uses it to register
backends that crash, hang or misbehave on purpose (tests/faulty_backend.py).
"""
from __future__ import annotations

import difflib
import functools
import os
from dataclasses import dataclass

from harness import contract
from harness.contract import Backend
from harness.tasks import ARCHS, CELL_FIELDS, GATES, LEVELS

# Order is presentation order: the reference first, then from concrete
# (autograd) to the frameworks with layer modules, then the frameworks people
# port to (JAX, and Keras 3 on its other backends).
BACKENDS: dict[str, str] = {
    "numpy": "backends.numpy_backend",
    "autograd": "backends.autograd_backend",
    "torch": "backends.torch_backend",
    "tensorflow": "backends.tensorflow_backend",
    "mxnet": "backends.mxnet_backend",
    "chainer": "backends.chainer_backend",
    "jax": "backends.jax_backend",
    "keras-jax": "backends.keras_jax_backend",
    "keras-torch": "backends.keras_torch_backend",
}
EXTRA_BACKENDS_VAR = "HARNESS_EXTRA_BACKENDS"


def _extra_backends(text: str) -> tuple[dict[str, str], str | None]:
    """Parse the hook's value: ({name: module path}, first problem or None)."""
    extra: dict[str, str] = {}
    for entry in filter(None, (e.strip() for e in text.split(","))):
        name, sep, path = (part.strip() for part in entry.partition("="))
        if not (sep and name and path):
            return extra, (f"Invalid {EXTRA_BACKENDS_VAR} entry {entry!r}. "
                           "Expected name=module.path entries separated by commas.")
        if name in BACKENDS or name in extra:
            return extra, (f"{EXTRA_BACKENDS_VAR} registers backend {name!r}, which is "
                           "already registered.")
        extra[name] = path
    return extra, None


# A bad entry must not stop `import harness`; the CLI reports it as bad input.
_extra, EXTRA_BACKENDS_ERROR = _extra_backends(os.environ.get(EXTRA_BACKENDS_VAR, ""))
BACKENDS.update(_extra)


class UnknownChoice(ValueError):
    """A value outside a fixed set of choices; the message is one line."""


def check_choice(kind: str, value: str, choices) -> str:
    """Return value if valid, else raise UnknownChoice with a one-line message."""
    choices = list(choices)
    if value in choices:
        return value
    close = difflib.get_close_matches(str(value), [str(c) for c in choices], n=1)
    hint = f"Did you mean '{close[0]}'? " if close else ""
    raise UnknownChoice(f"Unknown {kind} {value!r}. {hint}"
                        f"Expected one of {{{', '.join(map(str, choices))}}}.")


@functools.lru_cache(maxsize=None)
def backend(name: str) -> Backend:
    """The validated declarations of a registered backend."""
    check_choice("backend", name, BACKENDS)
    return contract.load(name, BACKENDS[name])


def _index(value, order) -> int:
    return order.index(value) if value in order else len(order)


_REST = [f for f in CELL_FIELDS if f not in ("backend", "level", "arch", "gate", "seed")]


def cell_order(item) -> tuple:
    """Sort key of a Cell or Record: backend in registration order (unknown
    ones last, by name), level, arch and gate in declaration order, then
    seed and the remaining fields (None before any number)."""
    return _cell_key(getattr(item, "cell", item), len(BACKENDS))


# Cached per cell (and number of registered backends, which only a test
# changes): the report and the summary sort a sweep's 30,000 records a
# dozen times, and building the key was most of their time.
@functools.lru_cache(maxsize=1 << 17)
def _cell_key(cell, _registered: int) -> tuple:
    return (_index(cell.backend, list(BACKENDS)), cell.backend, _index(cell.level, LEVELS),
            _index(cell.arch, ARCHS), _index(cell.gate, list(GATES)), cell.seed,
            *((v is not None, v) for v in (getattr(cell, f) for f in _REST)))


@dataclass(frozen=True)
class Availability:
    backend: str
    state: str  # ok | missing | broken
    version: str | None = None
    detail: str = ""

    @property
    def ok(self) -> bool:
        return self.state == "ok"


def default_mode(name: str, level: str) -> str:
    """The mode a backend runs a level in unless told otherwise; "eager" for
    a name this checkout does not register (a run folder from elsewhere)."""
    if name not in BACKENDS:
        return "eager"
    return backend(name).default_mode(level)


def known_departure(cell) -> str | None:
    """Why a cell is known to depart from the reference (its backend's
    optional ``known_departure``), or None; None too for a backend this
    checkout does not have (a run folder from elsewhere)."""
    try:
        hook = backend(cell.backend).known_departure
    except (UnknownChoice, contract.ContractError):
        return None
    return hook(cell) if hook else None


def departures(cell) -> tuple[str, ...]:
    """The oracle variant atoms a cell's backend names for it (its optional
    ``departures``); () for a backend this checkout does not have."""
    try:
        hook = backend(cell.backend).departures
    except (UnknownChoice, contract.ContractError):
        return ()
    return tuple(hook(cell)) if hook else ()


def known_gaps() -> dict[tuple[str, str], str]:
    """Every (backend, level) a backend lacks, with its reason: the one list of gaps."""
    return {(name, level): reason for name in BACKENDS
            for level, reason in backend(name).unsupported.items()}
