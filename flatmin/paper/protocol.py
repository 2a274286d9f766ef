"""The paper's core experiment: small- and large-batch seeds, their accuracy and sharpness.

`train_regime` trains one regime's seeds with the config's network and optimizer (Adam);
`run_sharpness_table` trains every regime and measures Metric 2.1 for every seed by every
route (the authors' solve and flatmin's maximiser), in the full space and in one random
subspace shared by all seeds, at each eps, with each solution's gradient norms beside it. Its
result is a plain dict that serialises to JSON as is (results.json); `flatmin.paper.tables`
renders Tables 2-4 with the paper's figures beside ours.
"""

from collections.abc import Callable
from functools import partial
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from flatmin.measures import Solver, noise_floor, random_subspace, sharpness
from flatmin.paper.configs import ExperimentConfig
from flatmin.paper.keys import noise_key, seed_keys, solve_key, subspace_key
from flatmin.runtime.checkpoint import RunDirectory, json_ready
from flatmin.runtime.sharding import check_mesh, place, replicated
from flatmin.training.data import Dataset, load_dataset
from flatmin.training.models import build_model
from flatmin.training.objective import Objective
from flatmin.training.seeds import seed_gradients, seed_sharpness
from flatmin.training.train import EpochMetrics, TrainResult, train_seeds


def load_config_data(config: ExperimentConfig, **kwargs) -> Dataset:
    """The config's data set (`load_dataset(config.dataset, **config.dataset_kwargs)`), with
    `kwargs` (data_dir, path) passed on."""
    return load_dataset(config.dataset, **{**config.dataset_kwargs, **kwargs})


def network(config: ExperimentConfig, data: Dataset):
    """The config's flax model for `data`'s classes, and its optimizer (Adam, the paper's)."""
    model = build_model(config.model, data.num_classes, **config.model_kwargs)
    return model, optax.adam(config.learning_rate)


def train_regime(
    config: ExperimentConfig,
    data: Dataset,
    batch_size: int,
    keys: jax.Array,
    *,
    epochs: int | None = None,
    stopping: bool = True,
    variables: dict | None = None,
    run: RunDirectory | None = None,
    name: str | None = None,
    mesh: jax.sharding.Mesh | None = None,
    on_epoch: Callable[[int, EpochMetrics], None] | None = None,
) -> TrainResult:
    """`train_seeds` of the config's network and optimizer at `batch_size` (config.epochs, or
    `epochs`; the config's stopping rules unless `stopping` is False), from `variables` when
    given. With `run`, checkpointed under run.train_dir(name) and resumed from there."""
    model, optimizer = network(config, data)
    rules = (
        {"target_loss": config.target_loss, "patience": config.patience}
        if stopping
        else {"target_loss": None, "patience": None}
    )
    return train_seeds(
        model,
        optimizer,
        data,
        keys,
        batch_size=batch_size,
        epochs=epochs or config.epochs,
        min_improvement=config.min_improvement,
        **rules,
        variables=variables,
        on_epoch=on_epoch,
        mesh=mesh,
        checkpoint_dir=None if run is None else run.train_dir(name or f"batch-{batch_size}"),
        checkpoint_every=5 if run is None else run.checkpoint_every,
        fingerprint={"optimizer": f"adam({config.learning_rate})"},
    )


def solve_columns(result) -> dict[str, np.ndarray]:
    """A `SharpnessResult` of stacked seeds as {field: (S,) array}, y left out: JSON-able."""
    return {field: value for field, value in result._asdict().items() if field != "y"}


