"""What one cell produced: the Record, its Status, and the results schema.

* A ``Record`` holds its ``Cell`` (the cell's identity is declared once, on
  Cell) plus what training and the verdict produced.  Cell fields read
  through it (``record.seed``); on disk a record is one flat JSON object,
  the cell's fields first.
* ``Status``: every status a record can have, with its groups.
* The schema: ``SCHEMA_VERSION`` goes up with every change to the record
  fields, and ``MIGRATIONS`` upgrade a record (and its manifest) written
  under an older version, one version at a time, in one place
  (``upgrade``).  A key the current schema does not know is an error, never
  silently dropped.
* Loss curves (schema 5) live in one of two places.  Inline, ``loss_curve``
  is a JSON list in the record's line (NaN and infinities written as null)
  and a Python list in memory.  In the run's curves file, ``curves.f64``
  beside results.jsonl (``--curves file``), the line holds a reference
  ``{"file": "curves.f64", "offset": K, "length": N}``: the curve is the N
  little-endian float64 values starting at value K (offset counted in
  values, not bytes), exact, NaN and infinities included; in memory it is
  a read-only float64 array, a view of the memory-mapped file, so a curve
  is read from disk only where something looks at it.  Code that reads
  curves takes both (``curve_values``, ``same_curve``); ``harness.results``
  reads and writes the file.
"""
from __future__ import annotations

import dataclasses
import enum
import json
import math
import types
import typing
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from harness.tasks import (AXES, CELL_FIELDS, GATES, GRADIENT_LEVELS, Cell, n_inputs,
                           param_shapes, reads_cell_fields, updates)

# 1: the original fields (verdict fields, diverged_epoch and repeat_mismatch
#    were added later without a bump, so a schema-1 record may lack them).
# 2: first_divergence renamed first_departure (it never meant the
#    `diverged` status); `departed` names the bands a disagreeing cell left.
# 3: the cell's execution `mode` (eager, compiled, graph).
# 4: the recipe: cell fields optimizer, hparams, momentum, beta1, beta2, eps,
#    rho, weight_decay, batch_size, reduction; record fields hparams_used,
#    rule, explained_by, unjudged, horizon.
# 5: loss_curve may be a reference into the run's curves file (CURVES_FILE)
#    instead of an inline list; nothing else changed.
SCHEMA_VERSION = 5

# The run's curves file (schema 5): every stored curve's values, little-endian
# float64, one after another; a record's reference names it, its first value
# and its number of values.
CURVES_FILE = "curves.f64"
CURVE_DTYPE = np.dtype("<f8")
CURVE_REF_KEYS = ("file", "offset", "length")


class Status(enum.StrEnum):
    """How a cell ended.  A StrEnum: it is its own JSON string."""

    OK = "ok"
    # Trained, but the loss or parameters became NaN or infinite.
    DIVERGED = "diverged"
    UNSUPPORTED = "unsupported"
    SKIPPED = "skipped"
    ERROR = "error"
    # Killed after --timeout seconds.
    TIMEOUT = "timeout"

    @property
    def failed(self) -> bool:
        """The cell should have run and did not end: exit status 1."""
        return self in FAILED

    @property
    def not_run(self) -> bool:
        """Nothing was trained, by design (a gap, or a framework not there)."""
        return self in NOT_RUN


FAILED = frozenset({Status.ERROR, Status.TIMEOUT})
NOT_RUN = frozenset({Status.UNSUPPORTED, Status.SKIPPED})


