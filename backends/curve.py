"""The loss curve of a trainer whose framework runs ahead of Python.

MXNet's engine, JAX's dispatch and TensorFlow's runtime return a loss
before it is computed; reading it back as a float after every update
(``asscalar()``, ``float(loss)``) makes Python wait for the framework at
every step.  ``LossCurve`` keeps the framework's own scalars and converts
them a block at a time, with the framework's own copy to the host: the same
values (a float32 or float64 scalar becomes the same Python float either
way), without a wait per update, and with at most a block of them held.
"""
from __future__ import annotations

from typing import Any, Callable

# Scalars held before they are converted: enough that the host rarely
# waits, few enough that a run of a million updates holds little.
BLOCK = 1024


class LossCurve:
    """``append`` one loss per update; ``floats()`` is the curve.

    ``to_floats(scalars)`` turns a list of the framework's scalars (each
    one loss, of shape () or (1,)) into Python floats, in order.
    """

    def __init__(self, to_floats: Callable[[list], list[float]]):
        self._to_floats = to_floats
        self._done: list[float] = []
        self._held: list[Any] = []

    def __len__(self) -> int:
        return len(self._done) + len(self._held)

    def append(self, loss) -> None:
        self._held.append(loss)
        if len(self._held) >= BLOCK:
            self._convert()

    def _convert(self) -> None:
        if self._held:
            self._done.extend(self._to_floats(self._held))
            self._held = []

    def floats(self) -> list[float]:
        self._convert()
        return self._done
