"""Where the solvers' own time goes: each solver on an objective that costs almost nothing.

    python benchmarks/solver_cost.py [--json PATH] [--repeats R] [--quick]

`benchmarks/sharpness.py` finds L-BFGS-B several times its value-and-gradient floor with the
same number of evaluations as projected gradient. This isolates the solver's own arithmetic:
for n in {1e4, 1e5, 5.65e5 (the digits MLP)} it times `maximize_in_box` with maxiter 10 on
f(z) = c.z + |z|^2 / 2 (a convex f, so -f is concave as near a minimiser), per solver, and,
beside it, two `argsort`s of n numbers: jaxopt's L-BFGS-B sorts the n breakpoints of its
Cauchy-point search and inverts that permutation on every iteration, then walks the sorted
breakpoints in a sequential `while_loop`. Seconds per iteration = solve / maxiter.

It also solves LANES such objectives (different c) vmapped, as `seed_sharpness` would solve
seeds: "vmapped/sequential" is that time over LANES times one lane's. The walk's while_loop runs
until the slowest lane stops and, batched, updates every lane's n-long mask at each step.
"""

from collections.abc import Sequence

import jax
import jax.numpy as jnp
from _timing import (
    benchmark_parser,
    compiled,
    environment,
    format_table,
    log,
    parse_benchmark_args,
    report,
    timed,
)

from flatmin._solvers import SOLVERS, maximize_in_box

SIZES = (10_000, 100_000, 565_258)
QUICK_SIZES = (1_000,)
MAXITER = 10
LANES, QUICK_LANES = 5, 2


def solver_seconds(n: int, repeats: int, lanes: int) -> dict:
    """Per solver: compile and run time of a maxiter-10 solve of the free objective, the same
    for `lanes` objectives vmapped, and the time of the two argsorts of n numbers that
    L-BFGS-B does per iteration."""
    cs = jax.random.normal(jax.random.key(0), (lanes, n))
    c, ones = cs[0], jnp.ones(n)

    out: dict = {"n": n, "lanes": lanes}
    for solver in SOLVERS:

        def solve(c, init, solver=solver):
            def fun(z: jax.Array) -> jax.Array:
                return c @ z + 0.5 * z @ z

            return maximize_in_box(fun, init, -ones, ones, solver=solver, maxiter=MAXITER).value

        fn, compile_times = compiled(solve, c, jnp.zeros(n))
        run = timed(fn, c, jnp.zeros(n), repeats=repeats)
        out[solver] = run | compile_times | {"per_iteration_s": run["median_s"] / MAXITER}
        batched, batched_compile = compiled(jax.vmap(solve), cs, jnp.zeros((lanes, n)))
        vmapped = timed(batched, cs, jnp.zeros((lanes, n)), repeats=repeats)
        out[f"{solver}_vmapped"] = vmapped | batched_compile
        out[f"{solver}_vmapped_over_sequential"] = vmapped["median_s"] / (lanes * run["median_s"])
        log(f"n = {n}: {solver} {run['median_s']:.4g} s, vmapped {vmapped['median_s']:.4g} s")
    sorts, _ = compiled(lambda t: jnp.argsort(jnp.argsort(t)), c)
    out["two_argsorts"] = timed(sorts, c, repeats=repeats)
    # Seconds, but a difference of medians: noise can make it negative (hence no "_s" suffix,
    # which the smoke tests require to be positive).
    out["lbfgsb_per_iteration_minus_sorts"] = (
        out["lbfgsb"]["per_iteration_s"] - out["two_argsorts"]["median_s"]
    )
    return out


def run(quick: bool = False, repeats: int = 5) -> dict:
    sizes, lanes = (QUICK_SIZES, QUICK_LANES) if quick else (SIZES, LANES)
    return {
        "benchmark": "solver_cost",
        "environment": environment(),
        "config": {"maxiter": MAXITER, "sizes": list(sizes), "lanes": lanes, "repeats": repeats},
        "sizes": {str(n): solver_seconds(n, repeats, lanes) for n in sizes},
    }


def tables(results: dict) -> str:
    rows = [
        {
            "n": entry["n"],
            "lbfgsb_s/iter": entry["lbfgsb"]["per_iteration_s"],
            "pg_s/iter": entry["projected_gradient"]["per_iteration_s"],
            "2 argsorts_s": entry["two_argsorts"]["median_s"],
            "lbfgsb-sorts_s/iter": entry["lbfgsb_per_iteration_minus_sorts"],
            "lbfgsb vmapped/sequential": entry["lbfgsb_vmapped_over_sequential"],
            "pg vmapped/sequential": entry["projected_gradient_vmapped_over_sequential"],
        }
        for entry in results["sizes"].values()
    ]
    return format_table(list(rows[0]), rows)


def main(argv: Sequence[str] | None = None) -> None:
    """CLI: runs the benchmark, prints the tables, writes the JSON."""
    parser = benchmark_parser(__doc__)
    args = parse_benchmark_args(parser, argv)
    results = run(quick=args.quick, repeats=args.repeats)
    report("solver_cost", args, results, tables(results))


if __name__ == "__main__":
    main()
