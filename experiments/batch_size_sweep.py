"""Figure 4 of Keskar et al. 2017: test accuracy and sharpness of the final iterate vs batch size.

    python experiments/batch_size_sweep.py --config digits --out results/digits/batch_size_sweep

Trains S seeds (vmapped) per batch size for a fixed number of epochs (the paper: 100; no early
stopping), then measures test accuracy and Metric 2.1 in the full space at each of the config's
eps by every route. Seed k starts from the same initialisation at every batch size. Writes
DIR/batch_size_sweep.json and DIR/batch_size_sweep.png. The batch sizes and epochs default to
the config's (digits: 16, 64, 256 and 1437 for 50 epochs).
"""

import matplotlib.pyplot as plt

from experiments import _cli as cli
from flatmin.paper.batch_size import run_batch_size_sweep


def main(argv: list[str] | None = None) -> dict:
    parser = cli.base_parser(__doc__)
    parser.add_argument(
        "--batch-sizes",
        type=lambda text: tuple(int(b) for b in text.split(",")),
        default=None,
        help="comma-separated (default: the config's)",
    )
    args = cli.parse(parser, argv)
    config = cli.build_config(args, sweep_epochs=args.epochs)
    data = cli.load_data(args, config)
    batch_sizes = args.batch_sizes or config.sweep_batch_sizes
    run = cli.run_directory(
        args, config, "batch_size_sweep", "batch_size_sweep.json", batch_sizes=batch_sizes
    )
    timer = cli.Timer()
    try:
        results = run_batch_size_sweep(
            config,
            cli.master_key(args),
            data,
            batch_sizes=batch_sizes,
            run=run,
            on_epoch=cli.progress,
        )
    except ValueError as error:
        parser.error(str(error))
    results = cli.finish(run, "batch_size_sweep.json", results, timer)
    cli.save_figure(plot(results, config), run.out / "batch_size_sweep.png")
    return results


def plot(results: dict, config) -> plt.Figure:
    """Test accuracy (left axis) and sharpness per route and eps (right, log) against batch
    size (log)."""
    rows = results["results"]
    fig, ax_acc = plt.subplots(figsize=(7, 4.5), constrained_layout=True)
    ax_sharp = ax_acc.twinx()
    batches = [row["batch_size"] for row in rows]
    mean, std = cli.band([row["test_accuracy"] for row in rows], 100)
    handles = [
        ax_acc.errorbar(batches, mean, std, color="black", marker="o", capsize=3,
                        label="test accuracy (left axis)")
    ]  # fmt: skip
    colors = iter(("tab:red", "tab:orange", "tab:purple", "tab:brown", "tab:pink", "tab:olive"))
    for route, style in zip(rows[0]["sharpness"], ("--", ":", "-."), strict=False):
        for eps in config.eps:
            mean, std = cli.band([row["sharpness"][route][str(eps)] for row in rows])
            handles.append(
                ax_sharp.errorbar(
                    batches, mean, std, color=next(colors), marker="s", linestyle=style,
                    capsize=3, label=rf"sharpness, {route}, $\epsilon$ = {eps:g} (right axis)",
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
    fig.legend(handles=handles, loc="outside lower center", fontsize=8)
    ax_acc.set_title(
        f"{config.name}: final iterate after {results['epochs']} epochs, "
        f"mean ± std over {config.seeds} seeds"
    )
    return fig


if __name__ == "__main__":
    main()
