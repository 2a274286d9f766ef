"""Benchmark of `flatmin.sharpness` (Metric 2.1) against its floor and the paper's scipy route.

For each problem (a trained MLP on digits; an F1-sized MLP on synthetic MNIST-shaped data) and
each space (the full parameter space; a p = 100 Gaussian subspace), with eps = 1e-3 and
maxiter = 10, it measures:

* each solver's run time (compile timed apart: lower and compile seconds), and the loss and
  gradient evaluations it made, counted on the device (see `EvalCounter`);
* the floor: one full-training-set `value_and_grad`, timed alone, times (maxiter + 1); the
  overhead is solve time / floor;
* the paper's route: `scipy.optimize.fmin_l_bfgs_b` driving the same jitted loss and gradient
  from Python in float64, from y = 0; speedup = scipy time / flatmin time and value ratio =
  flatmin value / scipy value, flatmin started at y = 0 too (init="zero");
* restarts = 1, 4, 16 solved at once (vmapped): time per restart.

Run `python benchmarks/sharpness.py [--json PATH] [--repeats N] [--quick]`.
"""

import math
import os
import time
from collections.abc import Callable, Sequence
from functools import partial
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
import scipy.optimize
import threadpoolctl
from _timing import (
    benchmark_parser,
    compiled,
    environment,
    format_table,
    log,
    paired,
    parse_benchmark_args,
    report,
    timed,
    timed_together,
)
from jax.flatten_util import ravel_pytree

import flatmin
from flatmin.data import load_dataset
from flatmin.models import build_model, init_variables

EPS = 1e-3
MAXITER = 10
SUBSPACE_DIM = 100
SOLVERS = ("lbfgsb", "projected_gradient")
RESTARTS = (1, 4, 16)
QUICK_RESTARTS = (1, 2)

PyTree = Any
Loss = Callable[[PyTree], jax.Array]


class Problem(NamedTuple):
    """A loss of the parameters alone (data and batch_stats closed over) and its minimiser."""

    name: str
    loss: Loss
    params: PyTree
    sizes: dict


# --- problems -----------------------------------------------------------------------------------


def _train_mlp(
    hidden: Sequence[int],
    x: np.ndarray,
    y: np.ndarray,
    *,
    steps: int,
    batch_size: int,
    learning_rate: float = 1e-3,
    seed: int = 0,
) -> tuple[Loss, PyTree, dict]:
    """Trains an MLP with Adam on minibatches; returns the eval-mode loss, params and sizes.

    The loss is the mean cross-entropy over all of (x, y) with train=False (running
    batch_stats), a function of the params only.
    """
    model = build_model("mlp", 10, hidden=tuple(hidden))
    variables = init_variables(model, jax.random.key(seed), x.shape[1:])
    params, batch_stats = variables["params"], variables["batch_stats"]
    optimizer = optax.adam(learning_rate)
    opt_state = optimizer.init(params)
    x, y = jnp.asarray(x), jnp.asarray(y)

    @jax.jit
    def step(params, batch_stats, opt_state, xb, yb):
        def batch_loss(p):
            logits, updates = model.apply(
                {"params": p, "batch_stats": batch_stats},
                xb,
                train=True,
                mutable=["batch_stats"],
            )
            ce = optax.softmax_cross_entropy_with_integer_labels(logits, yb).mean()
            return ce, updates["batch_stats"]

        (_, batch_stats), grads = jax.value_and_grad(batch_loss, has_aux=True)(params)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), batch_stats, opt_state

    rng = np.random.default_rng(seed)
    start = time.perf_counter()
    for _ in range(steps):
        idx = rng.choice(x.shape[0], size=min(batch_size, x.shape[0]), replace=False)
        params, batch_stats, opt_state = step(params, batch_stats, opt_state, x[idx], y[idx])
    jax.block_until_ready(params)
    train_s = time.perf_counter() - start

    def loss(p: PyTree) -> jax.Array:
        logits = model.apply({"params": p, "batch_stats": batch_stats}, x, train=False)
        return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

    sizes = {
        "architecture": f"{int(np.prod(x.shape[1:]))}-{'-'.join(map(str, hidden))}-10",
        "hidden": list(hidden),
        "batch_norm": True,
        "n_params": int(ravel_pytree(params)[0].size),
        "n_examples": int(x.shape[0]),
        "input_shape": list(x.shape[1:]),
        "train_steps": steps,
        "train_batch_size": batch_size,
        "train_seconds": train_s,
        "train_loss_eval_mode": float(jax.jit(loss)(params)),
    }
    return loss, params, sizes


