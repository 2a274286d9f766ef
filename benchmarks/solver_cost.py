"""Where the solvers' own time goes: each solver on an objective that costs almost nothing.

    python benchmarks/solver_cost.py [--json PATH] [--repeats R] [--quick]

For n in {1e4, 1e5, 5.65e5 (the digits MLP)}, each solver's `maximize` with maxiter 10 on two
free objectives over [-1, 1]^n:

* "concave_start": f(z) = c.z + |z|^2 / 2, convex, so -f is concave as near a minimiser:
  L-BFGS-B rejects every curvature pair and its Cauchy point is a closed form;
* "with_pairs": f(z) = c.z - |z|^2 / 2, concave, so L-BFGS-B stores pairs and runs its exact
  Cauchy point and subspace step; every coordinate moves and the Cauchy point lies beyond the
  n/16 smallest breakpoints, so all n are sorted (the Cauchy point's worst case).

And the same for LANES such objectives (different c) vmapped, as seeds are: "vmapped /
sequential" is that time over LANES times one lane's. Seconds per iteration = solve / maxiter.
"""

from collections.abc import Sequence

import jax
import jax.numpy as jnp

import flatmin
from benchmarks._timing import (
    benchmark_parser,
    compiled,
    environment,
    format_table,
    log,
    parse_benchmark_args,
    report,
    timed,
)

SIZES = (10_000, 100_000, 565_258)
QUICK_SIZES = (1_000,)
MAXITER = 10
LANES, QUICK_LANES = 5, 2
SOLVERS = {
    "lbfgsb": flatmin.LBFGSB(maxiter=MAXITER),
    "projected_gradient": flatmin.ProjectedGradient(maxiter=MAXITER),
}
CURVATURE = {"concave_start": 1.0, "with_pairs": -1.0}


def solver_seconds(n: int, repeats: int, lanes: int) -> dict:
    """Per objective and solver: compile and run time of a maxiter-10 solve, and of `lanes`
    such solves vmapped."""
    cs = jax.random.normal(jax.random.key(0), (lanes, n))
    c, box = cs[0], flatmin.Box(jnp.ones(n))
    out: dict = {"n": n, "lanes": lanes}
    for objective, sign in CURVATURE.items():
        for name, solver in SOLVERS.items():

            def solve(c, init, solver=solver, sign=sign):
                def fun(z: jax.Array) -> jax.Array:
                    return c @ z + sign * 0.5 * z @ z

                return solver.maximize(fun, init, box).value

            fn, compile_times = compiled(solve, c, jnp.zeros(n))
            run = timed(fn, c, jnp.zeros(n), repeats=repeats)
            batched, batched_compile = compiled(jax.vmap(solve), cs, jnp.zeros((lanes, n)))
            vmapped = timed(batched, cs, jnp.zeros((lanes, n)), repeats=repeats)
            out[f"{objective}/{name}"] = {
                "single": run | compile_times | {"per_iteration_s": run["median_s"] / MAXITER},
                "vmapped": vmapped | batched_compile,
                "vmapped_over_sequential": vmapped["median_s"] / (lanes * run["median_s"]),
            }
            log(f"n = {n}, {objective}, {name}: {run['median_s']:.4g} s, "
                f"vmapped {vmapped['median_s']:.4g} s")  # fmt: skip
    return out


def run(quick: bool = False, repeats: int = 5) -> dict:
    sizes, lanes = (QUICK_SIZES, QUICK_LANES) if quick else (SIZES, LANES)
    return {
        "benchmark": "solver_cost",
        "environment": environment(),
        "config": {
            "maxiter": MAXITER,
            "sizes": list(sizes),
            "lanes": lanes,
            "repeats": repeats,
            "solvers": {name: flatmin.solver_to_json(s) for name, s in SOLVERS.items()},
            "objectives": {
                "concave_start": "c.z + |z|^2/2 (no curvature pairs kept)",
                "with_pairs": "c.z - |z|^2/2 (pairs kept: exact Cauchy point)",
            },
        },
        "sizes": {str(n): solver_seconds(n, repeats, lanes) for n in sizes},
    }


def tables(results: dict) -> str:
    rows = [
        {
            "n": entry["n"],
            "objective/solver": key,
            "s/iter": value["single"]["per_iteration_s"],
            "vmapped/sequential": value["vmapped_over_sequential"],
        }
        for entry in results["sizes"].values()
        for key, value in entry.items()
        if isinstance(value, dict)
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
