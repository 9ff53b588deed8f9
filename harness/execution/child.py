"""The child side of the process boundary: one cell -> one judged Record.

Everything here runs inside a worker process (``harness.execution.worker``),
never in ``harness run`` itself: importing a framework, training a cell,
judging it against the oracle, and computing the raw level's loss and
gradient for ``harness gradcheck``.  ``run_cell`` is a pure function of its
Cell (no state survives between cells), so where or in which order a cell
runs never changes its record.
"""
from __future__ import annotations

import dataclasses
import importlib
import math
import os
import time
import traceback

import numpy as np

from harness import registry
from harness.oracle import judge, judge_all
from harness.records import Record, Status
from harness.registry import Availability
from harness.tasks import (BatchResult, BatchSpec, Cell, TrainResult, TrainSpec, init_params,
                           truth_table, updates)


def import_framework(name: str) -> Availability:
    """Import the backend's framework in this process and say whether it is usable.

    ``missing``: the framework is not installed (ModuleNotFoundError);
    ``broken``: importing it raised anything else, reported with its type.
    """
    spec = registry.backend(name)
    # A worker serves one backend, so its process environment is the backend's.
    os.environ.update(spec.env)
    try:
        for module in spec.imports:
            importlib.import_module(module)
        return Availability(name, "ok", spec.framework_version())
    except ModuleNotFoundError as exc:
        return Availability(name, "missing", None, f"{exc.name or exc} is not installed")
    except BaseException as exc:  # noqa: BLE001 - a broken framework may raise anything
        if isinstance(exc, KeyboardInterrupt):
            raise
        detail = f"{type(exc).__name__}: {exc}".splitlines()[0][:300]
        return Availability(name, "broken", None, f"import failed: {detail}")


def _lists(params: dict[str, np.ndarray]) -> dict[str, list]:
    return {k: np.asarray(v, dtype=np.float64).tolist() for k, v in params.items()}


def _check_start(cell: Cell, expected: dict[str, np.ndarray], got: dict[str, np.ndarray]):
    """The backend must have loaded exactly the harness's parameters."""
    if list(got) != list(expected):
        raise AssertionError(f"backend returned parameters {list(got)}, expected {list(expected)}")
    for name, want in expected.items():
        have = np.asarray(got[name])
        if have.shape != want.shape or have.dtype != want.dtype or not np.array_equal(have, want):
            raise AssertionError(
                f"parameter {name} read back from {cell.backend} after loading is not the "
                f"harness's initial value (shape {have.shape} {have.dtype}, expected "
                f"{want.shape} {want.dtype})")


def divergence(result: TrainResult, epochs: int) -> tuple[int, str] | None:
    """(epoch, message) where the loss or parameters first became NaN or
    infinite, or None.  Only the loss is recorded per epoch; parameters are
    checked at the end."""
    curve = np.asarray(result.loss_curve, dtype=np.float64)
    if not np.all(np.isfinite(curve)):
        t = int(np.argmin(np.isfinite(curve)))
        loss = float(curve[t])
        return t, f"diverged: loss is {loss} at epoch {t} (after {t} updates)"
    if not math.isfinite(result.loss_final):
        return epochs, f"diverged: final loss is {result.loss_final}"
    for name, value in result.params_final.items():
        if not np.all(np.isfinite(value)):
            return epochs, f"diverged: final parameter {name} is not finite"
    return None


def record_from_result(cell: Cell, version: str | None, result: TrainResult,
                       seconds: float) -> Record:
    """The (unjudged) record of a trained cell."""
    y = truth_table(cell.gate)[1].reshape(-1)
    probs = np.asarray(result.probs, dtype=np.float64).reshape(-1)
    preds = (probs > 0.5).astype(int)
    correct = preds == y
    status, message, epoch = Status.OK, "", None
    diverged = divergence(result, updates(cell))
    if diverged:
        status = Status.DIVERGED
        epoch, message = diverged
    return Record.for_cell(
        cell, status, message, backend_version=version, diverged_epoch=epoch,
        params_init=_lists(result.params_start), params_final=_lists(result.params_final),
        probs=probs.tolist(), preds=preds.tolist(), accuracy=float(correct.mean()),
        learned=bool(correct.all()), loss_final=float(result.loss_final),
        loss_curve=(np.asarray(result.loss_curve, dtype=np.float64)
                    if isinstance(result.loss_curve, np.ndarray)
                    else [float(v) for v in result.loss_curve]), seconds=seconds,
        info=dict(result.info),
        hparams_used=(None if result.hparams is None else
                      {k: float(v) for k, v in result.hparams.items()}))


