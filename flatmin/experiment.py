"""The paper's core experiment: small-batch (SB) vs large-batch (LB) seeds, accuracy and sharpness.

`run_sharpness_table` trains S seeds per regime with `train_seeds`, then measures Metric 2.1 for
every seed, vmapped, in the full space and in one random subspace shared by all seeds, at each
eps. Its result is a plain dict that serialises to JSON as is (results.json); `format_tables`
renders Tables 2-4 with the paper's figures beside ours.
"""

import dataclasses
import math
import operator
from collections.abc import Mapping
from functools import partial
from typing import Any

import jax
import numpy as np

from flatmin.checkpoint import RunDirectory, json_ready
from flatmin.data import Dataset, load_dataset
from flatmin.models import build_model
from flatmin.objective import make_loss_fn
from flatmin.sharding import (
    check_mesh,
    gather,
    pad_seeds,
    padded_size,
    place,
    replicated,
    seed_sharding,
)
from flatmin.sharpness import INITS, SharpnessResult, solve_sharpness
from flatmin.solvers import LBFGSB, Solver, solver_to_json
from flatmin.subspace import DISTRIBUTIONS, random_subspace
from flatmin.train import TrainConfig, train_seeds

REGIMES = ("SB", "LB")


@dataclasses.dataclass(frozen=True)
class ExperimentConfig:
    """One network's SB-vs-LB protocol.

    Attributes:
      name: the config's name (a key of CONFIGS, or your own).
      model, model_kwargs, dataset: what is trained (see `TrainConfig`).
      sb_batch: small-batch size (the paper: 256).
      lb_batch: large-batch size; None means 10% of the training set (the paper's rule).
      epochs, target_loss, patience, learning_rate: the stopping rules, shared by SB and LB.
      seeds: seeds per regime (the paper: 5).
      eps: box sizes of Metric 2.1.
      subspace_dim, subspace_distribution, subspace_normalize: the random subspace A.
      solver, restarts, init: how the inner maximum is solved (see `flatmin.sharpness`).
    """

    name: str
    model: str
    dataset: str
    sb_batch: int
    epochs: int
    model_kwargs: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    lb_batch: int | None = None
    target_loss: float | None = None
    patience: int | None = None
    learning_rate: float = 1e-3
    seeds: int = 5
    eps: tuple[float, ...] = (1e-3, 5e-4)
    subspace_dim: int = 100
    subspace_distribution: str = "gaussian"
    subspace_normalize: bool = False
    solver: Solver = LBFGSB()
    restarts: int = 1
    init: str = "random"

    def __post_init__(self):
        if isinstance(self.seeds, bool) or not isinstance(self.seeds, int) or self.seeds < 1:
            raise ValueError(f"seeds must be an integer >= 1, got {self.seeds!r}")
        if not self.eps or not all(math.isfinite(e) and e > 0 for e in self.eps):
            raise ValueError(f"eps must be finite numbers > 0, got {self.eps!r}")
        if self.subspace_distribution not in DISTRIBUTIONS:
            raise ValueError(
                f"subspace_distribution must be one of {DISTRIBUTIONS}, "
                f"got {self.subspace_distribution!r}"
            )
        if not callable(getattr(self.solver, "maximize", None)):
            raise ValueError(
                f"solver must be a solver object such as flatmin.LBFGSB(), got {self.solver!r}"
            )
        if isinstance(self.restarts, bool) or not isinstance(self.restarts, int):
            raise ValueError(f"restarts must be an integer >= 1, got {self.restarts!r}")
        if self.restarts < 1:
            raise ValueError(f"restarts must be an integer >= 1, got {self.restarts!r}")
        if self.init not in INITS:
            raise ValueError(f"init must be one of {INITS}, got {self.init!r}")
        # Building both training configs checks model, dataset, sizes and stopping rules now,
        # before any data is loaded or anything compiled.
        self.train_config("SB", train_size=None)
        self.train_config("LB", train_size=None)

    def lb_size(self, train_size: int) -> int:
        """The large batch for a training set of `train_size` examples."""
        return self.lb_batch if self.lb_batch is not None else max(1, train_size // 10)

    def train_config(self, regime: str, train_size: int | None) -> TrainConfig:
        """The `TrainConfig` of one regime (LB needs the training-set size for its 10% rule)."""
        if regime not in REGIMES:
            raise ValueError(f"regime must be one of {REGIMES}, got {regime!r}")
        if regime == "SB":
            batch = self.sb_batch
        else:
            batch = self.lb_size(train_size) if train_size is not None else (self.lb_batch or 1)
        return TrainConfig(
            model=self.model,
            model_kwargs=dict(self.model_kwargs),
            dataset=self.dataset,
            batch_size=batch,
            epochs=self.epochs,
            learning_rate=self.learning_rate,
            target_loss=self.target_loss,
            patience=self.patience,
        )

    def to_json(self) -> dict:
        """The config as plain JSON types (the solver as its type and fields)."""
        fields = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        fields["solver"] = solver_to_json(self.solver)
        return json_ready(fields)


# The digits protocol (README, "Choosing the digits protocol"): a 3x512 MLP, SB = 16 and LB = the
# whole training set, both stopped at the same training loss 1e-2: at equal loss the minimisers
# are comparable, and 1e-2 stays far above float32's rounding noise in the metric. On 1437
# examples 10% (144) is not a large batch in the paper's sense (its LBs were 5000-6000).
CONFIGS: dict[str, ExperimentConfig] = {
    "digits": ExperimentConfig(
        name="digits",
        model="mlp",
        model_kwargs={"hidden": (512, 512, 512)},
        dataset="digits",
        sb_batch=16,
        lb_batch=1437,
        epochs=200,
        target_loss=1e-2,
    ),
    # The paper's networks (setups.md): SB 256, LB 10%, trained until the loss stops improving.
    **{
        name: ExperimentConfig(
            name=name,
            model=name,
            dataset=dataset,
            sb_batch=256,
            epochs=100,
            patience=5,
        )
        for name, dataset in [
            ("f1", "mnist"),
            ("c1", "cifar10"),
            ("c2", "cifar10"),
            ("c3", "cifar100"),
            ("c4", "cifar100"),
        ]
    },
    "f2": ExperimentConfig(
        name="f2", model="f2", dataset="timit", sb_batch=256, epochs=100, patience=5
    ),
}


def seed_sharpness(
    model,
    variables: dict,
    x: jax.Array,
    y: jax.Array,
    A: jax.Array | None,
    eps: float,
    *,
    key: jax.Array,
    solver: Solver = LBFGSB(),
    restarts: int = 1,
    init: str = "random",
    chunk_size: int = 2048,
    seeds_per_solve: int | None = None,
    mesh: jax.sharding.Mesh | None = None,
) -> SharpnessResult:
    """Metric 2.1 of every seed: variables stacked over seeds, solved vmapped.

    f is each seed's evaluation-mode training loss over (x, y) with its own running statistics;
    A (shared by all seeds) or None for the full space. A diverged seed gives NaN, not an error.
    One compiled program serves every eps, regime and data set of the same shapes. The seeds are
    sharded over `mesh` (default: all devices), padded to a multiple of its size.

    seeds_per_solve: how many seeds one vmapped solve takes (rounded up to a multiple of the
      mesh size; None: all of them); the groups run one after another through the same
      compiled program, the last one padded. Memory grows with the seeds solved together (each
      vmapped loss evaluation holds every seed's activations): give a size for many seeds.

    Returns:
      A `SharpnessResult` of (S,) NumPy arrays, y left out (None): it is as large as the
      variables.
    """
    if seeds_per_solve is not None and (
        isinstance(seeds_per_solve, bool)
        or not isinstance(seeds_per_solve, int)
        or seeds_per_solve < 1
    ):
        raise ValueError(
            f"seeds_per_solve must be None or an integer >= 1, got {seeds_per_solve!r}"
        )
    mesh = check_mesh(mesh)
    num_seeds = jax.tree.leaves(variables)[0].shape[0]
    group = padded_size(min(seeds_per_solve or num_seeds, num_seeds), mesh)
    x, y, A, key = place((x, y, A, key), replicated(mesh))
    parts = []
    for start in range(0, num_seeds, group):
        part = jax.tree.map(operator.itemgetter(slice(start, start + group)), variables)
        size = jax.tree.leaves(part)[0].shape[0]
        part = place(pad_seeds(part, group), seed_sharding(mesh))
        solved = _seed_sharpness(
            model, part, x, y, A, np.float32(eps), key, solver, restarts, init, chunk_size
        )
        parts.append(gather(solved, size))
    return jax.tree.map(lambda *columns: np.concatenate(columns), *parts)


def solve_columns(*args, **kwargs) -> dict[str, np.ndarray]:
    """`seed_sharpness` as {field: (S,) array}, y left out: a results.json stage."""
    result = seed_sharpness(*args, **kwargs)
    return {field: value for field, value in result._asdict().items() if field != "y"}


@partial(jax.jit, static_argnums=(0, 7, 8, 9, 10))
def _seed_sharpness(model, variables, x, y, A, eps, key, solver, restarts, init, chunk):
    def one(params, batch_stats):
        loss_fn = make_loss_fn(model, batch_stats, x, y, chunk_size=chunk)
        result = solve_sharpness(
            loss_fn, params, A, eps, solver=solver, key=key, restarts=restarts, init=init
        )
        return result._replace(y=None)

    return jax.vmap(one)(variables["params"], variables["batch_stats"])


def run_sharpness_table(
    config: ExperimentConfig,
    key: jax.Array,
    data: Dataset | None = None,
    *,
    progress: bool = False,
    run: RunDirectory | None = None,
    mesh: jax.sharding.Mesh | None = None,
) -> dict:
    """Trains SB and LB seeds and measures them; returns the results.json dict.

    Seed k of both regimes starts from the same initialisation (keys split from `key`), so
    SB and LB differ only in batch size. With `run`, training checkpoints and every finished
    sharpness solve are kept in its directory, and a rerun resumes where it stopped. Seeds are
    sharded over `mesh` (default: all devices).
    """
    if data is None:
        data = load_dataset(config.dataset)
    n = data.x_train.shape[0]
    for regime in REGIMES:  # both, before the first one trains
        batch = config.train_config(regime, n).batch_size
        if batch > n:
            raise ValueError(f"{regime} batch size ({batch}) is larger than the training set ({n})")
    seeds = seed_keys(key, config.seeds)
    subspace_key = jax.random.split(jax.random.fold_in(key, 1))[0]
    solver_key = solve_key(key)
    model = build_model(config.model, data.num_classes, **config.model_kwargs)
    mesh = check_mesh(mesh)
    # On every device once, here, not once per solve below.
    x, y = place((data.x_train, data.y_train), replicated(mesh))

    results = []
    for regime in REGIMES:
        trained = train_seeds(
            config.train_config(regime, n),
            seeds,
            data,
            progress=progress,
            mesh=mesh,
            checkpoint_dir=None if run is None else run.train_dir(regime),
            checkpoint_every=5 if run is None else run.checkpoint_every,
        )
        params0 = jax.tree.map(lambda leaf: leaf[0], trained.variables["params"])
        A = random_subspace(
            subspace_key,
            params0,
            config.subspace_dim,
            distribution=config.subspace_distribution,
            normalize=config.subspace_normalize,
        )
        solves = {"full": {}, "subspace": {}}
        for space, matrix in (("full", None), ("subspace", A)):
            for eps in config.eps:
                solve = partial(
                    solve_columns,
                    model,
                    trained.variables,
                    x,
                    y,
                    matrix,
                    eps,
                    key=solver_key,
                    solver=config.solver,
                    restarts=config.restarts,
                    init=config.init,
                    mesh=mesh,
                )
                columns = solve() if run is None else run.stage(f"{regime}-{space}-{eps}", solve)
                solves[space][str(eps)] = json_ready(columns)
        for seed in range(config.seeds):
            last = trained.epochs[seed] - 1
            results.append(
                {
                    "regime": regime,
                    "seed": seed,
                    "batch_size": config.train_config(regime, n).batch_size,
                    "train_accuracy": trained.history.train_accuracy[seed, last],
                    "test_accuracy": trained.history.test_accuracy[seed, last],
                    "final_train_loss": trained.history.train_loss[seed, last],
                    "epochs": trained.epochs[seed],
                    "diverged": bool(trained.diverged_epoch[seed] > 0),
                    "diverged_epoch": trained.diverged_epoch[seed] or None,
                    "sharpness": {
                        space: {eps: solved["value"][seed] for eps, solved in by_eps.items()}
                        for space, by_eps in solves.items()
                    },
                    # How each solve ended (see `flatmin.SharpnessResult`).
                    "solves": {
                        space: {
                            eps: {field: column[seed] for field, column in solved.items()}
                            for eps, solved in by_eps.items()
                        }
                        for space, by_eps in solves.items()
                    },
                }
            )
    return json_ready({"config": config.to_json(), "train_size": n, "results": results})


def seed_keys(key: jax.Array, seeds: int) -> jax.Array:
    """(seeds,) training keys from an experiment's master key: seed k of every experiment, and
    of both regimes, starts from the same initialisation."""
    return jax.random.split(jax.random.fold_in(key, 0), seeds)


def solve_key(key: jax.Array) -> jax.Array:
    """The key of the sharpness solver's random starts, from an experiment's master key."""
    return jax.random.split(jax.random.fold_in(key, 1))[1]
