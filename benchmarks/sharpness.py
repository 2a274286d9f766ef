"""Benchmark of `flatmin.sharpness` (Metric 2.1) against its floor and the paper's scipy route.

    python benchmarks/sharpness.py [--json PATH] [--repeats N] [--quick]

Problems: the digits MLP (3x512, batch norm) and F1 (784-512x5-10) on synthetic MNIST-shaped
data, each trained for SEEDS seeds with `flatmin.train_seeds`; f is `flatmin.Objective`
(evaluation mode, the whole training set) with the data and statistics as arguments. Spaces:
the full space and a p = 100 Gaussian subspace. eps = 1e-3, maxiter 10. Timed interleaved,
repeat by repeat (ratios are medians of per-repeat ratios):

* floor: (maxiter + 1) value-and-gradient calls of f, each run to completion; "floor in y" the
  same of y -> f(x + A y), which prices a subspace's (n, p) products too;
* box: `flatmin.box_radius` (A^+ x);
* scipy: `flatmin.reference.scipy_sharpness`, the authors' route (fmin_l_bfgs_b from y = 0,
  defaults, maxiter 10), its box computed beforehand and added;
* each solver of SOLVERS, started at y = 0 (scipy's start), through `flatmin.solve_sharpness`,
  its evaluations as the result reports them (tests/measures/test_solvers.py checks those counts
  against a host callback).

Then, full space: SEEDS seeds vmapped through `flatmin.seed_sharpness` against the same seeds
one after another (`seeds_per_solve=1`), and L-BFGS-B restarts solved at once.
"""

import dataclasses
import os
import time
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.flatten_util import ravel_pytree

import flatmin
from benchmarks._timing import (
    benchmark_parser,
    compiled,
    environment,
    format_table,
    log,
    paired,
    parse_benchmark_args,
    report,
    timed_together,
)
from flatmin.reference import scipy_sharpness

EPS = 1e-3
MAXITER = 10
SUBSPACE_DIM = 100
SOLVERS = {
    "lbfgsb": flatmin.LBFGSB(maxiter=MAXITER),
    "paper": flatmin.LBFGSB.paper(maxiter=MAXITER),
    "projected_gradient": flatmin.ProjectedGradient(maxiter=MAXITER),
}
SEEDS = 5
RESTARTS = (1, 4, 16)
QUICK = {"seeds": 2, "restarts": (1, 2)}


class Problem(NamedTuple):
    """SEEDS trained seeds of one network, and seed 0's f and parameters."""

    name: str
    model: Any
    variables: dict  # stacked over seeds
    x: jax.Array
    y: jax.Array
    loss: flatmin.Objective
    args: tuple  # seed 0's (batch_stats, x, y)
    params: Any
    sizes: dict


def _problem(name: str, data: flatmin.Dataset, hidden, batch: int, epochs: int, seeds: int):
    model = flatmin.build_model("mlp", data.num_classes, hidden=tuple(hidden))
    start = time.perf_counter()
    trained = flatmin.train_seeds(
        model, optax.adam(1e-3), data, jax.random.split(jax.random.key(0), seeds),
        batch_size=batch, epochs=epochs,
    )  # fmt: skip
    seconds = time.perf_counter() - start
    x, y = jnp.asarray(data.x_train), jnp.asarray(data.y_train)
    first = jax.tree.map(lambda leaf: leaf[0], trained.variables)
    loss = flatmin.Objective(model)
    sizes = {
        "architecture": f"{int(np.prod(x.shape[1:]))}-{'-'.join(map(str, hidden))}-10",
        "n_params": int(ravel_pytree(first["params"])[0].size),
        "n_examples": int(x.shape[0]),
        "train": {
            "optimizer": "adam(1e-3)", "batch_size": batch, "epochs": epochs, "seeds": seeds,
            "seconds": seconds,
        },
        "final_train_loss": [float(v) for v in trained.history.train_loss[:, -1]],
    }  # fmt: skip
    args = (first["batch_stats"], x, y)
    return Problem(name, model, trained.variables, x, y, loss, args, first["params"], sizes)


