"""A test-only backend whose framework is not installed."""
NAME = "ghost"
IMPORTS = ("not_a_real_framework",)


def framework_version():
    raise AssertionError("never called: the framework is missing")


def train(spec):
    raise AssertionError("never called: the framework is missing")


loss_and_grad = train
TRAINERS = {"raw": train}
UNSUPPORTED = {level: "a test backend" for level in ("module", "optimizer", "custom")}
