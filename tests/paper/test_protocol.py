"""flatmin.paper: configs, the SB/LB protocol's results.json against direct computation, the
tables, and bad input refused before any training."""

import dataclasses
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import flatmin
from experiments import sharpness_table  # the script, imported as a module
from flatmin.paper.configs import CONFIGS, DEFAULT_ROUTES, ROUTES, ExperimentConfig, Regime
from flatmin.paper.keys import noise_key, seed_keys, solve_key, subspace_key
from flatmin.paper.protocol import network, run_sharpness_table, train_regime
from flatmin.paper.tables import format_tables
from flatmin.reference import scipy_sharpness
from flatmin.training.data import load_dataset
from flatmin.training.objective import Objective, evaluate

TINY = dataclasses.replace(
    CONFIGS["digits"],
    model_kwargs={"hidden": (16,)},
    seeds=2,
    epochs=2,
    regimes=(Regime("SB", 64), Regime("LB", 1.0)),
    eps=(1e-3, 5e-4),
    noise_samples=0,
)


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits")


@pytest.fixture(scope="module")
def table(digits):
    """run_sharpness_table of TINY, and each regime's seeds trained again directly."""
    key = jax.random.key(0)
    results = run_sharpness_table(TINY, key, digits)
    sizes = TINY.batch_sizes(digits.x_train.shape[0])
    trained = {
        name: train_regime(TINY, digits, size, seed_keys(key, TINY.seeds))
        for name, size in sizes.items()
    }
    return results, trained, key


def test_results_rows_are_the_trained_seeds(digits, table):
    """Oracle: the seeds trained again and evaluated directly: loss, accuracy and gradient norms
    of each row are those of its own regime's seed (an SB/LB or seed swap would show)."""
    results, trained, _ = table
    model, _ = network(TINY, digits)
    x, y = jnp.asarray(digits.x_train), jnp.asarray(digits.y_train)
    assert results["batch_sizes"] == {"SB": 64, "LB": 1437}
    assert [(r["regime"], r["seed"]) for r in results["results"]] == [
        ("SB", 0), ("SB", 1), ("LB", 0), ("LB", 1),
    ]  # fmt: skip
    losses = []
    for row in results["results"]:
        v = jax.tree.map(lambda leaf, s=row["seed"]: leaf[s], trained[row["regime"]].variables)
        assert row["batch_size"] == results["batch_sizes"][row["regime"]]
        loss, accuracy = evaluate(model, v["params"], v["batch_stats"], x, y)
        np.testing.assert_allclose(row["final_train_loss"], float(loss), rtol=1e-5)
        np.testing.assert_allclose(row["loss"], float(loss), rtol=1e-5)
        assert round(row["train_accuracy"] * len(y)) == round(float(accuracy) * len(y))
        grad = jax.grad(Objective(model))(v["params"], v["batch_stats"], x, y)
        grad = np.concatenate([np.ravel(g) for g in jax.tree.leaves(grad)])
        np.testing.assert_allclose(row["grad_inf_norm"], np.max(np.abs(grad)), rtol=1e-4)
        np.testing.assert_allclose(row["grad_2_norm"], np.linalg.norm(grad), rtol=1e-4)
        losses.append(row["final_train_loss"])
    assert len(set(losses)) == 4  # four distinct solutions


