"""What Metric 2.1 measures: the same trained seeds measured under every choice that moves it.

For every regime (SB and the large batches) and seed, `run_metric_ablation` solves Metric 2.1
under each `Cell`: a route (the authors' solve on the device, scipy's fmin_l_bfgs_b itself,
flatmin's maximiser), a batch-norm mode inside f (running averages, or the training set's own
statistics as the authors' Keras code normalised), a space (the full space, or a random
subspace of Gaussian or uniform columns, unit-norm or not) and an eps; under each training
protocol (the paper's stopping, or every regime at equal training loss). Every row records
every choice with the value, the solution's training loss and its gradient norms.
"""

import dataclasses
import itertools
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from flatmin._checks import check_one_of
from flatmin.measures import random_subspace
from flatmin.paper import configs
from flatmin.paper.configs import PROTOCOLS, ExperimentConfig
from flatmin.paper.keys import solve_key, subspace_key
from flatmin.paper.protocol import setup, solve_columns, train_regime
from flatmin.reference import scipy_sharpness
from flatmin.runtime.checkpoint import RunDirectory, json_ready
from flatmin.training.data import Dataset
from flatmin.training.objective import BN_MODES, Objective
from flatmin.training.seeds import seed_gradients, seed_sharpness
from flatmin.training.train import EpochMetrics

# The routes a cell can take: the device solvers of `configs.ROUTES`, and "scipy": scipy's
# fmin_l_bfgs_b itself, on the host (`flatmin.reference`), the authors' solve as they ran it.
SCIPY = "scipy"
ROUTES = (*configs.ROUTES, SCIPY)
# The routes of the default design.
DEFAULT_ROUTES = ("paper", SCIPY, "maximiser")
# space name -> (distribution, unit-norm columns), None for the full space.
SUBSPACES = {
    "full": None,
    "gaussian": ("gaussian", False),
    "gaussian-normalized": ("gaussian", True),
    "uniform": ("uniform", False),
    "uniform-normalized": ("uniform", True),
}


@dataclasses.dataclass(frozen=True)
class Cell:
    """One way of measuring Metric 2.1: route, batch-norm mode, space and eps."""

    route: str
    bn: str
    subspace: str
    eps: float

    def __post_init__(self):
        check_one_of("route", self.route, ROUTES)
        check_one_of("bn", self.bn, BN_MODES)
        check_one_of("subspace", self.subspace, tuple(SUBSPACES))

    @property
    def space(self) -> str:
        return "full" if self.subspace == "full" else "subspace"

    @property
    def name(self) -> str:
        return f"{self.route}-{self.bn}-{self.subspace}-{self.eps}"


def default_cells(eps: Sequence[float]) -> dict[str, list[Cell]]:
    """The design, per protocol. Under the paper's protocol: every route x batch-norm mode x
    {full, Gaussian subspace} x eps, then the other subspaces (running statistics, the first
    eps) by the authors' route and the maximiser. Under equal loss: every route x batch-norm
    mode in the full space at the first eps."""
    paper = [
        Cell(route, bn, subspace, e)
        for route, bn, subspace, e in itertools.product(
            DEFAULT_ROUTES, BN_MODES, ("full", "gaussian"), eps
        )
    ]
    paper += [
        Cell(route, "running", subspace, eps[0])
        for route in ("paper", "maximiser")
        for subspace in ("gaussian-normalized", "uniform", "uniform-normalized")
    ]
    equal = [Cell(route, bn, "full", eps[0]) for route in DEFAULT_ROUTES for bn in BN_MODES]
    return {"paper": paper, "equal-loss": equal}


def select_cells(
    cells: dict[str, list[Cell]],
    *,
    protocols: Sequence[str] | None = None,
    routes: Sequence[str] | None = None,
    bn: Sequence[str] | None = None,
    subspaces: Sequence[str] | None = None,
) -> dict[str, list[Cell]]:
    """The cells whose every choice is among those given (None: any); names are checked."""
    for name, chosen, allowed in (
        ("protocols", protocols, PROTOCOLS),
        ("routes", routes, ROUTES),
        ("bn", bn, BN_MODES),
        ("subspaces", subspaces, tuple(SUBSPACES)),
    ):
        for value in chosen or ():
            check_one_of(name, value, allowed)
    keep = {
        protocol: [
            cell
            for cell in protocol_cells
            if (routes is None or cell.route in routes)
            and (bn is None or cell.bn in bn)
            and (subspaces is None or cell.subspace in subspaces)
        ]
        for protocol, protocol_cells in cells.items()
        if protocols is None or protocol in protocols
    }
    return {protocol: chosen for protocol, chosen in keep.items() if chosen}


