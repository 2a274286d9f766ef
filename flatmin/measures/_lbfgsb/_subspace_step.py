"""The subspace step: the model's Newton step over the variables free at the GCP, computed on
the coordinates off the box's faces (gathered), and the point L-BFGS-B steps towards.
"""

from typing import NamedTuple

import jax
import jax.numpy as jnp

from flatmin._vmap import dispatch
from flatmin.measures._lbfgsb._cauchy import (
    CHUNK_MIN,
    cauchy_point_no_memory,
    cauchy_point_of_model,
    path,
)
from flatmin.measures._lbfgsb._memory import Memory, Model, middle_matrix, model_of


def _newton_step(W, base, free, M, c, theta):
    """The model's Newton step over the free variables: W (2m, k) the model's rows, base =
    g + theta (xcp - x) (k,), free (k,) bool: du (k,), 0 where not free."""
    rows = jnp.where(free[None, :], W, 0.0)
    valid = free.astype(W.dtype)
    # Reduced gradient of the model at xcp, r = g + B (xcp - x) = g + theta (xcp - x) - W M c.
    r = (base - rows.T @ (M @ c)) * valid
    # (Z^T B Z)^{-1} r by Sherman-Morrison-Woodbury: B_Z = theta I - U M U^T, U = Z^T W.
    wz = rows @ r
    gram = rows @ rows.T
    N = jnp.eye(M.shape[0], dtype=rows.dtype) - M @ gram / theta
    v = jnp.linalg.solve(N, M @ wz)
    return -(r / theta + rows.T @ v / theta**2) * valid


def subspace_point(x, g, lower, upper, memory: Memory, M: jax.Array, xcp, free, c):
    """scipy's `subsm`: the Newton step of the model over the variables free at the GCP,
    projected onto the box; if the projected point is not a descent direction from x, the step
    is cut back to the box along the Newton direction instead (Morales & Nocedal 2011).

    The free variables are masked, not gathered: `step_point` has already gathered the
    variables off the faces, of which most are free.
    """
    return _subspace_point(x, g, lower, upper, model_of(memory, M), xcp, free, c)


def _subspace_point(x, g, lower, upper, model: Model, xcp, free, c):
    theta = model.theta
    base = g + theta * (xcp - x)
    du = _newton_step(model.W, base, free, model.M, c, theta)
    projected = jnp.where(free, jnp.clip(xcp + du, lower, upper), xcp)
    hit = jnp.any(free & ((projected == lower) | (projected == upper)))
    ascent = jnp.sum((projected - x) * g) > 0
    # Cut back along du: the largest alpha <= 1 keeping every free coordinate inside (0 for a
    # coordinate already at the bound du points past), the one that limits it set on its bound.
    room = jnp.where(du < 0, lower - xcp, upper - xcp)
    safe_du = jnp.where(du != 0, du, 1.0)
    ratio = jnp.where(room * jnp.sign(du) <= 0, 0.0, room / safe_du)
    ratio = jnp.where(free & (du != 0), ratio, jnp.inf)
    limit = jnp.argmin(ratio)
    alpha = jnp.minimum(ratio[limit], 1.0)
    cut = jnp.where(free, xcp + alpha * du, xcp)
    bound = jnp.where(du[limit] > 0, upper[limit], lower[limit])
    cut = jnp.where(alpha < 1, cut.at[limit].set(bound), cut)
    return jnp.where(hit & ascent, cut, projected)


class Target(NamedTuple):
    """Where L-BFGS-B steps towards from x: `point`, (n,), and w_step = W^T (point - x),
    (2m,), over the stored pairs (zeros when there are none), which `push_pair` needs."""

    point: jax.Array
    w_step: jax.Array


def step_point(x, g, lower, upper, memory: Memory):
    """The point L-BFGS-B steps towards from x: the subspace minimiser (no pairs: the GCP)."""
    return step_target(x, g, lower, upper, memory).point


