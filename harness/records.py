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
"""
from __future__ import annotations

import dataclasses
import enum
import math
from dataclasses import dataclass
from typing import Any, Callable

from harness.tasks import CELL_FIELDS, Cell, reads_cell_fields

# 1: the original fields (verdict fields, diverged_epoch and repeat_mismatch
#    were added later without a bump, so a schema-1 record may lack them).
# 2: first_divergence renamed first_departure (it never meant the
#    `diverged` status); `departed` names the bands a disagreeing cell left.
# 3: the cell's execution `mode` (eager, compiled, graph).
SCHEMA_VERSION = 3


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
    loss_curve: list[float] | None = None
    seconds: float | None = None
    info: dict[str, Any] = dataclasses.field(default_factory=dict)
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


# version -> function upgrading one record dict from it to version + 1.
MIGRATIONS: dict[int, Callable[[dict[str, Any]], dict[str, Any]]] = {1: _v1_to_v2,
                                                                     2: _v2_to_v3}


def upgrade(rec: dict[str, Any], version: int) -> dict[str, Any]:
    """A record dict written under schema ``version``, in the current schema."""
    for v in range(version, SCHEMA_VERSION):
        rec = MIGRATIONS[v](rec)
    return rec