def digits_problem(hidden: Sequence[int], epochs: int, seeds: int) -> Problem:
    """The MLP on scikit-learn's digits (1437 training images, 8x8x1), Adam, batch 128."""
    data = flatmin.load_dataset("digits")
    return _problem("mlp_digits", data, hidden, 128, epochs, seeds)


def synthetic_f1_problem(n_examples: int, epochs: int, seeds: int) -> Problem:
    """F1 on synthetic MNIST-shaped data: images uniform on [0, 1] (n, 28, 28, 1), labels
    argmax(x W) for a fixed W ~ N(0, 1) (784, 10), learnable. For timing only."""
    rng = np.random.default_rng(0)
    x = rng.random((n_examples, 28, 28, 1), dtype=np.float32)
    teacher = rng.standard_normal((28 * 28, 10)).astype(np.float32)
    y = np.argmax(x.reshape(n_examples, -1) @ teacher, axis=1).astype(np.int32)
    data = flatmin.Dataset(x, y, x[:256], y[:256], 10, "synthetic")
    problem = _problem("f1_synthetic", data, (512,) * 5, 256, epochs, seeds)
    problem.sizes["data"] = "synthetic: uniform [0,1] 28x28x1, labels argmax(x W), W ~ N(0,1)"
    return problem


def _solve_fn(problem: Problem, solver, restarts: int = 1, init: str = "zero") -> Callable:
    """(params, A, args) -> SharpnessResult without y, through the public API."""
    solver = dataclasses.replace(solver, restarts=restarts, init=init)

    def fn(params, A, args):
        result = flatmin.solve_sharpness(problem.loss, params, A, EPS, args=args, solver=solver)
        return result._replace(y=None)

    return fn


def _evaluations(fn: Callable, times: int) -> Callable[[], None]:
    """Runs fn() `times` times, each to completion."""

    def run() -> None:
        for _ in range(times):
            jax.block_until_ready(fn())

    return run


def bench_space(problem: Problem, A: jax.Array | None, repeats: int) -> dict:
    """Floor, floor in y, box, scipy and every solver, timed interleaved; values and ratios."""
    params = problem.params
    x, unravel = ravel_pytree(params)
    label = "full space" if A is None else f"p = {A.shape[1]}"
    log(f"{problem.name}, {label}: compiling")
    args = problem.args
    value_and_grad, vg_compile = compiled(jax.value_and_grad(problem.loss), params, *args)
    y0 = jnp.zeros(x.shape if A is None else A.shape[1:], x.dtype)

    def f_of_y(yv, A, *args):
        return problem.loss(unravel(x + (yv if A is None else A @ yv)), *args)

    vg_in_y, _ = compiled(jax.value_and_grad(f_of_y), y0, A, *args)
    box, box_compile = compiled(lambda p, A: flatmin.box_radius(p, A, EPS), params, A)
    solves = {name: compiled(_solve_fn(problem, s), params, A, args) for name, s in SOLVERS.items()}

    def scipy_route():
        return scipy_sharpness(problem.loss, params, A, EPS, args=args, maxiter=MAXITER)

    reference = scipy_route()  # compiles too
    calls = {
        "floor": (_evaluations(lambda: value_and_grad(params, *args), MAXITER + 1), ()),
        "floor_in_y": (_evaluations(lambda: vg_in_y(y0, A, *args), MAXITER + 1), ()),
        "box": (box, (params, A)),
        # scipy_sharpness computes the box itself: speedups compare whole solves.
        "scipy": (scipy_route, ()),
        **{name: (fn, (params, A, args)) for name, (fn, _) in solves.items()},
    }
    log(f"  timing {', '.join(calls)} interleaved, {repeats} repeats")
    t = timed_together(calls, repeats=repeats)
    log("  " + ", ".join(f"{name} {t[name]['median_s']:.4g} s" for name in calls))
    out: dict = {
        "p": int(x.size) if A is None else int(A.shape[1]),
        "floor": t["floor"] | vg_compile,
        "floor_in_y": t["floor_in_y"],
        "box_radius": t["box"] | box_compile,
        "scipy": {"run": t["scipy"], **reference._replace(y=None)._asdict()},
        "solvers": {},
    }
    for name, (fn, compile_times) in solves.items():
        result = fn(params, A, args)
        s = t[name]
        out["solvers"][name] = {
            "solver": flatmin.solver_to_json(SOLVERS[name]),
            "run": s,
            **compile_times,
            "value": float(result.value),
            "num_steps": int(result.num_steps),
            "num_evaluations": int(result.num_evaluations),
            "projected_grad_start": float(result.projected_grad_start),
            "overhead": paired(lambda a, f: a / f, s, t["floor"]),
            "overhead_vs_floor_in_y": paired(
                lambda a, b, f: (a - b) / f, s, t["box"], t["floor_in_y"]
            ),
            "speedup_vs_scipy": paired(lambda a, sc: sc / a, s, t["scipy"]),
            "value_ratio_vs_scipy": (
                float(result.value) / reference.value if reference.value > 0 else None
            ),
        }
    return out


