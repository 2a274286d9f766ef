"""Smoke runs of the landscape experiments' CLIs: a tiny MLP, 1-2 epochs, 2 seeds, into tmp_path.

The three that measure sharpness or Hessians are marked slow (each compiles a solver).
"""

import json
import math
import operator
from collections.abc import Callable
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest
import scipy.sparse.linalg
from jax.flatten_util import ravel_pytree

import flatmin
import flatmin.paper
from experiments import _cli, batch_size_sweep, parametric_plot, spectrum, warm_start
from flatmin.training.data import load_dataset

from ..support.forward_oracles import BN_EPS, loss_and_accuracy, mlp_logits

TINY = ["--config", "digits", "--hidden", "16", "--seeds", "2"]
# The scripts measure every route of the config; the first-order check below is one of the
# maximum, so the measuring runs take flatmin's maximiser alone.
MAXIMISER = ["--routes", "maximiser"]


def _numbers(value) -> list:
    """Every number in a JSON value, recursively (None counts: it stands for NaN)."""
    if isinstance(value, dict):
        return [n for v in value.values() for n in _numbers(v)]
    if isinstance(value, list):
        return [n for v in value for n in _numbers(v)]
    return [value] if value is None or isinstance(value, int | float) else []


def _load(out: Path, name: str, keys: set[str]) -> dict:
    png = out / f"{name}.png"
    assert png.stat().st_size > 1000 and png.read_bytes()[:4] == b"\x89PNG"
    assert not list(out.glob("*.tmp"))
    results = json.loads((out / f"{name}.json").read_text())
    assert keys <= set(results)
    assert results["config"]["model_kwargs"]["hidden"] == [16]
    return results


def _all_finite(value) -> bool:
    return all(n is not None and math.isfinite(n) for n in _numbers(value))


# Independent checks of what the experiments report, from the trained networks themselves: the
# final variables are read straight from the orbax checkpoints on disk (not through flatmin),
# and the quantities recomputed in float64 by code that shares nothing with flatmin's: NumPy
# forward passes (tests/forward_oracles.py), and JAX autodiff of a hand-written jnp loss.


def _restored(out: Path, experiment: str, run: str) -> dict:
    """{"params", "batch_stats"} (leading seed axis) of training run `run`, from disk."""
    directory = out / "checkpoints" / experiment / "train" / run
    step = max(int(p.name) for p in directory.iterdir() if p.name.isdigit())
    with ocp.StandardCheckpointer() as checkpointer:
        state = checkpointer.restore(directory / str(step) / "state")["carry"]["state"]
    return {"params": state["params"], "batch_stats": state["batch_stats"]}


def _seed(variables: dict, seed: int) -> dict:
    return jax.tree.map(operator.itemgetter(seed), variables)


def _numpy_metrics(variables: dict, x, y) -> tuple[float, float]:
    """Evaluation-mode (loss, accuracy) of the one-hidden-layer MLP, float64 NumPy."""
    return loss_and_accuracy(mlp_logits(variables, x, 1), y)


def _jnp_loss(params: dict, stats: dict, x: jax.Array, y: jax.Array) -> jax.Array:
    """The same evaluation-mode loss written out in jnp (for float64 derivatives)."""
    h = x.reshape(len(x), -1) @ params["Dense_0"]["kernel"]
    bn, running = params["BatchNorm_0"], stats["BatchNorm_0"]
    normalised = (h - running["mean"][None]) / jnp.sqrt(running["var"][None] + BN_EPS)
    h = jnp.maximum(normalised * bn["scale"][None] + bn["bias"][None], 0.0)
    logits = h @ params["Dense_1"]["kernel"] + params["Dense_1"]["bias"][None]
    picked = jnp.take_along_axis(logits, y[:, None], axis=1)[:, 0]
    return jnp.mean(jax.nn.logsumexp(logits, axis=1) - picked)


def _float64_loss(variables: dict, data) -> tuple[jax.Array, Callable]:
    """(x, w -> f(w)): the flattened float64 parameters and the training loss as their
    function. Call under jax.enable_x64."""
    as64 = lambda tree: jax.tree.map(lambda a: jnp.asarray(a, jnp.float64), tree)
    flat, unravel = ravel_pytree(as64(variables["params"]))
    stats = as64(variables["batch_stats"])
    x, y = jnp.asarray(data.x_train, jnp.float64), jnp.asarray(data.y_train)
    return flat, lambda w: _jnp_loss(unravel(w), stats, x, y)


