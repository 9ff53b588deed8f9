"""--batch-seeds: batched records against per-seed ones, the batched oracle
against the per-seed oracle, and the run's plumbing.

The cases come from each backend's declared ``BATCHED`` levels (and
``BATCH_BOUNDS``, harness.contract): a batched level is bit-identical to
its per-seed cells unless the backend declares a measured bound, and then
it must stay within it.  Samples: a multi-layer xor at float64 (1000 steps,
sgd), a single-layer cell at float32, and a recipe (adam, batch size 1,
mean) at float64, five seeds each.
"""
import dataclasses
import json

import numpy as np
import pytest

from harness import oracle, registry
from harness.compare import relative_deviation
from harness.contract import ContractError, check
from harness.tasks import BatchSpec

from conftest import cached_batch, cached_run, make_cell, require

SEEDS = range(5)
SAMPLES = {
    "multi-xor-float64": dict(arch="multi", gate="xor", dtype="float64"),
    "single-nand-float32": dict(arch="single", gate="nand", dtype="float32"),
    "recipe-adam-online-mean": dict(arch="multi", gate="or", dtype="float64", epochs=200,
                                    optimizer="adam", lr=0.05, batch_size=1, reduction="mean"),
    # The other modes' sample: a multi-layer cell short enough for eager
    # JAX and TensorFlow (one op dispatch at a time: about 10 ms an update).
    "multi-xor-float64-short": dict(arch="multi", gate="xor", dtype="float64", epochs=100),
}
# What a batched record must reproduce of its per-seed record (the verdict
# fields follow from these and are compared too).
COMPARED = ("status", "params_init", "params_final", "probs", "preds", "loss_final",
            "loss_curve", "learned", "hparams_used", "oracle_dev", "agrees", "learned_epoch",
            "explained_by")


# A batched level runs in every mode its level has: its default mode is
# checked on the first samples, the other modes on the second.
DEFAULT_MODE_SAMPLES = ("multi-xor-float64", "single-nand-float32", "recipe-adam-online-mean")
MODE_SAMPLES = ("multi-xor-float64-short", "single-nand-float32")


def _cases():
    for name in registry.BACKENDS:
        spec = registry.backend(name)
        for level in spec.batched:
            for sample in DEFAULT_MODE_SAMPLES:
                yield pytest.param(name, level, sample, None, id=f"{name}-{level}-{sample}")
            for mode in spec.modes[level][1:]:
                for sample in MODE_SAMPLES:
                    yield pytest.param(name, level, sample, mode,
                                       id=f"{name}-{level}-{mode}-{sample}")


def _as_float(value):
    if isinstance(value, dict):
        return {k: np.asarray(v, np.float64) for k, v in value.items()}
    return np.asarray(value, np.float64)


@pytest.mark.parametrize("backend,level,sample,mode", list(_cases()))
def test_batched_records_match_per_seed(backend, level, sample, mode):
    require(backend)
    spec = registry.backend(backend)
    cells = tuple(make_cell(backend, level, seed=s, mode=mode, **SAMPLES[sample]) for s in SEEDS)
    if spec.gap(level, cells[0].arch, cells[0].mode) or spec.recipe_gap(cells[0]):
        pytest.skip(f"{backend} {level} does not run {sample}")
    if spec.batch_gap(cells[0]):
        pytest.skip(f"{backend} {level} runs {sample} per seed: {spec.batch_gap(cells[0])}")
    batched = cached_batch(cells)
    assert [r.cell for r in batched] == list(cells)
    bound = spec.batch_bound(level, cells[0].mode, cells[0].dtype)
    for cell, got in zip(cells, batched):
        want = cached_run(cell)
        assert got.status == "ok", got.message
        assert got.info.get("batched") == len(cells)
        assert got.agrees is not None or got.unjudged  # every batched record is judged
        if bound is None:
            for field in COMPARED:
                a, b = getattr(got, field), getattr(want, field)
                if field in ("loss_curve", "probs"):
                    a, b = list(map(float, a)), list(map(float, b))
                assert json.dumps(a) == json.dumps(b), f"seed {cell.seed}: {field} differs"
        else:
            dev = max(relative_deviation(got.params_final, want.params_final),
                      float(np.max(np.abs(_as_float(got.loss_curve) - _as_float(want.loss_curve))
                                   / np.maximum(np.abs(_as_float(want.loss_curve)), 1.0))))
            assert dev <= bound, f"seed {cell.seed}: {dev:.2e} > declared {bound:.1e}"
            assert got.agrees == want.agrees


