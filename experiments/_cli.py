"""Plumbing shared by the experiment scripts: flags, config, output folder, data, atomic writes.

Each script is a thin `main(argv)` over the library:

    parser = base_parser(__doc__)           # --config --seeds --epochs --hidden --out ...
    parser.add_argument(...)                # the script's own flags
    args = parser.parse_args(argv)
    config = build_config(args)             # CONFIGS[--config] with the overrides, validated
    out = output_dir(args, config, "name")  # --out, or results/<config>/<name>
    data = load_data(args, config)
    ...
    write_json(out / "x.json", results); save_figure(fig, out / "x.png")
"""

import argparse
import dataclasses
import json
import os
import sys
from pathlib import Path
from typing import Any

import jax
import matplotlib

matplotlib.use("Agg")  # no display on the machines these run on; before pyplot is imported

import matplotlib.pyplot as plt
import numpy as np

from flatmin.data import Dataset, load_dataset
from flatmin.experiment import CONFIGS, ExperimentConfig, json_ready

SB_COLOR, LB_COLOR = "tab:blue", "tab:red"


def base_parser(doc: str | None) -> argparse.ArgumentParser:
    """The flags every experiment shares; the description is the first line of `doc`."""
    parser = argparse.ArgumentParser(description=(doc or "").strip().splitlines()[0])
    parser.add_argument("--config", default="digits", choices=sorted(CONFIGS))
    parser.add_argument("--seeds", type=int, default=None, help="seeds (default: the config's)")
    parser.add_argument("--epochs", type=int, default=None, help="most epochs per training run")
    parser.add_argument(
        "--hidden",
        type=_widths,
        default=None,
        help="comma-separated hidden widths overriding the config's (mlp model only), e.g. 16,16",
    )
    parser.add_argument("--out", type=Path, default=None, help="default: results/<config>/<name>")
    parser.add_argument("--data-dir", default=None, help="tensorflow-datasets data_dir")
    parser.add_argument("--timit", default=None, help="TIMIT features .npz (config f2)")
    parser.add_argument("--seed", type=int, default=0, help="master PRNG seed")
    return parser


def build_config(args: argparse.Namespace, **overrides: Any) -> ExperimentConfig:
    """CONFIGS[args.config] with --seeds/--epochs/--hidden and `overrides` applied.

    Building the config validates it (sizes, seeds, epochs, eps) before any data is loaded.
    """
    base = CONFIGS[args.config]
    changes = {k: v for k, v in (("seeds", args.seeds), ("epochs", args.epochs)) if v is not None}
    if args.hidden is not None:
        if base.model != "mlp":
            sys.exit(f"--hidden applies to the mlp model only; config {base.name} is {base.model}")
        changes["model_kwargs"] = {**base.model_kwargs, "hidden": args.hidden}
    return dataclasses.replace(base, **{**changes, **overrides})


def output_dir(args: argparse.Namespace, config: ExperimentConfig, name: str) -> Path:
    """--out, or results/<config>/<name>; created, and checked writable before any work."""
    out = args.out or Path("results") / config.name / name
    out.mkdir(parents=True, exist_ok=True)
    if not os.access(out, os.W_OK):
        sys.exit(f"--out {out} is not writable")
    return out


def load_data(args: argparse.Namespace, config: ExperimentConfig) -> Dataset:
    """The config's data set, from --data-dir / --timit."""
    return load_dataset(config.dataset, data_dir=args.data_dir, path=args.timit)


def take_seed(variables: Any, seed: int) -> Any:
    """One seed's variables out of a pytree stacked over seeds."""
    return jax.tree.map(lambda leaf: leaf[seed], variables)


def mean_std(values: Any) -> dict[str, float | None]:
    """{"mean", "std"} over seeds (population std), ignoring NaN (a diverged seed)."""
    values = np.asarray(values, dtype=np.float64)
    finite = values[np.isfinite(values)]
    if finite.size == 0:
        return {"mean": None, "std": None}
    return {"mean": float(finite.mean()), "std": float(finite.std())}


def write_text(path: Path, text: str) -> None:
    """Writes via a temporary file and a rename, so a reader never sees half a file."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    tmp.replace(path)


def write_json(path: Path, results: Any) -> None:
    """`results` as strict JSON (NaN/inf -> null), atomically."""
    write_text(path, json.dumps(json_ready(results), indent=1, allow_nan=False))


def save_figure(fig: plt.Figure, path: Path) -> None:
    """Saves `fig` as PNG atomically and closes it (figures otherwise pile up in pyplot)."""
    tmp = path.with_name(path.name + ".tmp")
    fig.savefig(tmp, format="png", dpi=150, bbox_inches="tight")
    plt.close(fig)
    tmp.replace(path)


def _widths(text: str) -> tuple[int, ...]:
    try:
        widths = tuple(int(w) for w in text.split(","))
    except ValueError:
        widths = ()
    if not widths or min(widths) < 1:
        raise argparse.ArgumentTypeError(f"expected comma-separated positive widths, got {text!r}")
    return widths