def measure_routes(
    config: ExperimentConfig,
    model,
    variables: dict,
    x: jax.Array,
    y: jax.Array,
    key: jax.Array,
    spaces: dict,
    *,
    eps: tuple[float, ...] | None = None,
    staged: Callable[[str, Callable[[], dict]], dict],
    prefix: str,
    mesh: jax.sharding.Mesh | None = None,
) -> dict:
    """Metric 2.1 of stacked seeds by every route of the config, in every space (name -> A or
    None) at every eps: {route: {space: {eps: {field: (S,) list}}}}, each solve a stage
    `prefix-route-space-eps` of `staged` (memoised, so a rerun skips it)."""
    solves: dict = {}
    for route_name, solver in config.routes.items():
        solves[route_name] = {}
        for space, matrix in spaces.items():
            solves[route_name][space] = {}
            for e in eps or config.eps:
                solve = partial(
                    seed_sharpness, model, variables, x, y, matrix, e, key=solve_key(key),
                    solver=solver, bn=config.bn, mesh=mesh,
                )  # fmt: skip
                solves[route_name][space][str(e)] = staged(
                    f"{prefix}-{route_name}-{space}-{e}", lambda solve=solve: solve_columns(solve())
                )
    return solves


def noise_floors(
    config: ExperimentConfig,
    model,
    variables: dict,
    x: jax.Array,
    y: jax.Array,
    key: jax.Array,
    spaces: dict,
    *,
    staged: Callable[[str, Callable[[], dict]], dict],
    prefix: str,
) -> dict:
    """{route: {space: {eps: {value, mean, std, min, max}}}}: `flatmin.noise_floor` of seed 0's
    Metric 2.1 by each route: parameters perturbed at float32's rounding scale (relative
    1e-7), the route's random starts redrawn, config.noise_samples times."""
    seed0 = jax.tree.map(lambda leaf: leaf[0], variables)
    objective = Objective(model, config.bn)
    out: dict = {}
    for route_name, solver in config.routes.items():
        out[route_name] = {}
        for space, matrix in spaces.items():
            out[route_name][space] = {}
            for e in config.eps:

                def floor(solver=solver, matrix=matrix, e=e):
                    found = _noise_floor(
                        objective, seed0, x, y, matrix, e, noise_key(key), solver=solver,
                        samples=config.noise_samples,
                    )  # fmt: skip
                    return {k: v for k, v in found._asdict().items() if k != "values"}

                out[route_name][space][str(e)] = staged(
                    f"{prefix}-{route_name}-{space}-{e}-noise", floor
                )
    return out


@partial(jax.jit, static_argnames=("objective", "solver", "samples"))
def _noise_floor(objective, variables, x, y, A, eps, key, *, solver: Solver, samples: int):
    def measure(p, *args, key):
        return sharpness(objective, p, A, eps, args=args, solver=solver, key=key)

    args = (variables["batch_stats"], x, y)
    return noise_floor(
        measure, variables["params"], args=args, key=key, num_samples=samples, keyed=True
    )


def stager(run: RunDirectory | None) -> Callable[[str, Callable[[], dict]], dict]:
    """run.stage, or (without a run directory) compute now; either way JSON-ready values."""
    if run is None:
        return lambda name, compute: json_ready(compute())
    return run.stage


class Setup(NamedTuple):
    """What every experiment of the paper layer starts from."""

    model: object  # the config's flax module
    keys: jax.Array  # (S,) training keys, `flatmin.paper.keys.seed_keys`
    x: jax.Array  # the training inputs and labels, on the device(s)
    y: jax.Array
    staged: Callable[[str, Callable[[], dict]], dict]  # `stager(run)`


def setup(
    config: ExperimentConfig,
    data: Dataset,
    key: jax.Array,
    run: RunDirectory | None,
    mesh: jax.sharding.Mesh | None = None,
) -> Setup:
    """The config's model, seed keys, the training set placed once (replicated over `mesh`
    when given) and the run's stage memo."""
    model, _ = network(config, data)
    arrays = (data.x_train, data.y_train)
    x, y = place(arrays, replicated(mesh)) if mesh is not None else map(jnp.asarray, arrays)
    return Setup(model, seed_keys(key, config.seeds), x, y, stager(run))