def digits_problem(hidden: Sequence[int], steps: int) -> Problem:
    """The small MLP on the digits training set (1437 images, 8x8x1), trained briefly."""
    data = load_dataset("digits")
    loss, params, sizes = _train_mlp(
        hidden, data.x_train, data.y_train, steps=steps, batch_size=128
    )
    return Problem("mlp_digits", loss, params, sizes | {"data": "digits (sklearn) train split"})


def synthetic_f1_problem(n_examples: int, steps: int, seed: int = 0) -> Problem:
    """F1 (784-512x5-10, BatchNorm) on synthetic MNIST-shaped data, trained briefly.

    Images are uniform on [0, 1], (n_examples, 28, 28, 1); labels come from a random linear
    teacher, argmax(x W) with W standard normal (784, 10), so they are learnable. For timing only.
    """
    rng = np.random.default_rng(seed)
    x = rng.random((n_examples, 28, 28, 1), dtype=np.float32)
    teacher = rng.standard_normal((28 * 28, 10)).astype(np.float32)
    y = np.argmax(x.reshape(n_examples, -1) @ teacher, axis=1).astype(np.int32)
    loss, params, sizes = _train_mlp((512,) * 5, x, y, steps=steps, batch_size=256, seed=seed)
    data = "synthetic: uniform [0,1] 28x28x1 images, labels argmax(x W), W ~ N(0,1) (784,10)"
    return Problem("f1_synthetic", loss, params, sizes | {"data": data})


# --- evaluation counting ------------------------------------------------------------------------


class EvalCounter:
    """Counts loss evaluations (forward passes) and gradient evaluations (backward passes).

    `wrap(loss)` returns the same function as a `jax.custom_vjp` whose primal and forward rules
    fire `jax.debug.callback`s, and whose backward rule fires its own: the counts are of
    evaluations in the compiled program as it runs, under jit, vmap and loops.

    Two counts of each: "calls" fire once per evaluation in the program (a vmapped evaluation
    of R points counts once), "evals" once per point (the callback takes the loss value, which
    is batched under vmap, so JAX unrolls it over the R points). Outside vmap they agree.
    """

    KEYS = ("forward_calls", "forward_evals", "grad_calls", "grad_evals")

    def __init__(self) -> None:
        self.counts = dict.fromkeys(self.KEYS, 0)

    def _bump(self, key: str) -> Callable[..., None]:
        def bump(*_: Any) -> None:
            self.counts[key] += 1

        return bump

    def _fire(self, kind: str, value: jax.Array) -> None:
        jax.debug.callback(self._bump(f"{kind}_calls"))
        jax.debug.callback(self._bump(f"{kind}_evals"), value)

    def wrap(self, loss: Loss) -> Loss:
        """`loss` with its forward and backward passes counted."""

        @jax.custom_vjp
        def counted(params):
            value = loss(params)
            self._fire("forward", value)
            return value

        def forward(params):
            value, vjp = jax.vjp(loss, params)
            self._fire("forward", value)
            return value, (vjp, value)

        def backward(residuals, cotangent):
            vjp, value = residuals
            self._fire("grad", value)
            return vjp(cotangent)

        counted.defvjp(forward, backward)
        return counted

    def count(self, fn: Callable[..., Any], *args: Any) -> dict:
        """Runs `fn(*args)` once and returns the evaluations it made."""
        self.counts = dict.fromkeys(self.KEYS, 0)
        jax.block_until_ready(fn(*args))
        jax.effects_barrier()
        return dict(self.counts)


