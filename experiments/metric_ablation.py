"""What Metric 2.1 measures: the same SB and LB seeds under every choice that moves it.

    python experiments/metric_ablation.py --config f1-mnist5k --out results/f1-mnist5k/ablation

Trains every regime of the config under each training protocol (the paper's stopping; equal
training loss), then measures every seed by every route (the authors' solve on the device,
scipy's fmin_l_bfgs_b itself, flatmin's maximiser) with batch norm on running averages or on
the training set's own statistics, in the full space and random subspaces, at each eps. Writes
DIR/ablation.json (every row with every choice), DIR/ablation.md (mean ± std per cell, the
large batches' ratios to SB, the paper's figure beside) and DIR/ablation.png. Resumable.
"""

import math

import matplotlib.pyplot as plt
import numpy as np

from experiments import _cli as cli
from flatmin.paper.ablation import (
    ROUTES,
    SUBSPACES,
    default_cells,
    run_metric_ablation,
    select_cells,
    summarise,
)
from flatmin.paper.configs import PROTOCOLS
from flatmin.paper.tables import PAPER_DATA, PAPER_SHARPNESS
from flatmin.runtime.checkpoint import write_text
from flatmin.training.objective import BN_MODES


def _choices(allowed):
    def parse_list(text: str) -> tuple[str, ...]:
        names = tuple(text.split(","))
        unknown = [name for name in names if name not in allowed]
        if unknown:
            raise ValueError(f"unknown {unknown}; choose from {list(allowed)}")
        return names

    return parse_list


def main(argv: list[str] | None = None) -> dict:
    parser = cli.base_parser(__doc__)
    for flag, allowed in (
        ("--ablation-routes", ROUTES),
        ("--ablation-bn", BN_MODES),
        ("--ablation-subspaces", tuple(SUBSPACES)),
        ("--ablation-protocols", PROTOCOLS),
    ):
        parser.add_argument(
            flag, type=_choices(allowed), default=None,
            help=f"comma-separated subset of {', '.join(allowed)} (default: the design's)",
        )  # fmt: skip
    args = cli.parse(parser, argv)
    config = cli.build_config(args)
    cells = select_cells(
        default_cells(config.eps),
        protocols=args.ablation_protocols,
        routes=args.ablation_routes,
        bn=args.ablation_bn,
        subspaces=args.ablation_subspaces,
    )
    if not cells:
        parser.error("the --ablation-* choices leave no cell to measure")
    for protocol in cells:
        try:
            config.with_protocol(protocol)
        except ValueError as error:
            parser.error(str(error))
    design = {
        p: [f"{c.route}/{c.bn}/{c.subspace}/{c.eps:g}" for c in cs] for p, cs in cells.items()
    }
    run = cli.run_directory(args, config, "ablation", "ablation.json", cells=design)
    data = cli.load_data(args, config)
    timer = cli.Timer()
    results = run_metric_ablation(
        config, cli.master_key(args), data, cells=cells, run=run, on_epoch=cli.progress
    )
    record = config.to_json()
    summary = summarise(results, record)
    results = cli.finish(run, "ablation.json", results | {"summary": summary}, timer)
    table = format_table(summary, record, results["batch_sizes"])
    write_text(run.out / "ablation.md", table)
    cli.save_figure(plot(results, summary, record), run.out / "ablation.png")
    cli.say(table)
    return results


def _ratio_text(ratio: float | None) -> str:
    if ratio is None or (isinstance(ratio, float) and math.isnan(ratio)):
        return "—"
    return "∞ (SB 0)" if math.isinf(ratio) else f"{ratio:.3g}"


def _paper_ratio(config: dict, space: str, eps: float) -> str:
    figures = PAPER_SHARPNESS["full" if space == "full" else "subspace"]
    pair = figures.get(config["model"], {}).get(float(eps))
    return "—" if pair is None else f"{pair[1][0] / pair[0][0]:.3g}"


