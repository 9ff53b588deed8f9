"""One module per framework, each implementing ``harness.tasks``' task
contract through the backend contract stated, and checked, in
``harness/contract.py`` (NAME, IMPORTS, TRAINERS, UNSUPPORTED,
framework_version, loss_and_grad when it has a raw level; optional
ARCH_LIMITS and known_departure).  A backend module imports its framework
inside its functions only, so importing it is cheap and safe.
"""
