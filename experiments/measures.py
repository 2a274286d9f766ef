"""Every sharpness measure for SB and LB seeds (and the batch-size sweep): which tells SB from
LB, and which ranks the generalization gap (Kendall's tau, as Jiang et al. 2020 rank measures).

    python experiments/measures.py --config digits --out results/digits/measures

Writes DIR/measures.json (every network's every measure, its accuracies and gap, the rank
correlations), DIR/measures.md (mean ± std per regime, LB/SB ratio, tau) and DIR/measures.png
(each measure against the gap, every network a point). Resumable.
"""

import math

import matplotlib.pyplot as plt
import numpy as np

from experiments import _cli as cli
from flatmin.paper.generalization import rank_correlations, run_measures
from flatmin.runtime.checkpoint import write_text


def main(argv: list[str] | None = None) -> dict:
    parser = cli.base_parser(__doc__)
    parser.add_argument("--no-sweep", action="store_true", help="the config's regimes only")
    parser.add_argument(
        "--measures",
        type=lambda text: tuple(text.split(",")),
        default=None,
        help="comma-separated subset (default: all)",
    )
    args = cli.parse(parser, argv)
    config = cli.build_config(args)
    run = cli.run_directory(
        args, config, "measures", "measures.json", sweep=not args.no_sweep,
        measures=list(args.measures or ()),
    )  # fmt: skip
    data = cli.load_data(args, config)
    timer = cli.Timer()
    try:
        results = run_measures(
            config, cli.master_key(args), data, sweep=not args.no_sweep, names=args.measures,
            run=run, on_epoch=cli.progress,
        )  # fmt: skip
    except ValueError as error:
        parser.error(str(error))
    results = cli.finish(run, "measures.json", results, timer)
    table = format_table(results)
    write_text(run.out / "measures.md", table)
    cli.save_figure(plot(results, config.name), run.out / "measures.png")
    cli.say(table)
    return results


def _stats(values: list) -> tuple[float, float] | None:
    finite = np.array([v for v in values if v is not None and math.isfinite(v)], float)
    return (float(finite.mean()), float(finite.std())) if finite.size else None


def format_table(results: dict) -> str:
    """Markdown from a measures.json dict alone (its "config" records the regimes)."""
    config = results["config"]
    regimes = list(config["regimes"])
    reference = regimes[0]
    rows = results["rows"]
    lines = [
        f"# Sharpness measures: {config['name']}, {config['seeds']} seeds per run, mean ± std",
        "",
        "tau: Kendall's rank correlation of the measure with the generalization gap (train "
        "minus test accuracy) over every network trained (the regimes and the batch-size "
        "sweep); p: its two-sided p-value; n: networks. tau (loss): the same against the "
        "training loss each network reached.",
        "",
        "| measure | "
        + " | ".join(regimes)
        + " | "
        + " | ".join(f"{r} / {reference}" for r in regimes[1:])
        + " | tau | p | n | tau (loss) |",
        "|---|" + "---|" * (2 * len(regimes) - 1 + 4),
    ]
    by_loss = rank_correlations(rows, tuple(results["measures"]), against="train_loss")
    for name in results["measures"]:
        cells, means = [], {}
        for regime in regimes:
            stats = _stats([row[name] for row in rows if row["run"] == regime])
            means[regime] = None if stats is None else stats[0]
            cells.append("—" if stats is None else f"{stats[0]:.4g} ± {stats[1]:.2g}")
        ratios = [
            "—"
            if not means[reference] or means[r] is None
            else f"{means[r] / means[reference]:.3g}"
            for r in regimes[1:]
        ]
        corr = results["rank_correlations"][name]
        tau = "—" if corr["tau"] is None else f"{corr['tau']:+.2f}"
        p = "—" if corr["p_value"] is None else f"{corr['p_value']:.2g}"
        loss_tau = by_loss[name]["tau"]
        loss_tau = "—" if loss_tau is None else f"{loss_tau:+.2f}"
        lines.append(
            f"| {name} | " + " | ".join(cells) + " | " + " | ".join(ratios)
            + f" | {tau} | {p} | {corr['networks']} | {loss_tau} |"
        )  # fmt: skip
    lines += [
        "",
        "| run | batch | training loss | test accuracy (%) | gap (%) |",
        "|---|---|---|---|---|",
    ]
    for name in dict.fromkeys(row["run"] for row in rows):
        group = [row for row in rows if row["run"] == name]
        test = _stats([row["test_accuracy"] for row in group])
        gap = _stats([row["gap"] for row in group])
        loss = _stats([row["train_loss"] for row in group])
        lines.append(
            f"| {name} | {group[0]['batch_size']} | {loss[0]:.2g} ± {loss[1]:.2g} "
            f"| {100 * test[0]:.2f} ± {100 * test[1]:.2f} "
            f"| {100 * gap[0]:.2f} ± {100 * gap[1]:.2f} |"
        )
    lines += ["", "Measures:", ""]
    lines += [f"- {name}: {what}" for name, what in results["measures"].items()]
    return "\n".join(lines) + "\n"


def plot(results: dict, name: str) -> plt.Figure:
    """One panel per measure: its value (log) against the generalization gap, every network a
    point coloured by its run, Kendall's tau in the title; values <= 0 are not drawn."""
    measures = list(results["measures"])
    columns = 4
    grid = (math.ceil(len(measures) / columns), columns)
    fig, axes = plt.subplots(*grid, figsize=(3.6 * columns, 3.2 * grid[0]), squeeze=False,
                             constrained_layout=True)  # fmt: skip
    runs = list(dict.fromkeys(row["run"] for row in results["rows"]))
    colors = plt.get_cmap("viridis")(np.linspace(0, 0.9, len(runs)))
    for ax, measure in zip(axes.flat, measures, strict=False):
        for run, color in zip(runs, colors, strict=True):
            points = [
                (100 * row["gap"], row[measure])
                for row in results["rows"]
                if row["run"] == run and row[measure] is not None and row[measure] > 0
            ]
            if points:
                gap, value = np.array(points).T
                ax.scatter(gap, value, color=color, s=18, label=run)
        corr = results["rank_correlations"][measure]
        tau = "n/a" if corr["tau"] is None else f"{corr['tau']:+.2f}"
        ax.set_title(f"{measure} (tau {tau})", fontsize=9)
        ax.set_yscale("log")
        ax.set_xlabel("generalization gap (%)", fontsize=8)
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(measures) :]:
        ax.axis("off")
    # One legend for the figure: a run can be missing from a panel (a measure of 0 on a log axis).
    handles = [
        plt.Line2D([], [], ls="", marker="o", color=color, label=run)
        for run, color in zip(runs, colors, strict=True)
    ]
    fig.legend(handles=handles, loc="outside right upper", fontsize=8)
    fig.suptitle(f"{name}: sharpness measures against the generalization gap")
    return fig


if __name__ == "__main__":
    main()
