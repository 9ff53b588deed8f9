"""``harness gradcheck``: the notebook's autodiff numbers in every backend,
and a wrong gradient flagged."""
import numpy as np
import pytest

from harness import cli, gradcheck, registry
from harness.compare import tolerance

from conftest import require, require_in_process


@pytest.mark.parametrize("backend", list(registry.BACKENDS))
def test_notebook_numbers_in_every_backend(backend):
    require_in_process(backend)
    mod = registry.backend(backend)
    if mod.loss_and_grad is None:
        pytest.skip(f"{backend} has no raw level")
    point = gradcheck.points()[0]
    assert point.name == "notebook"
    loss, grad = mod.loss_and_grad(point.spec)
    assert abs(loss - 0.4740769841801066) <= tolerance("float64", 1)
    assert set(grad) == {"W", "b"}
    for g in grad.values():
        np.testing.assert_allclose(np.ravel(g), -0.37754067, rtol=0, atol=5e-9)


def test_gradcheck_passes_for_registered_backends(capsys):
    assert cli.main(["gradcheck"]) == 0
    out = capsys.readouterr().out
    assert "every backend agrees" in out or "no unexplained mismatch" in out
    # Each explained departure says so (Keras 3 on torch computes float64 matmuls in float32).
    assert all("known: " in line for line in out.splitlines() if " departs " in line)
    rows = [line.split() for line in out.splitlines() if line.split()[1:2] == ["notebook"]]
    assert rows and all(r[2].startswith("0.47407698418010") for r in rows)
    assert {r[0] for r in rows} >= {"oracle", "numpy"}


def test_gradcheck_float32_and_other_points(capsys):
    assert cli.main(["gradcheck", "--dtype", "float32", "--seed", "7", "--gate", "nand",
                     "--backends", "numpy"]) == 0
    out = capsys.readouterr().out
    assert "single nand seed 7" in out and "multi nand seed 7" in out and "float32" in out


def test_wrong_gradient_is_a_mismatch(monkeypatch, capsys):
    # Registered for this process and, through the variable, for its workers.
    monkeypatch.setitem(registry.BACKENDS, "badgrad", "tests.badgrad_backend")
    monkeypatch.setenv(registry.EXTRA_BACKENDS_VAR, "badgrad=tests.badgrad_backend")
    rows = gradcheck.check(["numpy", "badgrad"])
    bad = [r for r in rows if r.ok is False]
    assert bad and {r.backend for r in bad} == {"badgrad"}
    assert all(r.grad_err > tolerance("float64", 1) for r in bad)
    assert cli.main(["gradcheck", "--backends", "numpy,badgrad"]) == 1
    assert "MISMATCH" in capsys.readouterr().out


@pytest.mark.parametrize("args,needle", [
    (["--backends", "pytorch"], "'pytorch'"),
    (["--gate", "xorr"], "'xorr'"),
    (["--dtype", "float16"], "'float16'"),
    (["--seed", "x"], "'x'"),
])
def test_bad_input_exit_2(args, needle, capsys):
    assert cli.main(["gradcheck", *args]) == 2
    err = capsys.readouterr().err
    assert needle in err and len(err.strip().splitlines()) == 1
