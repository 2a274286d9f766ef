"""The paper's other experiments: Figure 4 (batch size), Figure 5 (warm starts), the Hessian
spectrum, and Figure 3 (the 1-D landscape between SB and LB).

Each `run_*` trains what it needs through `train_regime`, measures it, and returns a plain,
JSON-ready dict; the scripts in experiments/ add flags, a figure and the files. With a
`RunDirectory`, training is checkpointed and every finished measurement kept, so a rerun
resumes where it stopped.
"""

from collections.abc import Callable
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np

from flatmin.measures.hessian import hessian_eigenvalues, hessian_trace
from flatmin.measures.landscape import interpolate, interpolate_curved
from flatmin.paper.configs import ExperimentConfig, Regime
from flatmin.paper.keys import hessian_key, seed_keys, warm_start_keys
from flatmin.paper.protocol import measure_routes, network, setup, stager, train_regime
from flatmin.runtime.checkpoint import RunDirectory, json_ready
from flatmin.training.data import Dataset
from flatmin.training.models import init_variables
from flatmin.training.objective import batch_norm_statistics, evaluate, make_loss_fn
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


def _callback(on_epoch: OnEpoch, name: str):
    return None if on_epoch is None else on_epoch(name)


def _sharpness_stats(solves: dict) -> dict:
    """{route: {eps: mean_std}} of the full-space values of `measure_routes`."""
    return {
        route: {eps: mean_std(columns["value"]) for eps, columns in by_space["full"].items()}
        for route, by_space in solves.items()
    }


def _per_seed_sharpness(solves: dict) -> dict:
    return {
        route: {eps: columns["value"] for eps, columns in by_space["full"].items()}
        for route, by_space in solves.items()
    }


