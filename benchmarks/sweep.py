"""Seed sweeps: S seeds of the digits config trained vmapped in one program vs one after another.

For S in {1, 2, 4, 8, 16} and both regimes (SB: batch 16, 89 Adam steps per epoch; LB: batch
1437, one step per epoch), it times the epoch program that `train_seeds` runs once per epoch,
`jax.jit(jax.vmap(epoch, in_axes=(0, None)))`, `epoch` from
`flatmin.training.train.epoch_program`:

* vmapped: lower and compile seconds (after `jax.clear_caches()`), and the run time of one
  epoch of all S seeds (median over repeats);
* sequential: the S = 1 executable called S times, one seed after another;
* seed-epochs per second both ways and their ratio (target for S = 8: >= 3), and
  compile(S = 16) / compile(S = 1) (target: <= 1.3);
* diagnostics to explain the ratios: matmul FLOPs per seed-epoch and the GFLOP/s reached, the
  CPU seconds per wall second while running (threads busy), the machine's matmul peak, and
  one SB-sized matmul alone vs vmapped over 8 models.

Run `python benchmarks/sweep.py [--json PATH] [--repeats N] [--quick]`.
"""

import dataclasses
import time
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from benchmarks._timing import (
    benchmark_parser,
    compiled,
    environment,
    format_table,
    parse_benchmark_args,
    report,
    timed,
)
from flatmin.paper.configs import CONFIGS
from flatmin.paper.protocol import network
from flatmin.training.data import Dataset, load_dataset
from flatmin.training.models import init_variables
from flatmin.training.train import Schedule, SeedCarry
from flatmin.training.train import epoch_program as train_epoch_program

SEEDS = (1, 2, 4, 8, 16)
QUICK_SEEDS = (1, 2)
QUICK_HIDDEN = (32,)
REGIMES = ("SB", "LB")
TARGET_RATIO_S = 8
TARGET_RATIO = 3.0
TARGET_COMPILE_GROWTH = 1.3

PyTree = Any


class TrainSetup(NamedTuple):
    """One regime of the digits config: its network (config) and its schedule."""

    config: Any  # flatmin.paper.ExperimentConfig
    schedule: Schedule


class EpochProgram(NamedTuple):
    """What timing one regime's epoch needs: the per-seed epoch, a start-state maker, inputs."""

    config: TrainSetup
    epoch_fn: Callable  # one seed: (carry, inputs) -> carry
    start: Callable[[jax.Array], SeedCarry]  # (S,) keys -> stacked carries
    inputs: tuple  # (epoch, x, y, x_test, y_test), shared by all seeds
    n_params: int
    matmul_flops: float  # per seed-epoch, see `matmul_flops_per_epoch`


def train_config(regime: str, hidden: Sequence[int] | None = None) -> TrainSetup:
    """The digits config's network and `regime`'s schedule, with no stopping rule (every seed
    runs every epoch, as in a timing run) and optionally other hidden widths."""
    experiment = CONFIGS["digits"]
    if hidden:
        kwargs = dict(experiment.model_kwargs) | {"hidden": tuple(hidden)}
        experiment = dataclasses.replace(experiment, model_kwargs=kwargs)
    train_size = load_dataset("digits").x_train.shape[0]
    batch = experiment.batch_sizes(train_size)[regime]
    return TrainSetup(experiment, Schedule(batch_size=batch, epochs=experiment.epochs))


def epoch_program(config: TrainSetup, data: Dataset) -> EpochProgram:
    """The pieces of `train_seeds`' epoch program for `config` on `data` (its own factory)."""
    model, optimizer = network(config.config, data)
    input_shape = data.x_train.shape[1:]
    start_one, epoch_fn = train_epoch_program(config.schedule, model, optimizer)

    def start(keys: jax.Array) -> SeedCarry:
        variables = jax.vmap(
            lambda key: init_variables(model, jax.random.split(key)[0], input_shape)
        )(keys)
        return jax.vmap(start_one)(keys, variables)

    params = init_variables(model, jax.random.key(0), input_shape)["params"]
    inputs = (jnp.asarray(0, jnp.int32), *(jnp.asarray(a) for a in data[:4]))
    return EpochProgram(
        config=config,
        epoch_fn=epoch_fn,
        start=jax.jit(start),
        inputs=inputs,
        n_params=sum(leaf.size for leaf in jax.tree.leaves(params)),
        matmul_flops=matmul_flops_per_epoch(params, config.schedule, data),
    )


def vmapped_epoch(program: EpochProgram) -> Callable:
    """The vmapped (not yet jitted) epoch over stacked seeds, as `train_seeds` builds it."""
    return jax.vmap(program.epoch_fn, in_axes=(0, None))


