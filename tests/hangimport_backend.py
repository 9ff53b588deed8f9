"""A test-only backend whose framework import never finishes."""
NAME = "hangimport"
IMPORTS = ("time", "tests.hang_on_import")
LEVELS = ("raw",)
UNSUPPORTED: dict = {}


def framework_version():
    raise AssertionError("never called: the import hangs")


def train(spec):
    raise AssertionError("never called: the import hangs")
