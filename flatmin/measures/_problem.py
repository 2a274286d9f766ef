"""A maximum over a region as the minimisation a solver runs, and the way back.

Maximising f near a minimiser means minimising a concave -f, on which a Wolfe line search
extrapolates out of the region or never ends. So flatmin's solvers work in the unit region,
z = y / radius, on an objective scaled so that one unit step along its gradient at the start
reaches STEP_SCALE radii (along the steepest coordinate of a box, or in l2 for a ball), and
take that step. The paper's route (`LBFGSB.paper()`) solves the problem as given instead.
"""

from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp

from flatmin.measures import _regions
from flatmin.measures._regions import Box, Region

# How far the rescaled objective's first unit step reaches, in radii, along the steepest
# coordinate. At 1 steps crawl: with -f concave every curvature pair is rejected, the steps
# stay gradient steps, and L-BFGS-B reached 98.9% of a quadratic's closed-form maximum in 10
# iterations; at 10 and above they reach the box's faces.
STEP_SCALE = 10.0


class Maximum(NamedTuple):
    """What a solver's `maximize` found from one start, in the caller's coordinates.

    Attributes:
      argmax: (p,) the best point seen, inside the region.
      value: fun(argmax), as evaluated there (inf or NaN if the loss overflowed there).
      num_steps: int, iterations run (fewer than maxiter when a stopping rule ended the run).
      num_evaluations: int, value-and-gradient evaluations of fun.
      projected_grad_start, projected_grad_end: the infinity-norm of the projected gradient of
        -fun at the start and at argmax (for a box, scipy's `projgr`: the quantity its pgtol
        tests).
      history: (maxiter,) the best value of fun after each iteration (rounded through the
        solver's scaling; `value` is exact).
      status: int32, a `flatmin.Status`: FINISHED, or the stopping rule that ended the run.
    """

    argmax: jax.Array
    value: jax.Array
    num_steps: jax.Array
    num_evaluations: jax.Array
    projected_grad_start: jax.Array
    projected_grad_end: jax.Array
    history: jax.Array
    status: jax.Array


class Problem(NamedTuple):
    """fun over a region as a minimisation: `objective(z) -> (F, fun)` so the raw value rides
    along, from `start`, over `region` (the unit region, or the caller's when not rescaled)."""

    objective: Callable
    start: jax.Array
    region: Region
    F0: jax.Array
    f0: jax.Array
    G0: jax.Array
    radius: jax.Array  # y = radius * z (1 when not rescaled)
    offset: jax.Array  # F = -(fun - offset) * scale: offset f0 when rescaled, else 0 (scale 1)
    scale: jax.Array
    caller: Region
    init: jax.Array

    @staticmethod
    def build(fun: Callable, init: jax.Array, region: Region, rescale: bool) -> "Problem":
        """The problem from `init` (projected into the region first): rescaled, or as given."""
        init = _regions.project(region, init)
        f0, g0 = jax.value_and_grad(fun)(init)
        one = jnp.ones((), init.dtype)
        if not rescale:

            def objective(y):
                f = fun(y)
                return -f, f

            zero = jnp.zeros_like(f0)
            return Problem(objective, init, region, -f0, f0, -g0, one, zero, one, region, init)
        radius = region.radius
        # The floor keeps a zero gradient (a constant f) finite.
        steepest = _regions.dual_norm(region, g0 * radius)
        scale = STEP_SCALE / jnp.maximum(steepest, jnp.sqrt(jnp.finfo(init.dtype).tiny))

        def objective(z):
            f = fun(_to_caller(region, radius, z))
            return -(f - f0) * scale, f

        return Problem(
            objective=objective,
            start=init / radius,
            region=_regions.unit(region),
            F0=jnp.zeros_like(f0),
            f0=f0,
            G0=-scale * radius * g0,
            radius=radius,
            offset=f0,
            scale=scale,
            caller=region,
            init=init,
        )

    def bounds(self) -> tuple[jax.Array, jax.Array]:
        """The solver's box as (lower, upper), (p,) each."""
        if not isinstance(self.region, Box):
            raise ValueError(f"this solver needs a box, got {type(self.region).__name__}")
        return -self.region.radius, self.region.radius

    def result(self, point, value, grad, steps, evaluations, history, status) -> Maximum:
        """A solver's best point (in its coordinates), fun there, grad F there, its counts,
        its (maxiter,) history of the best F, and its status, as a `Maximum`."""
        argmax = _to_caller(self.caller, self.radius, point)
        to_grad = lambda G: G / (self.scale * self.radius)  # grad F -> grad(-fun) in y
        return Maximum(
            argmax=argmax,
            value=value,
            num_steps=steps,
            num_evaluations=evaluations,
            projected_grad_start=_regions.projected_gradient_norm(
                self.caller, self.init, to_grad(self.G0)
            ),
            projected_grad_end=_regions.projected_gradient_norm(self.caller, argmax, to_grad(grad)),
            history=self.offset - history / self.scale,
            status=status,
        )


def _to_caller(region: Region, radius: jax.Array, z: jax.Array) -> jax.Array:
    """y = radius z, projected into the region where f is read, so the point returned is the
    point evaluated. The gradient passes straight through: the projection only ever moves a
    point by rounding, and a clip's gradient is halved at a face and zero beyond it."""
    y = radius * z
    return y + jax.lax.stop_gradient(_regions.project(region, y) - y)
