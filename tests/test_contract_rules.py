"""The backend contract (harness/contract.py) is checked when a backend is
looked up: a module that breaks a rule is refused with one line naming the
backend and the rule, before anything runs or is written."""
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from harness import contract, registry

ROOT = Path(__file__).resolve().parent.parent

GOOD = '''
NAME = "mine"
IMPORTS = ("numpy",)
UNSUPPORTED = {"module": "no modules", "optimizer": "no optimizer", "custom": "no classes"}


def framework_version():
    return "1"


def train(spec):
    from backends import numpy_backend
    return numpy_backend.train_raw(spec)


def loss_and_grad(spec):
    from backends import numpy_backend
    return numpy_backend.loss_and_grad(spec)


TRAINERS = {"raw": train}
'''

# (what is broken, edit of GOOD, words the message must contain)
BROKEN = [
    ("wrong NAME", ('NAME = "mine"', 'NAME = "yours"'), "NAME is 'yours'"),
    ("no TRAINERS", ("TRAINERS = {", "_T = {"), "no TRAINERS"),
    ("declares LEVELS", ("TRAINERS = {", 'LEVELS = ("raw",)\nTRAINERS = {'), "LEVELS is derived"),
    ("unknown level", ('{"raw": train}', '{"raw": train, "fancy": train}'), "'fancy'"),
    ("level twice", ('{"raw": train}', '{"raw": train, "module": train}'),
     "both in TRAINERS and in UNSUPPORTED"),
    ("level missing", ('"module": "no modules", ', ""), "neither in TRAINERS nor in UNSUPPORTED"),
    ("raw without loss_and_grad", ("def loss_and_grad(spec)", "def _lag(spec)"),
     "loss_and_grad must be defined exactly when"),
    ("misspelt member", ("UNSUPPORTED = {", 'UNSUPORTED = {}\nUNSUPPORTED = {'),
     "did you mean UNSUPPORTED"),
    ("empty reason", ('"no optimizer"', '""'), "must be a sentence"),
    ("IMPORTS not a tuple", ('IMPORTS = ("numpy",)', 'IMPORTS = "numpy"'), "IMPORTS"),
    ("bad arch limit", ("TRAINERS = {", 'ARCH_LIMITS = {"raw": (("deep",), "why")}\nTRAINERS = {'),
     "ARCH_LIMITS['raw']"),
    ("import fails", ("NAME =", "import not_installed_anywhere\nNAME ="), "cannot be imported"),
]


def write(tmp_path, text, name="mine_backend"):
    (tmp_path / f"{name}.py").write_text(textwrap.dedent(text))
    return name


@pytest.fixture
def register(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(tmp_path))

    def _register(text):
        module = write(tmp_path, text)
        sys.modules.pop(module, None)
        monkeypatch.setitem(registry.BACKENDS, "mine", module)
        registry.backend.cache_clear()
        return module

    yield _register
    registry.backend.cache_clear()


def test_a_good_backend_passes(register):
    register(GOOD)
    spec = registry.backend("mine")
    assert spec.levels == ("raw",) and spec.gap("raw", "multi") is None
    assert spec.gap("module", "single") == "no modules"
    assert "no perceptron" in spec.gap("perceptron", "single")


@pytest.mark.parametrize("what,edit,words", BROKEN, ids=[b[0] for b in BROKEN])
def test_a_broken_rule_is_refused(register, what, edit, words):
    assert edit[0] in GOOD
    register(GOOD.replace(*edit))
    with pytest.raises(contract.ContractError) as exc:
        registry.backend("mine")
    message = str(exc.value)
    assert words in message and "'mine'" in message and "\n" not in message


def test_run_refuses_a_broken_backend_before_writing(tmp_path):
    write(tmp_path, GOOD.replace('NAME = "mine"', 'NAME = "yours"'))
    out = tmp_path / "out"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(tmp_path)]),
           "HARNESS_EXTRA_BACKENDS": "mine=mine_backend"}
    r = subprocess.run([sys.executable, "-m", "harness", "run", "--backends", "numpy,mine",
                        "--out", str(out)], capture_output=True, text=True, cwd=tmp_path, env=env,
                       timeout=300)
    assert r.returncode == 2
    assert r.stderr.count("\n") == 1 and "'mine'" in r.stderr and "NAME is 'yours'" in r.stderr
    assert "Traceback" not in r.stderr and not out.exists()
    # `harness list` still lists the others, and says which one is invalid.
    r = subprocess.run([sys.executable, "-m", "harness", "list"], capture_output=True, text=True,
                       cwd=tmp_path, env=env, timeout=300)
    assert r.returncode == 0 and "mine        invalid: " in r.stdout
