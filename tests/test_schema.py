"""The results schema: versions, migrations, and the same numbers as before.

``tests/data/schema1-run`` is a run folder written by the harness before
schema 2 (records with ``first_divergence``, manifest ``schema_version``
1), by the command in its manifest: every backend, every level, gates and,
xor and not, both archs, seed 0, float64, lr 0.1 (so that MXNet's float32
learning rate shows as a disagreement), 40 epochs.
"""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from harness import records as rec_mod
from harness import registry
from harness.records import SCHEMA_VERSION, Record, Status, upgrade
from harness.results import RunFolderError, load_run
from harness.tasks import Cell

from conftest import availability

ROOT = Path(__file__).resolve().parent.parent
OLD = ROOT / "tests" / "data" / "schema1-run"
COMPARED = ("status", "message", "params_init", "params_final", "probs", "loss_curve",
            "loss_final", "agrees", "oracle_dev", "tolerance", "first_departure", "departed",
            "learned_epoch", "info")


def harness(*args, cwd=ROOT):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", "harness", *args], capture_output=True,
                          text=True, cwd=cwd, env=env, timeout=900)


# The backends and levels there were when the folder was written (`all`
# meant these).
SCHEMA1_BACKENDS = "numpy,autograd,torch,tensorflow,mxnet,chainer"
SCHEMA1_LEVELS = "raw,module,optimizer,perceptron,perceptron-batch"


def run_args(man):
    """The `harness run` arguments of a manifest's command, without --out,
    with the backends and levels it ran spelled out."""
    args = man["command"][man["command"].index("run") + 1:]
    i = args.index("--out")
    return args[:i] + args[i + 2:] + ["--backends", SCHEMA1_BACKENDS, "--levels", SCHEMA1_LEVELS]


def require_all():
    missing = [b for b in SCHEMA1_BACKENDS.split(",") if not availability(b).ok]
    if missing:
        pytest.skip(f"the schema-1 run used every framework; missing here: {', '.join(missing)}")


@pytest.fixture(scope="module")
def rerun(tmp_path_factory):
    """The checked-in folder's command, run again by this checkout."""
    man = json.loads((OLD / "manifest.json").read_text())
    out = tmp_path_factory.mktemp("rerun") / "run"
    r = harness("run", *run_args(man), "--out", str(out))
    assert r.returncode == 0, r.stderr
    return out


def test_schema1_folder_loads_upgraded():
    man, recs = load_run(OLD)
    assert man["schema_version"] == 1 and len(recs) == 180
    assert all(isinstance(r.status, Status) for r in recs)
    bad = [r for r in recs if r.agrees is False]
    assert bad and all(r.backend == "mxnet" and r.level == "optimizer" for r in bad)
    # The migration says how each disagreement departs.
    assert all(r.departed and r.departed[0] == "params_final" for r in bad)
    assert all(r.departed == [] for r in recs if r.agrees)


def explained(fields, fresh):
    """The fields to compare with a fresh record: all but learned_epoch for
    a cell schema 4's oracle explains by a variant (MXNet's lr 0.1 held in
    float32, here): it departs as before (agrees false, same oracle_dev),
    and its learned_epoch now comes from the variant that reproduces it,
    where the schema-1 verdict had none."""
    return [f for f in fields if not (f == "learned_epoch" and fresh.explained_by)]


# Fields that hold computed floats: bit-identical on a machine that computes
# as the recording one did, else within the float64 tolerance.
FLOAT_FIELDS = ("params_final", "probs", "loss_curve", "loss_final", "oracle_dev")


def same_arithmetic(old: dict, new: dict) -> bool:
    """Whether this machine computes the numpy reference's bits as the one
    that wrote the folder did.  The bits of a 2-hidden-unit matmul and of
    exp depend on the CPU (OpenBLAS and numpy pick kernels by the
    instruction set: AVX2 vs AVX-512, FMA), so across machines "the same
    numbers" can only mean the same to within round-off."""
    return all(old[c].params_final == new[c].params_final and old[c].loss_curve == new[c].loss_curve
               for c in old if c.backend == "numpy" and old[c].status == "ok")


def _close(a, b, tol: float) -> bool:
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(_close(a[k], b[k], tol) for k in a)
    if a is None or b is None:
        return a is b
    x, y = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return x.shape == y.shape and bool(np.all(np.abs(x - y) <= tol * np.maximum(np.abs(y), 1.0)))


def assert_same(a, b, exact: bool) -> None:
    """Record a (from the checked-in folder) holds record b's numbers: bit for
    bit where this machine computes as the recording one did (``exact``),
    else within the float64 tolerance; every other field exactly."""
    for field in explained(COMPARED, b):
        if exact or field not in FLOAT_FIELDS or a.status != "ok":
            assert getattr(a, field) == getattr(b, field), (a.cell, field)
        elif field == "oracle_dev":
            # a deviation of round-off size: the same order, not the same bits
            assert (a.oracle_dev <= a.tolerance) == (b.oracle_dev <= b.tolerance), a.cell
        else:
            assert _close(getattr(a, field), getattr(b, field), 1e-9), (a.cell, field)


