"""Box-constrained maximisers for Metric 2.1's inner maximum: solvers as configuration values.

A solver is a frozen dataclass (hashable: a static argument of `jax.jit`) whose fields are its
configuration and whose `maximize(fun, init, lower, upper)` maximises fun over the box:

    flatmin.LBFGSB()            # flatmin's maximiser: 10 iterations on a rescaled objective
    flatmin.LBFGSB.paper()      # the paper's route: scipy's fmin_l_bfgs_b defaults, unscaled
    flatmin.ProjectedGradient() # projected gradient ascent (jaxopt), same rescaling

Two facts about the sharpness problem shape the defaults. The start is (near) a minimiser of
f, so the gradient there is ~0: scipy's default tolerance (pgtol = 1e-5) stops before the
first step, which is exactly what the paper's route does (`paper()`); flatmin's maximiser
turns every stopping rule off and runs `maxiter` iterations. And maximising f near a
minimiser means minimising a concave -f, on which a Wolfe line search extrapolates out of the
box or never ends; flatmin's maximiser therefore works in z = y / half-width in [-1, 1]^p on
an objective scaled so that one unit step moves the steepest coordinate across STEP_SCALE
half-boxes, and takes that unit step: one value-and-gradient per iteration.
"""

import dataclasses
import math
from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp

from flatmin.measures import _projected_gradient, lbfgsb

# How far the rescaled objective's first unit step reaches, in half-boxes, along the coordinate
# with the largest gradient. At 1 steps crawl: with -f concave every curvature pair is
# rejected, the steps stay gradient steps, and L-BFGS-B reached 98.9% of a quadratic's
# closed-form maximum in 10 iterations; at 10 and above they reach the box's faces.
STEP_SCALE = 10.0


class BoxMaximum(NamedTuple):
    """What `maximize` found, in the caller's coordinates.

    Attributes:
      argmax: (p,) the best point seen, inside [lower, upper].
      value: fun(argmax), as evaluated there.
      num_steps: int, iterations run (fewer than maxiter when a stopping rule ended the run).
      num_evaluations: int, value-and-gradient evaluations of fun.
      projected_grad_start, projected_grad_end: the infinity-norm of the projected gradient of
        -fun at init and at argmax (scipy's `projgr`: max_i |clip(y - g, lower, upper) - y|_i
        with g = grad(-fun)), the quantity scipy's pgtol tests.
      num_pairs: int, curvature pairs L-BFGS-B held at the end (0 for projected gradient).
    """

    argmax: jax.Array
    value: jax.Array
    num_steps: jax.Array
    num_evaluations: jax.Array
    projected_grad_start: jax.Array
    projected_grad_end: jax.Array
    num_pairs: jax.Array


def _check_int(name: str, value, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")


def _check_tolerance(name: str, value) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float) or not value >= 0:
        raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
    if not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")


@dataclasses.dataclass(frozen=True)
class LBFGSB:
    """L-BFGS-B, flatmin's own (`flatmin.measures.lbfgsb`): vmappable, no loop over coordinates.

    Attributes:
      maxiter: iterations (scipy's maxiter); the paper used 10.
      memory: curvature pairs kept (scipy's maxcor, m).
      pgtol: stop when the projected gradient's infinity-norm is <= pgtol, at the start or
        after an iteration (scipy's default 1e-5); 0 turns the test off.
      factr: stop when an iteration lowers -f by <= factr * 2.2e-16 * max(|f_old|, |f|, 1)
        (scipy's default 1e7); 0 turns the test off.
      maxls: 0 takes the unit step to the subspace minimiser (one evaluation per iteration);
        >= 1 runs scipy's Moré-Thuente line search with at most maxls evaluations, and its
        recovery when the search fails (scipy's default 20).
      rescale: work in z = y / half-width on -fun scaled by STEP_SCALE / max|grad| at the start
        (flatmin's maximiser); False solves the problem as given, as scipy does.
    """

    maxiter: int = 10
    memory: int = 10
    pgtol: float = 0.0
    factr: float = 0.0
    maxls: int = 0
    rescale: bool = True

    def __post_init__(self):
        _check_int("maxiter", self.maxiter, 1)
        _check_int("memory", self.memory, 1)
        _check_int("maxls", self.maxls, 0)
        _check_tolerance("pgtol", self.pgtol)
        _check_tolerance("factr", self.factr)
        if not isinstance(self.rescale, bool):
            raise ValueError(f"rescale must be True or False, got {self.rescale!r}")

    @classmethod
    def paper(cls, maxiter: int = 10) -> "LBFGSB":
        """The authors' route: scipy's `fmin_l_bfgs_b(..., maxiter=10)` with its defaults
        (m = 10, pgtol = 1e-5, factr = 1e7, maxls = 20) on the raw objective. With
        `init="zero"` in `flatmin.sharpness` it starts at y = 0, as they did."""
        return cls(maxiter=maxiter, memory=10, pgtol=1e-5, factr=1e7, maxls=20, rescale=False)

    def maximize(
        self, fun: Callable[[jax.Array], jax.Array], init: jax.Array, lower, upper
    ) -> BoxMaximum:
        """Maximises fun over [lower, upper] (all (p,), lower < upper) from init."""
        problem = _Problem.build(fun, init, lower, upper, self.rescale)
        found = lbfgsb.minimize(
            problem.objective,
            problem.start,
            problem.lower,
            problem.upper,
            maxiter=self.maxiter,
            memory=self.memory,
            pgtol=self.pgtol,
            factr=self.factr,
            maxls=self.maxls,
            first=(problem.F0, problem.f0, problem.G0),
        )
        return problem.result(found.x, found.aux, found.g, found.num_steps,
                              found.num_evaluations, found.num_pairs)  # fmt: skip


