"""Figure 4: test accuracy and sharpness against the batch size, a fixed budget of epochs."""

import jax

from flatmin.paper.configs import ExperimentConfig, Regime
from flatmin.paper.protocol import measure_routes, setup, train_regime
from flatmin.paper.summary import (
    STATISTICS,
    OnEpoch,
    callback,
    mean_std,
    per_seed_sharpness,
    sharpness_stats,
)
from flatmin.runtime.checkpoint import RunDirectory, json_ready
from flatmin.training.data import Dataset


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
            mesh=mesh, on_epoch=callback(on_epoch, name),
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
                "sharpness": sharpness_stats(solves),
                "per_seed": {
                    "test_accuracy": test_accuracy,
                    "final_train_loss": train_loss,
                    "sharpness": per_seed_sharpness(solves),
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