def test_same_numbers_as_the_schema1_run(rerun):
    _, old = load_run(OLD)
    man, new = load_run(rerun)
    assert man["schema_version"] == SCHEMA_VERSION > 1
    old = {r.cell: r for r in old}
    new = {r.cell: r for r in new}
    assert set(old) == set(new)
    exact = same_arithmetic(old, new)
    compared = 0
    for cell, a in old.items():
        if not availability(cell.backend).ok:
            continue  # recorded where the framework was installed, skipped here
        assert_same(a, new[cell], exact)
        compared += 1
    # numpy, the reference, is always there; with every framework, all 108 ok cells.
    missing = {c.backend for c in old if not availability(c.backend).ok}
    assert compared >= (50 if not missing else sum(c.backend == "numpy" for c in old)), missing


def test_schema1_folder_in_report_and_diff(tmp_path, rerun):
    pytest.importorskip("matplotlib")
    require_all()
    folder = tmp_path / "old"
    shutil.copytree(OLD, folder)
    r = harness("report", str(folder))
    assert r.returncode == 0, r.stderr
    assert (folder / "report.html").is_file()
    r = harness("diff", str(folder), str(rerun))
    assert r.returncode == 0, r.stdout + r.stderr
    assert "0 of 180 matched cells differ" in r.stdout


def test_schema1_folder_resumes(tmp_path, rerun):
    require_all()
    # Drop some records, as an interrupted run would have left them.
    folder = tmp_path / "old"
    shutil.copytree(OLD, folder)
    lines = (folder / "results.jsonl").read_text().splitlines(keepends=True)
    kept = [ln for ln in lines if json.loads(ln)["backend"] != "numpy"]
    (folder / "results.jsonl").write_text("".join(kept))
    r = harness("run", "--resume", str(folder), "--quiet", "--no-report")
    assert r.returncode == 0, r.stderr
    man, recs = load_run(folder)
    assert man["schema_version"] == SCHEMA_VERSION and len(recs) == 180
    assert "first_divergence" not in (folder / "results.jsonl").read_text()
    _, fresh = load_run(rerun)
    fresh = {r.cell: r for r in fresh}
    exact = same_arithmetic({r.cell: r for r in load_run(OLD)[1]}, fresh)
    for r in recs:
        # The resumed numpy records were computed here, the others where the
        # folder was recorded.
        assert_same(r, fresh[r.cell], exact or r.backend == "numpy")


def test_migrations_cover_every_version():
    assert set(rec_mod.MIGRATIONS) == set(range(1, SCHEMA_VERSION))


def test_v1_record_migration():
    base = {"backend": "torch", "level": "raw", "arch": "single", "gate": "and", "seed": 0,
            "dtype": "float32", "init": "normal", "init_scale": 1.0, "lr": 0.5, "epochs": 100,
            "hidden": None, "status": "ok", "oracle_dev": 2e-3, "tolerance": 1e-4,
            "agrees": False, "first_divergence": None}
    new = upgrade(base, 1)
    assert "first_divergence" not in new and new["first_departure"] is None
    # Parameters left their band while the loss curve stayed in its own.
    assert new["departed"] == ["params_final"]
    both = upgrade({**base, "first_divergence": 7}, 1)
    assert both["departed"] == ["params_final", "loss_curve"] and both["first_departure"] == 7
    assert upgrade(new, 1) == new  # idempotent: a half-rewritten folder stays readable


def test_unknown_keys_are_refused(tmp_path):
    assert pytest.raises(ValueError, Record.from_dict, {"surprise": 1}).match("surprise")
    folder = tmp_path / "run"
    shutil.copytree(OLD, folder)
    lines = (folder / "results.jsonl").read_text().splitlines()
    extra = json.loads(lines[3])
    extra["surprise"] = 1
    lines[3] = json.dumps(extra)
    (folder / "results.jsonl").write_text("\n".join(lines) + "\n")
    with pytest.raises(RunFolderError, match=r"results.jsonl:4: .*'surprise'"):
        load_run(folder)


def test_newer_schema_is_refused(tmp_path):
    folder = tmp_path / "run"
    shutil.copytree(OLD, folder)
    man = json.loads((folder / "manifest.json").read_text())
    man["schema_version"] = SCHEMA_VERSION + 1
    (folder / "manifest.json").write_text(json.dumps(man))
    r = harness("report", str(folder))
    assert r.returncode == 2 and "newer harness" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1


def test_record_holds_its_cell():
    cell = Cell("numpy", "raw", "multi", "xor", 3, hidden=4)
    rec = Record.for_cell(cell, "ok")
    assert rec.cell is cell and rec.seed == 3 and rec.hidden == 4 and rec.epochs == 1000
    flat = rec.to_dict()
    assert list(flat)[:len(rec_mod.CELL_FIELDS)] == list(rec_mod.CELL_FIELDS)
    assert Record.from_dict(json.loads(json.dumps(flat))) == rec
    assert Cell("numpy", "raw", "single", "and", 0, hidden=4).hidden is None


def test_one_cell_order():
    cells = [Cell(b, lv, "single", "and", 0) for b in ("zzz-extra", "chainer", "numpy")
             for lv in ("optimizer", "raw")]
    ordered = sorted(cells, key=registry.cell_order)
    assert [(c.backend, c.level) for c in ordered] == [
        ("numpy", "raw"), ("numpy", "optimizer"), ("chainer", "raw"), ("chainer", "optimizer"),
        ("zzz-extra", "raw"), ("zzz-extra", "optimizer")]