@reads_cell_fields
@dataclass(frozen=True)
class Record:
    """Everything one cell produced (``record.seed`` is ``record.cell.seed``).
    Parameters are canonical nested lists."""

    cell: Cell
    status: Status
    message: str = ""
    backend_version: str | None = None
    params_init: dict[str, list] | None = None
    params_final: dict[str, list] | None = None
    probs: list[float] | None = None
    preds: list[int] | None = None
    accuracy: float | None = None
    learned: bool | None = None
    loss_final: float | None = None
    # A list (inline; NaN and infinities read back as None) or a read-only
    # float64 array (stored in the run's curves file, or handed over as an
    # array by a batch): see the module docstring.
    loss_curve: list[float] | np.ndarray | None = None
    seconds: float | None = None
    info: dict[str, Any] = dataclasses.field(default_factory=dict)
    # The hyperparameters in effect (lr first), read back from the
    # framework's optimizer object where it has one; None when not trained
    # or for the perceptron levels.
    hparams_used: dict[str, float] | None = None
    # The oracle's verdict (harness.oracle.judge); None unless status is ok.
    oracle_dev: float | None = None
    tolerance: float | None = None
    agrees: bool | None = None
    # The first loss-curve index outside the oracle's band, or None.
    first_departure: int | None = None
    # The bands a cell left: "params_final", "loss_curve" ([] when it agrees).
    departed: list[str] | None = None
    learned_epoch: int | None = None
    # Updates after which the loss (or, at the end, the parameters) was
    # first NaN or infinite: an index into loss_curve, or `epochs` when only
    # the final state is.  None unless status is `diverged`.
    diverged_epoch: int | None = None
    # What the cell was judged against: its optimizer family's textbook rule
    # ("sgd", "adam", ...) or its perceptron rule.
    rule: str | None = None
    # For a cell that departs from the textbook: the oracle variant (its
    # atoms joined by "+", harness.oracle.VARIANTS) that reproduces it.
    explained_by: str | None = None
    # Why an ok cell was not judged (agrees is None), e.g. a float32 run
    # longer than the tolerance table measures.
    unjudged: str | None = None
    # The update past which round-off is amplified beyond the tolerance in
    # the oracle's own trajectory (harness.oracle.horizon): the cell was
    # judged up to it.  None: judged to the end.
    horizon: int | None = None
    # --repeat: names of the fields whose values differed between the runs
    # of this cell ([] when bit-identical); None when it was not repeated.
    repeat_mismatch: list[str] | None = None

    def __post_init__(self):
        if not isinstance(self.status, Status):
            object.__setattr__(self, "status", Status(self.status))

    def to_dict(self) -> dict[str, Any]:
        """The flat form written to disk (no copies: do not mutate)."""
        out = self.cell.to_dict()
        out.update((name, getattr(self, name)) for name in OWN_FIELDS)
        return out

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Record":
        """A record from its current-schema flat form (``upgrade`` first for
        older ones); ValueError names an unknown key."""
        unknown = [k for k in d if k not in RECORD_FIELDS]
        if unknown:
            raise ValueError(f"unknown field {unknown[0]!r}")
        return cls(Cell.from_dict(d), **{k: d[k] for k in OWN_FIELDS if k in d})

    @classmethod
    def for_cell(cls, cell: Cell, status: Status | str, message: str = "", **fields) -> "Record":
        return cls(cell, Status(status), message, **fields)


OWN_FIELDS = tuple(f.name for f in dataclasses.fields(Record) if f.name != "cell")
# The flat field names of a record on disk, in order.
RECORD_FIELDS = (*CELL_FIELDS, *OWN_FIELDS)


# ----------------------------------------------------------------- validation
#
# A run folder is input like any other: a record that parses as JSON may
# still hold a list where the seed goes.  ``check`` refuses such a record
# with the field at fault, so that nothing downstream (the oracle, the
# report, a resume that has already run cells) meets a value of the wrong
# type.  The expected types are the dataclass annotations of Cell and
# Record; the constraints beyond types come from the axes declared on Cell
# (valid choices, minimums) and from the task contract (parameter shapes,
# rows, one loss per epoch).

_HINTS = {**typing.get_type_hints(Cell), **typing.get_type_hints(Record)}
_HINTS.pop("cell")
_AXIS = dict(AXES)
# Written as null: NaN and infinities (strict JSON), inside number lists too.
_NUMBER_LISTS = ("probs", "loss_curve")
_PARAMS = ("params_init", "params_final")
# Fields an ok or diverged record always has (harness.execution.child).
_TRAINED = ("params_init", "params_final", "probs", "preds", "accuracy", "learned",
            "loss_curve")