def unsupported(cell: Cell, version: str | None = None) -> Record | None:
    """The `unsupported` record of a cell its backend cannot run, else None."""
    spec = registry.backend(cell.backend)
    reason = spec.gap(cell.level, cell.arch, cell.mode) or spec.recipe_gap(cell)
    return (Record.for_cell(cell, Status.UNSUPPORTED, reason, backend_version=version)
            if reason else None)


def run_cell(cell: Cell, version: str | None = None) -> Record:
    """Train one cell in this process.  Never raises for a backend failure:
    the failure becomes an ``error`` record with the exception."""
    gap = unsupported(cell, version)
    if gap:
        return gap
    backend = registry.backend(cell.backend)
    spec = TrainSpec.from_cell(cell)
    try:
        t0 = time.perf_counter()
        result = backend.train(spec)
        seconds = time.perf_counter() - t0
        _check_start(cell, init_params(cell), result.params_start)
        _check_result(cell, result)
        # Judged here too: a malformed result must become this cell's error
        # record, not end the worker.
        return judge(record_from_result(cell, version, result, seconds))
    except Exception as exc:  # noqa: BLE001 - any backend failure is a finding, not a crash
        tb = traceback.format_exc(limit=-3).strip().splitlines()
        return Record.for_cell(cell, Status.ERROR, f"{type(exc).__name__}: {exc}",
                               backend_version=version, info={"traceback": tb[-6:]})


def _check_result(cell: Cell, result: TrainResult) -> None:
    """A result's shape against its cell's (what the oracle relies on); its
    start is checked by the caller (``_check_start``), per cell or per batch."""
    if len(result.loss_curve) != updates(cell):
        raise AssertionError(f"loss_curve has {len(result.loss_curve)} entries, "
                             f"expected one per update ({updates(cell)})")
    if list(result.params_final) != list(result.params_start):
        raise AssertionError(f"backend returned final parameters {list(result.params_final)}"
                             f", expected {list(result.params_start)} (canonical order)")


def run_batch(cells: list[Cell], version: str | None = None) -> list[Record]:
    """Train cells that differ only in their seed as one batch
    (``harness run --batch-seeds``): one judged record per cell, each with
    ``info["batched"]``, the number of seeds trained together, and
    ``seconds``, the batch's time shared equally.  A failure of the batch is
    every cell's ``error`` record."""
    gap = unsupported(cells[0], version)
    if gap:
        return [unsupported(c, version) for c in cells]
    backend = registry.backend(cells[0].backend)
    try:
        spec = BatchSpec.from_cells(cells)
        # Every seed's start is checked at once, against a copy of the
        # stacked parameters the backend is given (which it may train in place).
        given = {k: v.copy() for k, v in spec.params.items()}
        t0 = time.perf_counter()
        batch = backend.train_batch(spec)
        seconds = (time.perf_counter() - t0) / len(cells)
        _check_start(cells[0], given, batch.params_start)
        return judge_all(records_from_batch(cells, version, batch, seconds))
    except Exception as exc:  # noqa: BLE001 - any backend failure is a finding, not a crash
        tb = traceback.format_exc(limit=-3).strip().splitlines()
        return [Record.for_cell(c, Status.ERROR, f"{type(exc).__name__}: {exc}",
                                backend_version=version,
                                info={"traceback": tb[-6:], "batched": len(cells)})
                for c in cells]


