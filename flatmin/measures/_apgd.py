"""APGD (Croce & Hein, ICML 2020, Algorithm 1) over a unit box or ball, as Andriushchenko et
al. (ICML 2023) apply it to weights: sign steps in a box, normalised gradient steps in a ball,
momentum, and a step size halved at checkpoints where the ascent stalls.

It works in the caller's coordinates (no rescaling: its steps are signs or unit vectors, so
the objective's scale is moot, and F = -f keeps the comparisons that steer it unrounded); the
step is a multiple of the region's radius, 2 radii at first, per coordinate in a box. The
number of steps is fixed: one value-and-gradient each, plus one at the start, and no
data-dependent loop.
"""

import math
from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from flatmin.measures import _regions
from flatmin.measures._best import Best, keep_best
from flatmin.measures._regions import Box, Region

# APGD's constants, as in Andriushchenko et al.'s code: initial step 2 radii, momentum 0.75, a
# halving when under 75% of the steps since the last checkpoint raised f, and the checkpoints'
# spacing.
INITIAL_STEP = 2.0
MOMENTUM = 0.75
MIN_INCREASE_RATIO = 0.75
FIRST_CHECKPOINT = 0.22
CHECKPOINT_DECAY = 0.03
MIN_CHECKPOINT_GAP = 0.06


class _Ascent(NamedTuple):
    z: jax.Array  # the current iterate, evaluated
    F: jax.Array  # the objective there (minimised)
    G: jax.Array  # its gradient there
    z_prev: jax.Array  # the iterate before, for the momentum term
    eta: jax.Array  # step size, in radii
    best: Best  # extras = (f, G)
    increases: jax.Array  # steps that lowered F since the last checkpoint
    mark: jax.Array  # the last checkpoint's index, step size and best F
    mark_eta: jax.Array
    mark_best: jax.Array


def ascend(
    objective: Callable[[jax.Array], tuple[jax.Array, jax.Array]],
    z0: jax.Array,
    region: Region,
    steps: int,
    first: tuple[jax.Array, jax.Array, jax.Array],
) -> tuple[Best, jax.Array]:
    """Minimises `objective(z) -> (F, f)` over `region` from z0 by `steps` APGD steps;
    `first` = (F, f, grad F) at z0, already evaluated. Returns the best point seen (extras
    (f, grad F)) and (steps,) the best F after each step."""
    value_and_grad = jax.value_and_grad(objective, has_aux=True)
    dtype = z0.dtype
    project = lambda z: _regions.project(region, z)
    if isinstance(region, Box):
        direction = jnp.sign
    else:
        direction = lambda g: g / jnp.maximum(jnp.linalg.norm(g), jnp.finfo(dtype).tiny)
    marks = jnp.asarray(checkpoints(steps))

    def body(t, carry):
        s, history = carry
        at_mark = marks[t]
        too_few = s.increases < MIN_INCREASE_RATIO * (t - s.mark)
        stalled = (s.eta == s.mark_eta) & (s.best.value == s.mark_best)
        halve = at_mark & (t > 0) & (too_few | stalled)
        # A non-finite gradient does not move.
        d = direction(-s.G)
        d = jnp.where(jnp.isfinite(d), d, 0)
        step = project(s.z + s.eta * region.radius * d)
        a = jnp.where(t == 0, 1.0, MOMENTUM).astype(dtype)
        moved = project(s.z + a * (step - s.z) + (1 - a) * (s.z - s.z_prev))
        # A halving makes the best point the next iterate, without momentum from the
        # abandoned path (Croce & Hein's x^(k+1) = x_max: it is evaluated again).
        z_new = jnp.where(halve, s.best.x, moved)
        F_prev = jnp.where(halve, s.best.value, s.F)
        (F_new, f_new), G_new = value_and_grad(z_new)
        best = keep_best(s.best, z_new, F_new, (f_new, G_new), True)
        state = _Ascent(
            z=z_new,
            F=F_new,
            G=G_new,
            z_prev=jnp.where(halve, s.best.x, s.z),
            eta=jnp.where(halve, s.eta / 2, s.eta),
            best=best,
            increases=jnp.where(at_mark, 0, s.increases) + (F_new < F_prev),
            mark=jnp.where(at_mark, t, s.mark),
            # The step size before any halving, as in Croce & Hein: right after a halving the
            # "unchanged step" condition cannot fire, and the new step gets a full interval.
            mark_eta=jnp.where(at_mark, s.eta, s.mark_eta),
            mark_best=jnp.where(at_mark, s.best.value, s.mark_best),
        )
        return state, history.at[t].set(best.value)

    F0, f0, G0 = first
    init = _Ascent(
        z=z0,
        F=F0,
        G=G0,
        z_prev=z0,
        eta=jnp.asarray(INITIAL_STEP, dtype),
        best=Best(z0, F0, (f0, G0)),
        increases=jnp.zeros((), jnp.int32),
        mark=jnp.zeros((), jnp.int32),
        mark_eta=jnp.asarray(INITIAL_STEP, dtype),
        mark_best=jnp.full((), jnp.inf, dtype),
    )
    s, history = jax.lax.fori_loop(0, steps, body, (init, jnp.zeros(steps, dtype)))
    return s.best, history


def checkpoints(steps: int) -> np.ndarray:
    """(steps,) bool, True at APGD's checkpoints ceil(p_j steps) < steps, j >= 0 (0 included):
    p_0 = 0, p_1 = 0.22, p_{j+1} = p_j + max(p_j - p_{j-1} - 0.03, 0.06)."""
    marks = np.zeros(steps, dtype=bool)
    p_prev, p = 0.0, FIRST_CHECKPOINT
    marks[0] = True
    # The tolerance keeps ceil(0.22 * 100) at 22: 0.22 * 100 is 22.000000000000004 in binary.
    while (w := math.ceil(p * steps - 1e-9)) < steps:
        marks[w] = True
        p_prev, p = p, p + max(p - p_prev - CHECKPOINT_DECAY, MIN_CHECKPOINT_GAP)
    return marks
