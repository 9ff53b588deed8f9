"""A test-only backend whose framework segfaults the interpreter on import
(tests/segfault_on_import.py).  The backend module itself imports cleanly,
as every backend module must."""
NAME = "importcrash"
IMPORTS = ("tests.segfault_on_import",)
LEVELS = ("raw",)
UNSUPPORTED: dict = {}


def framework_version():
    raise AssertionError("never called: the import kills the process")


def train(spec):
    raise AssertionError("never called: the import kills the process")