def test_sharpness_by_route_space_and_eps(digits, table):
    """Oracles: the maximiser route equals flatmin.sharpness solved alone for that seed, space
    and eps (an eps or space mix-up would show: the values differ); the paper's route agrees
    with scipy's fmin_l_bfgs_b itself (flatmin.reference), within 10% or both below 1e-3."""
    results, trained, key = table
    model, _ = network(TINY, digits)
    x, y = jnp.asarray(digits.x_train), jnp.asarray(digits.y_train)
    for row in results["results"]:
        v = jax.tree.map(lambda leaf, s=row["seed"]: leaf[s], trained[row["regime"]].variables)
        loss_fn, args = Objective(model), (v["batch_stats"], x, y)
        A = flatmin.random_subspace(subspace_key(key), v["params"], TINY.subspace_dim)
        solver = TINY.routes["maximiser"]
        assert solver == flatmin.LBFGSB(restarts=4)
        values = {}
        for space, matrix in (("full", None), ("subspace", A)):
            for eps in TINY.eps:
                expected = flatmin.sharpness(
                    loss_fn, v["params"], matrix, eps, args=args, solver=solver,
                    key=solve_key(key),
                )  # fmt: skip
                got = row["sharpness"]["maximiser"][space][str(eps)]
                np.testing.assert_allclose(got, float(expected), rtol=1e-3)
                values[space, eps] = got
                solve = row["solves"]["maximiser"][space][str(eps)]
                assert solve["num_steps"] == solver.maxiter
                assert solve["value"] == got
        assert len(set(values.values())) == 4
        for space, matrix in (("full", None), ("subspace", A)):
            reference = scipy_sharpness(loss_fn, v["params"], matrix, 1e-3, args=args)
            paper = row["sharpness"]["paper"][space]["0.001"]
            assert (
                abs(paper - reference.value) <= 0.1 * reference.value
                or max(paper, reference.value) < 1e-3
            ), (paper, reference)
            _assert_same_stop(row["solves"]["paper"][space]["0.001"], reference)


def _assert_same_stop(solve: dict, reference) -> None:
    """The paper's route stops where scipy does. Exactly (the same iterations) when scipy ran
    out of iterations or stopped before its first step: neither is at a rounding edge. When
    scipy stopped on a tolerance after some steps (factr's relative reduction, or pgtol),
    whether the test fires at iteration k or k + 2 is decided by float32 rounding of a
    difference of nearly equal losses (seen: 4 iterations in scipy, 6 here, the values within
    1%), so the solve must have stopped on one of the tolerances too, not run out."""
    tolerances = {flatmin.Status.GRADIENT_TOLERANCE, flatmin.Status.REDUCTION_TOLERANCE}
    if "ITERATIONS REACHED LIMIT" in reference.message:
        assert solve["num_steps"] == reference.num_steps
        assert solve["status"] == flatmin.Status.FINISHED
    elif reference.num_steps == 0:
        assert solve["num_steps"] == 0
        assert solve["status"] == flatmin.Status.GRADIENT_TOLERANCE
    else:
        assert solve["status"] in tolerances, (solve, reference.message)
        assert 1 <= solve["num_steps"] < TINY.routes["paper"].maxiter


def test_tables_show_every_regime_and_route(table):
    results, _, _ = table
    tables = format_tables(results)
    for title in ("Table 2", "Table 3", "Table 4", "max abs gradient"):
        assert title in tables
    assert "| 0.001 | paper |" in tables and "| 0.001 | maximiser |" in tables
    json.dumps(results, allow_nan=False)  # plain JSON: no numpy types, no NaN


def test_tables_exclude_diverged_seeds_and_compute_ratios_on_the_rest():
    """Oracle: hand-made rows and their means written out."""

    def row(regime, seed, value, diverged=False):
        sharp = None if diverged else value
        return {
            "regime": regime, "seed": seed, "batch_size": 16, "train_accuracy": 1.0,
            "test_accuracy": 0.9, "final_train_loss": 0.01, "epochs": 3,
            "diverged": diverged, "grad_inf_norm": 1e-3, "grad_2_norm": 1e-2,
            "sharpness": {r: {"full": {"0.001": sharp}, "subspace": {"0.001": sharp}}
                          for r in ("paper", "maximiser")},
        }  # fmt: skip

    config = dataclasses.replace(TINY, eps=(1e-3,)).to_json()
    rows = [row("SB", 0, 2.0), row("SB", 1, 7.0, diverged=True), row("LB", 0, 20.0)]
    rows.append(row("LB", 1, 40.0))
    tables = format_tables({"config": config, "results": rows})
    assert "| 0.001 | maximiser | 2 ± 0 (1 diverged, excluded) | 30 ± 10 | 15 |" in tables