def _first_order_sharpness(variables: dict, data, eps: float) -> float:
    """Metric 2.1 to first order in eps: over the box |y_i| <= eps (|x_i| + 1) the maximum of
    f(x) + g . y is f(x) + eps sum_i (|x_i| + 1) |g_i|, so phi ~ 100 eps sum_i (|x_i| + 1)
    |g_i| / (1 + f(x)). The true maximum differs by O(eps^2): a few percent here."""
    with jax.enable_x64(True):
        flat, loss = _float64_loss(variables, data)
        f, g = jax.value_and_grad(loss)(flat)
        return float(100 * eps * jnp.sum((jnp.abs(flat) + 1) * jnp.abs(g)) / (1 + f))


def _assert_sharpness_is_first_order(reported, variables: dict, data, eps: float) -> None:
    """Reported per-seed sharpness within 10% of the first-order value (measured: 2%). An eps
    mix-up (1e-3 <-> 5e-4) is off by a factor 2, another run's network by 40% or more."""
    for seed, value in enumerate(reported):
        expected = _first_order_sharpness(_seed(variables, seed), data, eps)
        assert math.isclose(value, expected, rel_tol=0.1), (seed, eps, value, expected)


def _assert_seed_metrics(per_seed_loss, per_seed_accuracy, variables: dict, data) -> None:
    """Reported final training loss (evaluation mode, rtol 1e-5 for a float32 mean over 1437
    examples) and test accuracy (as a count of the 360 test examples) of every seed."""
    for seed, (loss, accuracy) in enumerate(zip(per_seed_loss, per_seed_accuracy, strict=True)):
        expected_loss, _ = _numpy_metrics(_seed(variables, seed), data.x_train, data.y_train)
        _, expected_accuracy = _numpy_metrics(_seed(variables, seed), data.x_test, data.y_test)
        assert math.isclose(loss, expected_loss, rel_tol=1e-5), (seed, loss, expected_loss)
        n = len(data.y_test)
        assert round(accuracy * n) == round(expected_accuracy * n), (seed, accuracy)


def _assert_mean_std(stats: dict, per_seed) -> None:
    values = np.asarray(per_seed, np.float64)
    assert math.isclose(stats["mean"], values.mean(), rel_tol=1e-12, abs_tol=1e-12)
    assert math.isclose(stats["std"], values.std(), rel_tol=1e-9, abs_tol=1e-12)


def test_parametric_plot(tmp_path):
    argv = [*TINY, "--epochs", "2", "--points", "7", "--out", str(tmp_path)]
    parametric_plot.main(argv)
    results = _load(tmp_path, "parametric", {"alpha", "paths", "solutions", "interpolated"})
    assert results["alpha"][0] == -1 and results["alpha"][-1] == 2 and len(results["alpha"]) == 7
    assert set(results["paths"]) == {"straight", "curved"}
    for path in results["paths"].values():
        assert set(path) == set(parametric_plot.METRICS)
        # alpha = 0 and 1 (indices 2 and 4 of 7) are the solutions themselves: always defined.
        for values in path.values():
            assert _all_finite([values[2], values[4]])
    assert _all_finite(results["solutions"])
    # The solutions with their own running statistics and with recomputed ones; the paths use
    # the recomputed ones, so they pass through those values at alpha = 0 and 1.
    for regime, index in (("SB", 2), ("LB", 4)):
        endpoint = results["endpoints"][regime]
        assert _all_finite(endpoint)
        for metric in parametric_plot.METRICS:
            on_path = results["paths"]["straight"][metric][index]
            assert math.isclose(endpoint["recomputed_statistics"][metric], on_path, rel_tol=1e-4)