@dataclasses.dataclass(frozen=True)
class ProjectedGradient:
    """Projected gradient ascent (jaxopt.ProjectedGradient) on the rescaled objective, with a
    step that grows after a rise and halves after a fall (`flatmin._projected_gradient`).

    Attributes:
      maxiter: steps, run exactly; maxiter + 2 value-and-gradient evaluations in all.
    """

    maxiter: int = 10

    def __post_init__(self):
        _check_int("maxiter", self.maxiter, 1)

    def maximize(
        self, fun: Callable[[jax.Array], jax.Array], init: jax.Array, lower, upper
    ) -> BoxMaximum:
        """Maximises fun over [lower, upper] (all (p,), lower < upper) from init."""
        problem = _Problem.build(fun, init, lower, upper, rescale=True)
        best = _projected_gradient.ascend(problem.objective, problem.start, self.maxiter)
        zero = jnp.zeros((), jnp.int32)
        return problem.result(
            best.z, best.f, best.grad, zero + self.maxiter, zero + self.maxiter + 2, zero
        )


Solver = LBFGSB | ProjectedGradient


def solver_to_json(solver) -> dict:
    """A solver as plain JSON: its type's name and its fields (recorded with every result)."""
    fields = dataclasses.asdict(solver) if dataclasses.is_dataclass(solver) else {}
    return {"type": type(solver).__name__, **fields}


class _Problem(NamedTuple):
    """fun over a box as the minimisation a solver runs, and the way back.

    rescaled: F(z) = -(fun(center + half z) - f0) * scale over [-1, 1]^p; else F(y) = -fun(y).
    `objective` returns (F, fun) so the raw value rides along.
    """

    objective: Callable
    start: jax.Array
    lower: jax.Array
    upper: jax.Array
    F0: jax.Array
    f0: jax.Array
    G0: jax.Array
    to_caller: Callable  # solver point -> caller point
    grad_to_caller: Callable  # grad F -> grad(-fun) in the caller's coordinates
    caller_box: tuple
    init: jax.Array

    @staticmethod
    def build(fun, init, lower, upper, rescale: bool) -> "_Problem":
        lower, upper = jnp.asarray(lower, init.dtype), jnp.asarray(upper, init.dtype)
        init = jnp.clip(init, lower, upper)
        f0, g0 = jax.value_and_grad(fun)(init)
        if not rescale:

            def objective(y):
                f = fun(y)
                return -f, f

            identity = lambda v: v
            return _Problem(objective, init, lower, upper, -f0, f0, -g0,
                            identity, identity, (lower, upper), init)  # fmt: skip
        half = 0.5 * (upper - lower)
        center = 0.5 * (upper + lower)
        # The floor keeps a zero gradient (a constant f) finite.
        steepest = jnp.max(jnp.abs(g0) * half)
        scale = STEP_SCALE / jnp.maximum(steepest, jnp.sqrt(jnp.finfo(init.dtype).tiny))

        def to_caller(z):
            # Clipped where f is read, so the point returned is the point evaluated; the
            # gradient passes straight through (the clip only ever moves a point by rounding,
            # and jnp.clip's gradient is halved at a face and zero beyond it).
            y = center + half * z
            return y + jax.lax.stop_gradient(jnp.clip(y, lower, upper) - y)

        def objective(z):
            f = fun(to_caller(z))
            return -(f - f0) * scale, f

        ones = jnp.ones_like(init)
        return _Problem(
            objective=objective,
            start=(init - center) / half,
            lower=-ones,
            upper=ones,
            F0=jnp.zeros_like(f0),
            f0=f0,
            G0=-scale * half * g0,
            to_caller=to_caller,
            grad_to_caller=lambda G: G / (scale * half),
            caller_box=(lower, upper),
            init=init,
        )

    def result(self, point, value, grad, steps, evaluations, pairs) -> BoxMaximum:
        lower, upper = self.caller_box
        argmax = self.to_caller(point)
        return BoxMaximum(
            argmax=argmax,
            value=value,
            num_steps=steps,
            num_evaluations=evaluations,
            projected_grad_start=lbfgsb.projected_gradient_norm(
                self.init, self.grad_to_caller(self.G0), lower, upper
            ),
            projected_grad_end=lbfgsb.projected_gradient_norm(
                argmax, self.grad_to_caller(grad), lower, upper
            ),
            num_pairs=pairs,
        )