def test_noise_floors_are_seed_zeros_spread(digits):
    """Oracle: flatmin.noise_floor of seed 0's own Metric 2.1, computed directly; the tables
    print it and mark a ratio whose means differ by less than twice the floor."""
    config = dataclasses.replace(
        TINY, noise_samples=3, eps=(1e-3,), spaces=("full",),
        routes={"maximiser": TINY.routes["maximiser"]},
    )  # fmt: skip
    key = jax.random.key(0)
    results = run_sharpness_table(config, key, digits)
    model, _ = network(config, digits)
    x, y = jnp.asarray(digits.x_train), jnp.asarray(digits.y_train)
    solver = config.routes["maximiser"]
    for regime, size in results["batch_sizes"].items():
        trained = train_regime(config, digits, size, seed_keys(key, config.seeds))
        v = jax.tree.map(lambda leaf: leaf[0], trained.variables)
        expected = flatmin.noise_floor(
            lambda p, *args, key: flatmin.sharpness(
                Objective(model), p, eps=1e-3, args=args, solver=solver, key=key
            ),
            v["params"], args=(v["batch_stats"], x, y), key=noise_key(key), num_samples=3,
            keyed=True,
        )  # fmt: skip
        assert int(expected.status) == flatmin.Status.FINISHED
        got = results["noise_floors"][regime]["maximiser"]["full"]["0.001"]
        np.testing.assert_allclose(got["std"], float(expected.std), rtol=1e-3, atol=1e-7)
        np.testing.assert_allclose(got["value"], float(expected.value), rtol=1e-4)
        assert got["status"] == int(expected.status)
    assert "noise floor (std)" in format_tables(results)


def test_tables_mark_differences_within_the_noise_floor():
    def row(regime, value):
        return {
            "regime": regime, "seed": 0, "batch_size": 16, "train_accuracy": 1.0,
            "test_accuracy": 0.9, "final_train_loss": 0.01, "epochs": 3, "diverged": False,
            "sharpness": {"maximiser": {"full": {"0.001": value}}},
        }  # fmt: skip

    config = dataclasses.replace(
        TINY, eps=(1e-3,), spaces=("full",), routes={"maximiser": TINY.routes["maximiser"]},
        noise_samples=4,
    ).to_json()  # fmt: skip

    def tables(sb, lb, noise):
        floors = {r: {"maximiser": {"full": {"0.001": {"std": noise}}}} for r in ("SB", "LB")}
        results = {"config": config, "results": [row("SB", sb), row("LB", lb)]}
        return format_tables(results | {"noise_floors": floors})

    assert "| 1.5 (within noise) | SB 1, LB 1 |" in tables(2.0, 3.0, 1.0)
    assert "| 1.5 | SB 0.1, LB 0.1 |" in tables(2.0, 3.0, 0.1)


def test_equal_loss_protocol_and_regime_sizes():
    config = CONFIGS["f1-mnist5k"]
    assert config.batch_sizes(4000) == {"SB": 256, "LB": 400, "LB-full": 4000}
    equal = config.with_protocol("equal-loss")
    assert (equal.target_loss, equal.patience) == (config.equal_loss, None)
    assert config.with_protocol("paper") is config
    with pytest.raises(ValueError, match="protocol"):
        config.with_protocol("sgd")
    with pytest.raises(ValueError, match="equal_loss"):
        CONFIGS["f1"].with_protocol("equal-loss")


@pytest.mark.parametrize(
    ("changes", "match"),
    [
        ({"seeds": 0}, r"^seeds"),
        ({"seeds": True}, r"^seeds"),
        ({"epochs": 0}, r"^epochs"),
        ({"eps": (1e-3, 0.0)}, r"^eps"),
        ({"eps": (float("nan"),)}, r"^eps"),
        ({"eps": 1e-3}, r"^eps must be a non-empty tuple"),
        ({"model": "resnet"}, r"^model"),
        ({"dataset": "imagenet"}, r"^dataset"),
        ({"subspace_distribution": "cauchy"}, r"^subspace_distribution"),
        ({"subspace_dim": 0}, r"^subspace_dim"),
        ({"regimes": ()}, r"^regimes"),
        ({"regimes": (Regime("SB", 16), Regime("SB", 32))}, r"^regimes must have distinct"),
        ({"routes": {"x": "lbfgsb"}}, r"^routes"),
        ({"bn": "layer"}, r"^bn"),
        ({"learning_rate": float("nan")}, r"^learning_rate"),
        ({"patience": True}, r"^patience"),
    ],
)
def test_bad_config_raises_naming_the_field(changes, match):
    with pytest.raises(ValueError, match=match):
        dataclasses.replace(TINY, **changes)


