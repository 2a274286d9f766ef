"""Sharpness of a minimiser: Metric 2.1 of Keskar et al. (ICLR 2017).

    phi = (max_{y in C_eps} f(x + A y) - f(x)) / (1 + f(x)) * 100,
    C_eps = { y in R^p : |y_i| <= eps (|(A^+ x)_i| + 1) },

with x the flattened parameters, A an (n, p) matrix (the identity when `A is None`) and f
the training loss. The inner maximum is solved inexactly, as in the paper, by a fixed number
of box-constrained iterations; the value reported is always f at a point inside the box.
"""

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree

from flatmin._checks import (
    check_finite_array,
    check_float,
    check_int,
    check_key,
    check_loss_and_params,
    check_one_of,
    is_concrete,
)
from flatmin._vmap import vmap_leading
from flatmin.measures.solvers import LBFGSB, Solver

INITS = ("random", "zero")

PyTree = Any
LossFn = Callable[[PyTree], jax.Array]


class SharpnessResult(NamedTuple):
    """Everything `solve_sharpness` found.

    Attributes:
      value: scalar, the metric phi (a percentage of 1 + f(x); >= 0).
      y: the maximiser, inside C_eps: a (p,) array for a subspace, or a pytree shaped like
        `params` in the full space (the perturbation added to the parameters).
      loss: scalar f(x).
      max_loss: scalar f(x + A y), the largest loss found.
      num_steps: int, solver iterations run from the winning start (fewer than `maxiter` when
        a stopping rule of the solver, e.g. `LBFGSB.paper()`'s pgtol, ended it).
      num_evaluations: int, value-and-gradient evaluations of f made from the winning start.
      projected_grad_start, projected_grad_end: the infinity-norm of the projected gradient of
        -f in y (scipy's `projgr`, what pgtol is tested on) at the winning start and at the
        point its solve ended.
      at_bound: the fraction of y's p coordinates at a face of the box.
    """

    value: jax.Array
    y: PyTree
    loss: jax.Array
    max_loss: jax.Array
    num_steps: jax.Array
    num_evaluations: jax.Array
    projected_grad_start: jax.Array
    projected_grad_end: jax.Array
    at_bound: jax.Array


def sharpness(
    loss_fn: LossFn,
    params: PyTree,
    A: jax.Array | None = None,
    eps: float = 1e-3,
    *,
    solver: Solver = LBFGSB(),
    key: jax.Array | None = None,
    restarts: int = 1,
    init: str = "random",
) -> jax.Array:
    """Metric 2.1: the (C_eps, A)-sharpness of `loss_fn` at `params`, a scalar >= 0.

    See `solve_sharpness` for the arguments; this returns its `value` alone.
    """
    return solve_sharpness(
        loss_fn, params, A, eps, solver=solver, key=key, restarts=restarts, init=init
    ).value


def solve_sharpness(
    loss_fn: LossFn,
    params: PyTree,
    A: jax.Array | None = None,
    eps: float = 1e-3,
    *,
    solver: Solver = LBFGSB(),
    key: jax.Array | None = None,
    restarts: int = 1,
    init: str = "random",
) -> SharpnessResult:
    """Solves the inner maximum of Metric 2.1 and returns the metric with its maximiser.

    Args:
      loss_fn: params -> scalar loss f, e.g. the mean cross-entropy over the whole training set
        in evaluation mode. Treated as static under `jax.jit`: pass the same function object
        across calls to reuse the compiled program.
      params: a pytree of floating arrays, the solution x (n numbers in all).
      A: None for the full space (A = I, never materialised), or an (n, p) array whose columns
        span a random subspace (see `random_subspace`).
      eps: box size, > 0 (the paper uses 1e-3 and 5e-4).
      solver: how the inner maximum is solved: `flatmin.LBFGSB()` (default: 10 iterations on a
        rescaled objective, no early stop), `flatmin.LBFGSB.paper()` (scipy's fmin_l_bfgs_b
        with its default stopping rules, as the authors ran it; pair it with init="zero"), or
        `flatmin.ProjectedGradient()`. The best point seen is kept, so more iterations never
        lower the value.
      key: PRNG key for the random starting points; a fixed default keeps results
        deterministic.
      restarts: number of starting points solved at once (vmapped); the largest value wins.
      init: "random" (every start uniform in the box) or "zero" (the first start at y = 0, as
        the authors and the public reimplementations did; further starts random).

    Returns:
      A `SharpnessResult`.

    Raises:
      ValueError: for bad arguments, naming the argument, before any work (under jax.jit, the
        values of traced arguments are not checked: see `_check_arguments`).

    A non-finite f(x) (a diverged run's parameters) is not an error: the value is NaN, eagerly,
    under jax.jit and under jax.vmap alike, so one diverged seed in a vmapped batch never stops
    the others and a loop over seeds never needs a try. Check `jnp.isfinite(result.value)`.

    Float32 caveat: cross-entropy summed in float32 carries rounding noise of about 1e-7 per
    example. When the training loss is that small, f(x + A y) - f(x) is mostly rounding noise
    and phi measures it; compare minimisers at a training loss well above it, or enable
    `jax_enable_x64` (everything here follows the dtype of `params`).
    """
    p = _check_arguments(loss_fn, params, A, eps, solver, restarts, init)
    key = check_key(key)
    return _solve(loss_fn, params, A, eps, key, solver, restarts, init, p)


