"""Figure 3: the loss and accuracy along the line and the curve between the SB and LB
solutions (the paper's parametric plots)."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from flatmin.measures import interpolate, interpolate_curved
from flatmin.paper.configs import ExperimentConfig
from flatmin.paper.keys import seed_keys
from flatmin.paper.protocol import network, stager, train_regime
from flatmin.paper.summary import OnEpoch, callback
from flatmin.runtime.checkpoint import RunDirectory, json_ready
from flatmin.training.data import Dataset
from flatmin.training.objective import batch_norm_statistics, evaluate

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
            on_epoch=callback(on_epoch, regime),
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
    arrays = tuple(jnp.asarray(a) for a in data[:4])
    metrics = _Metrics(model)

    # The solutions themselves, with their own running statistics (what training left and what
    # the sharpness table measures) and with the recomputed ones (what the paths use).
    endpoints = {
        end: {
            kind: dict(
                zip(
                    METRICS,
                    map(float, metrics.with_statistics(v["params"], stats, *arrays)),
                    strict=True,
                )
            )
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
            lambda along=along: (
                along(metrics, params["SB"], params["LB"], alphas, args=arrays).value
            ),
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


@dataclasses.dataclass(frozen=True)
class _Metrics:
    """(params, x, y, x_test, y_test) -> the METRICS, batch-norm statistics recomputed on x: a
    value, so the path's compiled program is reused, with the data as arguments."""

    model: object

    def __call__(self, params, x, y, x_test, y_test) -> tuple[jax.Array, ...]:
        stats = batch_norm_statistics(self.model, params, x)
        return self.with_statistics(params, stats, x, y, x_test, y_test)

    def with_statistics(self, params, stats, x, y, x_test, y_test) -> tuple[jax.Array, ...]:
        values = []
        for inputs, labels in ((x, y), (x_test, y_test)):
            loss, accuracy = evaluate(self.model, params, stats, inputs, labels)
            # NaN logits (an overflow) would otherwise score argmax = class 0.
            values += [loss, jnp.where(jnp.isfinite(loss), accuracy, jnp.nan)]
        return tuple(values)
