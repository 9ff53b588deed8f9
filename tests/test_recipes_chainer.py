"""Chainer's recipes (backends/chainer_backend.py): the hand-written levels
follow the textbook for every family, its optimizer objects follow it where
their formulas are the textbook's, and each departure they make is a tested
claim: the textbook does not reproduce the cell, the named variant does.
Short single-layer xor cells (60 updates), float64."""
import pytest

from harness import registry
from harness.tasks import OPTIMIZERS

from conftest import cached_run, make_cell, require


def run(level, optimizer, **kw):
    require("chainer")
    rec = cached_run(make_cell("chainer", level, "single", "xor", epochs=60, optimizer=optimizer,
                               lr=0.125, **kw))
    assert rec.status == "ok", rec.message
    return rec


MIXED = dict(weight_decay=0.01, batch_size=3, reduction="mean")


@pytest.mark.parametrize("level", ["raw", "module"])
@pytest.mark.parametrize("optimizer", OPTIMIZERS)
def test_hand_written_levels_are_the_textbook(level, optimizer):
    for kw in ({}, MIXED):
        rec = run(level, optimizer, **kw)
        assert rec.agrees and registry.departures(rec.cell) == (), (kw, rec.oracle_dev)


@pytest.mark.parametrize("level", ["optimizer", "custom"])
@pytest.mark.parametrize("optimizer", ["sgd", "momentum", "rmsprop"])
def test_optimizer_objects_that_are_the_textbook(level, optimizer):
    # Weight decay through the WeightDecay hook is L2 on the gradient.
    for kw in ({}, MIXED):
        rec = run(level, optimizer, **kw)
        assert rec.agrees and registry.departures(rec.cell) == (), (kw, rec.oracle_dev)


@pytest.mark.parametrize("optimizer,atom", [("nesterov", "nesterov-chainer"),
                                            ("adam", "eps-hat")])
def test_departures_are_explained_and_real(optimizer, atom):
    for level in ("optimizer", "custom"):
        for kw in ({}, MIXED):
            rec = run(level, optimizer, **kw)
            assert registry.departures(rec.cell) == (atom,)
            assert rec.agrees is False and rec.explained_by == atom, (kw, rec.oracle_dev)


def test_hyperparameters_read_back():
    rec = run("optimizer", "adam", beta1=0.8, beta2=0.99, eps=1e-6, weight_decay=0.01)
    assert rec.hparams_used == {"lr": 0.125, "beta1": 0.8, "beta2": 0.99, "eps": 1e-6,
                                "weight_decay": 0.01}
    rec = run("optimizer", "rmsprop", rho=0.5)
    assert rec.hparams_used == {"lr": 0.125, "rho": 0.5, "eps": 1e-8, "weight_decay": 0.0}
    # --hparams defaults: Chainer's own (RMSprop's alpha is 0.99).
    for level in ("raw", "optimizer"):
        rec = run(level, "rmsprop", hparams="defaults")
        assert rec.hparams_used == {"lr": 0.125, "rho": 0.99, "eps": 1e-8, "weight_decay": 0.0}
        assert rec.agrees
        rec = run(level, "nesterov", hparams="defaults")
        assert rec.hparams_used == {"lr": 0.125, "momentum": 0.9, "weight_decay": 0.0}
    assert registry.backend("chainer").optimizer_defaults("adam") == {
        "beta1": 0.9, "beta2": 0.999, "eps": 1e-8, "weight_decay": 0.0}
