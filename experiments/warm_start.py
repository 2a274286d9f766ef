"""Warm-started large batches (Figure 5 of Keskar et al. 2017).

    python experiments/warm_start.py --config digits --out results/digits/warm_start

Trains SB for k = 0..K epochs, continues each iterate with LB for a fixed number of epochs, and
plots the test accuracy and sharpness (Metric 2.1, full space, the config's first eps) of the
warm-started LB solutions against k. Writes DIR/warm_start.json and DIR/warm_start.png.
On digits the defaults are 3 seeds and the projected-gradient solver (a few minutes);
`--seeds 5 --solver lbfgsb` is the run in the README.
"""

import dataclasses
import time

import jax
import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np
from _cli import (
    LB_COLOR,
    SB_COLOR,
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
from flatmin.models import build_model, init_variables
from flatmin.train import train_seeds

DIGITS_SB_EPOCHS, DIGITS_LB_EPOCHS = 10, 100  # the paper: 100 and 100
DIGITS_SEEDS = 3  # (K + 1) x 3 = 33 LB runs: about 6 minutes on 2 CPU cores


def main(argv: list[str] | None = None) -> dict:
    parser = base_parser(__doc__)
    parser.add_argument("--sb-epochs", type=int, default=None, help="K (digits 10, paper 100)")
    parser.add_argument("--lb-epochs", type=int, default=None, help="LB epochs (default 100)")
    args = parse(parser, argv)
    digits = args.config == "digits"
    seeds = args.seeds or (DIGITS_SEEDS if digits else None)
    config = build_config(args, seeds=seeds, solver=full_space_solver(args))
    sb_epochs = (
        args.sb_epochs if args.sb_epochs is not None else (DIGITS_SB_EPOCHS if digits else 100)
    )
    lb_epochs = args.lb_epochs or args.epochs or DIGITS_LB_EPOCHS
    if sb_epochs < 0:
        parser.error(f"--sb-epochs must be >= 0, got {sb_epochs}")
    run = run_directory(
        args, config, "warm_start", "warm_start.json", sb_epochs=sb_epochs, lb_epochs=lb_epochs
    )
    out = run.out
    data = load_data(args, config)
    n = data.x_train.shape[0]
    start = time.perf_counter()
    key = jax.random.key(args.seed)
    keys = seed_keys(key, config.seeds)
    model = build_model(config.model, data.num_classes, **config.model_kwargs)
    # Both phases train a fixed number of epochs, no stopping rules (the paper's protocol).
    no_stop = {"target_loss": None, "patience": None}
    sb_config = dataclasses.replace(config.train_config("SB", n), **no_stop)
    lb_config = dataclasses.replace(config.train_config("LB", n), epochs=lb_epochs, **no_stop)

    # The SB iterate after k epochs, for each k. train_seeds returns only the final state and
    # restarts Adam's moments, so chaining one-epoch runs would not follow the SB trajectory;
    # a fresh run of k epochs from the same keys reproduces it exactly (same initialisation and
    # per-epoch permutations). That costs K(K+1)/2 SB epochs, cheap next to the LB phase for
    # small K; k = 0 is the initialisation itself, built as train_seeds builds it.
    init_keys = jax.vmap(lambda k: jax.random.split(k)[0])(keys)
    shape = data.x_train.shape[1:]
    iterates = [jax.vmap(lambda k: init_variables(model, k, shape))(init_keys)]
    sb_test_accuracy = [np.full(config.seeds, np.nan)]
    for k in range(1, sb_epochs + 1):
        trained = train_seeds(
            dataclasses.replace(sb_config, epochs=k),
            keys,
            data,
            checkpoint_dir=run.train_dir(f"sb-{k}"),
            checkpoint_every=run.checkpoint_every,
        )
        iterates.append(trained.variables)
        sb_test_accuracy.append(trained.history.test_accuracy[:, -1])
        say(f"SB epoch {k}: train loss {np.nanmean(trained.history.train_loss[:, -1]):.3g}")

    # Every (k, seed) continues with LB in one vmapped run: run r = k * S + seed starts from
    # stacked[r], found under vmap by matching its initialisation key against the table.
    stacked = jax.tree.map(lambda *leaves: jnp.concatenate(leaves), *iterates)
    num_ks = sb_epochs + 1
    lb_keys = jax.random.split(jax.random.fold_in(key, 2), num_ks * config.seeds)
    table = jax.random.key_data(jax.vmap(lambda k: jax.random.split(k)[0])(lb_keys))

    def warm_start(init_key: jax.Array) -> dict:
        match = jnp.all(jax.random.key_data(init_key)[None] == table, axis=-1)
        return jax.tree.map(lambda leaf: leaf[jnp.argmax(match)], stacked)

    lb = train_seeds(
        lb_config,
        lb_keys,
        data,
        progress=True,
        init_variables_fn=warm_start,
        checkpoint_dir=run.train_dir("lb"),
        checkpoint_every=run.checkpoint_every,
    )

    # One solve per k, S seeds vmapped: memory stays that of one S-seed solve (all (K+1) * S runs
    # in one vmapped L-BFGS-B solve reached 19.5 GB on digits), the compiled program is shared by
    # every k, and an interrupted run keeps the finished k.
    def lb_sharpness(k: int) -> list:
        part = jax.tree.map(
            lambda leaf: leaf[k * config.seeds : (k + 1) * config.seeds], lb.variables
        )
        return run.stage(
            f"lb-sharpness-k{k}",
            lambda: seed_sharpness(
                model, part, x_train, y_train, None, config.eps[0], key=solve_key(key),
                solver=config.solver, restarts=config.restarts, init=config.init,
            ).value,
        )  # fmt: skip

    x_train, y_train = jnp.asarray(data.x_train), jnp.asarray(data.y_train)
    sharp = []
    for k in range(num_ks):
        sharp.append(lb_sharpness(k))
        say(f"LB sharpness after {k} SB epochs: {np.round(np.asarray(sharp[-1], float), 2)}")

    def by_k(values) -> np.ndarray:
        return np.asarray(values, float).reshape(num_ks, config.seeds)

    lb_accuracy, lb_sharp = by_k(lb.history.test_accuracy[:, -1]), by_k(sharp)
    lb_loss = by_k(lb.history.train_loss[:, -1])
    rows = [
        {
            "sb_epochs": k,
            "sb_test_accuracy": mean_std(sb_test_accuracy[k]),
            "lb_test_accuracy": mean_std(lb_accuracy[k]),
            "lb_final_train_loss": mean_std(lb_loss[k]),
            "lb_sharpness": mean_std(lb_sharp[k]),
            "per_seed": {
                "lb_test_accuracy": lb_accuracy[k],
                "lb_final_train_loss": lb_loss[k],
                "lb_sharpness": lb_sharp[k],
            },
        }
        for k in range(num_ks)
    ]
    results = {
        "config": run.config,
        "train_size": n,
        "sb_batch": sb_config.batch_size,
        "lb_batch": lb_config.batch_size,
        "lb_epochs": lb_epochs,
        "sharpness_space": "full",
        "sharpness_eps": config.eps[0],
        "statistics": "mean and population std over seeds (diverged seeds excluded)",
        "results": rows,
        "seconds": round(time.perf_counter() - start, 1),
        "devices": f"{jax.device_count()} x {jax.devices()[0].device_kind}",
    }
    write_json(out / "warm_start.json", results)
    save_figure(plot(results, config.name), out / "warm_start.png")
    say(f"wrote {out / 'warm_start.json'} and .png in {results['seconds']} s")
    return results


def plot(results: dict, name: str) -> plt.Figure:
    """Warm-started LB test accuracy (left) and sharpness (right, log) against SB epochs."""
    rows = results["results"]
    ks = np.array([row["sb_epochs"] for row in rows])

    def band(field: str, scale: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
        stats = [row[field] for row in rows]
        mean = np.array([np.nan if s["mean"] is None else s["mean"] for s in stats])
        std = np.array([np.nan if s["std"] is None else s["std"] for s in stats])
        return scale * mean, scale * std

    fig, ax_acc = plt.subplots(figsize=(7, 4.5), constrained_layout=True)
    ax_sharp = ax_acc.twinx()
    lb_label = f"LB ({results['lb_batch']}) after {results['lb_epochs']} epochs"
    handles = [
        ax_acc.errorbar(ks, *band("lb_test_accuracy", 100), color=LB_COLOR, marker="o",
                        capsize=3, label=f"test accuracy, {lb_label}"),
        ax_acc.errorbar(ks, *band("sb_test_accuracy", 100), color=SB_COLOR, marker=".",
                        linestyle=":", capsize=3,
                        label=f"test accuracy, SB ({results['sb_batch']}) iterate it started from"),
        ax_sharp.errorbar(ks, *band("lb_sharpness"), color="black", marker="s", linestyle="--",
                          capsize=3,
                          label=f"sharpness (eps {results['sharpness_eps']:g}), {lb_label}"),
    ]  # fmt: skip
    ax_sharp.set_yscale("log")
    ax_acc.set_xlabel(f"SB epochs before switching to LB (batch {results['sb_batch']})")
    ax_acc.set_ylabel("test accuracy (%)")
    ax_sharp.set_ylabel("sharpness, Metric 2.1 full space (%, log scale)")
    ax_acc.grid(alpha=0.3)
    # Below the axes: the sharpness curve crosses the accuracy curves, so no corner stays clear.
    fig.legend(handles=handles, loc="outside lower center", fontsize=8)
    ax_acc.set_title(f"{name}: warm-started large batch, mean ± std over seeds")
    return fig


if __name__ == "__main__":
    main()
