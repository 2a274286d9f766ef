"""Box-constrained maximisation: flatmin's own solver interface over jaxopt.

This is the only module that imports jaxopt (archived upstream). Everything else calls
`maximize_in_box`, so replacing jaxopt means rewriting this file alone.

Two facts about the sharpness problem shape the choices below:

* The start is (near) a minimiser of f, so the gradient there is ~0. jaxopt's default
  tolerance would stop at once; here every solver runs exactly `maxiter` iterations.
* Maximising f near a minimiser means minimising -f, which is *concave* there. A Wolfe line
  search then never finds its curvature condition: jaxopt's "zoom" extrapolates far outside
  the box (seen: f = 8.8e28, then NaN) and a Wolfe backtracking spends `maxls` evaluations on
  every iteration. L-BFGS-B's search direction already ends inside the box at the minimiser
  of its quadratic model, so it takes the unit step along it; projected gradient takes a
  fixed unit step on the scaled objective below. Either way one value-and-gradient per
  iteration, no data-dependent inner loop, and the best point seen is what counts.

Known residual risk: jaxopt's L-BFGS-B Cauchy-point search is a `while_loop`; under `vmap` its
condition is evaluated twice (JAX's batching rule). Its condition reads only carried state and
its body always advances, so the two copies agree in practice; the projected-gradient line
search, whose condition re-evaluates f, did not (it hung), hence the fixed step there.
"""

import warnings
from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp

with warnings.catch_warnings():
    # jaxopt warns on import that it is archived; flatmin pins it and confines it here.
    warnings.simplefilter("ignore", DeprecationWarning)
    import jaxopt
    from jaxopt.projection import projection_box

SOLVERS = ("lbfgsb", "projected_gradient")
STEP_SCALE = 10.0
# Projected gradient's step after an iteration that raised f: a gentle growth, since a halving
# costs a whole iteration (x2 saw-toothed between over- and undershooting on a nonconvex f).
STEP_GROWTH = 1.25


class BoxMaximum(NamedTuple):
    """Result of `maximize_in_box`.

    Attributes:
      argmax: (p,) the best point found; inside [lower, upper].
      value: f(argmax), recomputed from the clipped point.
      num_steps: solver iterations run (always `maxiter`).
    """

    argmax: jax.Array
    value: jax.Array
    num_steps: jax.Array


class _Carry(NamedTuple):
    z: jax.Array
    state: NamedTuple
    best_z: jax.Array
    best_f: jax.Array
    step_size: jax.Array


def _valid(z: jax.Array, f: jax.Array, lower: jax.Array, upper: jax.Array) -> jax.Array:
    """Whether f was read at a finite point inside the box and is itself finite."""
    inside = jnp.all((z >= lower) & (z <= upper))
    return inside & jnp.all(jnp.isfinite(z)) & jnp.isfinite(f)