def test_batched_numpy_is_per_seed_numpy_bit_for_bit_for_seeds_0_to_19():
    """The issue's must-show: 20 seeds of the multi-layer xor cell, one batch,
    every record's numbers the per-seed record's bits."""
    cells = tuple(make_cell("numpy", "raw", "multi", "xor", seed=s, dtype="float32")
                  for s in range(20))
    for cell, got in zip(cells, cached_batch(cells)):
        want = cached_run(cell)
        assert got.info["batched"] == 20 and got.agrees is True
        for field in COMPARED:
            a, b = getattr(got, field), getattr(want, field)
            if field in ("loss_curve", "probs"):
                a, b = list(map(float, a)), list(map(float, b))
            assert json.dumps(a) == json.dumps(b), f"seed {cell.seed}: {field} differs"


def test_batched_oracle_is_the_per_seed_oracle_bit_for_bit():
    """The oracle solves problems with a leading batch axis; one problem
    alone and twenty together give the same bits."""
    records = [cached_run(make_cell("numpy", "raw", "multi", "xor", seed=s, dtype="float64"))
               for s in range(20)]
    problems = [oracle.Problem.of(r) for r in records]
    together = oracle._solve_group(problems)
    for p, t in zip(problems, together):
        alone = oracle._solve_group([p])[0]
        for k in alone.params_final:
            assert np.array_equal(alone.params_final[k], t.params_final[k])
        assert np.array_equal(alone.loss_curve, t.loss_curve)
        assert alone.loss_final == t.loss_final
        assert np.array_equal(alone.all_right, t.all_right)


def test_a_batch_s_records_are_those_of_its_split_results():
    """records_from_batch converts each field once for the whole batch; its
    records must be record_from_result's of each seed (split()), diverged
    seeds (a NaN loss, an infinite final loss, a NaN parameter) included."""
    from harness.execution.child import record_from_result, records_from_batch

    cells = [make_cell("numpy", "raw", "multi", "xor", seed=s, dtype="float32") for s in range(5)]
    spec = BatchSpec.from_cells(cells)
    batch = registry.backend("numpy").train_batch(spec)
    curve = np.array(batch.loss_curve)
    curve[1, 7] = np.nan
    final = {k: np.array(v) for k, v in batch.params_final.items()}
    final["b2"][3] = np.nan
    loss_final = np.array(batch.loss_final)
    loss_final[2] = np.inf
    batch = dataclasses.replace(batch, loss_curve=curve, params_final=final,
                                loss_final=loss_final, info={"backend": "numpy"},
                                hparams={"lr": np.float32(0.5)})
    got = records_from_batch(cells, "1.23.5", batch, 0.25)
    want = []
    for cell, result in zip(cells, batch.split()):
        result.info["batched"] = len(cells)
        want.append(record_from_result(cell, "1.23.5", result, 0.25))
    assert [r.status.value for r in got] == ["ok", "diverged", "diverged", "diverged", "ok"]
    for a, b in zip(got, want):
        da, db = a.to_dict(), b.to_dict()
        assert da.keys() == db.keys()
        for k in da:
            x, y = da[k], db[k]
            if isinstance(x, np.ndarray):
                assert x.dtype == y.dtype and np.array_equal(x, y, equal_nan=True), k
            else:
                assert json.dumps(x) == json.dumps(y) and type(x) is type(y), k


def test_batch_spec_refuses_cells_that_differ_beyond_the_seed():
    cells = [make_cell("numpy", "raw", "single", "and", seed=0),
             make_cell("numpy", "raw", "single", "or", seed=1)]
    with pytest.raises(ValueError, match="seed only"):
        BatchSpec.from_cells(cells)