def counter_self_check(problem: Problem) -> dict:
    """The counter on known programs: jit(value_and_grad) is 1+1, vmapped over 3 it is 3+3."""
    counter = EvalCounter()
    loss = counter.wrap(problem.loss)
    batched = jax.tree.map(lambda a: jnp.stack([a, a, a]), problem.params)
    return {
        "jit_value_and_grad": counter.count(jax.jit(jax.value_and_grad(loss)), problem.params),
        "jit_loss": counter.count(jax.jit(loss), problem.params),
        "jit_vmap3_value_and_grad": counter.count(
            jax.jit(jax.vmap(jax.value_and_grad(loss))), batched
        ),
    }


# --- the measurements ---------------------------------------------------------------------------


def _sharpness_fn(loss: Loss, solver: str, restarts: int = 1, init: str = "zero") -> Callable:
    """(params, A) -> phi through the public API; A is an argument, never a baked constant."""

    def fn(params: PyTree, A: jax.Array | None) -> jax.Array:
        return flatmin.sharpness(
            loss, params, A, EPS, solver=solver, maxiter=MAXITER, restarts=restarts, init=init
        )

    return fn


def _ratio(a: float, b: float) -> float | None:
    """a / b, or None where that is not a finite number."""
    return a / b if b != 0 and math.isfinite(a / b) else None


class Floor(NamedTuple):
    """The floor's standalone timings, and its value_and_grad compiled for interleaved use."""

    timings: dict
    value_and_grad: Callable[[PyTree], tuple[jax.Array, PyTree]]


def floor_timing(problem: Problem, repeats: int) -> Floor:
    """One full-training-set value_and_grad, and one forward, compiled and each timed alone."""
    vg, vg_compile = compiled(jax.value_and_grad(problem.loss), problem.params)
    fwd, fwd_compile = compiled(problem.loss, problem.params)
    vg_time = timed(vg, problem.params, repeats=repeats)
    fwd_time = timed(fwd, problem.params, repeats=repeats)
    timings = {
        "value_and_grad": vg_time | vg_compile,
        "forward": fwd_time | fwd_compile,
        "floor_s": (MAXITER + 1) * vg_time["median_s"],
        "floor_definition": (
            "(maxiter + 1) value_and_grad calls, each run to completion; here (maxiter + 1) "
            "times the median of single calls, per space also timed as one block of "
            "(maxiter + 1) calls interleaved with the solves (spaces/*/floor)"
        ),
    }
    return Floor(timings, vg)


def _calls(fn: Callable[..., Any], args: tuple, times: int) -> Callable[[], None]:
    """Runs fn(*args) `times` times, each to completion: a floor of `times` evaluations."""

    def run() -> None:
        for _ in range(times):
            jax.block_until_ready(fn(*args))

    return run


def solver_details(problem: Problem, A: jax.Array | None, solver: str, fn: Callable) -> dict:
    """Values at init="zero" (the compiled `fn`) and "random", and the counted evaluations."""
    value_random = jax.jit(_sharpness_fn(problem.loss, solver, init="random"))(problem.params, A)
    counter = EvalCounter()
    evaluations = counter.count(
        _sharpness_fn(counter.wrap(problem.loss), solver), problem.params, A
    )
    return {
        "value_init_zero": float(fn(problem.params, A)),
        "value_init_random": float(value_random),
        "evaluations": evaluations,
    }


class ScipyRoute(NamedTuple):
    """The paper's route, compiled: `solve()` runs one scipy solve from y = 0."""

    solve: Callable[[], dict]
    neg_f: Callable[[jax.Array, jax.Array, jax.Array | None], jax.Array]
    value_and_grad: Callable[..., tuple[jax.Array, jax.Array]]  # compiled, of neg_f
    args: tuple  # (y = 0, x, A) for value_and_grad
    radius: np.ndarray
    compile_times: dict


