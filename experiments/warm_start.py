"""Warm-started large batches (Figure 5 of Keskar et al. 2017).

    python experiments/warm_start.py --config digits --out results/digits/warm_start

Trains SB for k = 0..K epochs, continues each iterate with LB for a fixed number of epochs, and
plots the test accuracy and sharpness (Metric 2.1, full space, the config's first eps, every
route) of the warm-started LB solutions against k. Writes DIR/warm_start.json and
DIR/warm_start.png. K, the LB epochs and the seeds default to the config's (digits: 10, 100
and 3 seeds).
"""

import matplotlib.pyplot as plt
import numpy as np

from experiments import _cli as cli
from flatmin.paper.configs import CONFIGS
from flatmin.paper.warm_start import run_warm_start


def main(argv: list[str] | None = None) -> dict:
    parser = cli.base_parser(__doc__)
    parser.add_argument("--sb-epochs", type=int, default=None, help="K (default: the config's)")
    parser.add_argument("--lb-epochs", type=int, default=None, help="LB epochs (the config's)")
    args = cli.parse(parser, argv)
    seeds = args.seeds or CONFIGS[args.config].warm_start_seeds
    config = cli.build_config(
        args,
        seeds=seeds,
        warm_start_sb_epochs=args.sb_epochs,
        warm_start_lb_epochs=args.lb_epochs or args.epochs,
    )
    run = cli.run_directory(
        args, config, "warm_start", "warm_start.json", sb_epochs=config.warm_start_sb_epochs,
        lb_epochs=config.warm_start_lb_epochs,
    )  # fmt: skip
    data = cli.load_data(args, config)
    timer = cli.Timer()
    results = run_warm_start(config, cli.master_key(args), data, run=run, on_epoch=cli.progress)
    results = cli.finish(run, "warm_start.json", results, timer)
    cli.save_figure(plot(results, config.name), run.out / "warm_start.png")
    return results


def plot(results: dict, name: str) -> plt.Figure:
    """Warm-started LB test accuracy (left) and sharpness per route (right, log) against SB
    epochs."""
    rows = results["results"]
    ks = np.array([row["sb_epochs"] for row in rows])
    fig, ax_acc = plt.subplots(figsize=(7, 4.5), constrained_layout=True)
    ax_sharp = ax_acc.twinx()
    lb_label = f"LB ({results['lb_batch']}) after {results['lb_epochs']} epochs"
    handles = [
        ax_acc.errorbar(ks, *cli.band([row["lb_test_accuracy"] for row in rows], 100),
                        color=cli.LB_COLOR, marker="o", capsize=3,
                        label=f"test accuracy, {lb_label}"),
        ax_acc.errorbar(ks, *cli.band([row["sb_test_accuracy"] for row in rows], 100),
                        color=cli.SB_COLOR, marker=".", linestyle=":", capsize=3,
                        label=f"test accuracy, SB ({results['sb_batch']}) iterate it started from"),
    ]  # fmt: skip
    for route, style in zip(rows[0]["lb_sharpness"], ("--", "-.", ":"), strict=False):
        handles.append(
            ax_sharp.errorbar(
                ks, *cli.band([row["lb_sharpness"][route] for row in rows]), color="black",
                marker="s", linestyle=style, capsize=3,
                label=f"sharpness ({route}, eps {results['sharpness_eps']:g}), {lb_label}",
            )
        )  # fmt: skip
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