def maximize_in_box(
    fun: Callable[[jax.Array], jax.Array],
    init: jax.Array,
    lower: jax.Array,
    upper: jax.Array,
    *,
    solver: str,
    maxiter: int,
) -> BoxMaximum:
    """Maximises `fun` over the box [lower, upper] from `init`, keeping the best point seen.

    Args:
      fun: (p,) -> scalar, differentiable.
      init: (p,) starting point inside the box.
      lower, upper: (p,) bounds, lower <= upper.
      solver: one of `SOLVERS`.
      maxiter: iterations to run, exactly (no early stop).

    Returns:
      A `BoxMaximum`. Steps that produce a non-finite point or value are discarded, so the
      result is finite whenever f(init) is.
    """
    if solver not in SOLVERS:
        raise ValueError(f"solver must be one of {SOLVERS}, got {solver!r}")
    init = jnp.clip(init, lower, upper)
    f_init, g_init = jax.value_and_grad(fun)(init)

    # Scale the objective so that a unit gradient step moves the coordinate with the largest
    # gradient across STEP_SCALE half-boxes. Near a minimiser raw gradients are tiny against
    # any box, and with -f concave L-BFGS-B rejects every curvature pair, so its steps stay
    # plain gradient steps at this scale: at 1 they crawl (98.9% of a quadratic's closed-form
    # maximum in 10 iterations), at 10 and above they reach the box's faces. The floor keeps
    # a zero gradient (a constant f) finite.
    half_width = 0.5 * (upper - lower)
    grad_scale = jnp.max(jnp.abs(g_init) * half_width)
    scale = jax.lax.stop_gradient(
        STEP_SCALE / jnp.maximum(grad_scale, jnp.sqrt(jnp.finfo(init.dtype).tiny))
    )

    def objective(z: jax.Array, step_size: jax.Array) -> tuple[jax.Array, jax.Array]:
        # Minimised by jaxopt; the raw value rides along as aux so no extra pass is needed.
        # step_size scales projected gradient's unit step (L-BFGS-B keeps it at 1: rescaling
        # would corrupt its curvature history).
        f = fun(z)
        return -(f - f_init) * scale * step_size, f

    bounds = (lower, upper)
    one = jnp.ones((), init.dtype)
    if solver == "lbfgsb":
        opt = jaxopt.LBFGSB(fun=objective, has_aux=True, maxiter=maxiter, tol=0.0, stepsize=1.0)
        state = opt.init_state(init, bounds, one)

        def body(_, carry: _Carry) -> _Carry:
            z_new, state_new = opt.update(carry.z, carry.state, bounds, one)
            f_new = state_new.aux  # L-BFGS-B evaluates f at the point it returns
            ok = _valid(z_new, f_new, lower, upper)
            # A non-finite step, or one that left the box, is discarded: the iterate and the
            # solver state stay as they were, so a value is never read outside the box.
            z_next, state_next = jax.tree.map(
                lambda n, o: jnp.where(ok, n, o), (z_new, state_new), (carry.z, carry.state)
            )
            better = ok & (f_new > carry.best_f)
            return carry._replace(
                z=z_next,
                state=state_next,
                best_z=jnp.where(better, z_new, carry.best_z),
                best_f=jnp.where(better, f_new, carry.best_f),
            )

    else:
        # No jaxopt line search: under vmap (restarts, seeds) a batched while_loop evaluates
        # its condition in two compiled copies of f that can round differently, and a lane
        # they disagree on never advances (seen: a hang). The step adapts across iterations
        # instead, each of which is exactly one value-and-gradient: grown by STEP_GROWTH after a
        # step that raised f, halved and restarted from the best point after one that did not.
        opt = jaxopt.ProjectedGradient(
            fun=objective,
            projection=projection_box,
            has_aux=True,
            maxiter=maxiter,
            tol=0.0,
            stepsize=1.0,
            acceleration=False,  # FISTA's momentum point leaves the box; f is read there
        )
        state = opt.init_state(init, bounds, one)

        def body(_, carry: _Carry) -> _Carry:
            z_new, state_new = opt.update(carry.z, carry.state, bounds, carry.step_size)
            f_z = state_new.aux  # projected gradient evaluates f at z, where it started
            improved = _valid(carry.z, f_z, lower, upper) & (f_z >= carry.best_f)
            best_z = jnp.where(improved, carry.z, carry.best_z)
            return carry._replace(
                z=jnp.where(improved, z_new, best_z),
                state=state_new,
                best_z=best_z,
                best_f=jnp.where(improved, f_z, carry.best_f),
                step_size=jnp.where(improved, STEP_GROWTH, 0.5) * carry.step_size,
            )

    # Projected gradient's first iteration evaluates init itself; -inf makes it count.
    best_f = f_init if solver == "lbfgsb" else jnp.full_like(f_init, -jnp.inf)
    carry = jax.lax.fori_loop(0, maxiter, body, _Carry(init, state, init, best_f, one))
    best_z = carry.best_z
    if solver == "projected_gradient":
        # Its last iterate has not been evaluated yet.
        f_last = fun(carry.z)
        best_z = jnp.where(jnp.isfinite(f_last) & (f_last > carry.best_f), carry.z, best_z)
    # Honest by construction: the reported value is f at the clipped point that is returned.
    best_z = jnp.clip(best_z, lower, upper)
    return BoxMaximum(argmax=best_z, value=fun(best_z), num_steps=jnp.asarray(maxiter))
