"""flatmin.paper.generalization and experiments/measures.py: every row's measures are its own
network's, the rank correlation is Kendall's tau, the CLI writes its files."""

import dataclasses
import itertools
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from experiments import measures as measures_script
from flatmin.paper.configs import CONFIGS, Regime
from flatmin.paper.generalization import measures, rank_correlations, run_measures
from flatmin.paper.keys import seed_keys
from flatmin.paper.protocol import network, train_regime
from flatmin.training.data import load_dataset
from flatmin.training.objective import Objective, evaluate

TINY = dataclasses.replace(
    CONFIGS["digits"],
    model_kwargs={"hidden": (16,)},
    seeds=2,
    epochs=1,
    regimes=(Regime("SB", 64), Regime("LB", 1.0)),
    sweep_batch_sizes=(256,),
    sweep_epochs=1,
)
FAST = ("metric21_max", "average", "hessian_trace")


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits")


def test_rows_hold_each_networks_own_measures(digits):
    """Oracle: each network trained again and measured alone; its accuracies from evaluate."""
    key = jax.random.key(0)
    results = run_measures(TINY, key, digits, names=FAST)
    assert [(r["run"], r["seed"]) for r in results["rows"]] == [
        (run, seed) for run in ("SB", "LB", "batch-256") for seed in (0, 1)
    ]
    table = measures(key, TINY.eps[0])
    model, _ = network(TINY, digits)
    x, y = jnp.asarray(digits.x_train), jnp.asarray(digits.y_train)
    runs = {"SB": (64, True, None), "LB": (1437, True, None), "batch-256": (256, False, 1)}
    for name, (batch, stopping, epochs) in runs.items():
        trained = train_regime(
            TINY, digits, batch, seed_keys(key, 2), epochs=epochs, stopping=stopping
        )
        for seed in (0, 1):
            row = next(r for r in results["rows"] if r["run"] == name and r["seed"] == seed)
            v = jax.tree.map(lambda leaf, s=seed: leaf[s], trained.variables)
            loss_fn, args = Objective(model, TINY.bn), (v["batch_stats"], x, y)
            for measure in FAST:
                _, fn, measure_key = table[measure]
                expected = float(fn(loss_fn, v["params"], args, measure_key, TINY.eps[0]))
                # Differences of losses (average-case sharpness) can be ~1e-4 while f is ~1e-1:
                # vmapped and alone, float32 sums in another order differ by ~1e-7 of f.
                f = float(loss_fn(v["params"], *args))
                np.testing.assert_allclose(row[measure], expected, rtol=1e-3, atol=2e-6 * (1 + f))
            _, test = evaluate(model, v["params"], v["batch_stats"], *map(jnp.asarray, digits[2:4]))
            assert round(row["test_accuracy"] * 360) == round(float(test) * 360)
            assert row["gap"] == pytest.approx(row["train_accuracy"] - row["test_accuracy"])
    json.dumps(results, allow_nan=False)


def test_measures_are_the_same_functions_for_every_key_and_eps():
    """Each measure is one function object (static under jit: its program compiles once), the
    key and eps its traced arguments."""
    first = measures(jax.random.key(0), 1e-3)
    second = measures(jax.random.key(1), 5e-4)
    assert list(first) == list(second)
    for name, (_, fn, key) in first.items():
        assert second[name][1] is fn
        assert not np.array_equal(jax.random.key_data(key), jax.random.key_data(second[name][2]))


def test_rank_correlation_is_kendalls_tau():
    """Oracle: Kendall's tau-b counted by hand over all pairs (no ties here)."""
    rng = np.random.default_rng(0)
    gaps, values = rng.normal(size=9), rng.normal(size=9)
    rows = [{"gap": g, "m": v} for g, v in zip(gaps, values, strict=True)]
    rows.append({"gap": 0.5, "m": None})  # a diverged network is left out
    pairs = list(itertools.combinations(range(9), 2))
    sign = [np.sign((gaps[i] - gaps[j]) * (values[i] - values[j])) for i, j in pairs]
    expected = sum(sign) / len(pairs)
    got = rank_correlations(rows, ("m",))["m"]
    assert got["networks"] == 9
    assert got["tau"] == pytest.approx(expected)
    assert 0 < got["p_value"] < 1
    assert rank_correlations(rows[:2], ("m",))["m"]["tau"] is None  # too few networks
    # Against another column (the training loss): the same count with that column.
    rows = [{"gap": 0.0, "train_loss": g, "m": v} for g, v in zip(gaps, values, strict=True)]
    assert rank_correlations(rows, ("m",), against="train_loss")["m"]["tau"] == pytest.approx(
        expected
    )


def test_unknown_measure_is_named(digits):
    with pytest.raises(ValueError, match=r"^names must be among"):
        run_measures(TINY, jax.random.key(0), digits, names=("sharpest",))


def test_cli_writes_table_and_figure(tmp_path):
    argv = [
        "--config", "digits", "--hidden", "16", "--seeds", "2", "--epochs", "1", "--no-sweep",
        "--measures", "average,pac_bayes_flatness", "--out", str(tmp_path),
    ]  # fmt: skip
    results = measures_script.main(argv)
    assert set(results["measures"]) == {"average", "pac_bayes_flatness"}
    table = (tmp_path / "measures.md").read_text()
    assert "| average |" in table and "| pac_bayes_flatness |" in table
    assert (tmp_path / "measures.png").read_bytes()[:4] == b"\x89PNG"
    with pytest.raises(SystemExit):
        measures_script.main([*argv[:-3], "--measures", "sharpest", "--out", str(tmp_path / "x")])