@pytest.mark.parametrize(
    ("make", "match"),
    [
        (lambda: Regime("LB", 0), r"regime LB batch"),
        (lambda: Regime("LB", 1.5), r"regime LB batch"),
        (lambda: Regime("LB", True), r"regime LB: batch must be an int or a float"),
        # A route is a solver; its start and restarts are the solver's fields, checked when
        # it is constructed.
        (lambda: flatmin.LBFGSB(init="ones"), r"^init"),
        (lambda: flatmin.LBFGSB(restarts=0), r"^restarts"),
        (lambda: flatmin.ProjectedGradient(restarts=True), r"^restarts"),
    ],
)
def test_bad_regime_or_route_raises(make, match):
    with pytest.raises(ValueError, match=match):
        make()


def test_batch_larger_than_training_set_raises_before_training(digits, monkeypatch):
    def fail(*args, **kwargs):
        raise AssertionError("training started")

    monkeypatch.setattr("flatmin.paper.protocol.train_seeds", fail)
    big = dataclasses.replace(TINY, regimes=(Regime("SB", 16), Regime("LB", 5000)))
    with pytest.raises(ValueError, match="regime LB: batch size 5000 is larger"):
        run_sharpness_table(big, jax.random.key(0), digits)


def test_cli_end_to_end(tmp_path, capsys):
    sharpness_table.main(
        ["--config", "digits", "--hidden", "16", "--seeds", "2", "--epochs", "1",
         "--routes", "maximiser", "--maxiter", "3", "--out", str(tmp_path)]
    )  # fmt: skip
    results = json.loads((tmp_path / "results.json").read_text())
    assert list(results["config"]["routes"]) == ["maximiser"]
    assert results["config"]["routes"]["maximiser"]["maxiter"] == 3
    assert len(results["results"]) == 4
    assert all(r["solves"]["maximiser"]["full"]["0.001"]["num_steps"] == 3
               for r in results["results"])  # fmt: skip
    assert (tmp_path / "tables.md").read_text() in capsys.readouterr().out


@pytest.mark.parametrize(
    "argv",
    [
        ["--config", "resnet"],
        ["--routes", "adam"],
        ["--protocol", "sgd"],
        ["--bn", "layer"],
    ],
)
def test_cli_rejects_bad_flags(argv):
    with pytest.raises(SystemExit):
        sharpness_table.parse_args(argv)


def test_cli_rejects_bad_values_before_any_work(tmp_path):
    with pytest.raises(SystemExit, match="maxiter"):
        sharpness_table.main(["--maxiter", "0", "--out", str(tmp_path)])
    with pytest.raises(SystemExit, match="equal_loss"):
        sharpness_table.main(["--config", "f1", "--protocol", "equal-loss", "--out", str(tmp_path)])
    assert not any(tmp_path.iterdir())


def test_config_records_every_choice():
    record = CONFIGS["f1-mnist5k"].to_json()
    assert record["regimes"] == {"SB": 256, "LB": 0.1, "LB-full": 1.0}
    assert record["routes"]["paper"] == {
        "type": "LBFGSB", "maxiter": 10, "memory": 10, "pgtol": 1e-5, "factr": 1e7, "maxls": 20,
        "rescale": False, "init": "zero", "restarts": 1,
    }  # fmt: skip
    assert record["routes"]["maximiser"] == {
        "type": "LBFGSB", "maxiter": 10, "memory": 10, "pgtol": 0.0, "factr": 0.0, "maxls": 0,
        "rescale": True, "init": "random", "restarts": 4,
    }  # fmt: skip
    assert isinstance(CONFIGS["f1-mnist5k"], ExperimentConfig)


def test_routes_are_solvers_carrying_their_starts():
    assert ROUTES == {
        "paper": flatmin.LBFGSB.paper(),
        "maximiser": flatmin.LBFGSB(restarts=4),
        "projected-gradient": flatmin.ProjectedGradient(restarts=4),
    }
    assert ROUTES["paper"].init == "zero" and ROUTES["maximiser"].init == "random"
    assert DEFAULT_ROUTES == ("paper", "maximiser")
    assert dict(TINY.routes) == {name: ROUTES[name] for name in DEFAULT_ROUTES}
