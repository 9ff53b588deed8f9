"""A test-only backend whose framework import never finishes."""
NAME = "hangimport"
IMPORTS = ("time", "tests.hang_on_import")


def framework_version():
    raise AssertionError("never called: the import hangs")


def train(spec):
    raise AssertionError("never called: the import hangs")


loss_and_grad = train
TRAINERS = {"raw": train}
UNSUPPORTED = {level: "a test backend" for level in ("module", "optimizer", "custom")}
