"""Figure 4 of Keskar et al. 2017: test accuracy and sharpness of the final iterate vs batch size.

    python experiments/batch_size_sweep.py --config digits --out results/digits/batch_size_sweep

Trains S seeds (vmapped) per batch size for a fixed number of epochs (the paper: 100; no early
stopping), then measures test accuracy and Metric 2.1 in the full space at each of the config's
eps. Seed k starts from the same initialisation at every batch size. Writes
DIR/batch_size_sweep.json and DIR/batch_size_sweep.png.
On digits the solver defaults to projected gradient (a few minutes); `--solver lbfgsb` is
the paper's.
"""

import dataclasses
import time

import jax
import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np
from _cli import (
    base_parser,
    build_config,
    full_space_solver,
    load_data,
    mean_std,
    parse,
    run_directory,
    save_figure,
    say,
)

from flatmin.checkpoint import write_json
from flatmin.experiment import seed_keys, seed_sharpness, solve_key
from flatmin.models import build_model
from flatmin.train import train_seeds

# Digits has 1437 training examples: 16 is its SB and 1437 full batch. The paper's networks use
# 256 as SB and go up to ~10% of their training sets.
DEFAULT_BATCH_SIZES = {"digits": (16, 64, 256, 1437)}
PAPER_BATCH_SIZES = (256, 512, 1024, 2048, 4096, 8192)
DIGITS_EPOCHS = 50  # a few minutes on 2 CPU cores; the paper's 100 with --epochs 100


def main(argv: list[str] | None = None) -> dict:
    parser = base_parser(__doc__)
    parser.add_argument(
        "--batch-sizes",
        type=lambda text: tuple(int(b) for b in text.split(",")),
        default=None,
        help="comma-separated (default: 16,64,256,1437 on digits, 256..8192 otherwise)",
    )
    args = parse(parser, argv)
    epochs = args.epochs or (DIGITS_EPOCHS if args.config == "digits" else 100)
    config = build_config(args, epochs=epochs, solver=full_space_solver(args))
    data = load_data(args, config)
    n = data.x_train.shape[0]
    batch_sizes = args.batch_sizes or DEFAULT_BATCH_SIZES.get(config.dataset, PAPER_BATCH_SIZES)
    if any(b < 1 or b > n for b in batch_sizes):
        parser.error(f"--batch-sizes must lie in [1, {n}] (the training set), got {batch_sizes}")
    run = run_directory(
        args, config, "batch_size_sweep", "batch_size_sweep.json", batch_sizes=batch_sizes
    )
    out = run.out
    start = time.perf_counter()
    key = jax.random.key(args.seed)
    keys = seed_keys(key, config.seeds)
    model = build_model(config.model, data.num_classes, **config.model_kwargs)
    x, y = jnp.asarray(data.x_train), jnp.asarray(data.y_train)

    rows = []
    for batch in batch_sizes:
        # The paper's protocol: every batch size trains the same number of epochs, no stopping.
        train_config = dataclasses.replace(
            config.train_config("SB", n), batch_size=batch, target_loss=None, patience=None
        )
        trained = train_seeds(
            train_config,
            keys,
            data,
            progress=True,
            checkpoint_dir=run.train_dir(f"batch-{batch}"),
            checkpoint_every=run.checkpoint_every,
        )
        sharp = {
            str(eps): np.asarray(
                run.stage(
                    f"batch-{batch}-sharpness-{eps}",
                    lambda eps=eps, trained=trained: seed_sharpness(
                        model, trained.variables, x, y, None, eps, key=solve_key(key),
                        solver=config.solver, restarts=config.restarts, init=config.init,
                    ).value,
                ),
                float,
            )
            for eps in config.eps
        }  # fmt: skip
        test_accuracy = trained.history.test_accuracy[:, -1]
        train_loss = trained.history.train_loss[:, -1]
        rows.append(
            {
                "batch_size": batch,
                "steps": config.epochs * (n // batch),
                "test_accuracy": mean_std(test_accuracy),
                "final_train_loss": mean_std(train_loss),
                "sharpness": {eps: mean_std(values) for eps, values in sharp.items()},
                "per_seed": {
                    "test_accuracy": test_accuracy,
                    "final_train_loss": train_loss,
                    "sharpness": sharp,
                    "diverged": trained.diverged_epoch > 0,
                },
            }
        )
        say(f"batch {batch}: test accuracy {rows[-1]['test_accuracy']}, sharpness {sharp}")

    results = {
        "config": run.config,
        "train_size": n,
        "epochs": config.epochs,
        "sharpness_space": "full",
        "statistics": "mean and population std over seeds (diverged seeds excluded)",
        "results": rows,
        "seconds": round(time.perf_counter() - start, 1),
        "devices": f"{jax.device_count()} x {jax.devices()[0].device_kind}",
    }
    write_json(out / "batch_size_sweep.json", results)
    save_figure(plot(rows, config), out / "batch_size_sweep.png")
    say(f"wrote {out / 'batch_size_sweep.json'} and .png in {results['seconds']} s")
    return results


def plot(rows: list[dict], config) -> plt.Figure:
    """Test accuracy (left axis) and sharpness per eps (right, log) against batch size (log)."""
    fig, ax_acc = plt.subplots(figsize=(7, 4.5), constrained_layout=True)
    ax_sharp = ax_acc.twinx()
    batches = [row["batch_size"] for row in rows]

    def band(stats: list[dict]) -> tuple[np.ndarray, np.ndarray]:
        mean = np.array([s["mean"] if s["mean"] is not None else np.nan for s in stats])
        std = np.array([s["std"] if s["std"] is not None else np.nan for s in stats])
        return mean, std

    mean, std = band([row["test_accuracy"] for row in rows])
    handles = [
        ax_acc.errorbar(
            batches, 100 * mean, 100 * std, color="black", marker="o", capsize=3,
            label="test accuracy (left axis)",
        )
    ]  # fmt: skip
    for eps, color in zip(config.eps, ("tab:red", "tab:orange", "tab:purple"), strict=False):
        mean, std = band([row["sharpness"][str(eps)] for row in rows])
        handles.append(
            ax_sharp.errorbar(
                batches, mean, std, color=color, marker="s", linestyle="--", capsize=3,
                label=rf"sharpness, $\epsilon$ = {eps:g} (right axis)",
            )
        )  # fmt: skip
    ax_acc.set_xscale("log")
    ax_acc.set_xticks(batches, [str(b) for b in batches])
    ax_acc.minorticks_off()
    ax_sharp.set_yscale("log")
    ax_acc.set_xlabel("batch size (examples, log scale)")
    ax_acc.set_ylabel("test accuracy (%)")
    ax_sharp.set_ylabel("sharpness, Metric 2.1 full space (%, log scale)")
    ax_acc.grid(alpha=0.3)
    ax_acc.legend(handles=handles, loc="lower right", fontsize=9)
    ax_acc.set_title(
        f"{config.name}: final iterate after {config.epochs} epochs, "
        f"mean ± std over {config.seeds} seeds"
    )
    return fig


if __name__ == "__main__":
    main()
