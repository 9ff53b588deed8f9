"""A test-only backend whose autodiff gradient drops the bias term, as a
framework would with a detached bias: ``harness gradcheck`` must flag it."""
from backends import numpy_backend

NAME = "badgrad"
IMPORTS = ("numpy",)
UNSUPPORTED = {level: "a test backend" for level in ("module", "optimizer", "custom")}


def framework_version():
    return "badgrad"


def loss_and_grad(spec):
    loss, grad = numpy_backend.loss_and_grad(spec)
    return loss, {k: v * 0 if k.startswith("b") else v for k, v in grad.items()}


def train(spec):
    return numpy_backend.train_raw(spec)


TRAINERS = {"raw": train}