DEPARTED_BANDS = ("params_final", "loss_curve")


def _short(value: Any) -> str:
    """A value as the JSON it was read from (null, true, "x"), cut short."""
    try:
        text = json.dumps(value, ensure_ascii=False)
    except (TypeError, ValueError):
        text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _describe(hint) -> str:
    """An annotation in words, for a message: 'a list of numbers or null'."""
    if typing.get_origin(hint) in (types.UnionType, typing.Union):
        return " or ".join(_describe(h) for h in typing.get_args(hint))
    if hint is type(None):
        return "null"
    if isinstance(hint, type) and issubclass(hint, enum.Enum):
        return "one of {" + ", ".join(m.value for m in hint) + "}"
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is list:
        return "a list" + (f" of {_describe(args[0]).removeprefix('a ').removeprefix('an ')}s"
                           if args else "")
    if origin is dict or hint is dict:
        return "a mapping" + (" of names to nested lists" if args and args[1] is list else "")
    if hint is np.ndarray:  # on disk, a stored curve is its reference
        return REF_DESCRIPTION
    return {str: "a string", int: "an integer", float: "a number", bool: "true or false",
            Any: "any value"}.get(hint, str(hint))


def _conforms(value: Any, hint, in_list: bool = False) -> bool:
    """Whether a decoded JSON value has the annotated type (bool is not a
    number, a float is not an integer; a number in a list may be null)."""
    test = _TESTS.get(hint)
    if test is None:
        test = _TESTS[hint] = _test(hint)
    return test(value, in_list)


# hint -> its test, built once: reading the annotations again for every
# field of every record made the loader spend most of its time in typing.
_TESTS: dict[Any, Callable[[Any, bool], bool]] = {}