def scipy_route(loss: Loss, params: PyTree, A: jax.Array | None, radius: np.ndarray) -> ScipyRoute:
    """scipy's fmin_l_bfgs_b (default settings but maxiter) on -f(x + A y) from y = 0.

    The box is +-radius, radius = eps (|A^+ x| + 1) computed beforehand (timed on its own and
    added, see `bench_space`). Value and gradient come from one jitted function and are
    converted to float64 NumPy on every call; f(x), which the metric needs, is part of `solve`.
    """
    x, unravel = ravel_pytree(params)

    def neg_f(y: jax.Array, x: jax.Array, A: jax.Array | None) -> jax.Array:
        return -loss(unravel(x + (y if A is None else A @ y)))

    y0 = jnp.zeros(radius.shape, x.dtype)
    value_and_grad, compile_times = compiled(jax.value_and_grad(neg_f), y0, x, A)
    loss_at, _ = compiled(loss, params)
    bounds = np.stack([-radius, radius], axis=1)

    def fun(y64: np.ndarray) -> tuple[float, np.ndarray]:
        value, grad = value_and_grad(jnp.asarray(y64, x.dtype), x, A)
        return float(value), np.asarray(grad, np.float64)

    def solve() -> dict:
        y, neg_max, info = scipy.optimize.fmin_l_bfgs_b(
            fun, np.zeros(radius.shape), bounds=bounds, maxiter=MAXITER
        )
        return {"y": y, "neg_max": float(neg_max), "info": info, "loss": float(loss_at(params))}

    return ScipyRoute(solve, neg_f, value_and_grad, (y0, x, A), radius, compile_times)


def scipy_details(problem: Problem, A: jax.Array | None, route: ScipyRoute) -> dict:
    """One more scipy solve: its phi recomputed at its y clipped to the box, its counted calls."""
    out = route.solve()
    x, _ = ravel_pytree(problem.params)
    radius = route.radius
    y = jnp.asarray(np.clip(out["y"], -radius, radius), x.dtype)
    max_loss = -float(jax.jit(route.neg_f)(y, x, A))
    counter = EvalCounter()
    evaluations = counter.count(
        scipy_route(counter.wrap(problem.loss), problem.params, A, radius).solve
    )
    info = out["info"]
    return {
        **route.compile_times,
        "value": (max_loss - out["loss"]) / (1 + out["loss"]) * 100,
        "max_loss": max_loss,
        "max_loss_as_returned": -out["neg_max"],
        "loss": out["loss"],
        "nit": int(info["nit"]),
        "funcalls": int(info["funcalls"]),
        "warnflag": int(info["warnflag"]),
        "task": str(info["task"]),
        "evaluations": evaluations,
    }


def restart_timing(
    problem: Problem,
    A: jax.Array | None,
    solver: str,
    restarts: Sequence[int],
    single: Callable,
    repeats: int,
) -> dict:
    """Vmapped restarts, timed interleaved with `single` (the compiled restarts=1 solve): run
    time, time per restart against single's (repeat by repeat), value, counted evaluations."""
    calls, out = {}, {}
    for R in restarts:
        fn, compile_times = (
            (single, {})
            if R == 1
            else compiled(_sharpness_fn(problem.loss, solver, restarts=R), problem.params, A)
        )
        counter = EvalCounter()
        evaluations = counter.count(
            _sharpness_fn(counter.wrap(problem.loss), solver, restarts=R), problem.params, A
        )
        calls[str(R)] = (fn, (problem.params, A))
        out[str(R)] = {
            **compile_times,
            "value": float(fn(problem.params, A)),
            "evaluations": evaluations,
        }
    times = timed_together(calls, repeats=repeats)
    for R, entry in out.items():
        entry["run"] = times[R]
        entry["per_restart_s"] = times[R]["median_s"] / int(R)
        entry["per_restart_vs_single"] = paired(
            lambda t, t1, R=int(R): t / R / t1, times[R], times["1"]
        )
        log(f"  {solver} restarts={R}: median {entry['per_restart_s']:.4g} s per restart")
    return out


