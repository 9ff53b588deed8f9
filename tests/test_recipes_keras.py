"""Recipes on the keras-jax and keras-torch rows (the Keras code they share
with the tensorflow row: backends/keras_common.py), each in its own worker.

keras-jax, float64, compiled (jax.jit): Keras' optimizers depart from the
textbook exactly by the atoms ``departures`` names, and, unlike Keras on
TensorFlow, without float32 casts (JAX's cast of a Python float is exact).
keras-torch computes float64 matmuls in float32 (its ``known_departure``),
so its recipes are checked at float32: every family runs and reads back its
hyperparameters.  Single layer, ``and``, seed 0, 60 epochs.  Its float64
cells are pinned to the oracle variants that reproduce them
(``float32-matmul``, ``float32-row-loss``, ``float32-rescale-grad``): the
textbook misses them, the variant reproduces them, and each atom is needed.
"""
from dataclasses import replace as dataclass_replace

import numpy as np
import pytest

from harness import oracle, registry
from harness.compare import relative_deviation, tolerance
from harness.oracle import Problem, solve, verdict
from harness.tasks import OPTIMIZERS

from conftest import cached_run, make_cell, require


def run(backend, level, mode="default", dtype="float64", **kw):
    require(backend)
    kw.setdefault("epochs", 60)
    rec = cached_run(make_cell(backend, level, "single", "and", mode=mode, dtype=dtype, **kw))
    assert rec.status == "ok", rec.message
    return rec


JAX = [
    ("sgd", {"lr": 0.3}, None),
    ("momentum", {"lr": 0.3, "momentum": 0.9}, None),
    ("nesterov", {"lr": 0.3, "momentum": 0.9}, None),
    ("adam", {"lr": 0.3}, "eps-hat"),
    ("rmsprop", {"lr": 0.3}, "eps-inside-sqrt"),
    # Without a rule state, decoupled decay is L2 decay up to round-off.
    ("sgd", {"lr": 0.3, "weight_decay": 0.01}, None),
    ("momentum", {"lr": 0.3, "momentum": 0.9, "weight_decay": 0.01}, "decoupled-weight-decay"),
    ("adam", {"lr": 0.3, "weight_decay": 0.01}, "eps-hat+decoupled-weight-decay"),
]


@pytest.mark.parametrize("family,kw,atoms", JAX)
@pytest.mark.parametrize("level", ["optimizer", "custom"])
def test_keras_jax_optimizers(level, family, kw, atoms):
    rec = run("keras-jax", level, optimizer=family, **kw)
    if atoms is None:
        assert rec.agrees and rec.explained_by is None
    else:
        assert rec.agrees is False and rec.explained_by == atoms


@pytest.mark.parametrize("family", OPTIMIZERS)
@pytest.mark.parametrize("level", ["raw", "module"])
def test_keras_jax_hand_written_levels(level, family):
    if family != "rmsprop":
        # (RMSprop's normalized steps on 2-row means amplify round-off past
        # the float64 band after ~100 updates, the oracle's own formula too.)
        rec = run("keras-jax", level, optimizer=family, lr=0.3, weight_decay=0.01, batch_size=2,
                  reduction="mean")
        assert rec.agrees and len(rec.loss_curve) == 120
    rec = run("keras-jax", level, optimizer=family, lr=0.3, weight_decay=0.01, batch_size=3)
    assert rec.agrees and len(rec.loss_curve) == 120


def test_keras_jax_has_no_float32_casts():
    rec = run("keras-jax", "optimizer", optimizer="adam", lr=0.3)
    tol = tolerance("float64", 60)
    variant = solve([Problem.of(rec, ("eps-hat", "float32-casts"))])[0]
    assert relative_deviation(rec.params_final, variant.params_final) > tol


def test_keras_jax_batches_are_exact():
    # Each loss_curve entry is its batch's loss, not fit's running average.
    rec = run("keras-jax", "optimizer", optimizer="sgd", batch_size=3)
    assert rec.agrees and len(rec.loss_curve) == 120
    rec = run("keras-jax", "optimizer", optimizer="sgd", batch_size=2, reduction="mean")
    assert rec.agrees


def test_keras_jax_mean_over_three_rows_is_a_known_departure():
    for level in ("raw", "module"):
        rec = run("keras-jax", level, optimizer="sgd", batch_size=3, reduction="mean")
        known = registry.known_departure(rec.cell)
        assert (rec.agrees, known is None) == ((True, True) if level == "raw" else (False, False))


