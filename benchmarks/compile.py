"""Compile time: lowering and compiling, timed apart, each after `jax.clear_caches()`.

Programs:

* data as arguments against data closed over: the default full-space solve,
  `flatmin.sharpness(flatmin.Objective(model), p, args=(batch_stats, x, y))`, against the same
  solve of a closure over the data (`lambda q: objective(q, batch_stats, x, y)`, the form every
  measure took before data became arguments), on the digits MLP and on F1 with 60,000 synthetic
  MNIST-shaped examples: lower and compile seconds, the size of the lowered program, and the
  seconds a second data set of the same shapes costs (a cache hit with arguments, a whole new
  compile with a closure);

On the digits config's 3x512 MLP (evaluation-mode loss over the training set):

* the sharpness solve, `jax.jit(lambda p: flatmin.sharpness(loss, p, A, 1e-3, solver=s))`,
  for each solver with maxiter 10 and 100, in the full space and a p = 100 subspace;
  compile(maxiter=100) / compile(maxiter=10) should be ~1 (loops are not unrolled);
* the same solve vmapped over S = 1 and 8 stacked parameter sets (seeds): compile(S = 8) /
  compile(S = 1) should be ~1 too;
* the training epoch (`train_seeds`' vmapped epoch program), SB and LB, S = 1 and S = 8;
* the same epoch with the seed axis sharded over all devices, where there is more than one.

Every figure is the median over repeats. Use it to compare compilation speed across JAX versions
and backends: `python benchmarks/compile.py [--json PATH] [--repeats N] [--quick]`.
"""

import dataclasses
import statistics
import time
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

import flatmin
from benchmarks._timing import (
    benchmark_parser,
    compiled,
    environment,
    format_table,
    log,
    parse_benchmark_args,
    report,
)
from benchmarks.sweep import (
    QUICK_HIDDEN,
    REGIMES,
    epoch_program,
    seed_keys,
    train_config,
    vmapped_epoch,
)
from flatmin.paper.protocol import network

EPS = 1e-3
MAXITERS = (10, 100)
SUBSPACE_DIM = 100
EPOCH_SEEDS = (1, 8)
QUICK_EPOCH_SEEDS = (1, 2)
SOLVERS = {
    "lbfgsb": flatmin.LBFGSB(),
    "paper": flatmin.LBFGSB.paper(),
    "projected_gradient": flatmin.ProjectedGradient(),
}
QUICK_SOLVERS = ("lbfgsb",)
SOLVE_SEEDS = (1, 8)


def compile_times(
    fn: Callable[..., Any], *args: Any, repeats: int, **jit_kwargs: Any
) -> dict[str, Any]:
    """Median lower and compile seconds of `jax.jit(fn, **jit_kwargs)` on `args`, each repeat
    after `jax.clear_caches()`; every repeat listed too."""
    lowers, compiles = [], []
    for _ in range(repeats):
        jax.clear_caches()
        _, phases = compiled(fn, *args, **jit_kwargs)
        lowers.append(phases["lower_s"])
        compiles.append(phases["compile_s"])
    return {
        "lower_s": statistics.median(lowers),
        "compile_s": statistics.median(compiles),
        "total_s": statistics.median(a + b for a, b in zip(lowers, compiles, strict=True)),
        "lower_repeats_s": lowers,
        "compile_repeats_s": compiles,
    }


def sharpness_compile(hidden: Sequence[int] | None, solvers: Sequence[str], repeats: int) -> dict:
    """Compile times of the sharpness solve per space, solver and maxiter, with the ratios."""
    data = flatmin.load_dataset("digits")
    model, _ = network(train_config("SB", hidden).config, data)
    variables = flatmin.init_variables(model, jax.random.key(0), data.x_train.shape[1:])
    params = variables["params"]
    loss = flatmin.Objective(model)
    args = (variables["batch_stats"], jnp.asarray(data.x_train), jnp.asarray(data.y_train))
    spaces = {
        "full": None,
        f"p{SUBSPACE_DIM}": flatmin.random_subspace(jax.random.key(1), params, SUBSPACE_DIM),
    }
    results = {}
    for space, A in spaces.items():
        results[space] = {}
        for name in solvers:
            per_maxiter = {}
            for maxiter in MAXITERS:
                solver = dataclasses.replace(SOLVERS[name], maxiter=maxiter)

                def solve(p, args, A=A, solver=solver):
                    return flatmin.sharpness(loss, p, A, EPS, args=args, solver=solver)

                per_maxiter[str(maxiter)] = compile_times(solve, params, args, repeats=repeats)
            per_seeds = {}
            for seeds in SOLVE_SEEDS:
                stacked = jax.tree.map(lambda leaf, s=seeds: jnp.stack([leaf] * s), params)

                def solve_seeds(p, args, A=A, solver=SOLVERS[name]):
                    one = lambda q: flatmin.sharpness(loss, q, A, EPS, args=args, solver=solver)
                    return jax.vmap(one)(p)

                per_seeds[str(seeds)] = compile_times(solve_seeds, stacked, args, repeats=repeats)
            low, high = (per_maxiter[str(m)] for m in (MAXITERS[0], MAXITERS[-1]))
            one, many = (per_seeds[str(s)] for s in (SOLVE_SEEDS[0], SOLVE_SEEDS[-1]))
            results[space][name] = {
                "maxiter": per_maxiter,
                "compile_ratio": high["compile_s"] / low["compile_s"],
                "lower_ratio": high["lower_s"] / low["lower_s"],
                "seeds": per_seeds,
                "seeds_compile_ratio": many["compile_s"] / one["compile_s"],
            }
    return results