def test_contract_checks_batched_declarations():
    import types

    def mod(**extra):
        m = types.ModuleType("fake_backend")
        m.NAME, m.IMPORTS, m.UNSUPPORTED = "fake", ("numpy",), {"module": "no", "optimizer": "no",
                                                                "custom": "no"}
        m.TRAINERS = {"raw": lambda spec: None}
        m.loss_and_grad = lambda spec: None
        m.framework_version = lambda: "0"
        for k, v in extra.items():
            setattr(m, k, v)
        return m

    assert check("fake", mod(BATCHED={"raw": len})).batched["raw"] is len
    with pytest.raises(ContractError, match="BATCHED names level 'module'"):
        check("fake", mod(BATCHED={"module": len}))
    with pytest.raises(ContractError, match="BATCH_BOUNDS"):
        check("fake", mod(BATCHED={"raw": len}, BATCH_BOUNDS={"raw": (0.0, "x")}))
    with pytest.raises(ContractError, match="BATCH_BOUNDS"):
        check("fake", mod(BATCHED={"raw": len},
                          BATCH_BOUNDS={"raw": ({"float64": 1e-12}, "no float32 bound")}))
    with pytest.raises(ContractError, match="BATCH_BOUNDS"):
        check("fake", mod(BATCHED={"raw": len},
                          BATCH_BOUNDS={("raw", "graph"): ({"float64": 1e-12, "float32": 1e-6},
                                                           "a mode raw does not have")}))
    with pytest.raises(ContractError, match="did you mean BATCHED"):
        check("fake", mod(BATCHD={"raw": len}))


# ------------------------------------------------------------------ the run

def test_batch_seeds_run_records_say_so_and_match_a_per_seed_run(tmp_path):
    """Through the CLI: batched where a backend can (numpy raw), per seed
    elsewhere (numpy module), saying which and why; the records of both
    runs are the same bits; a batch that crashes its worker (the faulty
    backend's xor) costs each of its cells an error record, and the run
    goes on."""
    from test_engine import by_cell, harness, records

    common = ["--backends", "numpy,faulty", "--levels", "raw,module", "--archs", "single",
              "--gates", "and,xor", "--seeds", "0-3", "--dtype", "float64", "--no-report"]
    a = harness("run", *common, "--out", str(tmp_path / "a"))
    b = harness("run", *common, "--batch-seeds", "--out", str(tmp_path / "b"))
    assert a.returncode == b.returncode == 1, b.stderr  # the faulty xor cells are errors
    assert ("--batch-seeds: 16 cells in 4 batch(es); per seed: numpy module (numpy has no "
            "batched form of level 'module'); faulty module (faulty has no batched form of "
            "level 'module')") in b.stdout
    ra, rb = by_cell(records(tmp_path / "a")), by_cell(records(tmp_path / "b"))
    assert ra.keys() == rb.keys()
    for key, rec in rb.items():
        batched = key[1] == "raw"
        assert rec["info"].get("batched") == (4 if batched else None), key
        if key[0] == "faulty" and key[3] == "xor":
            assert rec["status"] == "error" and "SIGSEGV" in rec["message"], rec["message"]
            continue
        for field in ("status", "params_final", "loss_curve", "probs", "agrees", "oracle_dev"):
            assert rec[field] == ra[key][field], (key, field)
    man = json.loads((tmp_path / "b" / "manifest.json").read_text())
    assert man["timing"]["batching"]["batches"] == 4


def test_batch_seeds_must_be_true_or_false(tmp_path):
    from test_engine import harness

    cfg = tmp_path / "c.toml"
    cfg.write_text('batch_seeds = "yes"\n')
    r = harness("run", "--config", str(cfg), "--out", str(tmp_path / "x"))
    assert r.returncode == 2 and r.stderr.strip() == (
        "harness: error: Invalid batch_seeds 'yes'. Expected true or false."), r.stderr
    assert not (tmp_path / "x").exists()


def test_keras_torch_float64_cells_run_per_seed():
    # keras-torch computes float64 matmuls in float32 (variant
    # float32-matmul); its batched raw level's bmm does not sum float32
    # products as the per-seed mm does (on an AVX2 EPYC past 4 hidden units,
    # on an AVX-512 Xeon at any width): batch_gap keeps float64 cells per
    # seed, float32 cells batch.
    require("keras-torch")
    spec = registry.backend("keras-torch")
    cells = tuple(make_cell("keras-torch", "raw", "multi", "nand", seed=s, hidden=8)
                  for s in range(2))
    assert "bmm" in spec.batch_gap(cells[0])
    assert "bmm" in spec.batch_gap(make_cell("keras-torch", "raw", "multi", "nand", hidden=2))
    assert spec.batch_gap(make_cell("keras-torch", "raw", "multi", "nand", hidden=8,
                                    dtype="float32")) is None
    # Why: trained as a batch anyway, they are not the per-seed records.
    for cell, batched in zip(cells, cached_batch(cells)):
        per_seed = cached_run(cell)
        assert per_seed.agrees is False and batched.agrees is False
        assert relative_deviation(batched.params_final, per_seed.params_final) > 1e-9
