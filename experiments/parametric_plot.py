"""The 1-D parametric plot of Keskar et al. 2017 (Figure 3): the landscape between SB and LB.

    python experiments/parametric_plot.py --config digits --out results/digits/parametric

Trains seed 0 of each regime, then evaluates train and test cross-entropy and accuracy at
(1 - alpha) x_SB + alpha x_LB (straight) and cos(alpha pi/2) x_SB + sin(alpha pi/2) x_LB
(curved) for alpha in [-1, 2]. Only the parameters are interpolated: at every alpha the
batch-norm statistics are recomputed from the whole training set (`batch_norm_statistics`).
Writes DIR/parametric.json and DIR/parametric.png.
"""

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
    load_data,
    parse,
    run_directory,
    save_figure,
    say,
)

from flatmin.checkpoint import write_json
from flatmin.experiment import seed_keys
from flatmin.landscape import interpolate, interpolate_curved
from flatmin.models import build_model
from flatmin.objective import batch_norm_statistics, evaluate
from flatmin.train import train_seeds

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


def main(argv: list[str] | None = None) -> dict:
    parser = base_parser(__doc__)
    parser.add_argument("--points", type=int, default=25, help="alphas in [-1, 2] (paper: 25)")
    args = parse(parser, argv)
    config = build_config(args)
    run = run_directory(args, config, "parametric", "parametric.json", points=args.points)
    out = run.out
    data = load_data(args, config)
    start = time.perf_counter()
    n = data.x_train.shape[0]
    key = seed_keys(jax.random.key(args.seed), config.seeds)[:1]  # seed 0 of the sharpness table
    solutions, summary = {}, {}
    for regime in ("SB", "LB"):
        train_config = config.train_config(regime, n)
        trained = train_seeds(
            train_config,
            key,
            data,
            progress=True,
            checkpoint_dir=run.train_dir(regime),
            checkpoint_every=run.checkpoint_every,
        )
        solutions[regime] = jax.tree.map(lambda leaf: leaf[0], trained.variables)
        summary[regime] = {
            "batch_size": train_config.batch_size,
            "epochs": trained.epochs[0],
            "final_train_loss": trained.history.train_loss[0, -1],
            "test_accuracy": trained.history.test_accuracy[0, -1],
        }

    model = build_model(config.model, data.num_classes, **config.model_kwargs)
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
        regime: {
            kind: dict(zip(METRICS, map(float, metrics_with(v["params"], stats)), strict=True))
            for kind, stats in (
                ("running_statistics", v["batch_stats"]),
                ("recomputed_statistics", batch_norm_statistics(model, v["params"], arrays[0])),
            )
        }
        for regime, v in solutions.items()
    }
    params = {regime: v["params"] for regime, v in solutions.items()}

    alphas = np.linspace(-1.0, 2.0, args.points)
    paths = {}
    for name, along in (("straight", interpolate), ("curved", interpolate_curved)):
        values = run.stage(
            f"path-{name}-bnfix",
            lambda along=along: along(metrics, params["SB"], params["LB"], alphas),
        )
        paths[name] = {m: np.asarray(v, float) for m, v in zip(METRICS, values, strict=True)}
    undefined = {name: int(np.sum(~np.isfinite(p["train_loss"]))) for name, p in paths.items()}

    results = {
        "config": run.config,
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
        "seconds": round(time.perf_counter() - start, 1),
        "devices": f"{jax.device_count()} x {jax.devices()[0].device_kind}",
    }
    write_json(out / "parametric.json", results)
    figure = plot(alphas, paths, config.name, summary, undefined, endpoints)
    save_figure(figure, out / "parametric.png")
    say(f"wrote {out / 'parametric.json'} and {out / 'parametric.png'} in {results['seconds']} s")
    return results


def plot(
    alphas: np.ndarray, paths: dict, name: str, summary: dict, undefined: dict, endpoints: dict
) -> plt.Figure:
    """Two panels, cross-entropy (log) and accuracy (%); train solid, test dashed. Crosses: the
    solutions with their own running statistics (train +, test x), for comparison."""
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(11, 4.2), constrained_layout=True)
    colors = {"straight": "black", "curved": "tab:green"}
    for path, values in paths.items():
        for split, style in (("train", "-"), ("test", "--")):
            label = f"{path} path, {split}"
            kwargs = {"color": colors[path], "linestyle": style, "marker": ".", "label": label}
            ax_loss.plot(alphas, values[f"{split}_loss"], **kwargs)
            ax_acc.plot(alphas, 100 * values[f"{split}_accuracy"], **kwargs)
    for split, marker in (("train", "P"), ("test", "X")):
        running = [endpoints[regime]["running_statistics"] for regime in ("SB", "LB")]
        kwargs = {"color": [SB_COLOR, LB_COLOR], "marker": marker, "s": 60, "zorder": 3}
        ax_loss.scatter([0, 1], [r[f"{split}_loss"] for r in running], **kwargs)
        ax_acc.scatter([0, 1], [100 * r[f"{split}_accuracy"] for r in running], **kwargs)
        label = f"{split}, SB/LB solution with its own running statistics"
        ax_acc.scatter([], [], color="gray", marker=marker, s=60, label=label)  # legend entry
    for ax in (ax_loss, ax_acc):
        for alpha, regime, color in ((0, "SB", SB_COLOR), (1, "LB", LB_COLOR)):
            batch = summary[regime]["batch_size"]
            ax.axvline(alpha, color=color, linewidth=1.5, alpha=0.7)
            ax.annotate(
                f"{regime} (batch {batch})",
                (alpha, 0.0),
                xycoords=("data", "axes fraction"),
                xytext=(3, 4),
                textcoords="offset points",
                color=color,
                fontsize=9,
            )
        ax.set_xlim(alphas[0], alphas[-1])
        ax.set_xlabel(r"$\alpha$  (0 = SB solution, 1 = LB solution)")
        ax.grid(alpha=0.3)
    ax_loss.set_yscale("log")
    ax_loss.set_ylabel("cross-entropy (nats, log scale)")
    ax_acc.set_ylabel("accuracy (%)")
    ax_acc.legend(loc="center", fontsize=8)
    gaps = ""
    if undefined["straight"] or undefined["curved"]:
        gaps = (
            f";\ngaps: undefined (non-finite loss) at {undefined['straight']} straight and "
            f"{undefined['curved']} curved of {len(alphas)} points"
        )
    fig.suptitle(
        f"{name}: straight $(1-\\alpha)x_{{SB}} + \\alpha x_{{LB}}$ and curved "
        f"$\\cos(\\alpha\\pi/2)x_{{SB}} + \\sin(\\alpha\\pi/2)x_{{LB}}$ paths, evaluation mode\n"
        "(weights interpolated; batch-norm statistics recomputed on the whole training set at "
        "every $\\alpha$" + gaps + ")",
        fontsize=10,
    )
    return fig


if __name__ == "__main__":
    main()
