"""The best of a solver's starts, never below the centre: the one harness every maximum uses.

A measure that takes a maximum (Metric 2.1, worst-case sharpness) hands this module a function
of y, a region around y = 0 and a solver. The solver's `init` and `restarts` say where it
starts; the starts are solved at once (vmapped) and the largest value wins. y = 0 (the point
measured) lies in the region, so the maximum is never below f(0), however every start fared.
How it ended follows one rule for every measure (`flatmin.Status`): a non-finite f(0) is a
diverged point (value NaN, DIVERGED); a non-finite f at a point a solver evaluated makes the
maximum infinite (value inf, NONFINITE_NEARBY, that point returned); otherwise the winning
start's status.
"""

from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp

from flatmin._types import Status
from flatmin._vmap import vmap_leading
from flatmin.measures import _regions
from flatmin.measures._regions import Region
from flatmin.measures._solvers import Solver


class Found(NamedTuple):
    """The maximum over the starts (fields as `flatmin.measures._problem.Maximum`'s, of the
    winning start), with `centre` = f(0) and `history` the best of any start after each
    iteration (never below f(0))."""

    argmax: jax.Array
    value: jax.Array
    centre: jax.Array
    num_steps: jax.Array
    num_evaluations: jax.Array
    projected_grad_start: jax.Array
    projected_grad_end: jax.Array
    history: jax.Array
    status: jax.Array


def starts(region: Region, solver: Solver, key: jax.Array, dtype, movable=None) -> jax.Array:
    """(restarts, p) starting points: uniform in the region, the first at 0 for init="zero";
    coordinates that are not `movable` ((p,) bool, None: all are) start at 0."""
    points = _regions.uniform(region, key, solver.restarts, dtype)
    if solver.init == "zero":
        points = points.at[0].set(0.0)
    return points if movable is None else jnp.where(movable[None, :], points, 0.0)


def maximize(
    fun: Callable[[jax.Array], jax.Array],
    region: Region,
    solver: Solver,
    key: jax.Array,
    movable: jax.Array | None = None,
) -> Found:
    """max of fun over `region` by `solver` from its starts (see the module's docstring)."""
    dtype = region.radius.dtype
    points = starts(region, solver, key, dtype, movable)
    found = vmap_leading(lambda y0: solver.maximize(fun, y0, region), points)
    centre = fun(jnp.zeros(region.dim, dtype))
    # NaN (an overflow) ranks with +inf: the highest.
    rank = jnp.where(jnp.isnan(found.value), jnp.inf, found.value)
    best = jnp.argmax(rank)
    diverged = ~jnp.isfinite(centre)
    overflow = ~diverged & (rank[best] == jnp.inf)
    use_centre = ~(rank[best] > centre)
    value = jnp.where(use_centre, centre, found.value[best])
    value = jnp.where(overflow, jnp.inf, value)
    status = jnp.select(
        [diverged, overflow], [Status.DIVERGED, Status.NONFINITE_NEARBY], found.status[best]
    ).astype(jnp.int32)
    history = jnp.max(jnp.where(jnp.isnan(found.history), jnp.inf, found.history), axis=0)
    return Found(
        argmax=jnp.where(use_centre, 0.0, found.argmax[best]),
        value=value,
        centre=centre,
        num_steps=found.num_steps[best],
        num_evaluations=found.num_evaluations[best],
        projected_grad_start=found.projected_grad_start[best],
        projected_grad_end=found.projected_grad_end[best],
        history=jnp.maximum(history, centre),
        status=status,
    )
