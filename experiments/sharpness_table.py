"""SB vs LB: Table 2 (accuracy) and Tables 3/4 (sharpness) of Keskar et al. 2017.

    python experiments/sharpness_table.py --config f1-mnist5k --out results/f1-mnist5k

Trains every regime of the config, measures Metric 2.1 by every route (the authors' solve and
flatmin's maximiser) with each solution's gradient norms, writes DIR/results.json and
DIR/tables.md and prints the tables. Rerun the same command after an interruption to resume
(DIR/checkpoints holds the training checkpoints and finished solves).
"""

import argparse

from experiments import _cli as cli
from flatmin.paper.protocol import run_sharpness_table
from flatmin.paper.tables import format_tables
from flatmin.runtime.checkpoint import write_text


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = cli.base_parser(__doc__)
    parser.add_argument("--lb-batch", type=int, default=None, help="the LB regime's batch size")
    return cli.parse(parser, argv)


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    config = cli.build_config(args)
    if args.lb_batch is not None:
        regimes = tuple(
            type(r)(r.name, args.lb_batch) if r.name == "LB" else r for r in config.regimes
        )
        config = cli.build_config(args, regimes=regimes)
    run = cli.run_directory(args, config, "sharpness_table", "results.json")
    data = cli.load_data(args, config)
    timer = cli.Timer()
    results = run_sharpness_table(
        config, cli.master_key(args), data, run=run, on_epoch=cli.progress
    )
    results = cli.finish(run, "results.json", results, timer)
    tables = format_tables(results)
    write_text(run.out / "tables.md", tables)
    cli.say(tables)
    return results


if __name__ == "__main__":
    main()
