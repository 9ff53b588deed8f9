"""A test-only backend whose every cell kills the process that started its
worker (SIGKILL): under ``--executor dask``, the Dask worker.  The harness
re-queues a cell whose Dask worker died once, and records `error` the
second time.  Never run it with the local executor: it kills `harness run`.
Registered through HARNESS_EXTRA_BACKENDS=killparent=tests.killparent_backend."""
import os
import signal
import time

from backends import numpy_backend

NAME = "killparent"
IMPORTS = ("numpy",)
UNSUPPORTED = {level: "a test backend" for level in ("module", "optimizer", "custom")}


def framework_version():
    return "killparent"


def train(spec):
    os.kill(os.getppid(), signal.SIGKILL)
    time.sleep(60)  # the worker's parent watch ends this process


loss_and_grad = numpy_backend.loss_and_grad
TRAINERS = {"raw": train}
