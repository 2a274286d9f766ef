"""Plumbing shared by the experiment scripts: flags, config, output folder, data, progress.

Each script is a thin `main(argv)`: flags -> one library call -> files and a figure.

    parser = base_parser(__doc__)           # --config --seeds --epochs --routes --out ...
    parser.add_argument(...)                # the script's own flags
    args = parse(parser, argv)              # parsed; joins a multi-process run if asked
    config = build_config(args)             # CONFIGS[--config] with the overrides, validated
    run = run_directory(args, config, "name", "x.json")  # --out, checked; resumable stages
    data = load_data(args, config)
    results = flatmin.paper.<run_*>(config, key, data, run=run, on_epoch=progress)
    finish(run, "x.json", results)          # + save_figure(...)

Rerunning a command with the same --out resumes it: training from its last orbax checkpoint,
finished stages read back. Only process 0 of a multi-process run writes or prints.
"""

import argparse
import dataclasses
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import matplotlib

matplotlib.use("Agg")  # no display on the machines these run on; before pyplot is imported

import matplotlib.pyplot as plt
import numpy as np
from tqdm.auto import tqdm

from flatmin.paper.configs import CONFIGS, PROTOCOLS, ROUTES, ExperimentConfig
from flatmin.paper.protocol import load_config_data
from flatmin.runtime.checkpoint import CheckpointError, RunDirectory, write_json
from flatmin.runtime.sharding import initialize_distributed, is_writer
from flatmin.training.data import Dataset
from flatmin.training.objective import BN_MODES
from flatmin.training.train import EpochMetrics

SB_COLOR, LB_COLOR = "tab:blue", "tab:red"
REGIME_COLORS = ("tab:blue", "tab:orange", "tab:red", "tab:purple")


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
    parser.add_argument(
        "--eps",
        type=_floats,
        default=None,
        help="comma-separated box sizes of Metric 2.1 overriding the config's, e.g. 1e-3,5e-4",
    )
    parser.add_argument("--dataset-size", type=int, default=None, help="mnist1d: training examples")
    parser.add_argument("--out", type=Path, default=None, help="default: results/<config>/<name>")
    parser.add_argument(
        "--data-dir", default=None, help="tensorflow-datasets data_dir; mnist1d's cache"
    )
    parser.add_argument("--timit", default=None, help="TIMIT features .npz (config f2)")
    parser.add_argument("--seed", type=int, default=0, help="master PRNG seed")
    parser.add_argument(
        "--routes",
        type=lambda text: tuple(text.split(",")),
        default=None,
        help=f"comma-separated ways to solve Metric 2.1, of {', '.join(ROUTES)} (default: the "
        "config's, paper and maximiser)",
    )
    parser.add_argument(
        "--maxiter", type=int, default=None, help="every route's solver iterations (default 10)"
    )
    parser.add_argument("--bn", choices=BN_MODES, default=None, help="batch norm inside f")
    parser.add_argument(
        "--protocol",
        choices=PROTOCOLS,
        default="paper",
        help="training: the paper's (until the loss stops improving) or equal-loss (every "
        "regime stops at the config's equal_loss)",
    )
    parser.add_argument(
        "--checkpoint-every", type=int, default=5, help="epochs between training checkpoints"
    )
    parser.add_argument("--coordinator", default=None, help="multi-process: host:port of process 0")
    parser.add_argument("--num-processes", type=int, default=None, help="multi-process: how many")
    parser.add_argument("--process-id", type=int, default=None, help="multi-process: this one's")
    return parser


def parse(parser: argparse.ArgumentParser, argv: list[str] | None) -> argparse.Namespace:
    """Parses the flags and, with --coordinator, joins the multi-process run (before any other
    JAX call, as jax.distributed requires)."""
    args = parser.parse_args(argv)
    if args.checkpoint_every < 1:
        parser.error(f"--checkpoint-every must be >= 1, got {args.checkpoint_every}")
    unknown = [name for name in args.routes or () if name not in ROUTES]
    if unknown:
        parser.error(f"--routes: unknown {unknown}; choose from {sorted(ROUTES)}")
    multi = (args.coordinator, args.num_processes, args.process_id)
    if any(flag is not None for flag in multi):
        if any(flag is None for flag in multi):
            parser.error("--coordinator, --num-processes and --process-id go together")
        try:
            initialize_distributed(args.coordinator, args.num_processes, args.process_id)
        except ValueError as error:
            parser.error(str(error))
    return args