def test_keras_jax_defaults():
    rec = run("keras-jax", "optimizer", optimizer="adam", hparams="defaults")
    assert rec.hparams_used == {"lr": 0.5, "beta1": 0.9, "beta2": 0.999, "eps": 1e-7,
                                "weight_decay": 0.0}
    assert rec.explained_by == "eps-hat"


@pytest.mark.parametrize("family", OPTIMIZERS)
def test_keras_torch_runs_every_family(family):
    hp = {"sgd": {}, "momentum": {"momentum": 0.875}, "nesterov": {"momentum": 0.875},
          "adam": {"beta1": 0.875, "beta2": 0.9990234375, "eps": 0.00000762939453125},
          "rmsprop": {"rho": 0.875, "eps": 0.00000762939453125}}[family]
    for level in ("raw", "module", "optimizer"):
        rec = run("keras-torch", level, dtype="float32", optimizer=family, lr=0.125,
                  weight_decay=0.25, batch_size=2, **hp)
        assert rec.hparams_used == {"lr": 0.125, **hp, "weight_decay": 0.25}
        assert len(rec.loss_curve) == 120
        if family != "rmsprop":
            # RMSprop's normalized steps amplify float32 round-off beyond the
            # float32 band here (the tensorflow row's raw level too).
            assert rec.agrees or rec.explained_by, (level, rec.oracle_dev)


def explained_by(rec, atoms) -> bool:
    """Whether the oracle variant of ``atoms`` alone explains ``rec``."""
    textbook, variant = solve([Problem.of(rec), Problem.of(rec, atoms)])
    return verdict(rec, textbook, variant, atoms)["explained_by"] == "+".join(atoms)


@pytest.mark.parametrize("arch,gate", [("single", "nand"), ("multi", "xor")])
@pytest.mark.parametrize("level", ["raw", "module", "optimizer"])
def test_keras_torch_float64_is_float32_matmul(level, arch, gate):
    """Keras 3 on torch computes float64 matmuls (forward and autograd's
    backward) in float32: the textbook misses the cell (measured 2.1e-8
    single nand, 2.9e-9 multi xor, every level), the variant reproduces it
    (measured 0 and 8e-17).  The module and optimizer levels' loss, through
    BinaryCrossentropy's float32 mean, needs float32-row-loss too."""
    require("keras-torch")
    require_measured_kernel(2)
    rec = cached_run(make_cell("keras-torch", level, arch, gate))
    assert rec.status == "ok", rec.message
    atoms = registry.departures(rec.cell)
    want = ("float32-matmul",) if level == "raw" else ("float32-matmul", "float32-row-loss")
    assert atoms == want
    assert rec.agrees is False and rec.oracle_dev > rec.tolerance
    assert rec.explained_by == "+".join(atoms), (rec.oracle_dev, rec.departed)
    variant = solve([Problem.of(rec, atoms)])[0]
    assert relative_deviation(rec.params_final, variant.params_final) <= 1e-12
    if level != "raw":
        # Without the row loss's rounding the parameters agree, the curve does not.
        alone = solve([Problem.of(rec, ("float32-matmul",))])[0]
        assert relative_deviation(rec.params_final, alone.params_final) <= 1e-12
        assert not explained_by(rec, ("float32-matmul",))
        assert not explained_by(rec, ("float32-row-loss",))


def test_keras_torch_float64_mean_is_float32_rescale_grad():
    """A mean over 3 rows: Keras' ops.divide_no_nan divides the loss in
    float32, so the gradient is scaled by float32(1 / 3)."""
    require("keras-torch")
    rec = cached_run(make_cell("keras-torch", "module", "single", "nand", epochs=60,
                               batch_size=3, reduction="mean"))
    assert rec.status == "ok", rec.message
    assert rec.agrees is False
    assert rec.explained_by == "float32-matmul+float32-row-loss+float32-rescale-grad"
    assert not explained_by(rec, ("float32-matmul", "float32-row-loss"))


