"""A test-only backend whose framework segfaults the interpreter on import
(tests/segfault_on_import.py).  The backend module itself imports cleanly,
as every backend module must."""
NAME = "importcrash"
IMPORTS = ("tests.segfault_on_import",)


def framework_version():
    raise AssertionError("never called: the import kills the process")


def train(spec):
    raise AssertionError("never called: the import kills the process")


loss_and_grad = train
TRAINERS = {"raw": train}
UNSUPPORTED = {level: "a test backend" for level in ("module", "optimizer", "custom")}