def run_sharpness_table(
    config: ExperimentConfig,
    key: jax.Array,
    data: Dataset | None = None,
    *,
    run: RunDirectory | None = None,
    mesh: jax.sharding.Mesh | None = None,
    on_epoch: Callable[[str], Callable[[int, EpochMetrics], None] | None] | None = None,
) -> dict:
    """Trains every regime's seeds and measures them; returns the results.json dict.

    Seed k of every regime starts from the same initialisation (`flatmin.paper.keys`), so the
    regimes differ only in batch size. With `run`, training checkpoints, gradient norms and
    every finished sharpness solve are kept in its directory, and a rerun resumes where it
    stopped. Seeds are sharded over `mesh` (default: all devices). `on_epoch(regime)` gives
    each regime's per-epoch callback (a progress bar).
    """
    data = load_config_data(config) if data is None else data
    n = data.x_train.shape[0]
    sizes = config.batch_sizes(n)  # every regime's batch, checked before the first one trains
    mesh = check_mesh(mesh)
    model, keys, x, y, staged = setup(config, data, key, run, mesh)

    results, floors = [], {}
    for regime in config.regimes:
        trained = train_regime(
            config, data, sizes[regime.name], keys, run=run, name=regime.name, mesh=mesh,
            on_epoch=None if on_epoch is None else on_epoch(regime.name),
        )  # fmt: skip
        spaces = {"full": None}
        if "subspace" in config.spaces:
            params0 = jax.tree.map(lambda leaf: leaf[0], trained.variables["params"])
            spaces["subspace"] = random_subspace(
                subspace_key(key),
                params0,
                config.subspace_dim,
                distribution=config.subspace_distribution,
                normalize=config.subspace_normalize,
            )
        spaces = {space: spaces[space] for space in config.spaces}
        gradients = staged(
            f"{regime.name}-gradients",
            lambda trained=trained: seed_gradients(
                model, trained.variables, x, y, bn=config.bn, mesh=mesh
            ),
        )
        solves = measure_routes(
            config, model, trained.variables, x, y, key, spaces, staged=staged,
            prefix=regime.name, mesh=mesh,
        )  # fmt: skip
        if config.noise_samples:
            floors[regime.name] = noise_floors(
                config, model, trained.variables, x, y, key, spaces, staged=staged,
                prefix=regime.name,
            )  # fmt: skip
        for seed in range(config.seeds):
            last = trained.epochs[seed] - 1

            def pick(tree, seed=seed):
                """The seed's entry of every (S,) column of a nested dict."""
                if isinstance(tree, dict):
                    return {k: pick(v) for k, v in tree.items()}
                return tree[seed]

            results.append(
                {
                    "regime": regime.name,
                    "seed": seed,
                    "batch_size": sizes[regime.name],
                    "train_accuracy": trained.history.train_accuracy[seed, last],
                    "test_accuracy": trained.history.test_accuracy[seed, last],
                    "final_train_loss": trained.history.train_loss[seed, last],
                    "epochs": trained.epochs[seed],
                    "diverged": bool(trained.diverged_epoch[seed] > 0),
                    "diverged_epoch": trained.diverged_epoch[seed] or None,
                    # f and its gradient at the solution, with batch norm as in the metric.
                    "loss": gradients["loss"][seed],
                    "grad_inf_norm": gradients["grad_inf_norm"][seed],
                    "grad_2_norm": gradients["grad_2_norm"][seed],
                    "sharpness": {
                        route: {
                            space: {eps: solved["value"][seed] for eps, solved in by_eps.items()}
                            for space, by_eps in by_space.items()
                        }
                        for route, by_space in solves.items()
                    },
                    # How each solve ended (see `flatmin.SharpnessResult`).
                    "solves": pick(solves),
                }
            )
    return json_ready(
        {
            "config": config.to_json(),
            "train_size": n,
            "batch_sizes": sizes,
            "results": results,
            "noise_floors": floors,
        }
    )
