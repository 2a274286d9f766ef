"""Projected gradient ascent over a box or a ball, through jaxopt.ProjectedGradient.

The only module that imports jaxopt (archived upstream, pinned). Problems arrive already
rescaled (`flatmin.measures._problem`): z in the unit box or ball and an objective whose
gradient at the start reaches STEP_SCALE radii in one unit step.

No jaxopt line search: under `vmap` (restarts, seeds) a batched while_loop evaluates its
condition in two compiled copies of f that can round differently, and a lane they disagree on
never advances (seen: a hang). The step adapts across iterations instead, each of which is
exactly one value-and-gradient: grown by STEP_GROWTH after a step that raised f, halved and
restarted from the best point after one that did not. FISTA's momentum is off: its extrapolated
point leaves the box and f would be read there.
"""

import warnings
from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp

from flatmin.measures._best import Best, keep_best
from flatmin.measures._regions import Box, Region

with warnings.catch_warnings():
    # jaxopt warns on import that it is archived; flatmin pins it and confines it here.
    warnings.simplefilter("ignore", DeprecationWarning)
    import jaxopt
    from jaxopt.projection import projection_box, projection_l2_ball

# The step after an iteration that raised f: a gentle growth, since a halving costs a whole
# iteration (x2 saw-toothed between over- and undershooting on a nonconvex f).
STEP_GROWTH = 1.25


class _Carry(NamedTuple):
    z: jax.Array
    state: NamedTuple
    best: Best  # extras = (f, grad F)
    step_size: jax.Array
    history: jax.Array


def ascend(
    objective: Callable[[jax.Array], tuple[jax.Array, jax.Array]],
    z0: jax.Array,
    region: Region,
    maxiter: int,
) -> tuple[Best, jax.Array]:
    """Minimises `objective(z) -> (F, f)` over the unit `region` from z0 by `maxiter`
    projected gradient steps; returns the best point seen (`flatmin.measures._best`, extras
    (f, grad F)) and (maxiter,) the best F after each step.

    Evaluations: one value-and-gradient per iteration at the iterate it starts from, and one at
    the last iterate: maxiter + 1 in all.
    """
    value_and_grad = jax.value_and_grad(objective, has_aux=True)

    def scaled(z, step_size):
        # jaxopt's fixed unit step on step_size * F is a step of size step_size on F; the
        # gradient rides along in aux so the best point keeps it.
        (F, f), G = value_and_grad(z)
        return (F * step_size, (F, f, G)), G * step_size

    if isinstance(region, Box):
        projection, bounds = projection_box, (-jnp.ones_like(z0), jnp.ones_like(z0))
    else:
        projection, bounds = projection_l2_ball, jnp.ones((), z0.dtype)
    opt = jaxopt.ProjectedGradient(
        fun=scaled,
        value_and_grad=True,
        projection=projection,
        has_aux=True,
        maxiter=maxiter,
        tol=0.0,
        stepsize=1.0,
        acceleration=False,
    )
    one = jnp.ones((), z0.dtype)
    # jaxopt's init_state evaluates f only to learn aux's structure (and, with
    # value_and_grad=True, takes the gradient for aux); with a fixed step `update` reads no
    # field of the state, so zeros of the right structure are enough.
    shapes = jax.eval_shape(lambda: opt.init_state(z0, bounds, one))
    zero = jnp.zeros((), z0.dtype)
    state = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)
    state = state._replace(aux=(zero, zero, jnp.zeros_like(z0)))
    worst = jnp.full((), jnp.inf, z0.dtype)

    def body(t, carry: _Carry) -> _Carry:
        z_new, state_new = opt.update(carry.z, carry.state, bounds, carry.step_size)
        F, f, G = state_new.aux  # at carry.z, where this step started
        improved = jnp.isfinite(F) & jnp.all(jnp.isfinite(G)) & (F <= carry.best.value)
        # A non-finite F is recorded by the best point but never stepped from.
        best = keep_best(carry.best, carry.z, F, (f, G), improved | ~jnp.isfinite(F))
        return _Carry(
            z=jnp.where(improved, z_new, best.x),
            state=state_new,
            best=best,
            step_size=jnp.where(improved, STEP_GROWTH, 0.5) * carry.step_size,
            # Entry t - 1: the best after step t - 1 (this trip evaluated its end point).
            history=carry.history.at[jnp.maximum(t - 1, 0)].set(best.value),
        )

    start = _Carry(z0, state, Best(z0, worst, (worst, jnp.zeros_like(z0))), one,
                   jnp.full((maxiter,), jnp.inf, z0.dtype))  # fmt: skip
    carry = jax.lax.fori_loop(0, maxiter, body, start)
    (F_last, f_last), G_last = value_and_grad(carry.z)  # the last step's point
    finite = jnp.isfinite(F_last) & jnp.all(jnp.isfinite(G_last))
    best = keep_best(carry.best, carry.z, F_last, (f_last, G_last), finite | ~jnp.isfinite(F_last))
    return best, carry.history.at[maxiter - 1].set(best.value)
