"""Which sharpness measure tells SB from LB, and which predicts the generalization gap?

`run_measures` trains the config's regimes (and, optionally, its batch-size sweep) and
measures every seed with every measure of `MEASURES`: Metric 2.1 by the authors' route and by
flatmin's maximiser, adaptive worst-case and average-case sharpness, the PAC-Bayes flatness
1/sigma^2, and the Hessian's largest eigenvalue and trace. `rank_correlations` gives Kendall's
tau between each measure and the generalization gap (train minus test accuracy) over every
trained network, as Jiang et al. (2020) rank generalization measures.
"""

from collections.abc import Callable

import jax
import numpy as np
import scipy.stats

from flatmin.measures import (
    APGD,
    average_case_sharpness,
    hessian_eigenvalues,
    hessian_trace,
    pac_bayes_sigma,
    sharpness,
    worst_case_sharpness,
)
from flatmin.paper.configs import ROUTES, ExperimentConfig, Regime
from flatmin.paper.keys import measures_key, solve_key
from flatmin.paper.protocol import setup, train_regime
from flatmin.runtime.checkpoint import RunDirectory, json_ready
from flatmin.training.data import Dataset
from flatmin.training.seeds import seed_measure
from flatmin.training.train import EpochMetrics

# Each measure is a module-level function measure(loss_fn, params, args, key, eps) -> scalar:
# one function object each, static under jit, so the compiled programs are reused; the key and
# eps are traced arguments.


def _metric21_paper(loss_fn, params, args, key, eps):
    return sharpness(loss_fn, params, eps=eps, args=args, solver=ROUTES["paper"], key=key)


def _metric21_max(loss_fn, params, args, key, eps):
    return sharpness(loss_fn, params, eps=eps, args=args, solver=ROUTES["maximiser"], key=key)


def _worst_linf(loss_fn, params, args, key, eps):
    return worst_case_sharpness(loss_fn, params, 1e-3, args=args, solver=APGD(), key=key).value


def _worst_l2(loss_fn, params, args, key, eps):
    return worst_case_sharpness(
        loss_fn, params, 0.1, args=args, norm=2, solver=APGD(), key=key
    ).value


def _average(loss_fn, params, args, key, eps):
    return average_case_sharpness(loss_fn, params, 0.01, args=args, num_samples=32, key=key).value


def _pac_bayes(loss_fn, params, args, key, eps):
    # Jiang et al.'s plain sigma (their best-ranked flatness measure, 1/sigma^2).
    return pac_bayes_sigma(loss_fn, params, 0.1, args=args, adaptive=False, key=key).flatness


def _top_eigenvalue(loss_fn, params, args, key, eps):
    return hessian_eigenvalues(loss_fn, params, 1, args=args, key=key, num_iterations=20).value[0]


def _trace(loss_fn, params, args, key, eps):
    return hessian_trace(loss_fn, params, args=args, key=key, num_samples=20, batch_size=10).value


def measures(key: jax.Array, eps: float) -> dict[str, tuple[str, Callable, jax.Array]]:
    """name -> (what it is, measure(loss_fn, params, args, key, eps) -> scalar, its key)."""
    k = measures_key(key)
    return {
        "metric21_paper": (
            f"Metric 2.1, full space, eps {eps:g}, the authors' route (LBFGSB.paper(), y0 = 0)",
            _metric21_paper,
            solve_key(key),
        ),
        "metric21_max": (
            f"Metric 2.1, full space, eps {eps:g}, flatmin's maximiser (best of 4 starts)",
            _metric21_max,
            solve_key(key),
        ),
        "worst_linf": (
            "adaptive worst-case sharpness, l-inf ball rho 1e-3 (scaled by |w|), APGD",
            _worst_linf,
            k,
        ),
        "worst_l2": (
            "adaptive worst-case sharpness, l2 ball rho 0.1 (scaled by |w|), APGD",
            _worst_l2,
            k,
        ),
        "average": (
            "adaptive average-case sharpness, Gaussian sigma 0.01 (scaled by |w|), 32 samples",
            _average,
            k,
        ),
        "pac_bayes_flatness": (
            "PAC-Bayes flatness 1/sigma^2, sigma: expected loss increase 0.1 (Jiang et al.)",
            _pac_bayes,
            k,
        ),
        "hessian_top": ("largest Hessian eigenvalue (Lanczos, 20 iterations)", _top_eigenvalue, k),
        "hessian_trace": ("Hessian trace (Hutchinson, 20 probes)", _trace, k),
    }


