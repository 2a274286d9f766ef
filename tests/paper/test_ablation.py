"""flatmin.paper.ablation and experiments/metric_ablation.py: every row against a direct solve
of its own cell, the design's selection, the files, and bad choices refused before training."""

import dataclasses
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import flatmin
from experiments import metric_ablation
from flatmin.paper import ablation
from flatmin.paper.ablation import Cell, default_cells, run_metric_ablation, select_cells
from flatmin.paper.configs import CONFIGS, ROUTES, Regime
from flatmin.paper.keys import seed_keys, solve_key, subspace_key
from flatmin.paper.protocol import network, train_regime
from flatmin.reference import scipy_sharpness
from flatmin.training.data import load_dataset
from flatmin.training.objective import Objective

TINY = dataclasses.replace(
    CONFIGS["digits"],
    model_kwargs={"hidden": (16,)},
    seeds=2,
    epochs=1,
    regimes=(Regime("SB", 64), Regime("LB", 1.0)),
    eps=(1e-3,),
)
CELLS = {
    "paper": [
        Cell("scipy", "running", "full", 1e-3),
        Cell("paper", "batch", "gaussian", 1e-3),
        Cell("maximiser", "running", "uniform-normalized", 1e-3),
    ]
}


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits")


def test_rows_equal_direct_solves_of_their_cells(digits):
    """Oracles: scipy's fmin_l_bfgs_b (flatmin.reference) for the scipy cell, and
    flatmin.sharpness on each seed alone, with the cell's f, A and route, for the others."""
    key = jax.random.key(0)
    results = run_metric_ablation(TINY, key, digits, cells=CELLS)
    rows = results["rows"]
    assert len(rows) == 3 * 2 * 2
    assert results["batch_sizes"] == {"SB": 64, "LB": 1437}
    model, _ = network(TINY, digits)
    x, y = jnp.asarray(digits.x_train), jnp.asarray(digits.y_train)
    trained = {
        regime: train_regime(TINY, digits, size, seed_keys(key, 2)).variables
        for regime, size in results["batch_sizes"].items()
    }
    for row in rows:
        v = jax.tree.map(lambda leaf, s=row["seed"]: leaf[s], trained[row["regime"]])
        loss_fn, args = Objective(model, row["bn"]), (v["batch_stats"], x, y)
        A = None
        if row["subspace"] != "full":
            distribution, normalize = row["subspace"].split("-")[0], "normalized" in row["subspace"]
            A = flatmin.random_subspace(
                subspace_key(key), v["params"], TINY.subspace_dim,
                distribution=distribution, normalize=normalize,
            )  # fmt: skip
        if row["route"] == "scipy":
            expected = scipy_sharpness(loss_fn, v["params"], A, row["eps"], args=args)
            np.testing.assert_allclose(row["value"], expected.value, rtol=1e-4)
            assert row["num_steps"] == expected.num_steps
        else:
            expected = flatmin.sharpness(
                loss_fn, v["params"], A, row["eps"], args=args, solver=ROUTES[row["route"]],
                key=solve_key(key),
            )  # fmt: skip
            np.testing.assert_allclose(row["value"], float(expected), rtol=1e-3)
        loss, grad = jax.value_and_grad(loss_fn)(v["params"], *args)
        flat = np.concatenate([np.ravel(g) for g in jax.tree.leaves(grad)])
        np.testing.assert_allclose(row["train_loss"], float(loss), rtol=1e-5)
        np.testing.assert_allclose(row["grad_inf_norm"], np.max(np.abs(flat)), rtol=1e-4)
        assert row["space"] == ("full" if row["subspace"] == "full" else "subspace")
    json.dumps(results, allow_nan=False)


def test_the_design_and_its_selection():
    # Every device route of the configs, and scipy's own; the design takes three of them.
    assert ablation.ROUTES == ("paper", "maximiser", "projected-gradient", "scipy")
    assert ablation.DEFAULT_ROUTES == ("paper", "scipy", "maximiser")
    cells = default_cells((1e-3, 5e-4))
    assert len(cells["paper"]) == 3 * 2 * 2 * 2 + 2 * 3
    assert len(cells["equal-loss"]) == 3 * 2
    chosen = select_cells(cells, protocols=["paper"], routes=["scipy"], bn=["batch"])
    assert set(chosen) == {"paper"}
    assert {(c.route, c.bn) for c in chosen["paper"]} == {("scipy", "batch")}
    assert (
        select_cells(cells, routes=["paper"], subspaces=["uniform"], protocols=["equal-loss"]) == {}
    )


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"routes": ["adam"]}, r"^routes must be one of"),
        ({"bn": ["layer"]}, r"^bn must be one of"),
        ({"subspaces": ["cauchy"]}, r"^subspaces must be one of"),
        ({"protocols": ["sgd"]}, r"^protocols must be one of"),
    ],
)
def test_unknown_choices_are_named(kwargs, match):
    with pytest.raises(ValueError, match=match):
        select_cells(default_cells((1e-3,)), **kwargs)
    with pytest.raises(ValueError, match=r"^route must be one of"):
        Cell("adam", "running", "full", 1e-3)


def test_cli_writes_table_figure_and_resumes(tmp_path, monkeypatch):
    argv = [
        "--config", "digits", "--hidden", "16", "--seeds", "2", "--epochs", "1",
        "--ablation-routes", "paper,maximiser", "--ablation-bn", "running",
        "--ablation-subspaces", "full", "--ablation-protocols", "paper", "--out", str(tmp_path),
    ]  # fmt: skip
    results = metric_ablation.main(argv)
    assert {row["route"] for row in results["rows"]} == {"paper", "maximiser"}
    assert len(results["rows"]) == 2 * 2 * 2 * 2  # routes x eps x regimes x seeds
    table = (tmp_path / "ablation.md").read_text()
    assert "| paper | maximiser | running | full | 0.001 |" in table
    png = tmp_path / "ablation.png"
    assert png.read_bytes()[:4] == b"\x89PNG"
    # A rerun reads every stage back: nothing is trained or solved again.
    monkeypatch.setattr("flatmin.paper.ablation.seed_sharpness", _fail)
    monkeypatch.setattr("flatmin.training.train._make_epoch", _no_training)
    again = metric_ablation.main(argv)
    assert again["rows"] == results["rows"]


def _fail(*args, **kwargs):
    raise AssertionError("recomputed")


def _no_training(*args):
    """An epoch program that fails if it runs (building it is fine: a restore builds it)."""
    return _fail


@pytest.mark.parametrize(
    "flags",
    [
        ["--ablation-routes", "adam"],
        ["--ablation-protocols", "equal-loss"],  # digits has no equal_loss target
        ["--ablation-routes", "paper", "--ablation-subspaces", "uniform", "--ablation-bn", "batch"],
    ],
)
def test_cli_refuses_bad_choices_before_training(tmp_path, monkeypatch, flags):
    monkeypatch.setattr("flatmin.training.train._make_epoch", _no_training)
    with pytest.raises(SystemExit):
        metric_ablation.main(["--config", "digits", *flags, "--out", str(tmp_path)])
    assert not any(tmp_path.iterdir())