@pytest.mark.slow  # compiles the sharpness solver: ~50 s on 2 loaded cores
def test_batch_size_sweep(tmp_path):
    argv = [*TINY, *MAXIMISER, "--epochs", "1", "--batch-sizes", "64,1437", "--out", str(tmp_path)]
    batch_size_sweep.main(argv)
    results = _load(tmp_path, "batch_size_sweep", {"results", "epochs"})
    assert [row["batch_size"] for row in results["results"]] == [64, 1437]
    data = load_dataset("digits")
    for row in results["results"]:
        assert set(row["sharpness"]) == {"maximiser"}
        assert set(row["sharpness"]["maximiser"]) == {"0.001", "0.0005"}
        assert _all_finite([row["test_accuracy"], row["sharpness"]])
        # Each row against the networks trained at its own batch size, read from disk: a
        # swapped pair of runs, or eps values mixed up, would not match.
        variables = _restored(tmp_path, "batch_size_sweep", f"batch-{row['batch_size']}")
        per_seed = row["per_seed"]
        _assert_seed_metrics(
            per_seed["final_train_loss"], per_seed["test_accuracy"], variables, data
        )
        _assert_mean_std(row["test_accuracy"], per_seed["test_accuracy"])
        by_eps = per_seed["sharpness"]["maximiser"]
        for eps, values in by_eps.items():
            _assert_sharpness_is_first_order(values, variables, data, float(eps))
            _assert_mean_std(row["sharpness"]["maximiser"][eps], values)
        # Nested boxes: the maximum over the larger one is larger, seed by seed.
        assert all(a > b for a, b in zip(*by_eps.values(), strict=True))
    # 22 Adam steps (batch 64) lower the training loss more than one step (batch 1437).
    small, large = (row["per_seed"]["final_train_loss"] for row in results["results"])
    assert all(a < b for a, b in zip(small, large, strict=True))


@pytest.mark.slow  # compiles the sharpness solver: ~50 s on 2 loaded cores
def test_warm_start(tmp_path):
    argv = [*TINY, *MAXIMISER, "--sb-epochs", "2", "--lb-epochs", "1", "--out", str(tmp_path)]
    warm_start.main(argv)
    results = _load(tmp_path, "warm_start", {"results", "lb_batch", "sb_batch"})
    assert [row["sb_epochs"] for row in results["results"]] == [0, 1, 2]
    assert list(results["config"]["routes"]) == ["maximiser"]
    data = load_dataset("digits")
    lb = _restored(tmp_path, "warm_start", "lb")  # run k * seeds + seed: k SB epochs first
    for row in results["results"]:
        assert _all_finite([row["lb_test_accuracy"], row["lb_sharpness"]])
        # Against the LB networks of this k, read from disk (k = 0, 1, 2 differ: a shifted
        # row would not match).
        k, per_seed = row["sb_epochs"], row["per_seed"]
        variables = jax.tree.map(lambda a, k=k: a[2 * k : 2 * k + 2], lb)
        _assert_seed_metrics(
            per_seed["lb_final_train_loss"], per_seed["lb_test_accuracy"], variables, data
        )
        sharp = per_seed["lb_sharpness"]["maximiser"]
        _assert_sharpness_is_first_order(sharp, variables, data, 1e-3)
        _assert_mean_std(row["lb_sharpness"]["maximiser"], sharp)
        if k > 0:  # the SB iterate it started from (k = 0: the initialisation, no accuracy)
            sb = _restored(tmp_path, "warm_start", f"sb-{k}")
            sb_accuracy = [
                _numpy_metrics(_seed(sb, s), data.x_test, data.y_test)[1] for s in (0, 1)
            ]
            assert math.isclose(row["sb_test_accuracy"]["mean"], np.mean(sb_accuracy), rel_tol=1e-5)
    assert results["sharpness_eps"] == 1e-3
    # One sharpness solve per k, each kept on its own: an interrupted run loses no finished k.
    stages = tmp_path / "checkpoints" / "warm_start" / "stages"
    for row in results["results"]:
        stage = f"lb-k{row['sb_epochs']}-maximiser-full-0.001.json"
        kept = json.loads((stages / stage).read_text())
        assert kept["value"]["value"] == row["per_seed"]["lb_sharpness"]["maximiser"]