def run_metric_ablation(
    config: ExperimentConfig,
    key: jax.Array,
    data: Dataset,
    *,
    cells: dict[str, list[Cell]] | None = None,
    run: RunDirectory | None = None,
    mesh: jax.sharding.Mesh | None = None,
    on_epoch: Callable[[str], Callable[[int, EpochMetrics], None] | None] | None = None,
) -> dict:
    """Trains every regime's seeds under each protocol of `cells` (default: `default_cells`)
    and measures each seed under each cell; returns {"cells": ..., "rows": [...]}.

    Rows: {"protocol", "regime", "batch_size", "seed", "route", "bn", "subspace", "space",
    "eps", "value", "grad_inf_norm", "grad_2_norm", "train_loss", "test_accuracy",
    "num_steps", "num_evaluations"}; value None where a seed diverged. The gradient norms and
    training loss are those of f with the cell's batch-norm mode.
    """
    cells = default_cells(config.eps) if cells is None else cells
    for protocol in cells:
        config.with_protocol(protocol)  # an unknown protocol, or no equal_loss target: now
    n = data.x_train.shape[0]
    sizes = config.batch_sizes(n)
    model, keys, x, y, staged = setup(config, data, key, run)
    rows = []
    for protocol, protocol_cells in cells.items():
        protocol_config = config.with_protocol(protocol)
        for regime in config.regimes:
            name = f"{protocol}-{regime.name}"
            trained = train_regime(
                protocol_config, data, sizes[regime.name], keys, run=run, name=name, mesh=mesh,
                on_epoch=None if on_epoch is None else on_epoch(name),
            )  # fmt: skip
            variables = trained.variables
            params0 = jax.tree.map(lambda leaf: leaf[0], variables["params"])
            gradients = {
                bn: staged(
                    f"{name}-gradients-{bn}",
                    lambda bn=bn, variables=variables: seed_gradients(
                        model, variables, x, y, bn=bn, mesh=mesh
                    ),
                )
                for bn in sorted({cell.bn for cell in protocol_cells})
            }
            last = trained.epochs - 1
            accuracy = trained.history.test_accuracy[np.arange(config.seeds), last]
            for cell in protocol_cells:
                A = None
                if SUBSPACES[cell.subspace] is not None:
                    distribution, normalize = SUBSPACES[cell.subspace]
                    A = random_subspace(
                        subspace_key(key), params0, config.subspace_dim,
                        distribution=distribution, normalize=normalize,
                    )  # fmt: skip
                columns = staged(
                    f"{name}-{cell.name}",
                    lambda cell=cell, A=A, variables=variables: _measure(
                        model, variables, x, y, A, cell, key, mesh
                    ),
                )
                for seed in range(config.seeds):
                    diverged = bool(trained.diverged_epoch[seed] > 0)
                    rows.append(
                        {
                            "protocol": protocol,
                            "regime": regime.name,
                            "batch_size": sizes[regime.name],
                            "seed": seed,
                            **dataclasses.asdict(cell),
                            "space": cell.space,
                            "value": None if diverged else columns["value"][seed],
                            "num_steps": columns["num_steps"][seed],
                            "num_evaluations": columns["num_evaluations"][seed],
                            "grad_inf_norm": gradients[cell.bn]["grad_inf_norm"][seed],
                            "grad_2_norm": gradients[cell.bn]["grad_2_norm"][seed],
                            "train_loss": gradients[cell.bn]["loss"][seed],
                            "test_accuracy": accuracy[seed],
                        }
                    )
    return json_ready(
        {
            "train_size": n,
            "batch_sizes": sizes,
            "cells": {p: [dataclasses.asdict(c) for c in cs] for p, cs in cells.items()},
            "rows": rows,
        }
    )


def _measure(model, variables, x, y, A, cell: Cell, key, mesh) -> dict:
    """{value, num_steps, num_evaluations}: (S,) lists for one cell."""
    if cell.route != SCIPY:
        result = seed_sharpness(
            model, variables, x, y, A, cell.eps, key=solve_key(key),
            solver=configs.ROUTES[cell.route], bn=cell.bn, mesh=mesh,
        )  # fmt: skip
        return {k: v for k, v in solve_columns(result).items() if k in _COLUMNS}
    # scipy drives its iterations from Python: one seed after another.
    out = {k: [] for k in _COLUMNS}
    num_seeds = jax.tree.leaves(variables)[0].shape[0]
    objective = Objective(model, cell.bn)
    for seed in range(num_seeds):
        v = jax.tree.map(lambda leaf, s=seed: leaf[s], variables)
        if not all(bool(jnp.all(jnp.isfinite(leaf))) for leaf in jax.tree.leaves(v)):
            found = (float("nan"), 0, 0)
        else:
            args = (v["batch_stats"], x, y)
            reference = scipy_sharpness(objective, v["params"], A, cell.eps, args=args)
            found = (reference.value, reference.num_steps, reference.num_evaluations)
        for column, value in zip(_COLUMNS, found, strict=True):
            out[column].append(value)
    return out


_COLUMNS = ("value", "num_steps", "num_evaluations")


def _ratio(mean: float | None, base: float | None) -> float | None:
    """mean / base; inf when only base is 0 (SB measured exactly 0), None when undefined."""
    if mean is None or base is None:
        return None
    if base == 0:
        return float("inf") if mean > 0 else None
    return mean / base


def summarise(results: dict, config: dict) -> list[dict]:
    """Per (protocol, route, bn, subspace, eps): mean and std over seeds per regime, and each
    large-batch regime's ratio of means to the first (small-batch) regime's."""
    regimes = list(config["regimes"])
    groups: dict[tuple, dict[str, list[float]]] = {}
    for row in results["rows"]:
        key = (row["protocol"], row["route"], row["bn"], row["subspace"], row["eps"])
        groups.setdefault(key, {r: [] for r in regimes})[row["regime"]].append(row["value"])
    summary = []
    for (protocol, route, bn, subspace, eps), by_regime in groups.items():
        stats = {}
        for regime, values in by_regime.items():
            finite = np.array([v for v in values if v is not None and np.isfinite(v)], float)
            stats[regime] = {
                "mean": float(finite.mean()) if finite.size else None,
                "std": float(finite.std()) if finite.size else None,
                "seeds": int(finite.size),
            }
        base = stats[regimes[0]]["mean"]
        ratios = {regime: _ratio(stats[regime]["mean"], base) for regime in regimes[1:]}
        summary.append(
            {
                "protocol": protocol, "route": route, "bn": bn, "subspace": subspace,
                "eps": eps, "stats": stats, "ratios": ratios,
            }
        )  # fmt: skip
    return summary
