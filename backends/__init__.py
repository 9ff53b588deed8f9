"""One module per framework, each implementing ``harness.tasks``' contract.

Every backend module exposes the same surface: ``NAME``, ``IMPORTS`` (the
modules its framework needs), ``LEVELS`` (what it implements),
``UNSUPPORTED`` (level -> reason, for the levels it lacks; the perceptron
levels, numpy's own, need no entry),
``framework_version()``, ``train(spec) -> TrainResult`` and, for backends
with a ``raw`` level, ``loss_and_grad(spec) -> (loss, {name: gradient})``:
the raw level's written-out loss and its autodiff gradient at
``spec.params`` (canonical layout), used by ``harness gradcheck``.  Optional:
``known_departure(cell) -> str | None``, why a cell is known to leave the
reference through a framework behaviour no adapter can change (MXNet).  It imports its
framework inside those functions only, so importing it is cheap and safe.
"""
