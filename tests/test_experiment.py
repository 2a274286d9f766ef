"""The SB-vs-LB experiment: a tiny end-to-end run, its results.json, tables, and bad input."""

import dataclasses
import json
import math
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import flatmin
from flatmin.data import load_dataset
from flatmin.experiment import (
    CONFIGS,
    ExperimentConfig,
    json_ready,
    run_sharpness_table,
    seed_keys,
    seed_sharpness,
)
from flatmin.models import build_model
from flatmin.objective import make_loss_fn
from flatmin.tables import format_tables
from flatmin.train import train_seeds

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "experiments"))
import sharpness_table  # the script, imported as a module

TINY = dataclasses.replace(
    CONFIGS["digits"], model_kwargs={"hidden": (16,)}, seeds=2, epochs=2, sb_batch=64
)


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits")


def _check_results(results: dict, config: ExperimentConfig) -> None:
    assert results["config"]["name"] == config.name
    assert len(results["results"]) == 2 * config.seeds
    for row in results["results"]:
        assert row["regime"] in ("SB", "LB")
        assert 0 <= row["seed"] < config.seeds
        assert 0 <= row["train_accuracy"] <= 1 and 0 <= row["test_accuracy"] <= 1
        assert row["final_train_loss"] > 0 and 1 <= row["epochs"] <= config.epochs
        assert set(row["sharpness"]) == {"full", "subspace"}
        for by_eps in row["sharpness"].values():
            assert set(by_eps) == {"0.001", "0.0005"}
            assert all(math.isfinite(v) and v >= 0 for v in by_eps.values())


def test_run_writes_valid_results(digits):
    results = run_sharpness_table(TINY, jax.random.key(0), digits)
    _check_results(results, TINY)
    json.dumps(results, allow_nan=False)  # plain JSON: no numpy types, no NaN
    lb = [r for r in results["results"] if r["regime"] == "LB"]
    assert all(r["batch_size"] == 1437 for r in lb)
    tables = format_tables(results)
    for title in ("Table 2", "Table 3", "Table 4"):
        assert title in tables


def test_cli_end_to_end(tmp_path, capsys):
    sharpness_table.main(
        ["--config", "digits", "--seeds", "2", "--epochs", "1", "--out", str(tmp_path)]
    )
    results = json.loads((tmp_path / "results.json").read_text())
    _check_results(results, dataclasses.replace(CONFIGS["digits"], seeds=2, epochs=1))
    assert (tmp_path / "tables.md").read_text() in capsys.readouterr().out


def test_tables_exclude_diverged_seeds_and_say_so():
    row = {
        "regime": "SB",
        "seed": 0,
        "batch_size": 16,
        "train_accuracy": 1.0,
        "test_accuracy": 0.9,
        "final_train_loss": 0.01,
        "epochs": 3,
        "diverged": False,
        "sharpness": {"full": {"0.001": 2.0}, "subspace": {"0.001": 1.0}},
    }
    diverged = row | {"seed": 1, "diverged": True, "final_train_loss": None}
    diverged["sharpness"] = {"full": {"0.001": None}, "subspace": {"0.001": None}}
    lb = row | {"regime": "LB", "batch_size": 1437}
    lb["sharpness"] = {"full": {"0.001": 20.0}, "subspace": {"0.001": 4.0}}
    results = {"config": TINY.to_json(), "results": [row, diverged, lb]}
    tables = format_tables(results)
    assert "1 diverged, excluded" in tables
    # The mean of the finite seed alone.
    assert "| 0.001 | flatmin | 2 ± 0 (1 diverged, excluded) | 20 ± 0 | 10 |" in tables


def test_json_ready_turns_nan_into_null():
    assert json_ready({"a": float("nan"), "b": [1.5, float("inf")]}) == {
        "a": None,
        "b": [1.5, None],
    }


