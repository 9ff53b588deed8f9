"""The backend contract: what a backend module declares, checked once.

A backend is a module (``backends/<name>_backend.py``, or any module named
in ``HARNESS_EXTRA_BACKENDS``) that imports its framework only inside its
functions, so that reading its declarations is cheap and safe.  Members:

Required
  ``NAME``                 str, equal to the name it is registered under.
  ``IMPORTS``              tuple of module names: importing them is what
                           "the framework is available" means.
  ``TRAINERS``             {level: trainer}: each level it implements (a
                           level of ``harness.tasks.LEVELS``) and the
                           function that trains it, ``trainer(spec:
                           TrainSpec) -> TrainResult``.  The backend's levels
                           are derived from this table, never declared twice.
  ``UNSUPPORTED``          {level: reason} for levels it lacks; disjoint from
                           TRAINERS.  The perceptron levels, the numpy
                           reference's own algorithms, need no entry.
  ``framework_version()``  -> str, called where the framework is imported.
Required exactly when ``raw`` is in TRAINERS
  ``loss_and_grad(spec)``  -> (loss, {name: gradient}): the raw level's
                           written-out loss and its autodiff gradient at
                           ``spec.params`` (canonical layout), for
                           ``harness gradcheck``.
Optional
  ``ARCH_LIMITS``          {level: (archs, reason)}: a level it implements
                           for some archs only.
  ``MODES``                {level: (mode, ...)}: the execution modes
                           (``harness.tasks.MODES``) each trained level has,
                           its default first; a level not named has
                           ("eager",) only.
  ``ENV``                  {variable: value}: environment its worker sets
                           before importing the framework (JAX's float64
                           switch, Keras' backend choice).  Such a backend
                           runs only in a worker process of its own.
  ``MODE_GAPS``            {mode or (level, mode): reason}: why a mode is
                           missing, for every (trained level, mode) that
                           MODES leaves out; a backend that declares no
                           MODES gets one shared reason instead.
  ``OPTIMIZER_GAPS``       {family: reason}: optimizer families
                           (``harness.tasks.OPTIMIZERS``) its optimizer
                           object lacks; the ``optimizer`` and ``custom``
                           levels of those families are ``unsupported``
                           with the reason.  A key (family, dtype) is a
                           gap at that dtype only.  (The ``raw`` and
                           ``module`` levels write every family out by
                           hand with ``harness.recipes.Textbook``.)
  ``optimizer_defaults(family)`` -> {hyperparameter: value}: the
                           framework's own defaults for the family, read
                           from its optimizer object (``--hparams
                           defaults`` at the hand-written levels); absent:
                           the harness's.
  ``departures(cell)``     -> tuple of ``harness.oracle.VARIANTS`` atoms:
                           how the framework's optimizer object computes
                           this cell's rule differently from the textbook
                           (empty: it does not).  The oracle judges the
                           cell against that variant when it departs from
                           the textbook, so each named departure is tested
                           on every cell it applies to.
  ``BATCHED``              {level: batched trainer}: levels it can train
                           for many seeds at once (``harness run
                           --batch-seeds``), ``trainer(spec: BatchSpec) ->
                           BatchResult``, parameters with a leading seed
                           axis, in every mode the level has.  A level not
                           named runs per seed.
  ``batch_gap(cell)``      -> str | None: why a cell of a batched level
                           runs per seed all the same (its batched kernels
                           leave what the oracle's variant for the cell
                           reproduces), or None.
  ``BATCH_BOUNDS``         {level or (level, mode): ({dtype: bound},
                           reason)}: a batched level (in every mode, or in
                           one) whose records are not bit-identical to its
                           per-seed ones (a framework whose kernels change
                           with the batch's shape): per dtype, a bound on
                           the relative deviation of parameters and loss
                           curve set from the measured largest, and why.
                           A batched level and mode not named here is
                           bit-identical (tests/test_batch.py).
  ``known_departure(cell)`` -> str | None: why a cell leaves the reference
                           through a framework behaviour no adapter can
                           change without rewriting the framework's own
                           function (MXNet).  The verdict still says
                           ``agrees: false``; findings quote the reason.

A name close to a member's (a misspelt ``UNSUPORTED``, which would
otherwise be silently ignored) is refused, and so is ``LEVELS``, which is
derived.  ``load`` checks every rule and returns a
``Backend``; a broken rule raises ``ContractError`` with one line naming
the backend and the rule.
"""
from __future__ import annotations

import dataclasses
import difflib
import importlib
from dataclasses import dataclass
from types import MappingProxyType, ModuleType
from typing import Any, Callable, Mapping