def bench_space(
    problem: Problem,
    A: jax.Array | None,
    floor: Floor,
    repeats: int,
    solvers: Sequence[str] = SOLVERS,
    restarts: Sequence[int] = (),
    restart_solvers: Sequence[str] = (),
) -> dict:
    """Everything for one (problem, space), timed interleaved so ratios are repeat by repeat.

    Timed: the floor ((maxiter + 1) value_and_grad calls of f in params), the floor in y (the
    same of y -> f(x + A y), which also prices a subspace's (n, p) products), the box
    (flatmin.box_radius: least squares for A^+ x), the scipy route (box precomputed), and each
    solver. Ratios (median over repeats of the per-repeat ratio): `overhead` = flatmin / floor;
    `overhead_excluding_box` = (flatmin - box) / floor; `overhead_vs_floor_in_y` = (flatmin -
    box) / floor in y; `speedup_vs_scipy` = (scipy + box) / flatmin, both sides computing the box
    once; `speedup_vs_scipy_excluding_box` = scipy / (flatmin - box). Then values, counted
    evaluations, and restarts for `restart_solvers`.
    """
    params = problem.params
    n = int(ravel_pytree(params)[0].size)
    log(f"{problem.name}, {'full space' if A is None else f'p = {A.shape[1]}'}: compiling")
    box_fn, box_compile = compiled(lambda p, A: flatmin.box_radius(p, A, EPS), params, A)
    route = scipy_route(problem.loss, params, A, np.asarray(box_fn(params, A), np.float64))
    solves = {
        solver: compiled(_sharpness_fn(problem.loss, solver), params, A) for solver in solvers
    }
    calls = {
        "floor": (_calls(floor.value_and_grad, (params,), MAXITER + 1), ()),
        "floor_in_y": (_calls(route.value_and_grad, route.args, MAXITER + 1), ()),
        "box": (box_fn, (params, A)),
        "scipy": (route.solve, ()),
        **{solver: (fn, (params, A)) for solver, (fn, _) in solves.items()},
    }
    log(f"  timing {', '.join(calls)} interleaved, {repeats} repeats")
    t = timed_together(calls, repeats=repeats)
    log("  " + ", ".join(f"{name} {t[name]['median_s']:.4g} s" for name in calls))
    result: dict = {
        "p": n if A is None else int(A.shape[1]),
        "floor": t["floor"],
        "floor_in_y": t["floor_in_y"],
        "box_radius": t["box"] | box_compile,
        "scipy": {"run": t["scipy"], **scipy_details(problem, A, route)},
        "solvers": {},
    }
    scipy_value = result["scipy"]["value"]
    for solver, (fn, compile_times) in solves.items():
        entry = {**compile_times, "run": t[solver], **solver_details(problem, A, solver, fn)}
        s = t[solver]
        entry |= {
            "overhead": paired(lambda a, f: a / f, s, t["floor"]),
            "overhead_excluding_box": paired(lambda a, b, f: (a - b) / f, s, t["box"], t["floor"]),
            "overhead_vs_floor_in_y": paired(
                lambda a, b, f: (a - b) / f, s, t["box"], t["floor_in_y"]
            ),
            "speedup_vs_scipy": paired(lambda a, sc, b: (sc + b) / a, s, t["scipy"], t["box"]),
            "speedup_vs_scipy_excluding_box": paired(
                lambda a, sc, b: sc / (a - b), s, t["scipy"], t["box"]
            ),
            "value_ratio_vs_scipy": _ratio(entry["value_init_zero"], scipy_value),
        }
        result["solvers"][solver] = entry
    result["restarts"] = {
        solver: restart_timing(problem, A, solver, restarts, solves[solver][0], repeats)
        for solver in restart_solvers
    }
    for per_r in result["restarts"].values():
        for entry in per_r.values():
            entry["value_ratio_vs_scipy"] = _ratio(entry["value"], scipy_value)
    return result


