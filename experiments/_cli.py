"""Plumbing shared by the experiment scripts: flags, config, output folder, data, atomic writes.

Each script is a thin `main(argv)` over the library:

    parser = base_parser(__doc__)           # --config --seeds --epochs --solver --out ...
    parser.add_argument(...)                # the script's own flags
    args = parse(parser, argv)              # parsed; joins a multi-process run if asked
    config = build_config(args)             # CONFIGS[--config] with the overrides, validated
    run = run_directory(args, config, "name", "x.json")  # --out, checked; resumable stages
    data = load_data(args, config)
    ...
    write_json(run.out / "x.json", results | {"config": run.config}); save_figure(fig, ...)

Rerunning a command with the same --out resumes it: training from its last orbax checkpoint,
finished stages read back. Only process 0 of a multi-process run writes or prints results.
"""

import argparse
import dataclasses
import sys
from pathlib import Path
from typing import Any

import jax
import matplotlib

matplotlib.use("Agg")  # no display on the machines these run on; before pyplot is imported

import matplotlib.pyplot as plt
import numpy as np

from flatmin.checkpoint import CheckpointError, RunDirectory
from flatmin.data import Dataset, load_dataset
from flatmin.experiment import CONFIGS, ExperimentConfig
from flatmin.sharding import initialize_distributed, is_writer
from flatmin.solvers import LBFGSB, ProjectedGradient

SB_COLOR, LB_COLOR = "tab:blue", "tab:red"

# --solver NAME: the solver objects a flag can name (the library takes the objects).
SOLVERS = {
    "lbfgsb": LBFGSB(),
    "paper": LBFGSB.paper(),
    "projected_gradient": ProjectedGradient(),
}

# The experiments that measure only full-space sharpness (batch_size_sweep, warm_start) solve
# with projected gradient on digits unless --solver says otherwise: there it found the same
# maxima as L-BFGS-B (README: Benchmarks, Warm starts) in a fraction of the time, which keeps
# their digits defaults to minutes. `--solver lbfgsb` gives flatmin's L-BFGS-B.
FULL_SPACE_DIGITS_SOLVER = "projected_gradient"


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
    parser.add_argument(
        "--solver",
        default=None,
        choices=sorted(SOLVERS),
        help="inner-maximum solver: lbfgsb (flatmin's maximiser, the configs' default), paper "
        "(L-BFGS-B with scipy's stopping rules, unscaled: the authors' route), projected_gradient",
    )
    parser.add_argument(
        "--maxiter", type=int, default=None, help="solver iterations (default: the solver's, 10)"
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
    multi = (args.coordinator, args.num_processes, args.process_id)
    if any(flag is not None for flag in multi):
        if any(flag is None for flag in multi):
            parser.error("--coordinator, --num-processes and --process-id go together")
        try:
            initialize_distributed(args.coordinator, args.num_processes, args.process_id)
        except ValueError as error:
            parser.error(str(error))
    return args


def solver(args: argparse.Namespace, name: str | None = None):
    """The solver --solver (or `name`) names, with --maxiter; None when neither says one."""
    name = args.solver or name
    if name is None:
        if args.maxiter is None:
            return None
        name = "lbfgsb"
    chosen = SOLVERS[name]
    if args.maxiter is not None:
        try:
            chosen = dataclasses.replace(chosen, maxiter=args.maxiter)
        except ValueError as error:
            sys.exit(f"error: --maxiter: {error}")
    return chosen


def full_space_solver(args: argparse.Namespace):
    """--solver, else FULL_SPACE_DIGITS_SOLVER on digits, else None (the config's)."""
    if args.solver is not None or args.config != "digits":
        return solver(args)
    return solver(args, FULL_SPACE_DIGITS_SOLVER)


def build_config(args: argparse.Namespace, **overrides: Any) -> ExperimentConfig:
    """CONFIGS[args.config] with --seeds/--epochs/--solver/--hidden and `overrides` applied
    (an override of None leaves the value as it is).

    Building the config validates it (sizes, seeds, epochs, eps) before any data is loaded.
    """
    overrides = {name: value for name, value in overrides.items() if value is not None}
    base = CONFIGS[args.config]
    flags = (("seeds", args.seeds), ("epochs", args.epochs), ("solver", solver(args)))
    changes = {k: v for k, v in flags if v is not None}
    if args.hidden is not None:
        if base.model != "mlp":
            sys.exit(f"--hidden applies to the mlp model only; config {base.name} is {base.model}")
        changes["model_kwargs"] = {**base.model_kwargs, "hidden": args.hidden}
    return dataclasses.replace(base, **{**changes, **overrides})


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


def say(*values: Any) -> None:
    """print, on process 0 only."""
    if is_writer():
        print(*values, flush=True)


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


def save_figure(fig: plt.Figure, path: Path) -> None:
    """Saves `fig` as PNG atomically (process 0) and closes it (figures pile up in pyplot)."""
    if is_writer():
        tmp = path.with_name(f".{path.name}.tmp")
        fig.savefig(tmp, format="png", dpi=150, bbox_inches="tight")
        tmp.replace(path)
    plt.close(fig)


def _widths(text: str) -> tuple[int, ...]:
    try:
        widths = tuple(int(w) for w in text.split(","))
    except ValueError:
        widths = ()
    if not widths or min(widths) < 1:
        raise argparse.ArgumentTypeError(f"expected comma-separated positive widths, got {text!r}")
    return widths