# The data-as-arguments comparison: (examples, model) per problem; --quick: fewer examples.
DATA_PROBLEMS = {"digits-mlp": (None, "mlp"), "f1-synthetic-60k": (60_000, "f1")}
QUICK_DATA_EXAMPLES = 2_000


def synthetic_mnist(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """n synthetic MNIST-shaped examples: images uniform on [0, 1] (n, 28, 28, 1) float32 and
    labels in [0, 10), for timing only."""
    rng = np.random.default_rng(seed)
    x = rng.random((n, 28, 28, 1), dtype=np.float32)
    return x, rng.integers(0, 10, n).astype(np.int32)


def data_compile(quick: bool, repeats: int) -> dict:
    """The default full-space solve with the data as arguments against closed over: lower and
    compile seconds (medians), the lowered program's size (StableHLO text, characters), and
    the seconds a second data set of the same shapes takes end to end through `jax.jit`."""
    results = {}
    for name, (examples, network_name) in DATA_PROBLEMS.items():
        if examples is None:
            data = flatmin.load_dataset("digits")
            x, y = data.x_train, data.y_train
            hidden = QUICK_HIDDEN if quick else (512, 512, 512)
            model = flatmin.build_model("mlp", 10, hidden=hidden)
        else:
            x, y = synthetic_mnist(QUICK_DATA_EXAMPLES if quick else examples)
            model = flatmin.build_model(network_name, 10)
        variables = flatmin.init_variables(model, jax.random.key(0), x.shape[1:])
        params, stats = variables["params"], variables["batch_stats"]
        objective = flatmin.Objective(model)
        log(f"data as arguments, {name} ({x.shape[0]} examples): compiling both forms")

        def with_args(p, stats, x, y, objective=objective):
            return flatmin.sharpness(objective, p, args=(stats, x, y))

        def closure_over(stats, x, y, objective=objective):
            # A fresh closure per data set, as a loss function closing over its data is.
            return lambda p: flatmin.sharpness(lambda q: objective(q, stats, x, y), p)

        x2, y2 = np.ascontiguousarray(x[::-1]), np.ascontiguousarray(y[::-1])
        forms = {
            "arguments": (with_args, (params, stats, x, y), (params, stats, x2, y2)),
            "closure": (closure_over(stats, x, y), (params,), None),
        }
        entry = {"examples": int(x.shape[0])}
        for form, (fn, first_args, _) in forms.items():
            times = compile_times(fn, *first_args, repeats=repeats)
            jax.clear_caches()
            text = jax.jit(fn).lower(*first_args).as_text()
            entry[form] = times | {"program_chars": len(text)}
            log(f"  {form}: lower {times['lower_s']:.3g} s, compile {times['compile_s']:.3g} s, "
                f"{len(text):,} characters")  # fmt: skip
        # A second data set of the same shapes, end to end: the jitted solve called on it.
        jax.clear_caches()
        jitted = jax.jit(with_args)
        jax.block_until_ready(jitted(*forms["arguments"][1]))
        start = time.perf_counter()
        jax.block_until_ready(jitted(*forms["arguments"][2]))
        entry["arguments"]["second_data_set_s"] = time.perf_counter() - start
        jax.clear_caches()
        jax.block_until_ready(jax.jit(closure_over(stats, x, y))(params))
        start = time.perf_counter()
        jax.block_until_ready(jax.jit(closure_over(stats, x2, y2))(params))
        entry["closure"]["second_data_set_s"] = time.perf_counter() - start
        log(f"  second data set: {entry['arguments']['second_data_set_s']:.3g} s with "
            f"arguments, {entry['closure']['second_data_set_s']:.3g} s closed over")  # fmt: skip
        results[name] = entry
    return results


def epoch_compile(hidden: Sequence[int] | None, seeds: Sequence[int], repeats: int) -> dict:
    """Compile times of the training epoch per regime and S, and of the sharded epoch."""
    data = flatmin.load_dataset("digits")
    devices = jax.devices()
    results: dict[str, Any] = {"epoch": {}, "sharded": {}}
    for regime in REGIMES:
        program = epoch_program(train_config(regime, hidden), data)
        fn = vmapped_epoch(program)
        results["epoch"][regime] = {
            str(s): compile_times(fn, program.start(seed_keys(s)), program.inputs, repeats=repeats)
            for s in seeds
        }
        if len(devices) == 1:
            results["sharded"][regime] = "skipped: 1 device"
            continue
        s = -(-max(seeds) // len(devices)) * len(devices)  # a multiple of the device count
        mesh = Mesh(devices, ("seeds",))
        shardings = (
            NamedSharding(mesh, PartitionSpec("seeds")),
            NamedSharding(mesh, PartitionSpec()),
        )
        carry = jax.device_put(program.start(seed_keys(s)), shardings[0])
        inputs = jax.device_put(program.inputs, shardings[1])
        times = compile_times(fn, carry, inputs, repeats=repeats, in_shardings=shardings)
        results["sharded"][regime] = {"seeds": s, "devices": len(devices)} | times
    return results


def run(quick: bool = False, repeats: int = 3) -> dict:
    """All compile timings; a JSON-ready dict. `quick`: a tiny MLP, S in {1, 2}, one solver."""
    hidden = QUICK_HIDDEN if quick else None
    seeds = QUICK_EPOCH_SEEDS if quick else EPOCH_SEEDS
    solvers = QUICK_SOLVERS if quick else SOLVERS
    data = data_compile(quick, repeats)
    sharpness = sharpness_compile(hidden, solvers, repeats)
    epochs = epoch_compile(hidden, seeds, repeats)
    return {
        "environment": environment(),
        "config": {
            "quick": quick,
            "repeats": repeats,
            "model_kwargs": dict(train_config("SB", hidden).config.model_kwargs),
            "dataset": "digits",
            "eps": EPS,
            "maxiters": list(MAXITERS),
            "solvers": {name: flatmin.solver_to_json(SOLVERS[name]) for name in solvers},
            "solve_seeds": list(SOLVE_SEEDS),
            "subspace_dim": SUBSPACE_DIM,
            "epoch_seeds": list(seeds),
            "compilation_cache_dir": jax.config.jax_compilation_cache_dir,
        },
        "data_as_arguments": data,
        "sharpness": sharpness,
        **epochs,
    }


def tables(results: dict) -> str:
    """Readable tables of `run`'s result."""
    low, high = (str(m) for m in (MAXITERS[0], MAXITERS[-1]))
    rows = []
    for space, by_solver in results["sharpness"].items():
        for solver, entry in by_solver.items():
            a, b = entry["maxiter"][low], entry["maxiter"][high]
            rows.append(
                {
                    "space": space,
                    "solver": solver,
                    f"lower_{low}": a["lower_s"],
                    f"compile_{low}": a["compile_s"],
                    f"lower_{high}": b["lower_s"],
                    f"compile_{high}": b["compile_s"],
                    "compile_ratio": entry["compile_ratio"],
                    "lower_ratio": entry["lower_ratio"],
                    f"compile_S{SOLVE_SEEDS[-1]}/S{SOLVE_SEEDS[0]}": entry["seeds_compile_ratio"],
                }
            )
    epoch_rows = [
        {"program": f"epoch {regime}", "S": s, "lower_s": e["lower_s"], "compile_s": e["compile_s"]}
        for regime, by_s in results["epoch"].items()
        for s, e in by_s.items()
    ]
    for regime, entry in results["sharded"].items():
        if isinstance(entry, str):
            epoch_rows.append({"program": f"sharded epoch {regime}", "S": entry})
        else:
            epoch_rows.append(
                {"program": f"sharded epoch {regime} ({entry['devices']} devices)"}
                | {key: entry[key] for key in ("lower_s", "compile_s")}
                | {"S": entry["seeds"]}
            )
    data_rows = [
        {"problem": name, "form": form, "examples": entry["examples"]}
        | {
            k: entry[form][k]
            for k in ("lower_s", "compile_s", "program_chars", "second_data_set_s")
        }
        for name, entry in results["data_as_arguments"].items()
        for form in ("arguments", "closure")
    ]
    return "\n\n".join(
        [
            "Default solve, data as arguments or closed over: seconds (medians), program size",
            format_table(list(data_rows[0]), data_rows),
            f"Sharpness solve: lower / compile seconds (medians), ratios = maxiter {high} / {low}"
            f" and vmapped over S = {SOLVE_SEEDS[-1]} / {SOLVE_SEEDS[0]} seeds",
            format_table(list(rows[0]), rows),
            "Training epoch: lower / compile seconds (medians)",
            format_table(["program", "S", "lower_s", "compile_s"], epoch_rows),
        ]
    )


def main(argv: Sequence[str] | None = None) -> None:
    """CLI: runs the benchmark, prints the tables, writes the JSON."""
    parser = benchmark_parser(__doc__, default_repeats=3)
    args = parse_benchmark_args(parser, argv)
    results = run(quick=args.quick, repeats=args.repeats)
    report("compile", args, results, tables(results))


if __name__ == "__main__":
    main()
