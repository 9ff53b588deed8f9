"""Lazy registry of backends: name -> module path.

Importing this module imports no framework.  A backend module itself must
not import its framework at module level either: its capability constants
(``LEVELS``, ``UNSUPPORTED``, ``ARCH_LIMITS``) are read without the framework,
and the framework is imported inside ``framework_version()`` and ``train()``.

Extra backends (a plug-in and test hook): ``HARNESS_EXTRA_BACKENDS`` holds
``name=module.path`` entries separated by commas; they are registered after
the built-in ones.  It is an environment variable, not a flag, so it reaches
the worker processes that run cells.  The test suite uses it to register
backends that crash, hang or misbehave on purpose (tests/faulty_backend.py).
"""
from __future__ import annotations

import difflib
import importlib
import os
from dataclasses import dataclass
from types import ModuleType

from harness.tasks import LEVELS, PERCEPTRON_LEVELS

# Order is presentation order: the reference first, then from concrete
# (autograd) to the frameworks with layer modules.
BACKENDS: dict[str, str] = {
    "numpy": "backends.numpy_backend",
    "autograd": "backends.autograd_backend",
    "torch": "backends.torch_backend",
    "tensorflow": "backends.tensorflow_backend",
    "mxnet": "backends.mxnet_backend",
    "chainer": "backends.chainer_backend",
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


def backend_module(name: str) -> ModuleType:
    check_choice("backend", name, BACKENDS)
    return importlib.import_module(BACKENDS[name])


@dataclass(frozen=True)
class Availability:
    backend: str
    state: str  # ok | missing | broken
    version: str | None = None
    detail: str = ""

    @property
    def ok(self) -> bool:
        return self.state == "ok"


def probe(name: str) -> Availability:
    """Import the backend's framework here and report whether it is usable.

    ``missing``: the framework is not installed (ModuleNotFoundError);
    ``broken``: importing it raised anything else, reported with its type.
    """
    mod = backend_module(name)
    try:
        for module in mod.IMPORTS:
            importlib.import_module(module)
        return Availability(name, "ok", mod.framework_version())
    except ModuleNotFoundError as exc:
        return Availability(name, "missing", None, f"{exc.name or exc} is not installed")
    except BaseException as exc:  # noqa: BLE001 - a broken framework may raise anything
        if isinstance(exc, KeyboardInterrupt):
            raise
        detail = f"{type(exc).__name__}: {exc}".splitlines()[0][:300]
        return Availability(name, "broken", None, f"import failed: {detail}")


def _lacks(name: str, mod: ModuleType, level: str) -> str:
    """Why a backend lacks a level: its own ``UNSUPPORTED`` entry, else the
    reason shared by every framework (the perceptron levels are numpy's)."""
    if level in mod.UNSUPPORTED:
        return mod.UNSUPPORTED[level]
    if level in PERCEPTRON_LEVELS:
        return (f"the perceptron levels are the numpy reference's hand-written algorithms; "
                f"{name} has no perceptron")
    return f"{name} does not implement level {level!r}"


def gap(name: str, level: str, arch: str) -> str | None:
    """The reason a backend cannot run (level, arch), or None when it can."""
    mod = backend_module(name)
    if level not in mod.LEVELS:
        return _lacks(name, mod, level)
    limit = getattr(mod, "ARCH_LIMITS", {}).get(level)
    if limit and arch not in limit[0]:
        return limit[1]
    return None


def known_departure(cell) -> str | None:
    """Why a cell is known to depart from the reference, from its backend's
    optional ``known_departure(cell)``: a framework behaviour that no adapter
    can change without rewriting the framework's own function."""
    hook = getattr(backend_module(cell.backend), "known_departure", None)
    return hook(cell) if hook else None


def known_gaps() -> dict[tuple[str, str], str]:
    """Every (backend, level) a backend lacks, with its reason: the one list of gaps."""
    out = {}
    for name in BACKENDS:
        mod = backend_module(name)
        for level in LEVELS:
            if level not in mod.LEVELS:
                out[(name, level)] = _lacks(name, mod, level)
    return out
