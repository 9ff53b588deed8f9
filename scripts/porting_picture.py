"""Regenerate docs/porting.png, the picture in the README: the porting
question answered for one matrix.

Runs the optimizer level (the notebook's compile/optimizer idiom) of the
reference, PyTorch, Keras on TensorFlow, JAX, Keras on JAX and Keras on
PyTorch over every gate and both archs at float64, seed 0, and draws, for
each pair of frameworks, the largest deviation between their final
parameters (diagonal: each against the oracle), with the report's own
figure code.  Takes a few minutes on 2 cores.

    .venv/bin/python scripts/porting_picture.py [--out docs/porting.png]
"""
from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from harness import analysis  # noqa: E402
from harness.report.figures import fig_backend_agreement, pyplot  # noqa: E402
from harness.results import load_run  # noqa: E402

BACKENDS = "numpy,torch,tensorflow,jax,keras-jax,keras-torch"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(ROOT / "docs" / "porting.png"))
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        run = Path(tmp) / "run"
        subprocess.run([sys.executable, "-m", "harness", "run", "--backends", BACKENDS,
                        "--levels", "optimizer", "--dtype", "float64", "--out", str(run),
                        "--quiet", "--no-report"], cwd=ROOT, check=True,
                       stdout=subprocess.DEVNULL)
        _, records = load_run(run)
    agreement = analysis.backend_agreement(records, level="optimizer")
    plt = pyplot()
    fig = fig_backend_agreement(plt, agreement, "optimizer level, float64, 14 cells: largest "
                                "params_final deviation\nbetween frameworks (diagonal: vs the "
                                "float64 oracle)")
    fig.savefig(args.out, dpi=110)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
