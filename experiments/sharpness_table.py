"""SB vs LB: Table 2 (accuracy) and Tables 3/4 (sharpness) of Keskar et al. 2017.

    python experiments/sharpness_table.py --config digits --out results/digits

Writes DIR/results.json and DIR/tables.md and prints the tables.
"""

import argparse
import dataclasses
import json
import os
import sys
import time
from pathlib import Path

import jax

from flatmin.data import load_dataset
from flatmin.experiment import CONFIGS, run_sharpness_table
from flatmin.tables import format_tables


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="digits", choices=sorted(CONFIGS))
    parser.add_argument("--seeds", type=int, default=None, help="seeds per regime (default 5)")
    parser.add_argument("--epochs", type=int, default=None, help="most epochs per seed")
    parser.add_argument("--lb-batch", type=int, default=None, help="override the large batch")
    parser.add_argument("--out", type=Path, default=None, help="default: results/<config>")
    parser.add_argument("--data-dir", default=None, help="tensorflow-datasets data_dir")
    parser.add_argument("--timit", default=None, help="TIMIT features .npz (config f2)")
    parser.add_argument("--seed", type=int, default=0, help="master PRNG seed")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    overrides = {
        name: value
        for name, value in (
            ("seeds", args.seeds),
            ("epochs", args.epochs),
            ("lb_batch", args.lb_batch),
        )
        if value is not None
    }
    # Builds and validates the whole config (sizes, seeds, epochs, eps) before any work.
    config = dataclasses.replace(CONFIGS[args.config], **overrides)
    out = args.out or Path("results") / config.name
    out.mkdir(parents=True, exist_ok=True)
    if not os.access(out, os.W_OK):
        sys.exit(f"--out {out} is not writable")
    data = load_dataset(config.dataset, data_dir=args.data_dir, path=args.timit)
    start = time.perf_counter()
    results = run_sharpness_table(config, jax.random.key(args.seed), data, progress=True)
    results["seconds"] = round(time.perf_counter() - start, 1)
    results["device"] = jax.devices()[0].device_kind
    tables = format_tables(results)
    write_text(out / "results.json", json.dumps(results, indent=1))
    write_text(out / "tables.md", tables)
    print(tables)
    print(f"wrote {out / 'results.json'} and {out / 'tables.md'} in {results['seconds']} s")


def write_text(path: Path, text: str) -> None:
    """Writes via a temporary file and a rename, so a reader never sees half a file."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    tmp.replace(path)


if __name__ == "__main__":
    main()