def bench_seeds(problem: Problem, repeats: int) -> dict:
    """flatmin.seed_sharpness, full space, default solver: all seeds in one vmapped solve
    against one seed after another (seeds_per_solve=1), both through the library."""
    num_seeds = jax.tree.leaves(problem.variables)[0].shape[0]
    key = jax.random.key(1)

    def solve(group: int) -> Callable[[], Any]:
        return lambda: flatmin.seed_sharpness(
            problem.model, problem.variables, problem.x, problem.y, None, EPS, key=key,
            seeds_per_solve=group,
        ).value  # fmt: skip

    together, alone = solve(num_seeds), solve(1)
    values = {"vmapped": together(), "one_at_a_time": alone()}  # compiles both
    t = timed_together({"vmapped": (together, ()), "one_at_a_time": (alone, ())}, repeats=repeats)
    ratio = paired(lambda v, s: v / s, t["vmapped"], t["one_at_a_time"])
    log(f"  {num_seeds} seeds vmapped / one at a time: {ratio['median']:.3g}")
    return {
        "seeds": num_seeds,
        "run": t,
        "vmapped_over_sequential": ratio,
        "values": {k: [float(v) for v in vals] for k, vals in values.items()},
        "max_relative_difference": float(
            np.max(np.abs(values["vmapped"] - values["one_at_a_time"]) / values["one_at_a_time"])
        ),
    }


def bench_restarts(problem: Problem, A, restarts: Sequence[int], repeats: int) -> dict:
    """L-BFGS-B with R random starts solved at once (vmapped), per-restart time against R = 1."""
    calls, out = {}, {}
    for R in restarts:
        fn, compile_times = compiled(
            _solve_fn(problem, SOLVERS["lbfgsb"], restarts=R, init="random"),
            problem.params, A, problem.args,
        )  # fmt: skip
        calls[str(R)] = (fn, (problem.params, A, problem.args))
        out[str(R)] = {**compile_times, "value": float(fn(problem.params, A, problem.args).value)}
    times = timed_together(calls, repeats=repeats)
    for R, entry in out.items():
        entry["run"] = times[R]
        entry["per_restart_vs_single"] = paired(
            lambda t, t1, R=int(R): t / R / t1, times[R], times[str(restarts[0])]
        )
    return out