def format_table(summary: list[dict], config: dict, sizes: dict) -> str:
    """Markdown: one row per cell, mean ± std per regime, the ratios, the paper's ratio."""
    regimes = list(config["regimes"])
    reference = regimes[0]
    network = config["model"]
    lines = [
        f"# Metric 2.1 ablation: {config['name']}, {config['seeds']} seeds per regime "
        f"({', '.join(f'{r} batch {sizes[r]}' for r in regimes)}), mean ± std",
        "",
        "Routes: paper = flatmin's L-BFGS-B with scipy's stopping rules from y = 0 "
        "(LBFGSB.paper()); scipy = scipy.optimize.fmin_l_bfgs_b itself, same start and "
        "defaults; maximiser = flatmin's L-BFGS-B, 10 iterations, best of 4 random starts. "
        "bn: batch norm in f on running averages or on the training set's own statistics. "
        + (
            f"Paper ratio: {network.upper()} on {PAPER_DATA[network]}, Tables 3-4."
            if network in PAPER_DATA
            else "The paper has no figure for this network."
        ),
        "",
        "| protocol | route | bn | space | eps | "
        + " | ".join(regimes)
        + " | "
        + " | ".join(f"{r} / {reference}" for r in regimes[1:])
        + " | paper LB / SB |",
        "|---|---|---|---|---|" + "---|" * (2 * len(regimes)),
    ]
    order = {"paper": 0, "equal-loss": 1}
    for entry in sorted(
        summary,
        key=lambda e: (order.get(e["protocol"], 9), e["subspace"] != "full", e["subspace"],
                       -e["eps"], e["bn"], e["route"]),
    ):  # fmt: skip
        cells = []
        for regime in regimes:
            s = entry["stats"][regime]
            cells.append("—" if s["mean"] is None else f"{s['mean']:.4g} ± {s['std']:.2g}")
        space = "full" if entry["subspace"] == "full" else entry["subspace"]
        lines.append(
            f"| {entry['protocol']} | {entry['route']} | {entry['bn']} | {space} | "
            f"{entry['eps']:g} | "
            + " | ".join(cells)
            + " | "
            + " | ".join(_ratio_text(entry["ratios"][r]) for r in regimes[1:])
            + f" | {_paper_ratio(config, entry['subspace'], entry['eps'])} |"
        )
    return "\n".join(lines) + "\n"


def plot(results: dict, summary: list[dict], config: dict) -> plt.Figure:
    """Left: each large batch's ratio of mean sharpness to SB's, per cell (log scale; a ratio
    with SB at 0 drawn at the right edge). Right: each seed's value against the infinity-norm
    of its gradient at the solution, by the authors' route and the maximiser (full space,
    running statistics, paper protocol, first eps)."""
    regimes = list(config["regimes"])
    fig, (ax_ratio, ax_grad) = plt.subplots(
        1, 2, figsize=(13, max(4.5, 0.28 * len(summary) + 1.5)), constrained_layout=True,
        gridspec_kw={"width_ratios": (1.3, 1)},
    )  # fmt: skip
    labels = [
        f"{e['route']} | bn {e['bn']} | {e['subspace']} | eps {e['eps']:g} | "
        f"{e['protocol']} training"
        for e in summary
    ]
    finite = [
        r
        for e in summary
        for r in e["ratios"].values()
        if r is not None and np.isfinite(r) and r > 0
    ]
    top = 10 ** math.ceil(math.log10(max([*finite, 10.0]))) * 3
    bottom = 10 ** math.floor(math.log10(min([*finite, 0.1]))) / 3
    positions = np.arange(len(summary))
    height = 0.8 / max(1, len(regimes) - 1)
    for i, (regime, color) in enumerate(zip(regimes[1:], cli.REGIME_COLORS[1:], strict=False)):
        ratios = [e["ratios"][regime] for e in summary]
        shown = [
            top if r is not None and np.isinf(r) else (np.nan if r is None or r <= 0 else r)
            for r in ratios
        ]
        ax_ratio.barh(positions + i * height, shown, height=height, color=color,
                      label=f"{regime} / {regimes[0]}")  # fmt: skip
    ax_ratio.axvline(1.0, color="black", linewidth=1)
    ax_ratio.set_xscale("log")
    ax_ratio.set_xlim(bottom, top)
    ax_ratio.set_yticks(positions + 0.4 - height / 2, labels, fontsize=7)
    ax_ratio.invert_yaxis()
    ax_ratio.set_xlabel("ratio of mean sharpness to SB's (log; right edge: SB measured 0)")
    ax_ratio.legend(fontsize=8)
    ax_ratio.grid(alpha=0.3, axis="x")

    eps = config["eps"][0]
    for route, marker in (("paper", "o"), ("maximiser", "s")):
        for regime, color in zip(regimes, cli.REGIME_COLORS, strict=False):
            points = [
                (r["grad_inf_norm"], r["value"])
                for r in results["rows"]
                if r["route"] == route and r["regime"] == regime and r["protocol"] == "paper"
                and r["bn"] == "running" and r["subspace"] == "full" and r["eps"] == eps
                and r["value"] is not None
            ]  # fmt: skip
            if points:
                g, v = np.array(points).T
                ax_grad.scatter(g, np.maximum(v, 1e-3), color=color, marker=marker,
                                facecolors="none" if route == "maximiser" else color,
                                label=f"{route}, {regime}")  # fmt: skip
    ax_grad.axvline(1e-5, color="gray", linestyle=":", label="scipy's pgtol (1e-5)")
    ax_grad.set_xscale("log")
    ax_grad.set_yscale("log")
    ax_grad.set_xlabel("max abs gradient of f at the solution (log)")
    ax_grad.set_ylabel(f"Metric 2.1, full space, eps {eps:g} (log; 0 drawn at 1e-3)")
    ax_grad.legend(fontsize=7)
    ax_grad.grid(alpha=0.3, which="both")
    fig.suptitle(f"{config['name']}: what moves Metric 2.1 ({config['seeds']} seeds per regime)")
    return fig


if __name__ == "__main__":
    main()