def step_target(x, g, lower, upper, memory: Memory) -> Target:
    def with_pairs(x, g, lower, upper, memory):
        return step_off_the_faces(x, g, lower, upper, memory, middle_matrix(memory))

    def without_pairs(x, g, lower, upper, memory):
        point = cauchy_point_no_memory(x, g, lower, upper, memory.theta)
        return Target(point, jnp.zeros((2 * memory.s.shape[0],), x.dtype))

    has_pairs = lambda x, g, lower, upper, memory: memory.count > 0
    return dispatch(has_pairs, with_pairs, without_pairs)(x, g, lower, upper, memory)


def _subspace_minimiser(x, g, lower, upper, model: Model) -> Target:
    xcp, free, c = cauchy_point_of_model(x, g, lower, upper, model)
    point = _subspace_point(x, g, lower, upper, model, xcp, free, c)
    return Target(point, model.W @ (point - x))


def open_capacity(n: int) -> int:
    """Variables off the faces the step gathers before it works on all n: n / 8, at least
    CHUNK_MIN (maximising sharpness on a trained network, most coordinates sit on a face)."""
    return min(n, max(CHUNK_MIN, n // 8))


# Block length of `compact_index`'s two-level prefix sum.
COMPACT_BLOCK = 256


def compact_index(mask: jax.Array, size: int) -> jax.Array:
    """`jnp.nonzero(mask, size=size, fill_value=n)[0]`: the first `size` indices where the
    (n,) bool `mask` holds, ascending, then n.

    The positions come from a prefix sum in two levels (within blocks of COMPACT_BLOCK, then
    over the block totals), then one scatter, which ran faster than `jnp.nonzero` on the CPU
    (docs/benchmarks.md, "Where the solver's time goes").
    """
    n = mask.shape[0]
    blocks = -(-n // COMPACT_BLOCK)
    padded = jnp.pad(mask, (0, blocks * COMPACT_BLOCK - n)).astype(jnp.int32)
    within = jnp.cumsum(padded.reshape(blocks, COMPACT_BLOCK), axis=1)
    totals = within[:, -1]
    before = jnp.cumsum(totals) - totals
    position = (within + before[:, None]).reshape(-1)[:n] - 1
    # Positions past `size`, and every index where mask is False, are dropped.
    slot = jnp.where(mask, position, size)
    return jnp.full((size,), n, jnp.int32).at[slot].set(jnp.arange(n, dtype=jnp.int32), mode="drop")


def step_off_the_faces(x, g, lower, upper, memory: Memory, M: jax.Array):
    """The subspace minimiser, computed on the variables not fixed at x (on a face with the
    gradient pushing out) when at most `open_capacity(n)` are: those do not move at the GCP,
    are not free there and so keep x in the subspace step, and c = W^T (xcp - x) has no term
    from them. The step over the others is L-BFGS-B's step for the problem restricted to
    them, with the same M; padding slots are pinned (x = lower = upper = g = 0, W rows 0).
    """
    n = x.shape[0]
    capacity = open_capacity(n)
    if capacity >= n:
        return _subspace_minimiser(x, g, lower, upper, model_of(memory, M))
    fixed = path(x, g, lower, upper)[0]

    def gathered():
        index = compact_index(~fixed, capacity)
        # Padding slots (index n) read 0. W is gathered straight into its (2m, capacity) form.
        at = lambda a: a.at[index].get(mode="fill", fill_value=0.0)
        rows = lambda a: a.at[:, index].get(mode="fill", fill_value=0.0)
        W = jnp.concatenate([rows(memory.y), memory.theta * rows(memory.s)])
        model = Model(W, memory.theta, M)
        # Padding slots stay at 0, so they add nothing to w_step.
        point, w_step = _subspace_minimiser(at(x), at(g), at(lower), at(upper), model)
        return Target(x.at[index].set(point, mode="drop"), w_step)

    def everything():
        return _subspace_minimiser(x, g, lower, upper, model_of(memory, M))

    return jax.lax.cond(jnp.sum(~fixed) <= capacity, gathered, everything)