def build_config(args: argparse.Namespace, **overrides: Any) -> ExperimentConfig:
    """CONFIGS[args.config] with the flags and `overrides` applied (an override of None leaves
    the value as it is), under --protocol.

    Building the config validates it (sizes, seeds, epochs, eps, routes) before any data is
    loaded; a bad value ends the run with a message naming it.
    """
    base = CONFIGS[args.config]
    changes = {
        k: v
        for k, v in (
            ("seeds", args.seeds),
            ("epochs", args.epochs),
            ("bn", args.bn),
            ("eps", args.eps),
        )
        if v is not None
    }
    if args.routes is not None or args.maxiter is not None:
        names = args.routes
        routes = {name: ROUTES[name] for name in names} if names else dict(base.routes)
        if args.maxiter is not None:
            try:
                routes = {
                    name: dataclasses.replace(solver, maxiter=args.maxiter)
                    for name, solver in routes.items()
                }
            except ValueError as error:
                sys.exit(f"error: --maxiter: {error}")
        changes["routes"] = routes
    if args.hidden is not None:
        if base.model != "mlp":
            sys.exit(f"--hidden applies to the mlp model only; config {base.name} is {base.model}")
        changes["model_kwargs"] = {**base.model_kwargs, "hidden": args.hidden}
    if args.dataset_size is not None:
        changes["dataset_kwargs"] = {**base.dataset_kwargs, "size": args.dataset_size}
    changes |= {name: value for name, value in overrides.items() if value is not None}
    try:
        return dataclasses.replace(base, **changes).with_protocol(args.protocol)
    except ValueError as error:
        sys.exit(f"error: {error}")


def run_directory(
    args: argparse.Namespace,
    config: ExperimentConfig,
    name: str,
    results_file: str,
    **settings: Any,
) -> RunDirectory:
    """--out (default results/<config>/<name>) as a `RunDirectory`, checked before any work.

    Its identity, written into the results as "config", is the experiment config, the master
    seed and the script's own `settings`: a directory holding another identity's results, or
    one that is not writable, ends the run with a message naming the file.
    """
    out = args.out or Path("results") / config.name / name
    identity = {**config.to_json(), "master_seed": args.seed, **settings}
    try:
        return RunDirectory(
            out, name, identity, results=(results_file,), checkpoint_every=args.checkpoint_every
        )
    except CheckpointError as error:
        sys.exit(f"error: {error}")


def load_data(args: argparse.Namespace, config: ExperimentConfig) -> Dataset:
    """The config's data set, from --data-dir / --timit."""
    kwargs = {"data_dir": args.data_dir}
    if config.dataset == "timit":
        kwargs["path"] = args.timit
    return load_config_data(config, **kwargs)


def master_key(args: argparse.Namespace) -> jax.Array:
    """The experiment's master PRNG key (--seed); every random choice derives from it."""
    return jax.random.key(args.seed)


def progress(name: str) -> Callable[[int, EpochMetrics], None] | None:
    """A tqdm bar over one training run's epochs (from 3 s on), with the mean training loss;
    None on processes other than 0. Pass as `on_epoch=progress` to the paper's run_* calls."""
    if not is_writer():
        return None
    bar = tqdm(desc=name, unit="epoch", delay=3.0, leave=False)

    def on_epoch(epoch: int, metrics: EpochMetrics) -> None:
        bar.n = epoch
        bar.set_postfix(train_loss=f"{np.nanmean(metrics.train_loss):.3g}", refresh=True)

    return on_epoch


class Timer:
    """Wall time since the start of the run, and the devices, for the results file."""

    def __init__(self) -> None:
        self.start = time.perf_counter()

    def stamp(self) -> dict:
        return {
            "seconds": round(time.perf_counter() - self.start, 1),
            "devices": f"{jax.device_count()} x {jax.devices()[0].device_kind}",
        }


def finish(run: RunDirectory, results_file: str, results: dict, timer: Timer) -> dict:
    """results + the run's identity ("config"), wall time and devices, written to --out."""
    results = {"config": run.config, **results, **timer.stamp()}
    write_json(run.out / results_file, results)
    say(f"wrote {run.out / results_file} in {results['seconds']} s")
    return results


def say(*values: Any) -> None:
    """print, on process 0 only."""
    if is_writer():
        print(*values, flush=True)


def save_figure(fig: plt.Figure, path: Path) -> None:
    """Saves `fig` as PNG atomically (process 0) and closes it (figures pile up in pyplot)."""
    if is_writer():
        tmp = path.with_name(f".{path.name}.tmp")
        fig.savefig(tmp, format="png", dpi=150, bbox_inches="tight")
        tmp.replace(path)
    plt.close(fig)


def band(stats: list[dict], scale: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """Means and stds of {"mean", "std"} entries (None -> NaN), times `scale`."""
    mean = np.array([np.nan if s["mean"] is None else s["mean"] for s in stats])
    std = np.array([np.nan if s["std"] is None else s["std"] for s in stats])
    return scale * mean, scale * std


def _widths(text: str) -> tuple[int, ...]:
    try:
        widths = tuple(int(w) for w in text.split(","))
    except ValueError:
        widths = ()
    if not widths or min(widths) < 1:
        raise argparse.ArgumentTypeError(f"expected comma-separated positive widths, got {text!r}")
    return widths


def _floats(text: str) -> tuple[float, ...]:
    try:
        values = tuple(float(v) for v in text.split(","))
    except ValueError:
        values = ()
    if not values or not all(v > 0 and v < float("inf") for v in values):
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers > 0, got {text!r}")
    return values