def run_batch_size_sweep(
    config: ExperimentConfig,
    key: jax.Array,
    data: Dataset,
    *,
    batch_sizes: tuple[int | float, ...] | None = None,
    epochs: int | None = None,
    run: RunDirectory | None = None,
    mesh: jax.sharding.Mesh | None = None,
    on_epoch: OnEpoch = None,
) -> dict:
    """Figure 4: S seeds per batch size, a fixed number of epochs and no stopping rule (the
    paper's protocol), then test accuracy and full-space Metric 2.1 (every route, every eps)
    of the final iterates. Seed k starts from the same initialisation at every batch size."""
    n = data.x_train.shape[0]
    epochs = epochs or config.sweep_epochs
    sizes = [Regime("sweep", b).size(n) for b in batch_sizes or config.sweep_batch_sizes]
    if any(size > n for size in sizes):
        raise ValueError(f"batch_sizes must lie in [1, {n}] (the training set), got {sizes}")
    model, keys, x, y, staged = setup(config, data, key, run)
    rows = []
    for batch in sizes:
        name = f"batch-{batch}"
        trained = train_regime(
            config, data, batch, keys, epochs=epochs, stopping=False, run=run, name=name,
            mesh=mesh, on_epoch=_callback(on_epoch, name),
        )  # fmt: skip
        solves = measure_routes(
            config, model, trained.variables, x, y, key, {"full": None}, staged=staged,
            prefix=name, mesh=mesh,
        )  # fmt: skip
        test_accuracy = trained.history.test_accuracy[:, -1]
        train_loss = trained.history.train_loss[:, -1]
        rows.append(
            {
                "batch_size": batch,
                "steps": epochs * (n // batch),
                "test_accuracy": mean_std(test_accuracy),
                "final_train_loss": mean_std(train_loss),
                "sharpness": _sharpness_stats(solves),
                "per_seed": {
                    "test_accuracy": test_accuracy,
                    "final_train_loss": train_loss,
                    "sharpness": _per_seed_sharpness(solves),
                    "diverged": trained.diverged_epoch > 0,
                },
            }
        )
    return json_ready(
        {
            "train_size": n,
            "epochs": epochs,
            "sharpness_space": "full",
            "statistics": STATISTICS,
            "results": rows,
        }
    )


def run_warm_start(
    config: ExperimentConfig,
    key: jax.Array,
    data: Dataset,
    *,
    sb_epochs: int | None = None,
    lb_epochs: int | None = None,
    run: RunDirectory | None = None,
    mesh: jax.sharding.Mesh | None = None,
    on_epoch: OnEpoch = None,
) -> dict:
    """Figure 5: the SB iterate after k = 0..K epochs, each continued for a fixed number of
    LB epochs (no stopping rules, the paper's protocol); test accuracy and full-space Metric
    2.1 (every route, the first eps) of the warm-started LB solutions against k."""
    n = data.x_train.shape[0]
    sb_epochs = config.warm_start_sb_epochs if sb_epochs is None else sb_epochs
    lb_epochs = lb_epochs or config.warm_start_lb_epochs
    if sb_epochs < 0:
        raise ValueError(f"sb_epochs must be >= 0, got {sb_epochs}")
    sizes = config.batch_sizes(n)
    sb_name, lb_name = config.regimes[0].name, config.regimes[-1].name
    keys = seed_keys(key, config.seeds)
    model, _ = network(config, data)

    # The SB iterate after k epochs, for each k: a fresh run of k epochs from the same keys
    # reproduces the SB trajectory exactly (train_seeds returns the final state only and
    # restarts the optimizer's moments, so chaining one-epoch runs would not follow it). That
    # costs K(K+1)/2 SB epochs, cheap next to the LB phase; k = 0 is the initialisation itself.
    shape = data.x_train.shape[1:]
    iterates = [jax.vmap(lambda k: init_variables(model, jax.random.split(k)[0], shape))(keys)]
    sb_test_accuracy = [np.full(config.seeds, np.nan)]
    for k in range(1, sb_epochs + 1):
        trained = train_regime(
            config, data, sizes[sb_name], keys, epochs=k, stopping=False, run=run,
            name=f"sb-{k}", mesh=mesh,
        )  # fmt: skip
        iterates.append(trained.variables)
        sb_test_accuracy.append(trained.history.test_accuracy[:, -1])

    # Every (k, seed) continues with LB in one vmapped run: run k * S + seed starts from the
    # seed's SB iterate after k epochs.
    num_ks = sb_epochs + 1
    starts = jax.tree.map(lambda *leaves: jnp.concatenate(leaves), *iterates)
    lb = train_regime(
        config, data, sizes[lb_name], warm_start_keys(key, num_ks * config.seeds),
        epochs=lb_epochs, stopping=False, variables=starts, run=run, name="lb", mesh=mesh,
        on_epoch=_callback(on_epoch, "lb"),
    )  # fmt: skip

    # One solve per k, S seeds vmapped: memory stays that of one S-seed solve, the compiled
    # program is shared by every k, and an interrupted run keeps the finished k.
    x, y = jnp.asarray(data.x_train), jnp.asarray(data.y_train)
    staged = stager(run)
    eps = config.eps[0]
    sharp = []
    for k in range(num_ks):
        part = jax.tree.map(lambda leaf, k=k: leaf[k * config.seeds : (k + 1) * config.seeds],
                            lb.variables)  # fmt: skip
        solves = measure_routes(
            config, model, part, x, y, key, {"full": None}, eps=(eps,), staged=staged,
            prefix=f"lb-k{k}", mesh=mesh,
        )  # fmt: skip
        sharp.append({route: s["full"][str(eps)]["value"] for route, s in solves.items()})

    def by_k(values) -> np.ndarray:
        return np.asarray(values, float).reshape(num_ks, config.seeds)

    lb_accuracy, lb_loss = by_k(lb.history.test_accuracy[:, -1]), by_k(lb.history.train_loss[:, -1])
    rows = [
        {
            "sb_epochs": k,
            "sb_test_accuracy": mean_std(sb_test_accuracy[k]),
            "lb_test_accuracy": mean_std(lb_accuracy[k]),
            "lb_final_train_loss": mean_std(lb_loss[k]),
            "lb_sharpness": {route: mean_std(values) for route, values in sharp[k].items()},
            "per_seed": {
                "lb_test_accuracy": lb_accuracy[k],
                "lb_final_train_loss": lb_loss[k],
                "lb_sharpness": sharp[k],
            },
        }
        for k in range(num_ks)
    ]
    return json_ready(
        {
            "train_size": n,
            "sb_batch": sizes[sb_name],
            "lb_batch": sizes[lb_name],
            "lb_epochs": lb_epochs,
            "sharpness_space": "full",
            "sharpness_eps": eps,
            "statistics": STATISTICS,
            "results": rows,
        }
    )


def run_spectrum(
    config: ExperimentConfig,
    key: jax.Array,
    data: Dataset,
    *,
    top_k: int = 10,
    trace_samples: int = 100,
    run: RunDirectory | None = None,
    mesh: jax.sharding.Mesh | None = None,
    on_epoch: OnEpoch = None,
) -> dict:
    """Every regime's seeds as the sharpness table trains them; per seed the top-k Hessian
    eigenvalues (Lanczos), the Hessian trace (Hutchinson) and full-space Metric 2.1 (every
    route, the first eps) of the training loss."""
    n = data.x_train.shape[0]
    sizes = config.batch_sizes(n)
    model, keys, x, y, staged = setup(config, data, key, run)
    regimes = {}
    for regime in config.regimes:
        trained = train_regime(
            config, data, sizes[regime.name], keys, run=run, name=regime.name, mesh=mesh,
            on_epoch=_callback(on_epoch, regime.name),
        )  # fmt: skip
        eigenvalues, trace, stderr = staged(
            f"{regime.name}-spectra",
            lambda trained=trained: _spectra(
                model, trained.variables, x, y, hessian_key(key), top_k, trace_samples
            ),
        )
        eps = config.eps[0]
        solves = measure_routes(
            config, model, trained.variables, x, y, key, {"full": None}, eps=(eps,),
            staged=staged, prefix=regime.name, mesh=mesh,
        )  # fmt: skip
        last = trained.epochs - 1
        seeds = np.arange(config.seeds)
        regimes[regime.name] = {
            "batch_size": sizes[regime.name],
            "epochs": trained.epochs,
            "final_train_loss": trained.history.train_loss[seeds, last],
            "test_accuracy": trained.history.test_accuracy[seeds, last],
            "top_eigenvalues": eigenvalues,
            "trace": trace,
            "trace_stderr": stderr,
            "sharpness": {route: s["full"][str(eps)]["value"] for route, s in solves.items()},
        }
    return json_ready(
        {
            "train_size": n,
            "top_k": top_k,
            "trace_samples": trace_samples,
            "sharpness_space": "full",
            "sharpness_eps": config.eps[0],
            "loss": "evaluation-mode mean cross-entropy over the training set",
            "regimes": regimes,
        }
    )


@partial(jax.jit, static_argnums=(0, 5, 6))
def _spectra(model, variables, x, y, key, top_k, trace_samples):
    """(S, k) top eigenvalues, (S,) trace and its standard error, vmapped over seeds."""

    def one(params, batch_stats):
        loss_fn = make_loss_fn(model, batch_stats, x, y)
        eigenvalues = hessian_eigenvalues(loss_fn, params, top_k, key=key)
        # Probes in groups of 10: all at once would hold trace_samples HVPs' activations.
        estimate = hessian_trace(loss_fn, params, key=key, num_samples=trace_samples, batch_size=10)
        return eigenvalues, estimate.trace, estimate.stderr

    return jax.vmap(one)(variables["params"], variables["batch_stats"])


# What the JSON and the figure say about the BatchNorm statistics. A point between the two
# solutions was never trained, so it has no running statistics of its own: interpolating the SB
# and LB running averages too gives negative variances outside about [-0.4, 1.4] (an undefined
# network), and pairing one network's weights with the other's statistics would measure
# neither. As SWA's "bn_update" does, the statistics are recomputed at every alpha, here
# exactly: the mean and biased variance of each layer's input over the whole training set.
BATCH_STATS_NOTE = (
    "only the params are interpolated; at every alpha (0 and 1 included) each BatchNorm layer's "
    "statistics are recomputed as the exact mean and biased variance of its input over the "
    "whole training set (flatmin.batch_norm_statistics), and the network is evaluated with them"
)
METRICS = ("train_loss", "train_accuracy", "test_loss", "test_accuracy")


def run_parametric_plot(
    config: ExperimentConfig,
    key: jax.Array,
    data: Dataset,
    *,
    points: int = 25,
    run: RunDirectory | None = None,
    on_epoch: OnEpoch = None,
) -> dict:
    """Figure 3: seed 0 of the first and last regimes (SB and LB), then train and test loss
    and accuracy along (1 - alpha) x_SB + alpha x_LB and cos(alpha pi/2) x_SB + sin(alpha
    pi/2) x_LB for `points` alphas in [-1, 2], batch-norm statistics recomputed at each."""
    n = data.x_train.shape[0]
    sizes = config.batch_sizes(n)
    keys = seed_keys(key, config.seeds)[:1]  # seed 0 of the sharpness table
    ends = {"SB": config.regimes[0].name, "LB": config.regimes[-1].name}
    solutions, summary = {}, {}
    for end, regime in ends.items():
        trained = train_regime(
            config, data, sizes[regime], keys, run=run, name=regime,
            on_epoch=_callback(on_epoch, regime),
        )  # fmt: skip
        solutions[end] = jax.tree.map(lambda leaf: leaf[0], trained.variables)
        summary[end] = {
            "regime": regime,
            "batch_size": sizes[regime],
            "epochs": trained.epochs[0],
            "final_train_loss": trained.history.train_loss[0, -1],
            "test_accuracy": trained.history.test_accuracy[0, -1],
        }

    model, _ = network(config, data)
    arrays = [jnp.asarray(a) for a in data[:4]]

    def metrics_with(params: dict, stats: dict) -> tuple[jax.Array, ...]:
        values = []
        for x, y in (arrays[:2], arrays[2:]):
            loss, accuracy = evaluate(model, params, stats, x, y)
            # NaN logits (an overflow) would otherwise score argmax = class 0.
            values += [loss, jnp.where(jnp.isfinite(loss), accuracy, jnp.nan)]
        return tuple(values)

    def metrics(params: dict) -> tuple[jax.Array, ...]:
        return metrics_with(params, batch_norm_statistics(model, params, arrays[0]))

    # The solutions themselves, with their own running statistics (what training left and what
    # the sharpness table measures) and with the recomputed ones (what the paths use).
    endpoints = {
        end: {
            kind: dict(zip(METRICS, map(float, metrics_with(v["params"], stats)), strict=True))
            for kind, stats in (
                ("running_statistics", v["batch_stats"]),
                ("recomputed_statistics", batch_norm_statistics(model, v["params"], arrays[0])),
            )
        }
        for end, v in solutions.items()
    }
    params = {end: v["params"] for end, v in solutions.items()}
    alphas = np.linspace(-1.0, 2.0, points)
    staged = stager(run)
    paths = {}
    for name, along in (("straight", interpolate), ("curved", interpolate_curved)):
        values = staged(
            f"path-{name}-bnfix",
            lambda along=along: along(metrics, params["SB"], params["LB"], alphas),
        )
        paths[name] = {m: np.asarray(v, float) for m, v in zip(METRICS, values, strict=True)}
    undefined = {name: int(np.sum(~np.isfinite(p["train_loss"]))) for name, p in paths.items()}
    return json_ready(
        {
            "train_size": n,
            "seed": 0,
            "alpha": alphas,
            "alpha_meaning": "alpha = 0 is the SB solution, alpha = 1 the LB solution",
            "interpolated": BATCH_STATS_NOTE,
            "undefined_points": undefined,
            "undefined_meaning": "alphas where the network is undefined (NaN loss, null here)",
            "loss": "mean cross-entropy (nats), evaluation mode (dropout off)",
            "solutions": summary,
            "endpoints": endpoints,
            "endpoints_meaning": (
                "alpha = 0 (SB) and 1 (LB) evaluated with the solution's own BatchNorm running "
                "averages from training, and with the statistics recomputed on the training set "
                "(as on the paths)"
            ),
            "paths": paths,
        }
    )
