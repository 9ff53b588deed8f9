"""Training recipes as the backends write them out: the textbook update rule
of each optimizer family, and the batches of one epoch.

The ``raw`` and ``module`` levels of every backend write the update out by
hand, in the framework's own tensor operations; they all call ``Textbook``
below, which is written with Python operators only (``+ - * /`` and the
``sqrt`` the backend passes in), so the same rule runs on numpy arrays,
torch tensors, TensorFlow tensors, MXNet NDArrays and JAX arrays.  The
``optimizer`` and ``custom`` levels use the framework's own optimizer
object instead; where its formula departs from the rules below, the backend
names the oracle variant that reproduces it (``harness.contract``,
``departures``).

The rules (p a parameter, g its gradient, t = 1, 2, ... the update count;
every state starts at zero; with ``weight_decay`` wd > 0 the gradient is
first g + wd * p, L2 added to the gradient):

* ``sgd``:       p -= lr g
* ``momentum``:  v = mu v + g;               p -= lr v
* ``nesterov``:  v = mu v + g;               p -= lr (g + mu v)
* ``adam``:      m = b1 m + (1 - b1) g;  s = b2 s + (1 - b2) g^2;
                 p -= lr (m / (1 - b1^t)) / (sqrt(s / (1 - b2^t)) + eps)
* ``rmsprop``:   s = rho s + (1 - rho) g^2;  p -= lr g / (sqrt(s) + eps)

These are PyTorch's formulas (its documentation writes them out), which is
why PyTorch is the textbook here; ``harness.oracle`` has its own
independent copy of them, which is the referee.  The oracle does not import
this module.
"""
from __future__ import annotations

from typing import Any, Callable

from harness.tasks import HPARAM_DEFAULTS, HYPERPARAMETERS, Cell, hyperparameters


class Textbook:
    """One cell's hand-written update rule, stateful per parameter name.

    ``step(name, p, g)`` returns the updated value of parameter ``name``
    (the caller assigns it in its framework's way); ``tick()`` advances the
    update count t once per update, before the parameters are stepped.
    ``hp`` holds the hyperparameters in effect (``in_effect``).
    """

    def __init__(self, cell: Cell, hp: dict[str, float], sqrt: Callable[[Any], Any]):
        self.family, self.hp, self.sqrt = cell.optimizer, hp, sqrt
        self.t = 0
        self.state: dict[str, tuple] = {}
        # Plain SGD without weight decay: the update is ``p - lr * g``, which
        # a caller may write in place (``p -= lr * g``, the same arithmetic).
        # Decided once: step() runs once per parameter and update.
        self.plain = cell.optimizer == "sgd" and not hp.get("weight_decay")

    def tick(self) -> None:
        self.t += 1

    def step(self, name: str, p, g):
        if self.plain:
            return p - self.hp["lr"] * g  # today's update, bit for bit
        hp, family = self.hp, self.family
        lr = hp["lr"]
        if hp.get("weight_decay"):
            g = g + hp["weight_decay"] * p
        if family == "sgd":
            return p - lr * g
        if family in ("momentum", "nesterov"):
            mu = hp["momentum"]
            # A copy on the first update (g * 1 is g, bit for bit): the
            # caller may zero its gradient tensor in place afterwards.
            v = self.state[name][0] * mu + g if name in self.state else g * 1
            self.state[name] = (v,)
            return p - lr * (g + mu * v) if family == "nesterov" else p - lr * v
        if family == "adam":
            b1, b2 = hp["beta1"], hp["beta2"]
            m, s = self.state.get(name, (g * 0, g * 0))
            m = b1 * m + (1 - b1) * g
            s = b2 * s + (1 - b2) * (g * g)
            self.state[name] = (m, s)
            m_hat = m / (1 - b1 ** self.t)
            s_hat = s / (1 - b2 ** self.t)
            return p - lr * m_hat / (self.sqrt(s_hat) + hp["eps"])
        if family == "rmsprop":
            rho = hp["rho"]
            s = self.state[name][0] if name in self.state else g * 0
            s = rho * s + (1 - rho) * (g * g)
            self.state[name] = (s,)
            return p - lr * g / (self.sqrt(s) + hp["eps"])
        raise ValueError(f"no rule for optimizer family {family!r}")


def in_effect(cell: Cell, framework_defaults: Callable[[str], dict[str, float]] | None = None
              ) -> dict[str, float]:
    """The hyperparameters a hand-written level uses: the cell's (``explicit``),
    or with ``--hparams defaults`` the framework's own defaults for the family
    as its optimizer object has them (``framework_defaults(family)``; the
    harness's when the framework has no such object)."""
    hp = hyperparameters(cell)
    if cell.hparams == "defaults":
        got = framework_defaults(cell.optimizer) if framework_defaults else {}
        for name in HYPERPARAMETERS[cell.optimizer]:
            hp[name] = float(got.get(name, HPARAM_DEFAULTS[name]))
    return hp
