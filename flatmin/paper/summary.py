"""Summaries over seeds that the paper's experiments share: mean and spread, per-route
sharpness, and the per-regime progress callbacks."""

from collections.abc import Callable

import numpy as np

from flatmin.training.train import EpochMetrics

OnEpoch = Callable[[str], Callable[[int, EpochMetrics], None] | None] | None
STATISTICS = "mean and population std over seeds (diverged seeds excluded)"


def mean_std(values) -> dict[str, float | None]:
    """{"mean", "std"} over seeds (population std), ignoring NaN/None (a diverged seed)."""
    values = np.asarray([np.nan if v is None else v for v in np.ravel(values)], np.float64)
    finite = values[np.isfinite(values)]
    if finite.size == 0:
        return {"mean": None, "std": None}
    return {"mean": float(finite.mean()), "std": float(finite.std())}


def callback(on_epoch: OnEpoch, name: str):
    return None if on_epoch is None else on_epoch(name)


def sharpness_stats(solves: dict) -> dict:
    """{route: {eps: mean_std}} of the full-space values of `measure_routes`."""
    return {
        route: {eps: mean_std(columns["value"]) for eps, columns in by_space["full"].items()}
        for route, by_space in solves.items()
    }


def per_seed_sharpness(solves: dict) -> dict:
    """{route: {eps: (S,) values}} of the full-space values of `measure_routes`."""
    return {
        route: {eps: columns["value"] for eps, columns in by_space["full"].items()}
        for route, by_space in solves.items()
    }