@pytest.mark.slow  # compiles the sharpness solver: ~50 s on 2 loaded cores
def test_spectrum(tmp_path):
    argv = [*TINY, *MAXIMISER, "--epochs", "1", "--top-k", "3", "--trace-samples", "4"]
    spectrum.main([*argv, "--out", str(tmp_path)])
    results = _load(tmp_path, "spectrum", {"regimes", "top_k"})
    assert set(results["regimes"]) == {"SB", "LB"}
    data = load_dataset("digits")
    top = {}
    for name, regime in results["regimes"].items():
        assert len(regime["top_eigenvalues"]) == 2 and len(regime["top_eigenvalues"][0]) == 3
        assert _all_finite([regime["top_eigenvalues"], regime["trace"], regime["sharpness"]])
        assert all(seed[0] >= seed[-1] for seed in regime["top_eigenvalues"])  # descending
        # Against this regime's networks, read from disk: the Hessian of a hand-written float64
        # loss, its top eigenvalues by ARPACK (scipy's eigsh, not flatmin's Lanczos) and its
        # exact trace, the sum of e_i . H e_i.
        variables = _restored(tmp_path, "spectrum", name)
        for seed in (0, 1):
            eigenvalues, trace, probe_std = _float64_spectrum(_seed(variables, seed), data, 3)
            # float32 Lanczos agrees to 4e-7 (measured); 1e-4 is a float32 Hessian-vector
            # product's accuracy over 1437 examples with room to spare.
            np.testing.assert_allclose(regime["top_eigenvalues"][seed], eigenvalues, rtol=1e-4)
            # Hutchinson with 4 Rademacher probes: within 5 of its exact standard deviation
            # (measured: 0.6); by Chebyshev a correct estimator strays further in < 4% of keys.
            assert abs(regime["trace"][seed] - trace) < 5 * probe_std
        _assert_sharpness_is_first_order(regime["sharpness"]["maximiser"], variables, data, 1e-3)
        top[name] = np.asarray(regime["top_eigenvalues"])
    assert np.max(np.abs(top["SB"] / top["LB"] - 1)) > 1e-2  # a swap of SB and LB would show
    assert "| SB |" in (tmp_path / "spectrum.md").read_text()


def _float64_spectrum(variables: dict, data, k: int) -> tuple[np.ndarray, float, float]:
    """(top-k eigenvalues, trace, standard deviation of a 4-probe Hutchinson estimate) of the
    Hessian of the float64 training loss; the last from the exact formula 2 sum_{i != j}
    H_ij^2 / 4 with the off-diagonal sum as ||H||_F^2 - sum_i H_ii^2."""
    with jax.enable_x64(True):
        flat, loss = _float64_loss(variables, data)
        hvp = jax.jit(lambda v: jax.jvp(jax.grad(loss), (flat,), (v,))[1])
        n = flat.size
        operator_ = scipy.sparse.linalg.LinearOperator(
            (n, n), matvec=lambda v: np.asarray(hvp(jnp.asarray(v.ravel()))), dtype=np.float64
        )
        top = np.sort(
            scipy.sparse.linalg.eigsh(operator_, k, which="LA", return_eigenvectors=False)
        )
        columns = jax.jit(lambda: jax.lax.map(hvp, jnp.eye(n), batch_size=128))()
        H = np.asarray(columns)
    diagonal = np.diag(H)
    off_diagonal = np.sum(H**2) - np.sum(diagonal**2)
    return top[::-1], float(np.sum(diagonal)), float(np.sqrt(2 * off_diagonal / 4))


def test_hidden_flag_rejects_bad_widths():
    with pytest.raises(SystemExit):
        _cli.base_parser("x").parse_args(["--hidden", "16,0"])


def test_route_and_protocol_flags_reach_the_config():
    def parse(argv):
        return _cli.parse(_cli.base_parser("x"), argv)

    digits = flatmin.paper.CONFIGS["digits"]
    assert _cli.build_config(parse([])).routes == digits.routes  # the config's, by default
    assert list(_cli.build_config(parse(["--routes", "paper"])).routes) == ["paper"]
    routes = _cli.build_config(parse(["--routes", "maximiser,paper", "--maxiter", "3"])).routes
    assert list(routes) == ["maximiser", "paper"]
    # The flag changes the iterations alone: each route keeps its start and restarts.
    assert routes["paper"] == flatmin.LBFGSB(
        maxiter=3, pgtol=1e-5, factr=1e7, maxls=20, rescale=False, init="zero"
    )
    assert routes["paper"] == flatmin.LBFGSB.paper(maxiter=3)
    assert routes["maximiser"] == flatmin.LBFGSB(maxiter=3, restarts=4)
    assert _cli.build_config(parse(["--bn", "batch"])).bn == "batch"
    equal = _cli.build_config(parse(["--config", "f1-mnist5k", "--protocol", "equal-loss"]))
    assert (equal.target_loss, equal.patience) == (1e-3, None)
    sized = _cli.build_config(parse(["--config", "mnist1d", "--dataset-size", "2000"]))
    assert sized.dataset_kwargs == {"size": 2000}
    with pytest.raises(SystemExit):
        parse(["--routes", "adam"])
    with pytest.raises(SystemExit):
        _cli.build_config(parse(["--maxiter", "0"]))
