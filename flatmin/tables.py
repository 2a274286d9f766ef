"""Tables 2-4 of the paper as Markdown, our figures beside the paper's (shared/paper/setups.md)."""

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
_SPACE_TITLES = {
    "full": "Table 3: sharpness in the full space",
    "subspace": "Table 4: sharpness in a random subspace",
}


def describe_solver(solver: dict) -> str:
    """A results.json solver entry ({"type": ..., fields}) in one line."""
    fields = ", ".join(f"{k} {v}" for k, v in solver.items() if k != "type")
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


def format_tables(results: dict) -> str:
    """Tables 2-4 in Markdown from a results.json dict."""
    config = results["config"]
    name = config["name"]
    rows = {
        regime: [r for r in results["results"] if r["regime"] == regime] for regime in ("SB", "LB")
    }
    batch = {regime: rs[0]["batch_size"] if rs else "?" for regime, rs in rows.items()}

    def column(regime: str, field: str) -> list:
        return [None if r["diverged"] else r[field] for r in rows[regime]]

    lines = [
        f"# {name}: SB (batch {batch['SB']}) vs LB (batch {batch['LB']}), "
        f"{config['seeds']} seeds, mean ± std",
        "",
        f"Subspace: p = {config['subspace_dim']}, {config['subspace_distribution']} entries, "
        f"{'unit-norm' if config['subspace_normalize'] else 'unnormalised'} columns. Solver: "
        f"{describe_solver(config['solver'])}, restarts {config['restarts']}, "
        f"init {config['init']}.",
        "",
        "## Table 2: accuracy (%)",
        "",
        "| | train SB | train LB | test SB | test LB |",
        "|---|---|---|---|---|",
        "| flatmin | "
        + " | ".join(
            _cell(column(regime, field), 100)
            for field in ("train_accuracy", "test_accuracy")
            for regime in ("SB", "LB")
        )
        + " |",
    ]
    if name in PAPER_ACCURACY:
        lines.append("| paper | " + " | ".join(map(_paper, PAPER_ACCURACY[name])) + " |")
    lines += [
        "",
        "| | epochs SB | epochs LB | final train loss SB | final train loss LB |",
        "|---|---|---|---|---|",
        "| flatmin | "
        + " | ".join(
            _cell(column(regime, field))
            for field in ("epochs", "final_train_loss")
            for regime in ("SB", "LB")
        )
        + " |",
    ]
    for space, title in _SPACE_TITLES.items():
        eps_keys = list(rows["SB"][0]["sharpness"][space]) if rows["SB"] else []
        lines += ["", f"## {title}", "", "| eps | | SB | LB | LB / SB |", "|---|---|---|---|---|"]
        for eps in eps_keys:
            cells = {
                regime: [None if r["diverged"] else r["sharpness"][space][eps] for r in rs]
                for regime, rs in rows.items()
            }
            ratio = mean_std(cells["LB"])[0] / mean_std(cells["SB"])[0]
            lines.append(
                f"| {float(eps):g} | flatmin | {_cell(cells['SB'])} | {_cell(cells['LB'])} "
                f"| {ratio:.3g} |"
            )
            paper = PAPER_SHARPNESS[space].get(name, {}).get(float(eps))
            if paper is not None:
                lines.append(
                    f"| {float(eps):g} | paper | {_paper(paper[0])} | {_paper(paper[1])} "
                    f"| {paper[1][0] / paper[0][0]:.3g} |"
                )
    return "\n".join(lines) + "\n"
