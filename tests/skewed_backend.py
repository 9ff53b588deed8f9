"""A test-only backend whose SGD learning rate is off by 0.1%: the oracle's
verdict must flag every one of its cells, with the epoch it left the band."""
import dataclasses

from backends import numpy_backend

NAME = "skewed"
IMPORTS = ("numpy",)
UNSUPPORTED = {level: "a test backend" for level in ("module", "optimizer", "custom")}
SKEW = 1.001


def framework_version():
    return "skewed-lr"


def train(spec):
    skewed = dataclasses.replace(spec.cell, lr=spec.lr * SKEW)
    return numpy_backend.train_raw(dataclasses.replace(spec, cell=skewed))


loss_and_grad = numpy_backend.loss_and_grad  # the gradient is right; the step is not
TRAINERS = {"raw": train}