def box_radius(params: PyTree, A: jax.Array | None, eps: float | jax.Array) -> jax.Array:
    """Half-widths of C_eps, (p,): eps * (|(A^+ x)_i| + 1), with A^+ x = x when A is None."""
    x, _ = ravel_pytree(params)
    coords = x if A is None else subspace_coordinates(A.astype(x.dtype), x)
    return eps * (jnp.abs(coords) + 1)


def subspace_coordinates(A: jax.Array, x: jax.Array) -> jax.Array:
    """A^+ x, (p,), for a tall (n, p) A and (n,) x: the coordinates of x's projection on A.

    Through the (p, p) Gram matrix A^T A, one matrix product and a p x p eigendecomposition,
    instead of an SVD of the tall A, which costs more than the ten solver iterations it feeds
    (benchmarks/sharpness.py times this box). One step of iterative refinement
    on the residual recovers the digits that squaring A's condition number costs. Directions
    with A^T A eigenvalue below `p * eps(dtype)` of the largest (singular values below
    sqrt(p * eps) of the largest: ~3.5e-3 in float32 at p = 100) count as A's null space,
    which gives the minimum-norm solution for a rank-deficient A, as a pseudo-inverse does.
    """
    gram = A.T @ A
    w, V = jnp.linalg.eigh(gram)
    keep = w > jnp.max(w) * max(A.shape[1], 1) * jnp.finfo(A.dtype).eps
    inverse = jnp.where(keep, 1 / jnp.where(keep, w, 1), 0)

    def solve(b: jax.Array) -> jax.Array:
        return V @ (inverse * (V.T @ (A.T @ b)))

    coords = solve(x)
    return coords + solve(x - A @ coords)


def _solve(loss_fn, params, A, eps, key, solver, restarts, init, p) -> SharpnessResult:
    x, unravel = ravel_pytree(params)
    if A is not None:
        A = A.astype(x.dtype)
    radius = box_radius(params, A, jnp.asarray(eps, x.dtype))

    def f_of_y(y: jax.Array) -> jax.Array:
        return loss_fn(unravel(x + (y if A is None else A @ y)))

    starts = radius[None, :] * jax.random.uniform(key, (restarts, p), x.dtype, -1.0, 1.0)
    if init == "zero":
        starts = starts.at[0].set(0.0)
    found = vmap_leading(lambda y0: solver.maximize(f_of_y, y0, -radius, radius), starts)

    values = jnp.where(jnp.isfinite(found.value), found.value, -jnp.inf)
    best = jnp.argmax(values)
    loss = f_of_y(jnp.zeros(p, x.dtype))
    # y = 0 is in the box, so the maximum is at least f(x), even if every start found less.
    use_zero = ~(values[best] > loss)
    y = jnp.where(use_zero, 0.0, found.argmax[best])
    max_loss = jnp.where(use_zero, loss, found.value[best])
    return SharpnessResult(
        value=(max_loss - loss) / (1 + loss) * 100,
        y=unravel(y) if A is None else y,
        loss=loss,
        max_loss=max_loss,
        num_steps=found.num_steps[best],
        num_evaluations=found.num_evaluations[best],
        projected_grad_start=found.projected_grad_start[best],
        projected_grad_end=found.projected_grad_end[best],
        at_bound=jnp.mean(jnp.abs(y) >= radius),
    )


_solve = jax.jit(_solve, static_argnames=("loss_fn", "solver", "restarts", "init", "p"))


def _check_arguments(loss_fn, params, A, eps, solver, restarts, init) -> int:
    """Validates everything that can be checked without running the loss; returns p.

    Under jax.jit / jax.vmap the values of traced arguments cannot be read: a traced eps is not
    checked for being > 0 and finite, a traced A not for NaN entries. Their shapes and dtypes,
    and every other argument, are checked all the same.
    """
    n = check_loss_and_params(loss_fn, params)
    if np.ndim(eps) != 0:
        raise ValueError(f"eps must be a scalar, got an array of shape {np.shape(eps)}")
    if is_concrete(eps):
        check_float("eps", eps, above=0)
    if not callable(getattr(solver, "maximize", None)):
        raise ValueError(
            "solver must be a solver object such as flatmin.LBFGSB(), flatmin.LBFGSB.paper() "
            f"or flatmin.ProjectedGradient(), got {solver!r}"
        )
    check_one_of("init", init, INITS)
    check_int("restarts", restarts, minimum=1)
    if A is None:
        return n
    shape = np.shape(A)
    if len(shape) != 2:
        raise ValueError(f"A must be a 2-D (n, p) array, got shape {shape}")
    if shape[0] != n:
        raise ValueError(
            f"A must have one row per parameter: params has n = {n} numbers, A has {shape[0]} rows"
        )
    p = shape[1]
    if not 1 <= p <= n:
        raise ValueError(f"A must have 1 <= p <= n = {n} columns, got p = {p}")
    if not jnp.issubdtype(jnp.result_type(A), jnp.floating):
        raise ValueError(f"A must be a floating array, got dtype {jnp.result_type(A)}")
    check_finite_array("A", A)
    return p