class Case(NamedTuple):
    """A problem to build, its solvers, and the (space, solver) pairs whose restarts are timed."""

    make: Callable[[], Problem]
    solvers: tuple[str, ...]
    restarts_in: tuple[tuple[str, str], ...]


# Restarts cost R solves each, so they are timed on the small MLP only: with projected gradient
# in the full space (the loss alone: 16 restarts take ~16 s per repeat on 2 cores) and with
# L-BFGS-B at p = 100 (one least-squares box for all R; vertices are local maxima there, so
# restarts raise the value). Not L-BFGS-B in the full space: its Cauchy-point search is a
# sequential while_loop over breakpoints (~13,000 at the first iteration on this MLP) that slows
# down superlinearly under vmap (exploratory: 7 s at R = 1, 140-170 s at R = 4), an hour at 16.
# The quick case (smoke test) keeps one solver: compiling dominates it.
CASES = (
    Case(
        partial(digits_problem, (512, 512, 512), steps=300),
        SOLVERS,
        (("full", "projected_gradient"), ("p100", "lbfgsb")),
    ),
    Case(partial(synthetic_f1_problem, 2048, steps=100), SOLVERS, ()),
)
QUICK_CASES = (
    Case(
        partial(digits_problem, (16,), steps=10),
        ("projected_gradient",),
        (("p100", "projected_gradient"),),
    ),
)


def run(quick: bool = False, repeats: int = 5, blas_threads: int | None = None) -> dict:
    """Runs the benchmark and returns the results; `quick`: a tiny MLP on digits only.

    `blas_threads` caps the BLAS/LAPACK threads (OpenBLAS, which also serves JAX's CPU
    least squares) for the whole run; None leaves them as they are.
    """
    with threadpoolctl.threadpool_limits(blas_threads, user_api="blas"):
        return _run(quick, repeats, blas_threads)


def _run(quick: bool, repeats: int, blas_threads: int | None) -> dict:
    started = time.perf_counter()
    cases, restarts = (QUICK_CASES, QUICK_RESTARTS) if quick else (CASES, RESTARTS)
    results: dict = {
        "benchmark": "sharpness",
        "environment": environment(),
        "config": {
            "eps": EPS,
            "maxiter": MAXITER,
            "subspace": {"p": SUBSPACE_DIM, "distribution": "gaussian", "normalize": False},
            "restarts": list(restarts),
            "repeats": repeats,
            "warmup": 1,
            "quick": quick,
            "blas_threads": blas_threads,
            "flatmin_init": "zero for every timing and ratio; value_init_random: the default",
            "scipy": "fmin_l_bfgs_b defaults (m=10, factr=1e7, pgtol=1e-5), maxiter=10, y0=0",
            "evaluation_counts": (
                "counted on the device with jax.debug.callback in a custom_vjp wrapper of the "
                "loss, on the same program as timed; *_evals count points (a vmapped call of R "
                "points counts R), *_calls count evaluations in the program (a vmapped call "
                "counts once)"
            ),
        },
        "problems": {},
    }
    for case in cases:
        problem = case.make()
        floor = floor_timing(problem, repeats)
        log(f"{problem.name}: n = {problem.sizes['n_params']}, trained, floor timed")
        spaces = {
            "full": None,
            f"p{SUBSPACE_DIM}": flatmin.random_subspace(
                jax.random.key(1), problem.params, SUBSPACE_DIM
            ),
        }
        results["problems"][problem.name] = {
            "sizes": problem.sizes,
            "solvers": list(case.solvers),
            "counter_check": counter_self_check(problem),
            "floor": floor.timings,
            "spaces": {
                space: bench_space(
                    problem,
                    A,
                    floor,
                    repeats,
                    case.solvers,
                    restarts,
                    [solver for where, solver in case.restarts_in if where == space],
                )
                for space, A in spaces.items()
            },
        }
    results["environment"]["load_average_end"] = list(os.getloadavg())
    results["total_seconds"] = time.perf_counter() - started
    return results


