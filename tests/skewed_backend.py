"""A test-only backend whose SGD learning rate is off by 0.1%: the oracle's
verdict must flag every one of its cells, with the epoch it left the band."""
import dataclasses

from backends import numpy_backend

NAME = "skewed"
IMPORTS = ("numpy",)
LEVELS = ("raw",)
UNSUPPORTED: dict = {}
SKEW = 1.001


def framework_version():
    return "skewed-lr"


def train(spec):
    return numpy_backend.train(dataclasses.replace(spec, lr=spec.lr * SKEW))
