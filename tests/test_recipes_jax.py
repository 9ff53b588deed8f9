"""JAX (optax, Flax NNX) under the optimizer families: the hand-written
levels follow the textbook, optax's own transformations follow it except
where the backend names a departure, and the hyperparameters each record
reads back are the ones in effect.  JAX cells run in the backend's own
worker (``cached_run``): it sets JAX_ENABLE_X64 before importing JAX."""
import pytest

from conftest import run_recipe

FAMILIES = ("sgd", "momentum", "nesterov", "adam", "rmsprop")
# float32-exact values, each unlike the harness's defaults.
EXPLICIT = {"momentum": 0.875, "beta1": 0.875, "beta2": 0.9990234375,
            "eps": 0.00000762939453125, "rho": 0.875, "weight_decay": 0.0078125}
USES = {"sgd": ("weight_decay",), "momentum": ("momentum", "weight_decay"),
        "nesterov": ("momentum", "weight_decay"),
        "adam": ("beta1", "beta2", "eps", "weight_decay"),
        "rmsprop": ("rho", "eps", "weight_decay")}
# optax's own defaults, from its factories' signatures (optax.sgd's momentum
# is None: no momentum at all, reported as momentum 0).
OPTAX_DEFAULTS = {"sgd": {}, "momentum": {"momentum": 0.0}, "nesterov": {"momentum": 0.0},
                  "adam": {"beta1": 0.9, "beta2": 0.999, "eps": 1e-8},
                  "rmsprop": {"rho": 0.9, "eps": 1e-8}}


def run(level, family, arch="single", gate="and", **kw):
    return run_recipe("jax", level, family, arch, gate, **kw)


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("level", ["raw", "module"])
def test_hand_written_levels_are_the_textbook(level, family):
    rec = run(level, family, weight_decay=0.01)
    assert rec.status == "ok", rec.message
    assert rec.agrees and rec.explained_by is None, (rec.oracle_dev, rec.message)


@pytest.mark.parametrize("family", ["sgd", "momentum", "nesterov", "adam"])
@pytest.mark.parametrize("level", ["optimizer", "custom"])
def test_optax_families_without_departure_are_the_textbook(level, family):
    rec = run(level, family, weight_decay=0.01)
    assert rec.status == "ok", rec.message
    assert rec.agrees and rec.explained_by is None, rec.oracle_dev


@pytest.mark.parametrize("mode", ["compiled", "eager"])
@pytest.mark.parametrize("level", ["optimizer", "custom"])
def test_optax_rmsprop_puts_eps_inside_the_sqrt(level, mode):
    # eps 1e-4 makes sqrt(s + eps) and sqrt(s) + eps far apart.
    rec = run(level, "rmsprop", mode=mode, eps=1e-4)
    assert rec.status == "ok", rec.message
    assert rec.agrees is False and rec.oracle_dev > 1e-6
    assert rec.explained_by == "eps-inside-sqrt"


@pytest.mark.parametrize("level", ["raw", "module", "optimizer"])
@pytest.mark.parametrize("recipe", [dict(batch_size=1), dict(batch_size=3, reduction="mean"),
                                    dict(reduction="mean")])
def test_batches_and_reduction(level, recipe):
    rec = run(level, "adam", epochs=30, **recipe)
    assert rec.status == "ok", rec.message
    assert rec.agrees, rec.oracle_dev
    assert len(rec.loss_curve) == 30 * (4 if recipe.get("batch_size") == 1 else
                                        2 if recipe.get("batch_size") == 3 else 1)


def test_multi_layer_momentum_with_weight_decay():
    rec = run("optimizer", "momentum", arch="multi", gate="xor", epochs=200, weight_decay=0.01,
              momentum=0.875)
    assert rec.status == "ok", rec.message
    assert rec.agrees, rec.oracle_dev


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("level", ["optimizer", "module"])
def test_explicit_hyperparameters_are_read_back(level, family):
    passed = {k: EXPLICIT[k] for k in USES[family]}
    rec = run(level, family, epochs=5, **passed)
    assert rec.status == "ok", rec.message
    assert rec.hparams_used == {"lr": 0.125, **passed}
    assert list(rec.hparams_used)[0] == "lr"


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("level", ["optimizer", "raw"])
def test_defaults_are_optax_own(level, family):
    rec = run(level, family, epochs=5, hparams="defaults")
    assert rec.status == "ok", rec.message
    assert rec.hparams_used == {"lr": 0.125, **OPTAX_DEFAULTS[family], "weight_decay": 0.0}


def test_defaults_momentum_is_plain_gradient_descent():
    # optax.sgd(lr) without momentum is the momentum rule with momentum 0:
    # the oracle, judging with the read-back values, agrees.
    for family in ("momentum", "nesterov"):
        rec = run("optimizer", family, hparams="defaults")
        assert rec.agrees, rec.oracle_dev
        plain = run("optimizer", "sgd")
        assert rec.params_final == plain.params_final