def _test(hint) -> Callable[[Any, bool], bool]:
    """``_conforms`` for one annotation, as a function of (value, in_list)."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (types.UnionType, typing.Union):
        parts = [_test(h) for h in args]
        return lambda v, in_list: any(part(v, in_list) for part in parts)
    if hint is Any:
        return lambda v, in_list: True
    if hint is type(None):
        return lambda v, in_list: v is None
    if hint is np.ndarray:  # a curve in memory: read from the curves file, or a batch's
        return lambda v, in_list: (isinstance(v, np.ndarray) and v.ndim == 1
                                   and v.dtype == np.float64)
    if isinstance(hint, type) and issubclass(hint, enum.Enum):
        values = frozenset(m.value for m in hint)
        return lambda v, in_list: type(v) is str and v in values
    if hint is float:
        return lambda v, in_list: type(v) is float or type(v) is int or (in_list and v is None)
    if hint in (int, str, bool):
        return lambda v, in_list: type(v) is hint
    if origin is list or hint is list:
        item = _test(args[0]) if args else None
        return lambda v, in_list: type(v) is list and (item is None
                                                      or all(item(x, True) for x in v))
    if origin is dict or hint is dict:
        value = _test(args[1]) if args else None
        return lambda v, in_list: (type(v) is dict and all(type(k) is str for k in v) and (
            value is None or all(value(x, False) for x in v.values())))
    raise TypeError(f"no check for annotation {hint!r}")  # a new field type: add it here


def _shaped(value: Any, shape: tuple[int, ...], nulls: bool) -> bool:
    """Whether value is a nested list of numbers of exactly this shape."""
    if not shape:
        return type(value) in (int, float) or (nulls and value is None)
    return (type(value) is list and len(value) == shape[0]
            and all(_shaped(v, shape[1:], nulls) for v in value))


REF_DESCRIPTION = (f'a reference {{"file": "{CURVES_FILE}", "offset": K, "length": N}} '
                   "(K and N integers >= 0)")


def is_curve_ref(value: Any) -> bool:
    """Whether a loss_curve value is the on-disk reference form (a mapping)."""
    return isinstance(value, dict)


def _valid_ref(value: dict) -> bool:
    """The reference's form: exactly its three keys, the run's own curves
    file (never a path: a record cannot point outside its folder), and
    integer offset and length >= 0."""
    return (list(value) == list(CURVE_REF_KEYS) and value["file"] == CURVES_FILE
            and all(type(value[k]) is int and value[k] >= 0 for k in ("offset", "length")))


def curve_values(curve) -> np.ndarray:
    """A loss curve, inline list or stored array, as float64 values (None,
    the inline form of NaN and the infinities, as NaN).  A stored curve is
    returned as it is: read-only, not copied."""
    if isinstance(curve, np.ndarray):
        return curve
    return np.array([np.nan if v is None else v for v in curve], dtype=np.float64)


def same_curve(a, b) -> bool:
    """Whether two loss curves, in either form, hold the same values (None
    and NaN alike, as list equality treats two inline nulls)."""
    if isinstance(a, list) and isinstance(b, list):
        return a == b
    return np.array_equal(curve_values(a), curve_values(b), equal_nan=True)


def check(d: dict[str, Any]) -> dict[str, Any]:
    """A current-schema record dict, returned unchanged if every field has
    its type and fits its cell; else ValueError naming the first field at
    fault, what it holds and what is valid (one line)."""
    def bad(name: str, expected: str) -> ValueError:
        return ValueError(f"field {name!r} is {_short(d[name])}, expected {expected}")

    for name, value in d.items():
        if name not in _HINTS:
            raise ValueError(f"unknown field {name!r}")
        if name == "loss_curve" and is_curve_ref(value):
            if not _valid_ref(value):
                raise bad(name, _describe(_HINTS[name]))
        elif not _conforms(value, _HINTS[name]):
            raise bad(name, _describe(_HINTS[name]))
    # The cell: the values its axes allow (any backend name: a folder may
    # come from a machine with other backends registered).
    for name, axis in AXES:
        if name not in d or d[name] is None or name == "backend":
            continue
        value, valid = d[name], axis.valid()
        if valid and value not in valid:
            raise bad(name, "one of {" + ", ".join(valid) + "}")
        if axis.minimum is not None and (value <= axis.minimum if axis.above
                                         else value < axis.minimum):
            raise bad(name, f"a number {'>' if axis.above else '>='} {axis.minimum:g}")
    if not d["backend"]:
        raise bad("backend", "a backend name")
    if d["seed"] < 0:
        raise bad("seed", "an integer >= 0")
    cell = Cell.from_dict(d)
    if cell.arch == "multi" and cell.hidden is None:
        raise bad("hidden", "an integer >= 1 for arch multi")
    # What the cell produced, against the task contract.
    status = d["status"]
    trained = status in ("ok", "diverged")
    for name in _TRAINED if trained else ():
        if d.get(name) is None:
            raise ValueError(f"field {name!r} is {'null' if name in d else 'missing'}, "
                             f"expected a value in a record with status {status!r}")
    nulls = status != "ok"  # only a diverged (or failed) cell holds NaN or infinities
    shapes = dict(param_shapes(cell.arch, n_inputs(cell.gate), cell.hidden))
    for name in _PARAMS:
        params = d.get(name)
        if params is None:
            continue
        if list(params) != list(shapes) or not all(
                _shaped(params[k], shape, nulls and name == "params_final")
                for k, shape in shapes.items()):
            raise bad(name, "parameters " + ", ".join(f"{k} {list(v)}" for k, v in shapes.items())
                      + " of numbers")
    rows = len(GATES[cell.gate])
    for name, length in (("probs", rows), ("preds", rows), ("loss_curve", updates(cell))):
        value = d.get(name)
        if value is None:
            continue
        if is_curve_ref(value):
            # Its values are in the curves file: the loader maps them, and
            # never reads them all to check them (a sweep's file is large);
            # their count is checked here, their presence by the loader.
            fits = value["length"] == length
        elif isinstance(value, np.ndarray):
            fits = len(value) == length and (nulls or bool(np.isfinite(value).all()))
        else:
            fits = len(value) == length and all(
                _shaped(v, (), nulls and name in _NUMBER_LISTS) for v in value)
        if not fits:
            raise bad(name, f"a list of {length} {'integers' if name == 'preds' else 'numbers'}"
                            f" for this cell" + (" (or a reference to as many values)"
                                                 if name == "loss_curve" else ""))
    if status == "ok" and d.get("loss_final") is None:
        raise bad("loss_final", "a number in a record with status 'ok'")
    for name in ("first_departure", "learned_epoch", "diverged_epoch", "horizon"):
        if d.get(name) is not None and d[name] < 0:
            raise bad(name, "an integer >= 0 or null")
    if d.get("departed") is not None and not set(d["departed"]) <= set(DEPARTED_BANDS):
        raise bad("departed", "a list of " + " and ".join(DEPARTED_BANDS))
    return d


# ----------------------------------------------------------------- migrations

def _v1_to_v2(rec: dict[str, Any]) -> dict[str, Any]:
    if "first_divergence" not in rec and "departed" in rec:
        return rec  # already upgraded (a resume stopped between its two writes)
    rec = dict(rec)
    first = rec.pop("first_divergence", None)
    rec["first_departure"] = first
    if rec.get("agrees") is None:
        rec["departed"] = None  # not judged: the loader judges it
    else:
        dev, tol = rec.get("oracle_dev"), rec.get("tolerance")
        params_out = dev is None or tol is None or not (math.isfinite(dev) and dev <= tol)
        rec["departed"] = ([*(["params_final"] if params_out else []),
                            *(["loss_curve"] if first is not None else [])]
                           if rec["agrees"] is False else [])
    return rec


# What every cell ran before modes were an axis: TensorFlow's training
# steps were tf.function (compiled); everything else, and every level a
# backend did not train, is eager (Backend.default_mode's answer).
_V2_COMPILED = {("tensorflow", level) for level in ("raw", "module", "optimizer")}


def _v2_to_v3(rec: dict[str, Any]) -> dict[str, Any]:
    if "mode" in rec:
        return rec
    compiled = (rec.get("backend"), rec.get("level")) in _V2_COMPILED
    return {**rec, "mode": "compiled" if compiled else "eager"}


# Before recipes, every gradient cell was full-batch plain SGD on the summed
# loss, and was judged against that rule.
_V3_RECIPE = {"optimizer": "sgd", "hparams": "explicit", "momentum": None, "beta1": None,
              "beta2": None, "eps": None, "rho": None, "weight_decay": 0.0, "batch_size": None,
              "reduction": "sum"}


def _v3_to_v4(rec: dict[str, Any]) -> dict[str, Any]:
    if "optimizer" in rec:
        return rec
    rec = {**rec, **{k: v for k, v in _V3_RECIPE.items() if k not in rec}}
    judged = rec.get("agrees") is not None
    level = rec.get("level")
    rec["rule"] = (("sgd" if level in GRADIENT_LEVELS else level) if judged else None)
    rec["explained_by"] = None
    rec["unjudged"] = None
    rec["horizon"] = None
    rec.setdefault("hparams_used", None)
    return rec


def _v4_to_v5(rec: dict[str, Any]) -> dict[str, Any]:
    # Schema 5 only allows loss_curve to be a reference into the curves
    # file; every record written before holds its curve inline, as before.
    return rec


# version -> function upgrading one record dict from it to version + 1.
MIGRATIONS: dict[int, Callable[[dict[str, Any]], dict[str, Any]]] = {1: _v1_to_v2,
                                                                     2: _v2_to_v3,
                                                                     3: _v3_to_v4,
                                                                     4: _v4_to_v5}


def upgrade(rec: dict[str, Any], version: int) -> dict[str, Any]:
    """A record dict written under schema ``version``, in the current schema."""
    for v in range(version, SCHEMA_VERSION):
        rec = MIGRATIONS[v](rec)
    return rec
