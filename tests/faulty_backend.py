"""A test-only backend that misbehaves on purpose, chosen by gate; every
other cell is trained by the numpy reference, so its numbers are real.

* ``xor``: segfaults (a genuine read of address 0) half-way through training.
* ``xnor``: the process exits with status 3 half-way through training.
* ``nand``: hangs (for --timeout and Ctrl-C); writes its pid to
  $FAULTY_PIDFILE first, so a test can check the worker was ended.
* ``nor``: not deterministic: noise from os.urandom on the final weights.
* ``loss_and_grad`` (harness gradcheck) segfaults at points of gate ``xnor``.

$FAULTY_SLEEP (seconds) makes every cell that long, for kill -9 tests.
$FAULTY_LOG: a file to which every cell appends ``gate level seed pid`` as
it starts (the Dask tests count how often a cell ran, and where).
$FAULTY_VERSION: the framework version it reports (default numpy's), so
that a test can start a Dask worker that disagrees with the others.
Registered through HARNESS_EXTRA_BACKENDS=faulty=tests.faulty_backend.
"""
import ctypes
import dataclasses
import os
import sys
import time

import numpy as np

from backends import numpy_backend

NAME = "faulty"
IMPORTS = ("numpy",)
UNSUPPORTED: dict = {}
ARCH_LIMITS = numpy_backend.ARCH_LIMITS


def framework_version():
    return os.environ.get("FAULTY_VERSION", np.__version__)


def train(spec):
    if os.environ.get("FAULTY_LOG"):
        with open(os.environ["FAULTY_LOG"], "a") as fh:
            fh.write(f"{spec.gate} {spec.level} {spec.seed} {os.getpid()}\n")
    time.sleep(float(os.environ.get("FAULTY_SLEEP", 0)))
    if spec.gate in ("xor", "xnor"):
        half = dataclasses.replace(spec.cell, epochs=spec.epochs // 2)
        numpy_backend.TRAINERS[spec.level](dataclasses.replace(spec, cell=half))
        print(f"faulty: failing on purpose at epoch {spec.epochs // 2}", file=sys.stderr, flush=True)
        if spec.gate == "xor":
            ctypes.string_at(0)
        os._exit(3)
    if spec.gate == "nand":
        if os.environ.get("FAULTY_PIDFILE"):
            with open(os.environ["FAULTY_PIDFILE"], "w") as fh:
                fh.write(str(os.getpid()))
        time.sleep(3600)
    result = numpy_backend.TRAINERS[spec.level](spec)
    if spec.gate == "nor":
        noise = (1 + int.from_bytes(os.urandom(2), "little")) * 1e-3  # visible in float32
        final = {k: v + noise for k, v in result.params_final.items()}
        result = dataclasses.replace(result, params_final=final)
    return result


TRAINERS = dict.fromkeys(numpy_backend.TRAINERS, train)


def loss_and_grad(spec):
    if spec.gate == "xnor":
        ctypes.string_at(0)
    return numpy_backend.loss_and_grad(spec)


def train_batch(spec):
    """--batch-seeds: a batch of xor seeds segfaults half-way, like its cells."""
    if spec.gate == "xor":
        half = dataclasses.replace(spec.cell, epochs=spec.epochs // 2)
        numpy_backend.train_raw_batch(dataclasses.replace(spec, cells=(half,) * spec.seeds))
        print(f"faulty: failing on purpose at epoch {spec.epochs // 2}", file=sys.stderr, flush=True)
        ctypes.string_at(0)
    return numpy_backend.train_raw_batch(spec)


BATCHED = {"raw": train_batch}
