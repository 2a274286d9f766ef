"""Tables 2-4 of the paper as Markdown, our figures beside the paper's (docs/paper.md)."""

import math
from collections.abc import Sequence

import numpy as np

# Keskar et al. 2017, mean ± std over 5 trials: Table 2 (accuracy %: train SB, train LB, test SB,
# test LB) and Tables 3/4 (sharpness: {eps: (SB, LB)}).
PAPER_ACCURACY = {
    "f1": ((99.66, 0.05), (99.92, 0.01), (98.03, 0.07), (97.81, 0.07)),
    "f2": ((99.99, 0.03), (98.35, 2.08), (64.02, 0.2), (59.45, 1.05)),
    "c1": ((99.89, 0.02), (99.66, 0.2), (80.04, 0.12), (77.26, 0.42)),
    "c2": ((99.99, 0.04), (99.99, 0.01), (89.24, 0.12), (87.26, 0.07)),
    "c3": ((99.56, 0.44), (99.88, 0.30), (49.58, 0.39), (46.45, 0.43)),
    "c4": ((99.10, 1.23), (99.57, 1.84), (63.08, 0.5), (57.81, 0.17)),
}
PAPER_SHARPNESS = {
    "full": {
        "f1": {1e-3: ((1.23, 0.83), (205.14, 69.52)), 5e-4: ((0.61, 0.27), (42.90, 17.14))},
        "f2": {1e-3: ((1.39, 0.02), (310.64, 38.46)), 5e-4: ((0.90, 0.05), (93.15, 6.81))},
        "c1": {1e-3: ((28.58, 3.13), (707.23, 43.04)), 5e-4: ((7.08, 0.88), (227.31, 23.23))},
        "c2": {1e-3: ((8.68, 1.32), (925.32, 38.29)), 5e-4: ((2.07, 0.86), (175.31, 18.28))},
        "c3": {1e-3: ((29.85, 5.98), (258.75, 8.96)), 5e-4: ((8.56, 0.99), (105.11, 13.22))},
        "c4": {1e-3: ((12.83, 3.84), (421.84, 36.97)), 5e-4: ((4.07, 0.87), (109.35, 16.57))},
    },
    "subspace": {
        "f1": {1e-3: ((0.11, 0.00), (9.22, 0.56)), 5e-4: ((0.05, 0.00), (9.17, 0.14))},
        "f2": {1e-3: ((0.29, 0.02), (23.63, 0.54)), 5e-4: ((0.05, 0.00), (6.28, 0.19))},
        "c1": {1e-3: ((2.18, 0.23), (137.25, 21.60)), 5e-4: ((0.71, 0.15), (29.50, 7.48))},
        "c2": {1e-3: ((0.95, 0.34), (25.09, 2.61)), 5e-4: ((0.31, 0.08), (5.82, 0.52))},
        "c3": {1e-3: ((17.02, 2.20), (236.03, 31.26)), 5e-4: ((4.03, 1.45), (86.96, 27.39))},
        "c4": {1e-3: ((6.05, 1.13), (72.99, 10.96)), 5e-4: ((1.89, 0.33), (19.85, 4.12))},
    },
}
# The data set each of the paper's networks was trained on.
PAPER_DATA = {
    "f1": "MNIST",
    "f2": "TIMIT",
    "c1": "CIFAR-10",
    "c2": "CIFAR-10",
    "c3": "CIFAR-100",
    "c4": "CIFAR-100",
}
_SPACE_TITLES = {
    "full": "Table 3: sharpness in the full space",
    "subspace": "Table 4: sharpness in a random subspace",
}


def describe_solver(solver: dict) -> str:
    """A results.json solver entry ({"type": ..., fields}) in one line."""
    fields = ", ".join(
        f"{k} {v}" for k, v in solver.items() if k not in ("type", "init", "restarts")
    )
    return f"{solver['type']} ({fields})"


def mean_std(values: Sequence[float | None]) -> tuple[float, float, int]:
    """Mean and (population) std of the finite values, and how many were left out."""
    finite = [v for v in values if v is not None and math.isfinite(v)]
    if not finite:
        return math.nan, math.nan, len(values)
    return float(np.mean(finite)), float(np.std(finite)), len(values) - len(finite)


def _cell(values: Sequence[float | None], scale: float = 1.0) -> str:
    mean, std, left_out = mean_std(values)
    text = f"{mean * scale:.4g} ± {std * scale:.2g}"
    return text + (f" ({left_out} diverged, excluded)" if left_out else "")


def _paper(pair: tuple[float, float] | None) -> str:
    return "—" if pair is None else f"{pair[0]} ± {pair[1]}"


def describe_route(route: dict) -> str:
    """A results.json route entry in one line: a solver with its start and restarts (results
    written before solvers carried them nest the solver: {"solver", "init", "restarts"})."""
    solver = route.get("solver", route)
    restarts = f", {route['restarts']} starts" if route["restarts"] > 1 else ""
    return f"{describe_solver(solver)} from y0 {route['init']}{restarts}"


