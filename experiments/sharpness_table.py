"""SB vs LB: Table 2 (accuracy) and Tables 3/4 (sharpness) of Keskar et al. 2017.

    python experiments/sharpness_table.py --config digits --out results/digits

Writes DIR/results.json and DIR/tables.md and prints the tables. Rerun the same command after
an interruption to resume (DIR/checkpoints holds the training checkpoints and finished solves).
"""

import argparse
import time

import jax
from _cli import CONFIGS, base_parser, build_config, load_data, parse, run_directory, say

from flatmin.checkpoint import write_json, write_text
from flatmin.experiment import run_sharpness_table
from flatmin.tables import format_tables


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = base_parser(__doc__)
    parser.add_argument("--lb-batch", type=int, default=None, help="override the large batch")
    return parse(parser, argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    overrides = {} if args.lb_batch is None else {"lb_batch": args.lb_batch}
    # Builds and validates the whole config (sizes, seeds, epochs, eps) before any work.
    config = build_config(args, **overrides)
    run = run_directory(args, config, "sharpness_table", "results.json")
    data = load_data(args, config)
    start = time.perf_counter()
    results = run_sharpness_table(config, jax.random.key(args.seed), data, progress=True, run=run)
    results["config"] = run.config
    results["seconds"] = round(time.perf_counter() - start, 1)
    results["devices"] = f"{jax.device_count()} x {jax.devices()[0].device_kind}"
    tables = format_tables(results)
    write_json(run.out / "results.json", results)
    write_text(run.out / "tables.md", tables)
    say(tables)
    say(f"wrote {run.out / 'results.json'} and {run.out / 'tables.md'} in {results['seconds']} s")


__all__ = ["CONFIGS", "main", "parse_args"]

if __name__ == "__main__":
    main()