def run_measures(
    config: ExperimentConfig,
    key: jax.Array,
    data: Dataset,
    *,
    sweep: bool = True,
    names: tuple[str, ...] | None = None,
    run: RunDirectory | None = None,
    mesh: jax.sharding.Mesh | None = None,
    on_epoch: Callable[[str], Callable[[int, EpochMetrics], None] | None] | None = None,
) -> dict:
    """Every measure (or those `names`) of every seed of the config's regimes (trained as the
    sharpness table trains them) and, with `sweep`, of the batch-size sweep's runs (fixed
    epochs, no stopping rule); rows of {"run", "batch_size", "seed", "train_accuracy",
    "test_accuracy", "gap", "train_loss", name: value, ...}."""
    eps = config.eps[0]
    table = measures(key, eps)
    names = tuple(table) if names is None else names
    for name in names:
        if name not in table:
            raise ValueError(f"names must be among {list(table)}, got {name!r}")
    n = data.x_train.shape[0]
    model, keys, x, y, staged = setup(config, data, key, run)
    runs = [(regime.name, regime.size(n), True, None) for regime in config.regimes]
    if sweep:
        sizes = [Regime("sweep", b).size(n) for b in config.sweep_batch_sizes]
        runs += [(f"batch-{size}", size, False, config.sweep_epochs) for size in sizes]
    rows = []
    for name, batch, stopping, epochs in runs:
        trained = train_regime(
            config, data, batch, keys, epochs=epochs, stopping=stopping, run=run, name=name,
            mesh=mesh, on_epoch=None if on_epoch is None else on_epoch(name),
        )  # fmt: skip
        values = {
            measure: staged(
                f"{name}-{measure}",
                lambda measure=measure, trained=trained: seed_measure(
                    table[measure][1],
                    model,
                    trained.variables,
                    x,
                    y,
                    table[measure][2],
                    np.float32(eps),
                    bn=config.bn,
                    mesh=mesh,
                ),
            )
            for measure in names
        }
        last = trained.epochs - 1
        for seed in range(config.seeds):
            train_accuracy = trained.history.train_accuracy[seed, last[seed]]
            test_accuracy = trained.history.test_accuracy[seed, last[seed]]
            diverged = bool(trained.diverged_epoch[seed] > 0)
            rows.append(
                {
                    "run": name,
                    "batch_size": batch,
                    "seed": seed,
                    "diverged": diverged,
                    "train_accuracy": train_accuracy,
                    "test_accuracy": test_accuracy,
                    "gap": train_accuracy - test_accuracy,
                    "train_loss": trained.history.train_loss[seed, last[seed]],
                    **{m: None if diverged else values[m][seed] for m in names},
                }
            )
    return json_ready(
        {
            "train_size": n,
            "measures": {m: table[m][0] for m in names},
            "rows": rows,
            "rank_correlations": rank_correlations(json_ready(rows), names),
        }
    )


def rank_correlations(rows: list[dict], names: tuple[str, ...], against: str = "gap") -> dict:
    """Kendall's tau (tau-b) between each measure and `against` (the generalization gap, or
    another column such as "train_loss") over every row with both finite, with its two-sided
    p-value and the number of networks."""
    out = {}
    for name in names:
        pairs = [
            (row[name], row[against])
            for row in rows
            if row[name] is not None
            and row[against] is not None
            and np.isfinite(row[name])
            and np.isfinite(row[against])
        ]
        if len(pairs) < 3:
            out[name] = {"tau": None, "p_value": None, "networks": len(pairs)}
            continue
        values, gaps = np.array(pairs, float).T
        tau, p_value = scipy.stats.kendalltau(values, gaps)
        out[name] = {"tau": float(tau), "p_value": float(p_value), "networks": len(pairs)}
    return out