def format_tables(results: dict) -> str:
    """Tables 2-4 in Markdown from a results.json dict: every regime, every route, and the
    paper's figures beside ours (it has SB and LB only)."""
    config = results["config"]
    name, network = config["name"], config["model"]  # the paper's figures are per network
    paper_label = f"paper ({network.upper()}, {PAPER_DATA.get(network, '?')})"
    regimes = list(config["regimes"])
    reference = regimes[0]
    rows = {regime: [r for r in results["results"] if r["regime"] == regime] for regime in regimes}
    sizes = results.get("batch_sizes", {})

    def column(regime: str, field: str) -> list:
        return [None if r["diverged"] else r[field] for r in rows[regime]]

    def paper_figure(table: dict | None, regime: str) -> str:
        index = {"SB": 0, "LB": 1}.get(regime)
        return "—" if table is None or index is None else _paper(table[index])

    header = " | ".join(f"{regime} ({sizes.get(regime, '?')})" for regime in regimes)
    lines = [
        f"# {name}: {', '.join(f'{r} batch {sizes.get(r, chr(63))}' for r in regimes)}; "
        f"{config['seeds']} seeds, mean ± std",
        "",
        f"Subspace: p = {config['subspace_dim']}, {config['subspace_distribution']} entries, "
        f"{'unit-norm' if config['subspace_normalize'] else 'unnormalised'} columns. "
        f"Batch norm in f: {config['bn']} statistics. Routes: "
        + "; ".join(f"{route}: {describe_route(r)}" for route, r in config["routes"].items())
        + ".",
        "",
        "## Table 2: accuracy (%)",
        "",
        "| | "
        + " | ".join(f"{split} {regime}" for split in ("train", "test") for regime in regimes)
        + " |",
        "|---|" + "---|" * (2 * len(regimes)),
        "| flatmin | "
        + " | ".join(
            _cell(column(regime, field), 100)
            for field in ("train_accuracy", "test_accuracy")
            for regime in regimes
        )
        + " |",
    ]
    if network in PAPER_ACCURACY:
        train_sb, train_lb, test_sb, test_lb = PAPER_ACCURACY[network]
        by_regime = {"train": (train_sb, train_lb), "test": (test_sb, test_lb)}
        lines.append(
            f"| {paper_label} | "
            + " | ".join(
                paper_figure(by_regime[split], regime)
                for split in ("train", "test")
                for regime in regimes
            )
            + " |"
        )
    lines += [
        "",
        "The solutions: epochs trained, final training loss (evaluation mode), and the gradient "
        "of f there (infinity- and 2-norm), what scipy's stopping rule (pgtol) reads.",
        "",
        f"| | {header} |",
        "|---|" + "---|" * len(regimes),
    ]
    for field, label in (
        ("epochs", "epochs"),
        ("final_train_loss", "final train loss"),
        ("grad_inf_norm", "max abs gradient"),
        ("grad_2_norm", "gradient 2-norm"),
    ):
        if all(field in r for rs in rows.values() for r in rs):
            lines.append(
                f"| {label} | "
                + " | ".join(_cell(column(regime, field)) for regime in regimes)
                + " |"
            )
    ratios = [regime for regime in regimes if regime != reference]
    floors = results.get("noise_floors") or {}
    if floors:
        lines += [
            "",
            "Noise floor: the std of seed 0's figure over "
            f"{config.get('noise_samples')} evaluations with its parameters perturbed at "
            "float32's rounding scale (relative 1e-7) and the solver's starts redrawn "
            "(`flatmin.noise_floor`). A ratio marked (within noise) compares means that differ "
            "by less than twice the larger of the two regimes' floors.",
        ]

    def floor(regime: str, route: str, space: str, eps: str) -> float | None:
        entry = floors.get(regime, {}).get(route, {}).get(space, {}).get(eps)
        return None if entry is None else entry["std"]

    for space, title in _SPACE_TITLES.items():
        if space not in config.get("spaces", _SPACE_TITLES):
            continue
        lines += [
            "",
            f"## {title}",
            "",
            f"| eps | route | {header} | "
            + " | ".join(f"{regime} / {reference}" for regime in ratios)
            + (" | noise floor (std) |" if floors else " |"),
            "|---|---|" + "---|" * (len(regimes) + len(ratios) + bool(floors)),
        ]
        for eps in config["eps"]:
            key = str(eps)
            for route in config["routes"]:
                cells = {
                    regime: [
                        None if r["diverged"] else r["sharpness"][route][space][key]
                        for r in rows[regime]
                    ]
                    for regime in regimes
                }
                means = {regime: mean_std(cells[regime])[0] for regime in regimes}
                noise = {regime: floor(regime, route, space, key) for regime in regimes}
                ratio_cells = []
                for regime in ratios:
                    text = f"{means[regime] / means[reference]:.3g}"
                    known = [v for v in (noise[regime], noise[reference]) if v is not None]
                    if known and abs(means[regime] - means[reference]) < 2 * max(known):
                        text += " (within noise)"
                    ratio_cells.append(text)
                noise_cell = ""
                if floors:
                    noise_cell = " | " + ", ".join(
                        f"{regime} {noise[regime]:.2g}" if noise[regime] is not None else "—"
                        for regime in regimes
                    )
                lines.append(
                    f"| {float(eps):g} | {route} | "
                    + " | ".join(_cell(cells[regime]) for regime in regimes)
                    + " | "
                    + " | ".join(ratio_cells)
                    + noise_cell
                    + " |"
                )
            paper = PAPER_SHARPNESS[space].get(network, {}).get(float(eps))
            if paper is not None:
                lines.append(
                    f"| {float(eps):g} | {paper_label} | "
                    + " | ".join(paper_figure(paper, regime) for regime in regimes)
                    + " | "
                    + " | ".join(
                        f"{paper[1][0] / paper[0][0]:.3g}" if regime == "LB" else "—"
                        for regime in ratios
                    )
                    + (" | — |" if floors else " |")
                )
    return "\n".join(lines) + "\n"
