"""One module per framework, each implementing ``harness.tasks``' contract.

Every backend module exposes the same surface: ``NAME``, ``IMPORTS`` (the
modules its framework needs), ``LEVELS`` (what it implements),
``UNSUPPORTED`` (level -> reason, for the levels it lacks),
``framework_version()`` and ``train(spec) -> TrainResult``.  It imports its
framework inside those functions only, so importing it is cheap and safe.
"""
