"""Recipes on the tensorflow row (backends/tensorflow_backend.py): Keras 3's
optimizer objects (compiled mode) and TF1's (graph mode) against the textbook
and the variants their departures name; the hand-written levels against the
textbook; the hyperparameters read back.

Every cell: float64, single layer, ``and``, seed 0, 60 epochs.  A departure
is tested both ways: the cell leaves the textbook (``agrees`` False) and the
named variant reproduces it (``explained_by``); hyperparameters that float32
cannot represent (lr 0.3, momentum 0.9, betas 0.9/0.999, weight decay 0.01)
make the float32 atoms visible.
"""
import pytest

from harness.compare import relative_deviation, tolerance
from harness.oracle import Problem, solve
from harness.tasks import OPTIMIZERS

from conftest import cached_run, make_cell, require

EXACT = dict(lr=0.125, momentum=0.875, beta1=0.875, beta2=0.9990234375,
             eps=0.00000762939453125, rho=0.875)


def run(level, mode="compiled", **kw):
    require("tensorflow")
    kw.setdefault("epochs", 60)
    rec = cached_run(make_cell("tensorflow", level, "single", "and", mode=mode, **kw))
    assert rec.status == "ok", rec.message
    return rec


def dev_against(rec, atoms):
    """The record's deviation from the oracle's variant made of ``atoms``."""
    return relative_deviation(rec.params_final, solve([Problem.of(rec, tuple(atoms))])[0]
                              .params_final)


@pytest.mark.parametrize("level,mode,family", [
    *(("raw", "compiled", f) for f in OPTIMIZERS), *(("module", "compiled", f) for f in OPTIMIZERS),
    ("raw", "graph", "adam"), ("raw", "graph", "nesterov"), ("raw", "eager", "rmsprop"),
    ("module", "eager", "momentum")])
def test_hand_written_levels_are_the_textbook(level, mode, family):
    rec = run(level, mode, optimizer=family, lr=0.3, weight_decay=0.01, batch_size=3,
              reduction="mean")
    assert rec.agrees and rec.explained_by is None
    assert len(rec.loss_curve) == 60 * 2


# (family, cell keywords, atoms the variant needs)
KERAS = [
    ("sgd", {"lr": 0.3}, None),
    ("momentum", dict(EXACT), None),
    ("momentum", {"lr": 0.3, "momentum": 0.9}, "float32-casts"),
    ("nesterov", {"lr": 0.3, "momentum": 0.9}, "float32-casts"),
    ("adam", dict(EXACT), "eps-hat+float32-casts"),
    ("adam", {"lr": 0.3}, "eps-hat+float32-casts"),
    ("rmsprop", {"lr": 0.3}, "eps-inside-sqrt"),
    ("sgd", {"lr": 0.3, "weight_decay": 0.01}, "decoupled-weight-decay+float32-casts"),
]


@pytest.mark.parametrize("family,kw,atoms", KERAS)
def test_keras_optimizers(family, kw, atoms):
    rec = run("optimizer", optimizer=family, **kw)
    if atoms is None:
        assert rec.agrees and rec.explained_by is None
    else:
        assert rec.agrees is False and rec.explained_by == atoms


def test_custom_level_and_eager_mode_use_the_same_optimizers():
    for level, mode in (("custom", "compiled"), ("optimizer", "eager")):
        rec = run(level, mode, optimizer="adam", lr=0.3)
        assert rec.explained_by == "eps-hat+float32-casts", (level, mode)


def test_keras_float32_casts_are_needed():
    # Keras' momentum on TensorFlow is tf.cast(0.9) = float32(0.9), the
    # learning rate (a float64 variable) is not: the float32-hparams variant,
    # which rounds both, is off.
    rec = run("optimizer", optimizer="momentum", lr=0.3, momentum=0.9)
    tol = tolerance("float64", len(rec.loss_curve))
    assert dev_against(rec, ["float32-casts"]) <= tol < dev_against(rec, ["float32-hparams"])
    # Adam: only the betas of the bias-correction powers are rounded.
    rec = run("optimizer", optimizer="adam", lr=0.3)
    assert dev_against(rec, ["eps-hat", "float32-casts"]) <= tol
    assert dev_against(rec, ["eps-hat"]) > tol
    assert dev_against(rec, ["eps-hat", "float32-hparams"]) > tol


