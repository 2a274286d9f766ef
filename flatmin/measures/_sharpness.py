"""Sharpness of a minimiser: Metric 2.1 of Keskar et al. (ICLR 2017).

    phi = (max_{y in C_eps} f(x + A y) - f(x)) / (1 + f(x)) * 100,
    C_eps = { y in R^p : |y_i| <= eps (|(A^+ x)_i| + 1) },

with x the flattened parameters, A an (n, p) matrix (the identity when `A is None`) and
f(params) = loss_fn(params, *args) the training loss. The inner maximum is solved by a solver
object (`flatmin.measures._solvers`) through the shared harness
(`flatmin.measures._multistart`); the value reported is always f at a point inside the box.
"""

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree

from flatmin._checks import (
    check_args,
    check_finite_array,
    check_float,
    check_key,
    check_loss_and_params,
    is_concrete,
)
from flatmin._types import LossFn, PyTree
from flatmin.measures import _multistart
from flatmin.measures._regions import Box
from flatmin.measures._solvers import LBFGSB, Solver, check_solver
from flatmin.measures._subspace import subspace_coordinates


class SharpnessResult(NamedTuple):
    """Everything `solve_sharpness` found.

    Attributes:
      value: scalar, the metric phi (a percentage of 1 + f(x); >= 0). NaN when f(x) is not
        finite (a diverged seed), inf when the loss overflowed inside the box.
      status: int32, a `flatmin.Status`: how the winning start's solve ended (FINISHED, or the
        stopping rule of `LBFGSB.paper()` that ended it), DIVERGED or NONFINITE_NEARBY.
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
      history: (maxiter,) the metric after each solver iteration, the best of any start.
    """

    value: jax.Array
    status: jax.Array
    y: PyTree
    loss: jax.Array
    max_loss: jax.Array
    num_steps: jax.Array
    num_evaluations: jax.Array
    projected_grad_start: jax.Array
    projected_grad_end: jax.Array
    at_bound: jax.Array
    history: jax.Array


def sharpness(
    loss_fn: LossFn,
    params: PyTree,
    A: jax.Array | None = None,
    eps: float = 1e-3,
    *,
    args: tuple = (),
    solver: Solver = LBFGSB(),
    key: jax.Array | None = None,
) -> jax.Array:
    """Metric 2.1: the (C_eps, A)-sharpness of `loss_fn` at `params`, a scalar >= 0.

    Returns `solve_sharpness(...).value` alone, the bare number (the form the design card
    shows); `solve_sharpness` takes the same arguments and says how the solve ended.
    """
    return solve_sharpness(loss_fn, params, A, eps, args=args, solver=solver, key=key).value


def solve_sharpness(
    loss_fn: LossFn,
    params: PyTree,
    A: jax.Array | None = None,
    eps: float = 1e-3,
    *,
    args: tuple = (),
    solver: Solver = LBFGSB(),
    key: jax.Array | None = None,
) -> SharpnessResult:
    """Solves the inner maximum of Metric 2.1 and returns the metric with its maximiser.

    Args:
      loss_fn: (params, *args) -> scalar loss f, e.g. `flatmin.Objective(model)`: the mean
        cross-entropy over a whole training set in evaluation mode. Static under `jax.jit`:
        pass the same function object (or an equal one) to reuse the compiled program.
      params: a pytree of floating arrays, the solution x (n numbers in all).
      A: None for the full space (A = I, never materialised), or an (n, p) array whose columns
        span a subspace (see `random_subspace`).
      eps: box size, > 0 (the paper uses 1e-3 and 5e-4).
      args: a tuple of arrays (pytrees) passed to loss_fn after params: the data, batch
        statistics. They enter the compiled program as arguments, so another data set of the
        same shapes reuses it; a closure over them instead compiles them in as constants.
      solver: how the inner maximum is solved, starts and restarts included:
        `flatmin.LBFGSB()` (default: 10 iterations on a rescaled objective, no early stop, one
        random start; `LBFGSB(restarts=4)` is the maximiser of the README's tables),
        `flatmin.LBFGSB.paper()` (scipy's fmin_l_bfgs_b with its default stopping rules, from
        y = 0, as the authors ran it), `flatmin.ProjectedGradient()` or `flatmin.APGD()`.
        The best point seen is kept, so more iterations never lower the value.
      key: PRNG key for the random starting points; None: a fixed default, so results are
        deterministic.

    Returns:
      A `SharpnessResult`.

    Raises:
      ValueError: for bad arguments, naming the argument, before any work (under jax.jit, the
        values of traced arguments are not checked: see `_check_arguments`).

    A non-finite f(x) (a diverged run's parameters) is not an error: the value is NaN and the
    status DIVERGED, eagerly, under jax.jit and under jax.vmap alike, so one diverged seed in a
    vmapped batch never stops the others. Check `result.status` or `jnp.isfinite(value)`.

    Float32 caveat: cross-entropy summed in float32 carries rounding noise of about 1e-7 per
    example. When the training loss is that small, f(x + A y) - f(x) is mostly rounding noise
    and phi measures it; compare minimisers at a training loss well above it, or enable
    `jax_enable_x64` (everything here follows the dtype of `params`).
    """
    _check_arguments(loss_fn, params, A, eps, args, solver)
    return _solve(loss_fn, params, A, eps, tuple(args), check_key(key), solver)


