"""A test-only backend whose framework is not installed."""
NAME = "ghost"
IMPORTS = ("not_a_real_framework",)
LEVELS = ("raw",)
UNSUPPORTED: dict = {}


def framework_version():
    raise AssertionError("never called: the framework is missing")


def train(spec):
    raise AssertionError("never called: the framework is missing")