from harness.tasks import (ARCHS, DTYPES, LEVELS, MODES, OPTIMIZERS, PERCEPTRON_LEVELS,
                           BatchResult, BatchSpec, TrainResult, TrainSpec)

REQUIRED = ("NAME", "IMPORTS", "TRAINERS", "UNSUPPORTED", "framework_version")
OPTIONAL = ("ARCH_LIMITS", "MODES", "MODE_GAPS", "ENV", "OPTIMIZER_GAPS", "BATCHED",
            "BATCH_BOUNDS",
            "loss_and_grad",
            "known_departure", "departures", "optimizer_defaults")
CONSTANTS = ("NAME", "IMPORTS", "TRAINERS", "UNSUPPORTED", "ARCH_LIMITS", "MODES", "MODE_GAPS",
             "ENV", "OPTIMIZER_GAPS", "BATCHED", "BATCH_BOUNDS")
# Levels that use the framework's own optimizer object.
OPTIMIZER_LEVELS = ("optimizer", "custom")


class ContractError(ValueError):
    """A backend module that breaks the contract; the message is one line."""


@dataclass(frozen=True)
class Backend:
    """A backend module's declarations, validated (``load``)."""

    name: str
    module: str
    imports: tuple[str, ...]
    trainers: Mapping[str, Callable[[TrainSpec], TrainResult]]
    # Every level of LEVELS it lacks, with the reason.
    unsupported: Mapping[str, str]
    arch_limits: Mapping[str, tuple[tuple[str, ...], str]]
    # Every trained level's modes, default first, and why each other mode is missing.
    modes: Mapping[str, tuple[str, ...]]
    mode_gaps: Mapping[tuple[str, str], str]
    env: Mapping[str, str]
    framework_version: Callable[[], str]
    loss_and_grad: Callable[[TrainSpec], tuple[float, dict]] | None
    known_departure: Callable[[Any], str | None] | None
    optimizer_gaps: Mapping[str, str] = dataclasses.field(default_factory=dict)
    departures: Callable[[Any], tuple[str, ...]] | None = None
    optimizer_defaults: Callable[[str], dict[str, float]] | None = None
    batched: Mapping[str, Callable[[BatchSpec], BatchResult]] = dataclasses.field(
        default_factory=dict)
    batch_bounds: Mapping[Any, tuple[dict[str, float], str]] = dataclasses.field(default_factory=dict)
    cell_batch_gap: Callable[[Any], str | None] | None = None

    @property
    def levels(self) -> tuple[str, ...]:
        """The levels it implements, in LEVELS order."""
        return tuple(lv for lv in LEVELS if lv in self.trainers)

    def default_mode(self, level: str) -> str:
        return self.modes[level][0] if level in self.modes else "eager"

    def gap(self, level: str, arch: str, mode: str | None = None) -> str | None:
        """Why it cannot run (level, arch, mode), or None when it can."""
        if level not in self.trainers:
            return self.unsupported[level]
        limit = self.arch_limits.get(level)
        if limit and arch not in limit[0]:
            return limit[1]
        if mode is not None and mode not in self.modes[level]:
            return self.mode_gaps[(level, mode)]
        return None

    def recipe_gap(self, cell) -> str | None:
        """Why it cannot run the cell's recipe, or None when it can."""
        default = (cell.optimizer == "sgd" and cell.batch_size is None
                   and cell.reduction == "sum" and not cell.weight_decay)
        if cell.level in PERCEPTRON_LEVELS and not default:
            return ("the perceptron levels have their own rule (Rosenblatt's, online or "
                    "batch) and no loss: optimizer families, batch size, reduction and weight "
                    "decay apply to the gradient levels only")
        if cell.level in OPTIMIZER_LEVELS:
            gaps = self.optimizer_gaps
            return gaps.get(cell.optimizer) or gaps.get((cell.optimizer, cell.dtype))
        return None

    def batch_gap(self, cell) -> str | None:
        """Why the cell's seeds cannot train as one batch, or None."""
        if cell.level not in self.batched:
            return f"{self.name} has no batched form of level {cell.level!r}"
        return self.cell_batch_gap(cell) if self.cell_batch_gap else None

    def batch_bound(self, level: str, mode: str, dtype: str) -> float | None:
        """The declared bound of a batched level in a mode and dtype, or None
        where its batched records are bit-identical to per-seed ones."""
        entry = self.batch_bounds.get((level, mode), self.batch_bounds.get(level))
        return None if entry is None else entry[0][dtype]

    def train_batch(self, spec: BatchSpec) -> BatchResult:
        result = self.batched[spec.level](spec)
        if not isinstance(result, BatchResult):
            raise TypeError(f"the {self.name} batched trainer of level {spec.level!r} returned "
                            f"{type(result).__name__}, not a BatchResult")
        return result

    def train(self, spec: TrainSpec) -> TrainResult:
        result = self.trainers[spec.level](spec)
        if not isinstance(result, TrainResult):
            raise TypeError(f"the {self.name} trainer of level {spec.level!r} returned "
                            f"{type(result).__name__}, not a TrainResult")
        return result