# --- report -------------------------------------------------------------------------------------


def tables(results: dict) -> str:
    """The figures as two plain-text tables: solves, then restarts. Ratios are medians over
    repeats of per-repeat ratios (interleaved timing)."""
    solves, restarts = [], []
    for name, problem in results["problems"].items():
        for space, res in problem["spaces"].items():
            key = {"problem": name, "space": space}
            floor_s, box_s = res["floor"]["median_s"], res["box_radius"]["median_s"]
            solves += [
                key
                | {"route": "floor", "median_s": floor_s, "/floor": 1.0}
                | {"fwd": MAXITER + 1, "grad": MAXITER + 1},
                key
                | {"route": "floor in y", "median_s": res["floor_in_y"]["median_s"]}
                | {"/floor": res["floor_in_y"]["median_s"] / floor_s, "/floor-y": 1.0},
                key | {"route": "box (A^+x)", "median_s": box_s, "/floor": box_s / floor_s},
                key
                | {
                    "route": "scipy (no box)",
                    "median_s": res["scipy"]["run"]["median_s"],
                    "/floor": res["scipy"]["run"]["median_s"] / floor_s,
                    "fwd": res["scipy"]["evaluations"]["forward_evals"],
                    "grad": res["scipy"]["evaluations"]["grad_evals"],
                    "phi(zero)": res["scipy"]["value"],
                },
            ]
            for solver, e in res["solvers"].items():
                solves.append(
                    key
                    | {
                        "route": solver,
                        "median_s": e["run"]["median_s"],
                        "min_s": e["run"]["min_s"],
                        "/floor": e["overhead"]["median"],
                        "-box/floor": e["overhead_excluding_box"]["median"],
                        "-box/floor-y": e["overhead_vs_floor_in_y"]["median"],
                        "fwd": e["evaluations"]["forward_evals"],
                        "grad": e["evaluations"]["grad_evals"],
                        "phi(zero)": e["value_init_zero"],
                        "phi(random)": e["value_init_random"],
                        "speedup": e["speedup_vs_scipy"]["median"],
                        "speedup-box": e["speedup_vs_scipy_excluding_box"]["median"],
                        "value_ratio": e["value_ratio_vs_scipy"],
                    }
                )
            for solver, per_r in res["restarts"].items():
                for R, e in per_r.items():
                    restarts.append(
                        key
                        | {
                            "solver": solver,
                            "R": R,
                            "median_s": e["run"]["median_s"],
                            "per_restart_s": e["per_restart_s"],
                            "vs_R1": e["per_restart_vs_single"]["median"],
                            "phi": e["value"],
                            "value_ratio": e["value_ratio_vs_scipy"],
                        }
                        | {k: e["evaluations"][k] for k in EvalCounter.KEYS}
                    )
    solve_columns = ["problem", "space", "route", "median_s", "min_s", "/floor", "-box/floor"]
    solve_columns += ["-box/floor-y", "fwd", "grad", "phi(zero)", "phi(random)", "speedup"]
    solve_columns += ["speedup-box", "value_ratio"]
    restart_columns = ["problem", "space", "solver", "R", "median_s", "per_restart_s", "vs_R1"]
    restart_columns += ["phi", "value_ratio", *EvalCounter.KEYS]
    return f"{format_table(solve_columns, solves)}\n\n{format_table(restart_columns, restarts)}"


def main(argv: Sequence[str] | None = None) -> None:
    """CLI: runs the benchmark, prints the tables, writes the JSON."""
    parser = benchmark_parser(__doc__)
    parser.add_argument(
        "--blas-threads", type=int, default=None, help="cap BLAS/LAPACK threads (default: as is)"
    )
    args = parse_benchmark_args(parser, argv)
    results = run(quick=args.quick, repeats=args.repeats, blas_threads=args.blas_threads)
    report("sharpness", args, results, tables(results))


if __name__ == "__main__":
    main()
