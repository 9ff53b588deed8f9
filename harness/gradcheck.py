"""The notebook's "automatic differentiation" check, in every backend.

At each point, a backend's raw level returns its loss and autodiff gradient
(``loss_and_grad(spec)``), computed in a worker process like training (a
framework that crashes on import or mid-check costs only its own rows);
both are compared here with the oracle's closed-form values, and the
gradient also with a central finite difference of the oracle's loss.
Points:

* ``notebook``: w = (1, 1, -1.5), x = (1, 1, 1), y = 1, i.e. single arch,
  W = (1, 1), b = -1.5, one row (1, 1) with target 1.  The notebook prints
  loss 0.4740769841801066 and gradient -0.37754067 for every component.
* ``<arch> <gate> seed <n>``: the harness's initial parameters of that cell,
  on the gate's whole truth table.

Errors are relative with a unit floor (``harness.compare``); a backend
passes at ``tolerance(dtype, 1)`` (one step's worth of round-off), the
finite difference at ``FINITE_DIFFERENCE_TOLERANCE``.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np

from harness import oracle, registry
from harness.compare import FINITE_DIFFERENCE_TOLERANCE, relative_deviation, tolerance
from harness.tasks import ARCHS, Cell, TrainSpec

NOTEBOOK_LOSS = 0.4740769841801066
# Printed to 8 decimals, so known to within half a unit of the last one.
NOTEBOOK_GRAD = -0.37754067
NOTEBOOK_GRAD_PRECISION = 5e-9


@dataclass(frozen=True)
class Point:
    name: str
    spec: TrainSpec


def points(seed: int = 0, gate: str = "xor", dtype: str = "float64", hidden: int = 2) -> list[Point]:
    """The notebook's point (one row, not a truth table), then each arch's
    initial parameters on the gate's truth table."""
    notebook = Cell("gradcheck", "raw", "single", "and", 0, dtype, epochs=1)
    out = [Point("notebook", TrainSpec(
        notebook, x=np.array([[1.0, 1.0]], dtype=dtype), y=np.array([[1.0]], dtype=dtype),
        params={"W": np.array([[1.0], [1.0]], dtype=dtype), "b": np.array([-1.5], dtype=dtype)}))]
    for arch in ARCHS:
        cell = Cell("gradcheck", "raw", arch, gate, seed, dtype, epochs=1, hidden=hidden)
        out.append(Point(f"{arch} {gate} seed {seed}", TrainSpec.from_cell(cell)))
    return out


def _err(a: float, b: float) -> float:
    return abs(a - b) / max(abs(b), 1.0)


@dataclass(frozen=True)
class Row:
    backend: str
    point: str
    loss: float | None
    loss_err: float | None
    grad_err: float | None  # vs the oracle's closed form
    fd_err: float | None  # vs the central finite difference
    ok: bool | None  # None: not run (framework missing, no raw level)
    note: str = ""
    # A mismatch its backend's known_departure explains (with the reason).
    known: str = ""


def _reference(point: Point):
    """The oracle's loss and gradient at a point, in float64, and the finite difference."""
    params = {k: np.asarray(v, np.float64) for k, v in point.spec.params.items()}
    x, y = np.asarray(point.spec.x, np.float64), np.asarray(point.spec.y, np.float64)
    loss, grad = oracle.loss_and_grad(params, x, y)
    return loss, grad, oracle.finite_difference(params, x, y)


def check(backends: list[str], seed: int = 0, gate: str = "xor", dtype: str = "float64",
          hidden: int = 2) -> list[Row]:
    pts = points(seed, gate, dtype, hidden)
    refs = [_reference(p) for p in pts]
    rows = []
    # The referee first: its closed form against finite differences and the notebook.
    for p, (loss, grad, fd) in zip(pts, refs):
        fd_err = relative_deviation(grad, fd)
        if p.name != "notebook":
            rows.append(Row("oracle", p.name, loss, None, None, fd_err,
                            fd_err <= FINITE_DIFFERENCE_TOLERANCE))
            continue
        # At the notebook's point, errors are against its printed numbers.
        loss_err = _err(loss, NOTEBOOK_LOSS)
        grad_err = max(abs(g - NOTEBOOK_GRAD) for v in grad.values() for g in np.ravel(v))
        ok = (fd_err <= FINITE_DIFFERENCE_TOLERANCE and loss_err <= tolerance("float64", 1)
              and grad_err <= NOTEBOOK_GRAD_PRECISION)
        rows.append(Row("oracle", p.name, loss, loss_err, grad_err, fd_err, ok, "vs notebook"))
    rows += _backend_rows(backends, pts, refs, tolerance(dtype, 1),
                          {"seed": seed, "gate": gate, "dtype": dtype, "hidden": hidden})
    return rows


def _backend_rows(backends, pts, refs, tol, request) -> list[Row]:
    from harness.execution import engine

    rows: dict[str, list[Row]] = {}
    with_raw = []
    for name in backends:
        if registry.backend(name).loss_and_grad is None:
            rows[name] = [Row(name, "-", None, None, None, None, None, "no raw level")]
        else:
            with_raw.append(name)
    avail, ready = engine.start_workers(with_raw)
    for name, a in avail.items():
        if not a.ok:
            rows[name] = [Row(name, "-", None, None, None, None, None, f"{a.state}: {a.detail}")]
    for name, answer in engine.ask(ready, {"gradcheck": request}).items():
        if isinstance(answer, str):  # its worker died
            rows[name] = [Row(name, "-", None, None, None, None, False, answer[:300])]
            continue
        rows[name] = []
        for p, (ref_loss, ref_grad, fd), got in zip(pts, refs, answer["gradcheck"]):
            if "error" in got:
                rows[name].append(Row(name, p.name, None, None, None, None, False, got["error"]))
                continue
            try:
                grad = {k: np.asarray(got["grad"][k], np.float64).reshape(np.shape(ref_grad[k]))
                        for k in ref_grad}
            except (KeyError, ValueError) as exc:
                rows[name].append(Row(name, p.name, None, None, None, None, False,
                                      f"gradient not in canonical layout ({exc})"))
                continue
            loss = got["loss"]
            loss_err, grad_err = _err(loss, ref_loss), relative_deviation(grad, ref_grad)
            fd_err = relative_deviation(grad, fd)
            ok = bool(loss_err <= tol and grad_err <= tol
                      and fd_err <= max(tol, FINITE_DIFFERENCE_TOLERANCE))
            known = "" if ok else registry.known_departure(
                dataclasses.replace(p.spec.cell, backend=name)) or ""
            rows[name].append(Row(name, p.name, loss, loss_err, grad_err, fd_err, ok,
                                  f"known: {known}" if known else "", known))
    return [row for name in backends for row in rows[name]]