# TF1 optimizers in a tf.compat.v1.Session (graph mode).
TF1 = [
    ("sgd", {"lr": 0.125}, None),
    ("sgd", {"lr": 0.3}, "float32-hparams"),
    ("momentum", {"lr": 0.3, "momentum": 0.9}, "float32-hparams"),
    ("nesterov", {"lr": 0.3, "momentum": 0.9}, "float32-hparams"),
    ("adam", dict(EXACT), "eps-hat+float32-beta-powers+float32-hparams"),
    ("rmsprop", dict(EXACT), "eps-inside-sqrt+ones-init+float32-hparams"),
    ("sgd", {"lr": 0.3, "weight_decay": 0.01}, "float32-hparams+float64-weight-decay"),
]


@pytest.mark.parametrize("family,kw,atoms", TF1)
def test_tf1_optimizers(family, kw, atoms):
    rec = run("optimizer", "graph", optimizer=family, **kw)
    if atoms is None:
        assert rec.agrees and rec.explained_by is None
    else:
        assert rec.agrees is False and rec.explained_by == atoms


def test_tf1_atoms_are_needed():
    tol = tolerance("float64", 60)
    # float32-exact hyperparameters: the float32 running products of the
    # beta powers are what is left.
    rec = run("optimizer", "graph", optimizer="adam", **EXACT)
    assert dev_against(rec, ["eps-hat", "float32-hparams"]) > tol
    # The L2 term in the loss keeps the weight decay exact: with a float32
    # learning rate the cell is the textbook, and rounding the decay is off.
    rec = run("optimizer", "graph", optimizer="sgd", lr=0.125, weight_decay=0.1)
    assert rec.agrees
    assert dev_against(rec, ["float32-hparams"]) > tol
    assert dev_against(rec, ["float32-hparams", "float64-weight-decay"]) <= tol


def test_batches_and_mean_reduction():
    # Each loss_curve entry is one batch's loss (not fit's running average):
    # the optimizer level's curve stays in the oracle's band with 3 + 1 rows.
    for mode in ("compiled", "graph"):
        rec = run("optimizer", mode, optimizer="sgd", batch_size=3, reduction="mean")
        assert rec.agrees, mode
        assert len(rec.loss_curve) == 120


@pytest.mark.parametrize("family", OPTIMIZERS)
def test_hparams_read_back(family):
    rec = run("optimizer", optimizer=family, **EXACT, weight_decay=0.25)
    want = {"lr": 0.125, "weight_decay": 0.25,
            **{k: v for k, v in EXACT.items() if k in rec.hparams_used}}
    assert rec.hparams_used == want
    keras_defaults = {"sgd": {}, "momentum": {"momentum": 0.0}, "nesterov": {"momentum": 0.0},
                      "adam": {"beta1": 0.9, "beta2": 0.999, "eps": 1e-7},
                      "rmsprop": {"rho": 0.9, "eps": 1e-7}}[family]
    rec = run("optimizer", optimizer=family, hparams="defaults")
    assert rec.hparams_used == {"lr": 0.5, **keras_defaults, "weight_decay": 0.0}
    if family == "adam":  # the hand-written levels take Keras' defaults too
        assert run("raw", optimizer=family, hparams="defaults").hparams_used == rec.hparams_used
    tf1_defaults = {"sgd": {}, "momentum": {"momentum": 0.9}, "nesterov": {"momentum": 0.9},
                    "adam": {"beta1": 0.9, "beta2": 0.999, "eps": 1e-8},
                    "rmsprop": {"rho": 0.9, "eps": 1e-10}}[family]
    rec = run("optimizer", "graph", optimizer=family, hparams="defaults")
    assert rec.hparams_used == {"lr": 0.5, **tf1_defaults, "weight_decay": 0.0}
    assert rec.agrees or rec.explained_by