def test_keras_torch_float32_matmul_is_measured_up_to_sixteen_hidden_units():
    # torch's summation orders are measured for inner axes up to 16 (and a
    # truth table's rows): not named past them, the known departure remains.
    narrow = make_cell("keras-torch", "raw", "multi", "xor", hidden=4)
    wide = make_cell("keras-torch", "raw", "multi", "xor", hidden=16)
    wider = make_cell("keras-torch", "raw", "multi", "xor", hidden=17)
    assert registry.departures(narrow) == ("float32-matmul",)
    assert registry.departures(wide) == ("float32-matmul",)
    assert registry.departures(wider) == ()
    assert registry.known_departure(wider) and registry.known_departure(narrow)
    assert registry.departures(make_cell("keras-torch", "raw", "single", "nand",
                                         dtype="float32")) == ()


def require_measured_kernel(hidden: int) -> str:
    """This CPU's float32 matmul kernel (keras_torch_backend.sgemm_kernel),
    or a skip where the oracle's float32-matmul variant has no orders
    measured on it up to ``hidden`` units: there its cells stay
    unexplained in a run, which is the finding."""
    pytest.importorskip("torch")
    from backends import keras_torch_backend

    kernel = keras_torch_backend.sgemm_kernel()
    if not oracle.float32_orders_measured(kernel, hidden):
        pytest.skip(f"float32-matmul's orders are not measured on this CPU's kernel ({kernel}) "
                    f"at {hidden} hidden units")
    return kernel


def _in_order_float32(a, b, **_):
    """The textbook float32 product: each product rounded, added in order
    along the inner axis, no fused multiply-add (the variant up to 4 hidden
    units, and for 1 row at any width)."""
    a, b = np.asarray(a).astype(np.float32), np.asarray(b).astype(np.float32)
    out = a[..., :, 0:1] * b[..., 0:1, :]
    for i in range(1, a.shape[-1]):
        out = out + a[..., :, i:i + 1] * b[..., i:i + 1, :]
    return out.astype(np.float64)


@pytest.mark.parametrize("level,hidden", [("raw", 6), ("module", 12)])
def test_keras_torch_float32_matmul_past_four_hidden_units(level, hidden, monkeypatch):
    """Past 4 hidden units torch sums the output layer's products in lanes
    (and, from 12, the first layer's with fused multiply-adds): the variant
    reproduces the cell, the textbook misses it and so does the in-order
    float32 sum the variant was up to 4 hidden units (measured at hidden 6
    and 12, multi xor seed 0: ~1e-7 from both, ~2e-16 from the variant)."""
    require("keras-torch")
    require_measured_kernel(hidden)
    rec = cached_run(make_cell("keras-torch", level, "multi", "xor", hidden=hidden))
    assert rec.status == "ok", rec.message
    atoms = registry.departures(rec.cell)
    assert "float32-matmul" in atoms
    assert rec.agrees is False and rec.oracle_dev > rec.tolerance
    assert rec.explained_by == "+".join(atoms), (rec.oracle_dev, rec.departed)
    variant = solve([Problem.of(rec, atoms)])[0]
    assert relative_deviation(rec.params_final, variant.params_final) <= 1e-12
    monkeypatch.setattr(oracle, "_matmul_float32", _in_order_float32)
    monkeypatch.setattr(oracle, "_CACHE", {})
    in_order = solve([Problem.of(rec, atoms)])[0]
    assert relative_deviation(rec.params_final, in_order.params_final) > 1e-9