def run(quick: bool = False, repeats: int = 5) -> dict:
    """Runs the benchmark; `quick`: a tiny MLP on digits, 2 seeds (the smoke test)."""
    started = time.perf_counter()
    seeds = QUICK["seeds"] if quick else SEEDS
    restarts = QUICK["restarts"] if quick else RESTARTS
    makers = (
        [lambda: digits_problem((16,), epochs=2, seeds=seeds)]
        if quick
        else [
            lambda: digits_problem((512, 512, 512), epochs=27, seeds=seeds),
            lambda: synthetic_f1_problem(2048, epochs=12, seeds=seeds),
        ]
    )
    results: dict = {
        "benchmark": "sharpness",
        "environment": environment(),
        "config": {
            "eps": EPS,
            "maxiter": MAXITER,
            "subspace": {"p": SUBSPACE_DIM, "distribution": "gaussian", "normalize": False},
            "solvers": {name: flatmin.solver_to_json(s) for name, s in SOLVERS.items()},
            "seeds": seeds,
            "restarts": list(restarts),
            "repeats": repeats,
            "quick": quick,
            "init": "zero for every timed solve (scipy's start); restarts: random",
        },
        "problems": {},
    }
    for make in makers:
        problem = make()
        log(f"{problem.name}: n = {problem.sizes['n_params']}, {seeds} seeds trained")
        subspace = flatmin.random_subspace(jax.random.key(1), problem.params, SUBSPACE_DIM)
        spaces = {"full": None, f"p{SUBSPACE_DIM}": subspace}
        entry = {
            "sizes": problem.sizes,
            "spaces": {space: bench_space(problem, A, repeats) for space, A in spaces.items()},
            "seeds": bench_seeds(problem, repeats),
        }
        if problem.name == "mlp_digits":
            entry["restarts"] = {
                space: bench_restarts(problem, A, restarts, repeats) for space, A in spaces.items()
            }
        results["problems"][problem.name] = entry
    results["environment"]["load_average_end"] = list(os.getloadavg())
    results["total_seconds"] = time.perf_counter() - started
    return results


def tables(results: dict) -> str:
    """Solves (per problem, space, route), then seeds and restarts, as plain-text tables."""
    solves, seeds, restarts = [], [], []
    for name, problem in results["problems"].items():
        for space, res in problem["spaces"].items():
            key = {"problem": name, "space": space}
            solves.append(key | {"route": "floor", "median_s": res["floor"]["median_s"]})
            solves.append(
                key
                | {"route": "scipy", "median_s": res["scipy"]["run"]["median_s"]}
                | {"evals": res["scipy"]["num_evaluations"], "phi": res["scipy"]["value"]}
            )
            for solver, e in res["solvers"].items():
                solves.append(
                    key
                    | {
                        "route": solver,
                        "median_s": e["run"]["median_s"],
                        "/floor": e["overhead"]["median"],
                        "-box/floor-y": e["overhead_vs_floor_in_y"]["median"],
                        "evals": e["num_evaluations"],
                        "phi": e["value"],
                        "speedup": e["speedup_vs_scipy"]["median"],
                        "value_ratio": e["value_ratio_vs_scipy"],
                    }
                )
        s = problem["seeds"]
        seeds.append(
            {"problem": name, "seeds": s["seeds"]}
            | {"vmapped_s": s["run"]["vmapped"]["median_s"]}
            | {"one_at_a_time_s": s["run"]["one_at_a_time"]["median_s"]}
            | {"ratio": s["vmapped_over_sequential"]["median"]}
        )
        for space, per_r in problem.get("restarts", {}).items():
            for R, e in per_r.items():
                restarts.append(
                    {"problem": name, "space": space, "R": R}
                    | {"median_s": e["run"]["median_s"], "per_restart_vs_R1": e[
                        "per_restart_vs_single"]["median"], "phi": e["value"]}
                )  # fmt: skip
    columns = ["problem", "space", "route", "median_s", "/floor", "-box/floor-y", "evals", "phi"]
    columns += ["speedup", "value_ratio"]
    parts = [
        format_table(columns, solves),
        format_table(["problem", "seeds", "vmapped_s", "one_at_a_time_s", "ratio"], seeds),
    ]
    if restarts:
        parts.append(
            format_table(
                ["problem", "space", "R", "median_s", "per_restart_vs_R1", "phi"], restarts
            )
        )
    return "\n\n".join(parts)


def main(argv: Sequence[str] | None = None) -> None:
    """CLI: runs the benchmark, prints the tables, writes the JSON."""
    args = parse_benchmark_args(benchmark_parser(__doc__), argv)
    results = run(quick=args.quick, repeats=args.repeats)
    report("sharpness", args, results, tables(results))


if __name__ == "__main__":
    main()
