"""Figure 5: large-batch training warm-started from the small-batch iterate after k epochs."""

import jax
import jax.numpy as jnp
import numpy as np

from flatmin.paper.configs import ExperimentConfig
from flatmin.paper.keys import seed_keys, warm_start_keys
from flatmin.paper.protocol import measure_routes, network, stager, train_regime
from flatmin.paper.summary import STATISTICS, OnEpoch, callback, mean_std
from flatmin.runtime.checkpoint import RunDirectory, json_ready
from flatmin.training.data import Dataset
from flatmin.training.models import init_variables


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
        on_epoch=callback(on_epoch, "lb"),
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