def seed_keys(num_seeds: int) -> jax.Array:
    """(S,) PRNG keys."""
    return jax.random.split(jax.random.key(0), num_seeds)


def matmul_flops_per_epoch(params: PyTree, config: Schedule, data: Dataset) -> float:
    """Dense-layer FLOPs of one seed-epoch: 3 x forward (forward and two backward matmuls) per
    trained example, plus 1 x forward per evaluated example (training and test sets)."""
    kernels = [k for k in jax.tree.leaves(params) if k.ndim == 2]
    per_example = sum(2.0 * k.shape[0] * k.shape[1] for k in kernels)
    n, n_test = data.x_train.shape[0], data.x_test.shape[0]
    trained = (n // config.batch_size) * config.batch_size
    return per_example * (3 * trained + n + n_test)


def cpu_per_wall(fn: Callable[..., Any], *args: Any, calls: int = 3) -> float:
    """Process CPU seconds per wall second over `calls` calls of `fn(*args)`: ~ threads busy."""
    jax.block_until_ready(fn(*args))
    wall, cpu = time.perf_counter(), time.process_time()
    for _ in range(calls):
        jax.block_until_ready(fn(*args))
    return (time.process_time() - cpu) / (time.perf_counter() - wall)


def _compile_fresh(fn: Callable, *args: Any, **jit_kwargs: Any) -> tuple[Any, dict]:
    """`compiled` after `jax.clear_caches()`, so nothing traced or compiled before is reused."""
    jax.clear_caches()
    return compiled(fn, *args, **jit_kwargs)


def bench_regime(program: EpochProgram, seeds: Sequence[int], repeats: int) -> dict:
    """Vmapped vs sequential timings of one regime's epoch for every S in `seeds`."""
    if seeds[0] != 1:
        raise ValueError(f"seeds must start at 1 (the sequential baseline), got {seeds}")
    fn = vmapped_epoch(program)
    per_s = {}
    for s in seeds:
        carry = program.start(seed_keys(s))
        executable, phases = _compile_fresh(fn, carry, program.inputs)
        if s == 1:
            single = executable
        vmapped = timed(executable, carry, program.inputs, repeats=repeats)
        # Sequential: the S = 1 program, once per seed, each on its own (1,)-stacked carry.
        carries = [jax.tree.map(lambda a, i=i: a[i : i + 1], carry) for i in range(s)]

        def sequential(carries=carries, single=single):
            return [single(c, program.inputs) for c in carries]

        seq = timed(sequential, repeats=repeats)
        vmapped_rate = s / vmapped["median_s"]
        sequential_rate = s / seq["median_s"]
        flops = program.matmul_flops * s
        per_s[str(s)] = {
            "lower_s": phases["lower_s"],
            "compile_s": phases["compile_s"],
            "vmapped": vmapped,
            "sequential": seq,
            "vmapped_seed_epochs_per_s": vmapped_rate,
            "sequential_seed_epochs_per_s": sequential_rate,
            "ratio": vmapped_rate / sequential_rate,
            "vmapped_gflops_per_s": flops / vmapped["median_s"] / 1e9,
            "sequential_gflops_per_s": flops / seq["median_s"] / 1e9,
            "vmapped_cpu_per_wall": cpu_per_wall(executable, carry, program.inputs),
            "sequential_cpu_per_wall": cpu_per_wall(sequential),
        }
    first, last = per_s[str(seeds[0])], per_s[str(seeds[-1])]
    return {
        "batch_size": program.config.schedule.batch_size,
        "steps_per_epoch": program.inputs[1].shape[0] // program.config.schedule.batch_size,
        "matmul_flops_per_seed_epoch": program.matmul_flops,
        "seeds": per_s,
        "compile_growth": last["compile_s"] / first["compile_s"],
        "lower_growth": last["lower_s"] / first["lower_s"],
    }


def matmul_diagnostics(width: int, batch: int, models: int, repeats: int) -> dict:
    """The machine's matmul peak, and one (batch, width) @ (width, width) matmul alone vs
    vmapped over `models` models (the SB training step's main op)."""
    key = jax.random.key(1)
    big = jax.random.normal(key, (1024, 1024))
    peak = timed(jax.jit(lambda a: a @ a), big, repeats=repeats)
    x = jax.random.normal(key, (models, batch, width))
    w = jax.random.normal(key, (models, width, width))
    one = jax.jit(lambda x, w: x @ w)
    alone = timed(one, x[0], w[0], repeats=repeats)
    together = timed(jax.jit(jax.vmap(lambda x, w: x @ w)), x, w, repeats=repeats)
    flops = 2.0 * batch * width * width
    return {
        "peak_matmul_1024_gflops_per_s": 2 * 1024**3 / peak["median_s"] / 1e9,
        "small_matmul_shape": [batch, width, width],
        "models": models,
        "small_alone_s": alone["median_s"],
        "small_alone_gflops_per_s": flops / alone["median_s"] / 1e9,
        "small_vmapped_per_model_s": together["median_s"] / models,
        "small_vmapped_gflops_per_s": models * flops / together["median_s"] / 1e9,
        "small_alone_cpu_per_wall": cpu_per_wall(one, x[0], w[0], calls=200),
    }


def run(quick: bool = False, repeats: int = 5) -> dict:
    """The whole sweep; a JSON-ready dict. `quick`: a tiny MLP and S in {1, 2}."""
    data = load_dataset("digits")
    seeds = QUICK_SEEDS if quick else SEEDS
    hidden = QUICK_HIDDEN if quick else None
    regimes = {}
    for regime in REGIMES:
        program = epoch_program(train_config(regime, hidden), data)
        regimes[regime] = bench_regime(program, seeds, repeats) | {"n_params": program.n_params}
    width = (hidden or train_config("SB").config.model_kwargs["hidden"])[0]
    batch = train_config("SB").schedule.batch_size
    target_s = str(TARGET_RATIO_S if TARGET_RATIO_S in seeds else seeds[-1])
    targets = {
        regime: {
            "ratio_S": int(target_s),
            "ratio": entry["seeds"][target_s]["ratio"],
            "ratio_met": entry["seeds"][target_s]["ratio"] >= TARGET_RATIO,
            "compile_growth": entry["compile_growth"],
            "compile_growth_met": entry["compile_growth"] <= TARGET_COMPILE_GROWTH,
        }
        for regime, entry in regimes.items()
    }
    return {
        "environment": environment(),
        "config": {
            "quick": quick,
            "repeats": repeats,
            "seeds": list(seeds),
            "model_kwargs": dict(train_config("SB", hidden).config.model_kwargs),
            "dataset": "digits",
            "train_size": int(data.x_train.shape[0]),
            "test_size": int(data.x_test.shape[0]),
            "timed_unit": "one epoch of every seed (the program train_seeds runs per epoch)",
            "target_ratio": TARGET_RATIO,
            "target_compile_growth": TARGET_COMPILE_GROWTH,
        },
        "regimes": regimes,
        "targets": targets,
        "matmul": matmul_diagnostics(width, batch, TARGET_RATIO_S, repeats=max(repeats, 20)),
    }


def tables(results: dict) -> str:
    """Readable tables of `run`'s result."""
    columns = [
        "regime", "S", "lower_s", "compile_s", "vmap_run_s", "seq_run_s",
        "vmap_seed_ep/s", "seq_seed_ep/s", "ratio", "vmap_GF/s", "seq_GF/s", "vmap_cpu", "seq_cpu",
    ]  # fmt: skip
    rows = []
    for regime, entry in results["regimes"].items():
        for s, e in entry["seeds"].items():
            rows.append(
                {
                    "regime": f"{regime} (b={entry['batch_size']})",
                    "S": s,
                    "lower_s": e["lower_s"],
                    "compile_s": e["compile_s"],
                    "vmap_run_s": e["vmapped"]["median_s"],
                    "seq_run_s": e["sequential"]["median_s"],
                    "vmap_seed_ep/s": e["vmapped_seed_epochs_per_s"],
                    "seq_seed_ep/s": e["sequential_seed_epochs_per_s"],
                    "ratio": e["ratio"],
                    "vmap_GF/s": e["vmapped_gflops_per_s"],
                    "seq_GF/s": e["sequential_gflops_per_s"],
                    "vmap_cpu": e["vmapped_cpu_per_wall"],
                    "seq_cpu": e["sequential_cpu_per_wall"],
                }
            )
    target_rows = [{"regime": r} | t for r, t in results["targets"].items()]
    target_columns = ["regime", "ratio_S", "ratio", "ratio_met", "compile_growth"]
    matmul = results["matmul"]
    return "\n\n".join(
        [
            "Seed sweep: one epoch of S seeds, vmapped vs one after another (medians)",
            format_table(columns, rows),
            f"Targets: ratio(S={TARGET_RATIO_S}) >= {TARGET_RATIO}, "
            f"compile(S=max)/compile(S=1) <= {TARGET_COMPILE_GROWTH}",
            format_table([*target_columns, "compile_growth_met"], target_rows),
            "Matmul diagnostics (GFLOP/s)",
            format_table(list(matmul), [matmul]),
        ]
    )


def main(argv: Sequence[str] | None = None) -> None:
    """CLI: runs the benchmark, prints the tables, writes the JSON."""
    parser = benchmark_parser(__doc__)
    args = parse_benchmark_args(parser, argv)
    results = run(quick=args.quick, repeats=args.repeats)
    report("sweep", args, results, tables(results))


if __name__ == "__main__":
    main()