def records_from_batch(cells: list[Cell], version: str | None, batch: BatchResult,
                       seconds: float) -> list[Record]:
    """``record_from_result`` for each seed of a batch (its ``split()``),
    with ``info["batched"]``: the same records, each field converted once
    for the whole batch (per seed, a dozen small ``tolist`` calls and
    checks cost 70 µs a record, 0.07 s of a 1000-seed batch)."""
    curve = np.asarray(batch.loss_curve)
    if curve.ndim != 2 or curve.shape[0] != len(cells):
        raise AssertionError(f"the batch of {len(cells)} seeds returned "
                             f"{curve.shape[0] if curve.ndim else 0} results")
    first = TrainResult({k: v[0] for k, v in batch.params_start.items()},
                        {k: v[0] for k, v in batch.params_final.items()}, curve[0],
                        float(batch.loss_final[0]), np.asarray(batch.probs)[0])
    _check_result(cells[0], first)  # the seeds share every shape
    cell = cells[0]
    y = truth_table(cell.gate)[1].reshape(-1)
    probs = np.asarray(batch.probs, dtype=np.float64).reshape(len(cells), -1)
    preds = (probs > 0.5).astype(int)
    correct = preds == y
    curves = curve.astype(np.float64, copy=False)
    loss_final = np.asarray(batch.loss_final, dtype=np.float64)
    finite = (np.isfinite(curves).all(axis=1) & np.isfinite(loss_final)
              & np.logical_and.reduce([np.isfinite(v.reshape(len(cells), -1)).all(axis=1)
                                       for v in batch.params_final.values()]))
    init = {k: np.asarray(v, dtype=np.float64).tolist() for k, v in batch.params_start.items()}
    final = {k: np.asarray(v, dtype=np.float64).tolist() for k, v in batch.params_final.items()}
    probs_l, preds_l = probs.tolist(), preds.tolist()
    accuracy, learned = correct.mean(axis=1).tolist(), correct.all(axis=1).tolist()
    hparams = (None if batch.hparams is None else
               {k: float(v) for k, v in batch.hparams.items()})
    n = updates(cell)
    records = []
    for i, cell in enumerate(cells):
        status, message, epoch = Status.OK, "", None
        if not finite[i]:
            diverged = divergence(TrainResult({}, {k: v[i] for k, v in
                                                   batch.params_final.items()},
                                              curves[i], float(loss_final[i]), None), n)
            if diverged:
                status = Status.DIVERGED
                epoch, message = diverged
        records.append(Record.for_cell(
            cell, status, message, backend_version=version, diverged_epoch=epoch,
            params_init={k: v[i] for k, v in init.items()},
            params_final={k: v[i] for k, v in final.items()},
            probs=probs_l[i], preds=preds_l[i], accuracy=accuracy[i], learned=learned[i],
            loss_final=float(loss_final[i]), loss_curve=curves[i], seconds=seconds,
            info={**batch.info, "batched": len(cells)},
            hparams_used=None if hparams is None else dict(hparams)))
    return records


def pack_records(records: list[Record]) -> tuple[dict, bytes]:
    """A batch's records as one protocol message and its payload: loss
    curves held as numpy arrays travel as one block of little-endian
    float64 bytes (exact, NaN included, and far cheaper than JSON numbers
    for 10,000 seeds), each record's length in ``curve_lengths``."""
    dicts, lengths, blocks = [], [], []
    for record in records:
        d = record.to_dict()
        if isinstance(record.loss_curve, np.ndarray):
            blocks.append(np.ascontiguousarray(record.loss_curve, dtype="<f8").tobytes())
            lengths.append(len(record.loss_curve))
            d = {**d, "loss_curve": None}
        else:
            lengths.append(-1)
        dicts.append(d)
    return {"records": dicts, "curve_lengths": lengths}, b"".join(blocks)


def unpack_records(msg: dict) -> list[Record]:
    """``pack_records``'s inverse, from the message with its payload
    (``msg["payload"]``, as engine.Frames hands it over): records
    whose packed curves are read-only float64 arrays."""
    flat = np.frombuffer(msg.get("payload", b""), dtype="<f8")
    out, at = [], 0
    for d, n in zip(msg["records"], msg["curve_lengths"]):
        record = Record.from_dict(d)
        if n >= 0:
            record = dataclasses.replace(record, loss_curve=flat[at:at + n])
            at += n
        out.append(record)
    return out


def gradients(name: str, request: dict) -> list[dict]:
    """The raw level's loss and autodiff gradient at each of the points
    ``harness.gradcheck.points(**request)``, as plain data for the parent,
    which judges them: ``{"loss", "grad"}`` or ``{"error"}`` per point."""
    from harness.gradcheck import points

    fn = registry.backend(name).loss_and_grad
    out = []
    for spec in (p.spec for p in points(**request)):
        try:
            loss, grad = fn(spec)
            out.append({"loss": float(loss),
                        "grad": {k: np.asarray(v, np.float64).tolist() for k, v in grad.items()}})
        except Exception as exc:  # noqa: BLE001 - a failing backend is a row, not a crash
            out.append({"error": f"{type(exc).__name__}: {exc}".splitlines()[0][:200]})
    return out