@pytest.mark.parametrize("kernel", sorted(oracle.FLOAT32_KERNELS))
def test_float32_matmul_orders_are_torchs(kernel):
    """``_matmul_float32`` against torch's float32 ``mm`` bit for bit, on
    every product the harness's passes take (rows 1..4, hidden up to the
    kernel's measured width; transposed operands as autograd passes them),
    from fresh float32 tensors as Keras' casts give them, on the kernel this
    CPU has (torch 2.13's CPU wheel, MKL 2024.2; AVX2 on an AMD EPYC,
    AVX-512 on an Intel Xeon).  The other kernel's orders miss torch here."""
    torch = pytest.importorskip("torch")
    if require_measured_kernel(1) != kernel:
        pytest.skip(f"this CPU's kernel is not {kernel}")
    rng = np.random.default_rng(0)

    def mm(a, b, ta=False, tb=False):
        a, b = (torch.tensor(v, dtype=torch.float32) for v in (a, b))
        return torch.mm(a.t() if ta else a, b.t() if tb else b).numpy().astype(np.float64)

    def ours(a, b, ta=False):
        return oracle._matmul_float32(a, b, kernel=kernel, ta=ta)
    widest = oracle.FLOAT32_KERNELS[kernel]
    for hidden in sorted({h for h in (1, 2, 3, 4, 5, 8, 9, 11, 12, 16) if h <= widest}):
        for rows in range(1, 5):
            x, w1 = rng.normal(size=(rows, 2)), rng.normal(size=(8, 2, hidden))
            h, w2 = rng.uniform(size=(8, rows, hidden)), rng.normal(size=(8, hidden, 1))
            dz, da = rng.normal(size=(8, rows, 1)), rng.normal(size=(8, rows, hidden))
            cases = [(ours(x, w1), [mm(x, w) for w in w1]),
                     (ours(h, w2), [mm(a, w) for a, w in zip(h, w2)]),
                     (ours(dz, np.swapaxes(w2, 1, 2)), [mm(g, w, tb=True) for g, w in zip(dz, w2)]),
                     (ours(x.T, da, ta=True), [mm(x, d, ta=True) for d in da]),
                     (ours(np.swapaxes(h, 1, 2), dz, ta=True),
                      [mm(a, g, ta=True) for a, g in zip(h, dz)])]
            for got, want in cases:
                assert np.array_equal(got, np.stack(want)), (hidden, rows)
    # Where the orders differ from the in-order sum: on AVX2, 4 rows times a
    # column of 5 or more, 4 rows times 12 columns or more; on AVX-512, two
    # products already (fused multiply-add).
    if kernel == "mkl-avx2":
        h, w2 = rng.uniform(size=(64, 4, 6)), rng.normal(size=(64, 6, 1))
        assert not np.array_equal(_in_order_float32(h, w2), ours(h, w2))
        x, w1 = rng.normal(size=(4, 2)), rng.normal(size=(64, 2, 12))
        assert not np.array_equal(_in_order_float32(x, w1), ours(x, w1))
    else:
        h, w2 = rng.uniform(size=(64, 4, 2)), rng.normal(size=(64, 2, 1))
        assert not np.array_equal(_in_order_float32(h, w2), ours(h, w2))
    other = next(k for k in oracle.FLOAT32_KERNELS if k != kernel)
    h, w2 = rng.uniform(size=(64, 4, 4)), rng.normal(size=(64, 4, 1))
    assert not np.array_equal(oracle._matmul_float32(h, w2, kernel=other), ours(h, w2))


def test_float32_matmul_kernel_is_the_records():
    """keras-torch records name their CPU's kernel (``info["sgemm"]``), and
    the variant takes that kernel's orders: a record written before kernels
    were recorded is judged with the AVX2 orders (all there were), one on a
    kernel whose orders are not measured (or past its measured width) gets
    no variant and stays unexplained."""
    require("keras-torch")
    from backends import keras_torch_backend

    rec = cached_run(make_cell("keras-torch", "raw", "multi", "xor"))
    kernel = keras_torch_backend.sgemm_kernel()
    assert rec.info["sgemm"] == kernel
    atoms = registry.departures(rec.cell)
    assert Problem.of(rec, atoms).kernel == kernel and Problem.of(rec).kernel == ""
    old = dataclass_replace(rec, info={"threads": 1})
    assert Problem.of(old, atoms).kernel == "mkl-avx2" and oracle.departures(old) == atoms
    for name in oracle.FLOAT32_KERNELS:
        other = dataclass_replace(rec, info={**rec.info, "sgemm": name})
        assert oracle.departures(other) == atoms
    unknown = dataclass_replace(rec, info={**rec.info, "sgemm": "unmeasured:0123456789abcdef"})
    assert oracle.departures(unknown) == ()
    judged = oracle.judge(unknown)
    assert judged.agrees is False and judged.explained_by is None
    wide = dataclass_replace(rec, cell=dataclass_replace(rec.cell, hidden=8),
                             info={**rec.info, "sgemm": "mkl-avx512"})
    assert oracle.departures(wide) == ()
    # The two kernels' variants are different trajectories of this cell.
    a, b = solve([Problem.of(dataclass_replace(rec, info={**rec.info, "sgemm": k}), atoms)
                  for k in sorted(oracle.FLOAT32_KERNELS)])
    assert relative_deviation(a.params_final, b.params_final) > 0
