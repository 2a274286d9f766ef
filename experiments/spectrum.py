"""The Hessian spectrum of SB and LB solutions, next to Metric 2.1.

    python experiments/spectrum.py --config digits --out results/digits/spectrum

Trains every regime's seeds as the sharpness table does, then, for each seed, the top-k
Hessian eigenvalues (Lanczos) and the Hessian trace (Hutchinson) of its evaluation-mode
training loss, and Metric 2.1 in the full space at the config's first eps by every route.
Writes DIR/spectrum.json, DIR/spectrum.md and DIR/spectrum.png.
"""

import matplotlib.pyplot as plt
import numpy as np

from experiments import _cli as cli
from flatmin.paper.spectrum import run_spectrum
from flatmin.paper.summary import mean_std
from flatmin.runtime.checkpoint import write_text


def main(argv: list[str] | None = None) -> dict:
    parser = cli.base_parser(__doc__)
    parser.add_argument("--top-k", type=int, default=10, help="eigenvalues per solution")
    parser.add_argument("--trace-samples", type=int, default=100, help="Hutchinson probes")
    args = cli.parse(parser, argv)
    config = cli.build_config(args)
    run = cli.run_directory(
        args, config, "spectrum", "spectrum.json", top_k=args.top_k,
        trace_samples=args.trace_samples,
    )  # fmt: skip
    data = cli.load_data(args, config)
    timer = cli.Timer()
    results = run_spectrum(
        config, cli.master_key(args), data, top_k=args.top_k, trace_samples=args.trace_samples,
        run=run, on_epoch=cli.progress,
    )  # fmt: skip
    results = cli.finish(run, "spectrum.json", results, timer)
    table = format_table(results)
    write_text(run.out / "spectrum.md", table)
    cli.save_figure(plot(results, config.name), run.out / "spectrum.png")
    cli.say(table)
    return results


def format_table(results: dict) -> str:
    """Markdown: per regime, mean ± std over seeds of lambda_1, lambda_k, trace and sharpness
    by every route."""
    k = results["top_k"]
    routes = list(next(iter(results["regimes"].values()))["sharpness"])
    eps = results["sharpness_eps"]
    lines = [
        f"Hessian of the training loss at the solutions ({results['config']['name']}, "
        f"mean ± std over {results['config']['seeds']} seeds)",
        "",
        f"| regime | batch | test acc. (%) | λ_1 | λ_{k} | trace | "
        + " | ".join(f"sharpness ε={eps:g}, {route} (%)" for route in routes)
        + " |",
        "|---|---|---|---|---|---|" + "---|" * len(routes),
    ]

    def cell(values, scale: float = 1.0, fmt: str = ".3g") -> str:
        stats = mean_std(scale * np.asarray(values, dtype=np.float64))
        if stats["mean"] is None:
            return "n/a"
        return f"{stats['mean']:{fmt}} ± {stats['std']:{fmt}}"

    for regime, r in results["regimes"].items():
        eig = np.asarray(r["top_eigenvalues"], dtype=np.float64)
        lines.append(
            f"| {regime} | {r['batch_size']} | {cell(r['test_accuracy'], 100, '.2f')} "
            f"| {cell(eig[:, 0])} | {cell(eig[:, -1])} | {cell(r['trace'])} | "
            + " | ".join(cell(r["sharpness"][route]) for route in routes)
            + " |"
        )
    return "\n".join(lines) + "\n"


def plot(results: dict, name: str) -> plt.Figure:
    """Top-k eigenvalues by rank, every seed a thin line, the seed mean a thick one."""
    fig, ax = plt.subplots(figsize=(6.5, 4.5), constrained_layout=True)
    ranks = np.arange(1, results["top_k"] + 1)
    for (regime, r), color in zip(results["regimes"].items(), cli.REGIME_COLORS, strict=False):
        eig = np.asarray(r["top_eigenvalues"], dtype=np.float64)
        ax.plot(ranks, eig.T, color=color, alpha=0.3, linewidth=0.8)
        ax.plot(
            ranks, np.nanmean(eig, axis=0), color=color, marker="o", linewidth=2,
            label=f"{regime} (batch {r['batch_size']}), mean over {eig.shape[0]} seeds",
        )  # fmt: skip
    ax.set_yscale("log")
    ax.set_xticks(ranks)
    ax.set_xlabel("eigenvalue rank i")
    ax.set_ylabel(r"Hessian eigenvalue $\lambda_i$ of the training loss (log scale)")
    ax.grid(alpha=0.3, which="both")
    ax.legend()
    ax.set_title(f"{name}: top-{results['top_k']} Hessian eigenvalues (thin lines: seeds)")
    return fig


if __name__ == "__main__":
    main()
