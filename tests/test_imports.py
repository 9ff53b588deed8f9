"""Importing the harness and every backend module imports no framework."""
import json
import subprocess
import sys
from pathlib import Path

from harness import registry

ROOT = Path(__file__).resolve().parent.parent
FRAMEWORKS = ["torch", "tensorflow", "keras", "mxnet", "chainer", "autograd", "jax", "matplotlib"]


def test_importing_harness_imports_no_framework():
    code = ("import json, sys, importlib; import harness, harness.cli, harness.runner, "
            "harness.registry, harness.results, harness.config, harness.text, harness.report, "
            "harness.execution.engine, harness.progress, harness.execution.worker, "
            "harness.execution.child, harness.contract, harness.resume, backends;"
            f"[importlib.import_module(m) for m in {list(registry.BACKENDS.values())!r}];"
            f"print(json.dumps([m for m in {FRAMEWORKS!r} if m in sys.modules]))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT,
                         check=True)
    assert json.loads(out.stdout) == []