@pytest.mark.parametrize(
    ("changes", "match"),
    [
        ({"seeds": 0}, "seeds"),
        ({"epochs": 0}, "epochs"),
        ({"eps": (1e-3, 0.0)}, "eps"),
        ({"eps": (float("nan"),)}, "eps"),
        ({"model": "resnet"}, "model"),
        ({"dataset": "imagenet"}, "dataset"),
        ({"subspace_distribution": "cauchy"}, "subspace_distribution"),
    ],
)
def test_bad_config_raises_before_any_work(changes, match):
    with pytest.raises(ValueError, match=match):
        dataclasses.replace(TINY, **changes)


def test_batch_larger_than_training_set_raises_before_training(digits, monkeypatch):
    def fail(*args, **kwargs):
        raise AssertionError("training started")

    monkeypatch.setattr("flatmin.experiment.train_seeds", fail)
    with pytest.raises(ValueError, match="LB batch size"):
        run_sharpness_table(dataclasses.replace(TINY, lb_batch=5000), jax.random.key(0), digits)


def test_cli_rejects_unknown_config():
    with pytest.raises(SystemExit):
        sharpness_table.parse_args(["--config", "resnet"])


@pytest.fixture(scope="module")
def three_seeds(digits):
    """Three trained seeds of a tiny MLP (stacked variables) and the model."""
    config = dataclasses.replace(TINY, seeds=3, epochs=1)
    trained = train_seeds(
        config.train_config("SB", digits.x_train.shape[0]), seed_keys(jax.random.key(0), 3), digits
    )
    model = build_model(config.model, digits.num_classes, **config.model_kwargs)
    return model, trained.variables


def test_seed_sharpness_equals_each_seed_alone(digits, three_seeds):
    model, variables = three_seeds
    x, y = jnp.asarray(digits.x_train), jnp.asarray(digits.y_train)
    key = jax.random.key(3)
    vmapped = seed_sharpness(model, variables, x, y, None, 1e-3, key=key).value

    def alone(seed: int) -> jax.Array:
        batch_stats, params = jax.tree.map(
            lambda v: v[seed], (variables["batch_stats"], variables["params"])
        )
        loss_fn = make_loss_fn(model, batch_stats, x, y)
        return flatmin.sharpness(loss_fn, params, None, 1e-3, key=key)

    assert vmapped.shape == (3,) and np.all(vmapped > 0)
    # Distinct seeds, distinct values: a grouping that lost or reordered seeds would show.
    assert np.min(np.diff(np.sort(vmapped))) > 1e-2 * np.max(vmapped)
    np.testing.assert_allclose(vmapped, [alone(seed) for seed in range(3)], rtol=1e-3)


@pytest.mark.parametrize(
    "solver",
    [flatmin.LBFGSB(), flatmin.LBFGSB.paper(), flatmin.ProjectedGradient()],
    ids=["lbfgsb", "paper", "projected_gradient"],
)
@pytest.mark.parametrize("seeds_per_solve", [1, 2, None])
def test_seed_sharpness_in_groups_equals_one_solve(digits, three_seeds, solver, seeds_per_solve):
    model, variables = three_seeds
    x, y = jnp.asarray(digits.x_train), jnp.asarray(digits.y_train)
    key = jax.random.key(3)
    # More seeds per solve than seeds: all three in one vmapped solve, for either solver.
    together = seed_sharpness(
        model, variables, x, y, None, 1e-3, key=key, solver=solver, seeds_per_solve=8
    ).value
    grouped = seed_sharpness(
        model, variables, x, y, None, 1e-3, key=key, solver=solver, seeds_per_solve=seeds_per_solve
    ).value
    # A batch of 1 and a batch of 3 compile to different float32 reductions: 2e-5 seen.
    np.testing.assert_allclose(grouped, together, rtol=1e-4)


def test_seed_sharpness_rejects_bad_group_size(digits, three_seeds):
    model, variables = three_seeds
    x, y = jnp.asarray(digits.x_train), jnp.asarray(digits.y_train)
    with pytest.raises(ValueError, match="seeds_per_solve"):
        seed_sharpness(model, variables, x, y, None, 1e-3, key=jax.random.key(0), seeds_per_solve=0)
