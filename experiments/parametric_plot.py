"""The 1-D parametric plot of Keskar et al. 2017 (Figure 3): the landscape between SB and LB.

    python experiments/parametric_plot.py --config digits --out results/digits/parametric

Trains seed 0 of each regime, then evaluates train and test cross-entropy and accuracy at
(1 - alpha) x_SB + alpha x_LB (straight) and cos(alpha pi/2) x_SB + sin(alpha pi/2) x_LB
(curved) for alpha in [-1, 2]. Only the parameters are interpolated: at every alpha the
batch-norm statistics are recomputed from the whole training set (`batch_norm_statistics`).
Writes DIR/parametric.json and DIR/parametric.png.
"""

import matplotlib.pyplot as plt
import numpy as np

from experiments import _cli as cli
from flatmin.paper.landscape import METRICS, run_parametric_plot

__all__ = ["METRICS", "main", "plot"]


def main(argv: list[str] | None = None) -> dict:
    parser = cli.base_parser(__doc__)
    parser.add_argument("--points", type=int, default=25, help="alphas in [-1, 2] (paper: 25)")
    args = cli.parse(parser, argv)
    config = cli.build_config(args)
    run = cli.run_directory(args, config, "parametric", "parametric.json", points=args.points)
    data = cli.load_data(args, config)
    timer = cli.Timer()
    results = run_parametric_plot(
        config, cli.master_key(args), data, points=args.points, run=run, on_epoch=cli.progress
    )
    results = cli.finish(run, "parametric.json", results, timer)
    figure = plot(
        np.asarray(results["alpha"]),
        {p: {m: np.asarray(v, float) for m, v in values.items()} for p, values in
         results["paths"].items()},
        config.name,
        results["solutions"],
        results["undefined_points"],
        results["endpoints"],
    )  # fmt: skip
    cli.save_figure(figure, run.out / "parametric.png")
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
        kwargs = {"color": [cli.SB_COLOR, cli.LB_COLOR], "marker": marker, "s": 60, "zorder": 3}
        ax_loss.scatter([0, 1], [r[f"{split}_loss"] for r in running], **kwargs)
        ax_acc.scatter([0, 1], [100 * r[f"{split}_accuracy"] for r in running], **kwargs)
        label = f"{split}, SB/LB solution with its own running statistics"
        ax_acc.scatter([], [], color="gray", marker=marker, s=60, label=label)  # legend entry
    for ax in (ax_loss, ax_acc):
        for alpha, regime, color in ((0, "SB", cli.SB_COLOR), (1, "LB", cli.LB_COLOR)):
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
