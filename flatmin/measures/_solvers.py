"""Maximisers of a function over a box or a ball: solvers as configuration values.

A solver is a frozen dataclass (hashable: a static argument of `jax.jit`) holding all of "how":
its own settings, where it starts (`init`) and from how many starts (`restarts`). Every measure
that takes a maximum (Metric 2.1, worst-case sharpness) takes any of them:

    flatmin.LBFGSB()            # flatmin's maximiser: 10 L-BFGS-B iterations, rescaled
    flatmin.LBFGSB.paper()      # the authors' route: scipy's fmin_l_bfgs_b defaults, from 0
    flatmin.ProjectedGradient() # projected gradient ascent (jaxopt), rescaled
    flatmin.APGD()              # Croce & Hein's APGD, the worst-case sharpness papers' ascent

Two facts about the sharpness problem shape the defaults. The start is (near) a minimiser of
f, so the gradient there is ~0: scipy's default tolerance (pgtol = 1e-5) stops before the
first step, which is exactly what the paper's route does; flatmin's maximiser turns every
stopping rule off and runs `maxiter` iterations. And maximising f near a minimiser means
minimising a concave -f: see `flatmin.measures._problem` for the rescaling that answers it.

Anything with the fields `init` and `restarts` and a `maximize(fun, init, region) -> Maximum`
method is a solver (`Solver`).
"""

import dataclasses
from collections.abc import Callable
from typing import Protocol

import jax
import jax.numpy as jnp

from flatmin._checks import check_bool, check_float, check_int, check_one_of
from flatmin._types import Status
from flatmin.measures import _apgd, _lbfgsb, _projected_gradient
from flatmin.measures._problem import Maximum, Problem
from flatmin.measures._regions import Box, Region

# Where the first start lies: anywhere in the region at random, or at its centre (the point
# measured itself: the authors' and the public reimplementations' start).
INITS = ("random", "zero")


class Solver(Protocol):
    """What a measure needs of a solver (flatmin's are frozen dataclasses: hashable)."""

    init: str
    restarts: int

    def maximize(self, fun: Callable[[jax.Array], jax.Array], init: jax.Array,
                 region: Region) -> Maximum: ...  # fmt: skip


@dataclasses.dataclass(frozen=True)
class _Starts:
    """The fields every solver shares (keyword-only).

    Attributes:
      init: "random" (every start uniform in the region) or "zero" (the first start at the
        centre, the rest random).
      restarts: starting points, solved at once (vmapped); the largest value wins, and never
        less than the value at the centre.
    """

    _: dataclasses.KW_ONLY
    init: str = "random"
    restarts: int = 1

    def __post_init__(self):
        check_one_of("init", self.init, INITS)
        check_int("restarts", self.restarts, minimum=1)


@dataclasses.dataclass(frozen=True)
class LBFGSB(_Starts):
    """L-BFGS-B, flatmin's own (`flatmin.measures._lbfgsb`): vmappable, no loop over
    coordinates. Boxes only.

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
      rescale: work in the unit box on a rescaled -fun (`flatmin.measures._problem`, flatmin's
        maximiser); False solves the problem as given, as scipy does.
      init, restarts: see `_Starts`.
    """

    maxiter: int = 10
    memory: int = 10
    pgtol: float = 0.0
    factr: float = 0.0
    maxls: int = 0
    rescale: bool = True

    def __post_init__(self):
        super().__post_init__()
        check_int("maxiter", self.maxiter, minimum=1)
        check_int("memory", self.memory, minimum=1)
        check_int("maxls", self.maxls, minimum=0)
        check_float("pgtol", self.pgtol, minimum=0)
        check_float("factr", self.factr, minimum=0)
        check_bool("rescale", self.rescale)

    @classmethod
    def paper(cls, maxiter: int = 10, *, restarts: int = 1) -> "LBFGSB":
        """The authors' route: scipy's `fmin_l_bfgs_b(..., maxiter=10)` with its defaults
        (m = 10, pgtol = 1e-5, factr = 1e7, maxls = 20) on the raw objective, from y = 0."""
        return cls(maxiter, 10, 1e-5, 1e7, 20, False, init="zero", restarts=restarts)

    def maximize(self, fun: Callable, init: jax.Array, region: Region) -> Maximum:
        """Maximises fun over the box `region` from init."""
        if not isinstance(region, Box):
            raise ValueError(
                f"LBFGSB maximises over a box, got a {type(region).__name__}: use "
                "flatmin.APGD() or flatmin.ProjectedGradient()"
            )
        problem = Problem.build(fun, init, region, self.rescale)
        lower, upper = problem.bounds()
        found = _lbfgsb.minimize(
            problem.objective,
            problem.start,
            lower,
            upper,
            maxiter=self.maxiter,
            memory=self.memory,
            pgtol=self.pgtol,
            factr=self.factr,
            maxls=self.maxls,
            first=(problem.F0, problem.f0, problem.G0),
        )
        return problem.result(found.x, found.aux, found.g, found.num_steps,
                              found.num_evaluations, found.history, found.status)  # fmt: skip