def box_radius(params: PyTree, A: jax.Array | None, eps: float | jax.Array) -> jax.Array:
    """Half-widths of C_eps, (p,): eps * (|(A^+ x)_i| + 1), with A^+ x = x when A is None."""
    x, _ = ravel_pytree(params)
    coords = x if A is None else subspace_coordinates(A.astype(x.dtype), x)
    return eps * (jnp.abs(coords) + 1)


def _solve(loss_fn, params, A, eps, args, key, solver) -> SharpnessResult:
    x, unravel = ravel_pytree(params)
    if A is not None:
        A = A.astype(x.dtype)
    radius = box_radius(params, A, jnp.asarray(eps, x.dtype))

    def f_of_y(y: jax.Array) -> jax.Array:
        return loss_fn(unravel(x + (y if A is None else A @ y)), *args)

    found = _multistart.maximize(f_of_y, Box(radius), solver, key)
    to_metric = lambda f: (f - found.centre) / (1 + found.centre) * 100
    return SharpnessResult(
        value=to_metric(found.value),
        status=found.status,
        y=unravel(found.argmax) if A is None else found.argmax,
        loss=found.centre,
        max_loss=found.value,
        num_steps=found.num_steps,
        num_evaluations=found.num_evaluations,
        projected_grad_start=found.projected_grad_start,
        projected_grad_end=found.projected_grad_end,
        at_bound=jnp.mean(jnp.abs(found.argmax) >= radius),
        history=to_metric(found.history),
    )


_solve = jax.jit(_solve, static_argnames=("loss_fn", "solver"))


def _check_arguments(loss_fn, params, A, eps, args, solver) -> None:
    """Validates everything that can be checked without running the loss.

    Under jax.jit / jax.vmap the values of traced arguments cannot be read: a traced eps is not
    checked for being > 0 and finite, a traced A not for NaN entries. Their shapes and dtypes,
    and every other argument, are checked all the same.
    """
    check_args(args)
    n = check_loss_and_params(loss_fn, params, args)
    if np.ndim(eps) != 0:
        raise ValueError(f"eps must be a scalar, got an array of shape {np.shape(eps)}")
    if is_concrete(eps):
        check_float("eps", eps, above=0)
    check_solver(solver)
    if A is None:
        return
    shape = np.shape(A)
    if len(shape) != 2:
        raise ValueError(f"A must be a 2-D (n, p) array, got shape {shape}")
    if shape[0] != n:
        raise ValueError(
            f"A must have one row per parameter: params has n = {n} numbers, A has {shape[0]} rows"
        )
    if not 1 <= shape[1] <= n:
        raise ValueError(f"A must have 1 <= p <= n = {n} columns, got p = {shape[1]}")
    if not jnp.issubdtype(jnp.result_type(A), jnp.floating):
        raise ValueError(f"A must be a floating array, got dtype {jnp.result_type(A)}")
    check_finite_array("A", A)
