"""The SB-vs-LB experiment: a tiny end-to-end run, its results.json, tables, and bad input."""

import dataclasses
import json
import math
import sys
from pathlib import Path

import jax
import pytest

from flatmin.data import load_dataset
from flatmin.experiment import CONFIGS, ExperimentConfig, json_ready, run_sharpness_table
from flatmin.tables import format_tables

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