@dataclasses.dataclass(frozen=True)
class ProjectedGradient(_Starts):
    """Projected gradient ascent (jaxopt.ProjectedGradient) on the rescaled objective, with a
    step that grows after a rise and halves after a fall (`flatmin.measures._projected_gradient`).

    Attributes:
      maxiter: steps, run exactly; maxiter + 2 value-and-gradient evaluations in all.
      init, restarts: see `_Starts`.
    """

    maxiter: int = 10

    def __post_init__(self):
        super().__post_init__()
        check_int("maxiter", self.maxiter, minimum=1)

    def maximize(self, fun: Callable, init: jax.Array, region: Region) -> Maximum:
        """Maximises fun over `region` (a box or a ball) from init."""
        problem = Problem.build(fun, init, region, rescale=True)
        best, history = _projected_gradient.ascend(
            problem.objective, problem.start, problem.region, self.maxiter
        )
        return _fixed_steps(problem, best, history, self.maxiter, self.maxiter + 2)


@dataclasses.dataclass(frozen=True)
class APGD(_Starts):
    """APGD (Croce & Hein 2020) as Andriushchenko et al. (2023) run it for worst-case
    sharpness: sign steps in a box, normalised gradient steps in a ball, momentum 0.75, the
    step halved at checkpoints where the ascent stalls (`flatmin.measures._apgd`).

    Attributes:
      maxiter: steps, run exactly (20 in Andriushchenko et al.); maxiter + 1 value-and-gradient
        evaluations in all.
      init, restarts: see `_Starts`.
    """

    maxiter: int = 20

    def __post_init__(self):
        super().__post_init__()
        check_int("maxiter", self.maxiter, minimum=1)

    def maximize(self, fun: Callable, init: jax.Array, region: Region) -> Maximum:
        """Maximises fun over `region` (a box or a ball) from init."""
        # Its steps are signs or unit vectors in radii: it needs no rescaling, and F = -fun
        # keeps the comparisons that steer it (which point is best, did a step rise) unrounded.
        problem = Problem.build(fun, init, region, rescale=False)
        best, history = _apgd.ascend(
            problem.objective, problem.start, problem.region, self.maxiter,
            (problem.F0, problem.f0, problem.G0),
        )  # fmt: skip
        return _fixed_steps(problem, best, history, self.maxiter, self.maxiter + 1)


def _fixed_steps(problem: Problem, best, history, steps: int, evaluations: int) -> Maximum:
    """The `Maximum` of a solver that always runs `steps` steps and `evaluations` evaluations."""
    f, G = best.extras
    count = lambda k: jnp.full((), k, jnp.int32)
    return problem.result(best.x, f, G, count(steps), count(evaluations), history,
                          count(Status.FINISHED))  # fmt: skip


def solver_to_json(solver) -> dict:
    """A solver as plain JSON: its type's name and its fields (recorded with every result)."""
    fields = dataclasses.asdict(solver) if dataclasses.is_dataclass(solver) else {}
    return {"type": type(solver).__name__, **fields}


def check_solver(solver) -> None:
    """Raises ValueError unless `solver` is one (init, restarts and a maximize method)."""
    if not (
        callable(getattr(solver, "maximize", None))
        and hasattr(solver, "init")
        and hasattr(solver, "restarts")
    ):
        raise ValueError(
            "solver must be a solver object such as flatmin.LBFGSB(), flatmin.LBFGSB.paper(), "
            f"flatmin.ProjectedGradient() or flatmin.APGD(), got {solver!r}"
        )