def shared_mode_reason(name: str, mode: str) -> str:
    return (f"{name} runs eagerly only: it has no {mode} mode" if mode != "graph" else
            f"{name} has no graph-and-session mode (TensorFlow 1's way of running)")


def shared_reason(name: str, level: str) -> str | None:
    """The reason every framework but numpy gives for a level, if any."""
    if level in PERCEPTRON_LEVELS:
        return (f"the perceptron levels are the numpy reference's hand-written algorithms; "
                f"{name} has no perceptron")
    return None


def load(name: str, path: str) -> Backend:
    """Import backend module ``path`` registered as ``name`` and check it."""
    try:
        mod = importlib.import_module(path)
    except Exception as exc:  # noqa: BLE001 - any failure here is a broken backend module
        detail = f"{type(exc).__name__}: {exc}".splitlines()[0][:200]
        raise ContractError(f"backend {name!r}: module {path!r} cannot be imported ({detail}); "
                            "a backend module must import cleanly without its framework.") from None
    return check(name, mod)


def check(name: str, mod: ModuleType) -> Backend:
    """The Backend a module declares, or ContractError naming the broken rule."""
    def broken(rule: str):
        return ContractError(f"backend {name!r} ({mod.__name__}) breaks the contract: {rule} "
                             "(harness/contract.py).")

    for member in REQUIRED:
        if not hasattr(mod, member):
            raise broken(f"it has no {member}")
    if hasattr(mod, "LEVELS"):
        raise broken("LEVELS is derived from TRAINERS and must not be declared")
    for k in vars(mod):
        close = difflib.get_close_matches(k, CONSTANTS, n=1, cutoff=0.8)
        if k.isupper() and not k.startswith("_") and k not in CONSTANTS and close:
            raise broken(f"{k} is not a contract member; did you mean {close[0]}?")
    if mod.NAME != name:
        raise broken(f"NAME is {mod.NAME!r}, not the name it is registered under")
    if (not isinstance(mod.IMPORTS, tuple) or not mod.IMPORTS
            or not all(isinstance(m, str) and m for m in mod.IMPORTS)):
        raise broken("IMPORTS must be a non-empty tuple of module names")
    trainers, unsupported = mod.TRAINERS, mod.UNSUPPORTED
    if not isinstance(trainers, dict) or not trainers:
        raise broken("TRAINERS must be a non-empty dict from level to trainer")
    if not isinstance(unsupported, dict):
        raise broken("UNSUPPORTED must be a dict from level to reason")
    for level, trainer in trainers.items():
        if level not in LEVELS:
            raise broken(f"TRAINERS has level {level!r}; levels are {', '.join(LEVELS)}")
        if not callable(trainer):
            raise broken(f"the trainer of level {level!r} is not callable")
    for level, reason in unsupported.items():
        if level not in LEVELS:
            raise broken(f"UNSUPPORTED has level {level!r}; levels are {', '.join(LEVELS)}")
        if level in trainers:
            raise broken(f"level {level!r} is both in TRAINERS and in UNSUPPORTED")
        if not isinstance(reason, str) or not reason.strip():
            raise broken(f"UNSUPPORTED[{level!r}] must be a sentence saying why")
    gaps = {}
    for level in LEVELS:
        if level not in trainers:
            reason = unsupported.get(level) or shared_reason(name, level)
            if reason is None:
                raise broken(f"level {level!r} is neither in TRAINERS nor in UNSUPPORTED")
            gaps[level] = reason
    limits = getattr(mod, "ARCH_LIMITS", {})
    if not isinstance(limits, dict):
        raise broken("ARCH_LIMITS must be a dict from level to (archs, reason)")
    for level, limit in limits.items():
        if level not in trainers:
            raise broken(f"ARCH_LIMITS names level {level!r}, which it does not train")
        if (not isinstance(limit, tuple) or len(limit) != 2 or not isinstance(limit[1], str)
                or not isinstance(limit[0], tuple) or not set(limit[0]) <= set(ARCHS)):
            raise broken(f"ARCH_LIMITS[{level!r}] must be (a tuple of archs, a reason)")
    env = getattr(mod, "ENV", {})
    if not isinstance(env, dict) or not all(isinstance(k, str) and isinstance(v, str)
                                            for k, v in env.items()):
        raise broken("ENV must be a dict of environment variable names to string values")
    declared = getattr(mod, "MODES", None)
    mode_gaps = getattr(mod, "MODE_GAPS", {})
    if declared is not None and not isinstance(declared, dict):
        raise broken("MODES must be a dict from level to a tuple of modes, default first")
    if not isinstance(mode_gaps, dict):
        raise broken("MODE_GAPS must be a dict from mode or (level, mode) to reason")
    modes, gaps_by_mode = {}, {}
    for level in trainers:
        have = (declared or {}).get(level, ("eager",))
        if (not isinstance(have, tuple) or not have or not set(have) <= set(MODES)
                or len(set(have)) != len(have)):
            raise broken(f"MODES[{level!r}] must be a tuple of distinct modes from "
                         f"{', '.join(MODES)}, default first")
        modes[level] = have
        for mode in MODES:
            if mode in have:
                continue
            reason = mode_gaps.get((level, mode)) or mode_gaps.get(mode)
            if reason is None and declared is None:
                reason = shared_mode_reason(name, mode)
            if not isinstance(reason, str) or not reason.strip():
                raise broken(f"level {level!r} lacks mode {mode!r} without a reason in "
                             "MODE_GAPS")
            gaps_by_mode[(level, mode)] = reason
    for level in declared or {}:
        if level not in trainers:
            raise broken(f"MODES names level {level!r}, which it does not train")
    opt_gaps = getattr(mod, "OPTIMIZER_GAPS", {})
    if not isinstance(opt_gaps, dict) or not all(
            (f in OPTIMIZERS or isinstance(f, tuple) and len(f) == 2 and f[0] in OPTIMIZERS
             and f[1] in DTYPES) and isinstance(r, str) and r.strip()
            for f, r in opt_gaps.items()):
        raise broken("OPTIMIZER_GAPS must be a dict from optimizer family "
                     f"({', '.join(OPTIMIZERS)}), or (family, dtype), to a reason")
    batched = getattr(mod, "BATCHED", {})
    if not isinstance(batched, dict):
        raise broken("BATCHED must be a dict from level to batched trainer")
    for level, trainer in batched.items():
        if level not in trainers:
            raise broken(f"BATCHED names level {level!r}, which it does not train")
        if not callable(trainer):
            raise broken(f"the batched trainer of level {level!r} is not callable")
    bounds = getattr(mod, "BATCH_BOUNDS", {})
    if not isinstance(bounds, dict) or not all(
            (key if isinstance(key, str) else key[0] if isinstance(key, tuple)
             and len(key) == 2 and key[1] in modes.get(key[0], ()) else None) in batched
            and isinstance(b, tuple) and len(b) == 2
            and isinstance(b[0], dict) and set(b[0]) == set(DTYPES)
            and all(isinstance(v, float) and v > 0 for v in b[0].values())
            and isinstance(b[1], str) and b[1].strip()
            for key, b in bounds.items()):
        raise broken("BATCH_BOUNDS must be a dict from a level of BATCHED, or a (level, mode) "
                     f"it has, to ({{dtype: positive bound}} for each of {', '.join(DTYPES)}, "
                     "a reason)")
    for member in ("framework_version", "loss_and_grad", "known_departure", "departures",
                   "optimizer_defaults", "batch_gap"):
        if hasattr(mod, member) and not callable(getattr(mod, member)):
            raise broken(f"{member} is not callable")
    has_grad = hasattr(mod, "loss_and_grad")
    if ("raw" in trainers) != has_grad:
        raise broken("loss_and_grad must be defined exactly when level 'raw' is in TRAINERS"
                     f" (raw {'is' if 'raw' in trainers else 'is not'}, loss_and_grad "
                     f"{'is' if has_grad else 'is not'})")
    return Backend(
        name=name, module=mod.__name__, imports=tuple(mod.IMPORTS),
        trainers=MappingProxyType(dict(trainers)), unsupported=MappingProxyType(gaps),
        arch_limits=MappingProxyType(dict(limits)), modes=MappingProxyType(modes),
        mode_gaps=MappingProxyType(gaps_by_mode), env=MappingProxyType(dict(env)),
        framework_version=mod.framework_version,
        loss_and_grad=getattr(mod, "loss_and_grad", None),
        known_departure=getattr(mod, "known_departure", None),
        optimizer_gaps=MappingProxyType(dict(opt_gaps)),
        departures=getattr(mod, "departures", None),
        optimizer_defaults=getattr(mod, "optimizer_defaults", None),
        batched=MappingProxyType(dict(batched)), batch_bounds=MappingProxyType(dict(bounds)),
        cell_batch_gap=getattr(mod, "batch_gap", None))
