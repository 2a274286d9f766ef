"""The generalized Cauchy point (GCP): the first local minimiser of L-BFGS-B's quadratic model
along the projected steepest-descent path P(x - t g).

No loop over breakpoints: after k breakpoints the model's slope and curvature are closed forms
of prefix sums over the sorted breakpoints, so one cumulative sum gives every segment and the
GCP is the first segment whose minimiser lies inside it. Only the smallest breakpoints are
sorted (`lax.top_k` over `chunk_sizes`), and all of them only when the GCP lies beyond those.
"""

from typing import NamedTuple

import jax
import jax.numpy as jnp

from flatmin.measures._lbfgsb._memory import EPSMCH, Memory, Model, model_of


def path(x, g, lower, upper):
    """Bound status and breakpoints of the projected path P(x - t g), as scipy's `cauchy`.

    Returns (fixed, moving, d, t): fixed = at a bound with the gradient pushing out; moving =
    neither fixed nor of zero gradient; d = -g on moving coordinates, 0 elsewhere; t = the
    step at which a moving coordinate meets its bound (inf elsewhere).
    """
    at_lower = (x <= lower) & (g >= 0)
    at_upper = (x >= upper) & (g <= 0) & ~at_lower
    fixed = at_lower | at_upper
    moving = ~fixed & (g != 0)
    d = jnp.where(moving, -g, 0.0)
    safe_g = jnp.where(moving, g, 1.0)
    t = jnp.where(g > 0, (x - lower) / safe_g, (upper - x) / -safe_g)
    return fixed, moving, d, jnp.where(moving, t, jnp.inf)


# Smallest Cauchy-point chunk, and the fewest variables off the faces worth gathering.
CHUNK_MIN = 4096


def chunk_sizes(n: int) -> tuple[int, ...]:
    """How many of the smallest breakpoints the GCP examines before it sorts all n: n / 256,
    then n / 16, each at least CHUNK_MIN, below n and at least twice the one before (empty:
    sort all n at once).

    A walk over k breakpoints costs a `lax.top_k` of k among n and prefix sums over a
    (2m, k) array, both growing with k, and a full argsort of n costs several evaluations of
    f on a large network; maximising sharpness, the GCP passes few of the breakpoints, so the
    first chunk usually holds it and the second catches most of the rest (the measurements
    behind these sizes: docs/benchmarks.md, "Where the solver's time goes").
    """
    sizes: list[int] = []
    for size in (max(CHUNK_MIN, n // 256), max(CHUNK_MIN, n // 16)):
        if size < n and (not sizes or size >= 2 * sizes[-1]):
            sizes.append(size)
    return tuple(sizes)


class _Stop(NamedTuple):
    """Where the walk along the sorted breakpoints stops: `found` (False: the chunk ended
    first), the path's t at the GCP, the t of the last breakpoint passed (-inf: none), and
    c = W^T (xcp - x)."""

    found: jax.Array
    t_gcp: jax.Array
    t_passed: jax.Array
    c: jax.Array


def walk_breakpoints(ts, gs, rows, num_breaks, complete, g0, p0, theta, M) -> _Stop:
    """The first segment of the path whose model minimiser lies inside it, given the L
    smallest breakpoints sorted (ts, (L,); gs = g there, 0 past the moving ones; rows = the
    rows of W there, (2m, L)). `complete`: these are all the breakpoints; otherwise the walk
    cannot tell a stop after the L-th breakpoint and reports found = False.
    """
    L = ts.shape[0]
    dtype = ts.dtype
    ts_finite = jnp.where(jnp.isfinite(ts), ts, 0.0)
    gs = jnp.where(jnp.isfinite(ts), gs, 0.0)

    def exclusive_cumsum(a, axis):
        total = jnp.cumsum(a, axis=axis)
        pad = [(0, 0)] * a.ndim
        pad[axis] = (1, 0)
        return jnp.pad(total, pad)

    # After the k smallest breakpoints have been passed (k = 0..L):
    tk = jnp.concatenate([jnp.zeros((1,), dtype), ts_finite])  # the path's t
    free_squares = g0 - exclusive_cumsum(gs * gs, 0)  # sum of d_i^2 over still-moving i
    pk = p0[:, None] + exclusive_cumsum(gs[None, :] * rows, 1)  # W^T d_k, (2m, L + 1)
    ck = tk[None, :] * pk - exclusive_cumsum(
        (gs * ts_finite)[None, :] * rows, 1
    )  # W^T (x(t_k) - x)
    Mp = M @ pk
    slope = -free_squares + theta * tk * free_squares - jnp.sum(ck * Mp, axis=0)
    curvature = theta * free_squares - jnp.sum(pk * Mp, axis=0)
    # scipy keeps the curvature above epsmch times its starting value after every breakpoint.
    k = jnp.arange(L + 1)
    curvature = jnp.where(k > 0, jnp.maximum(EPSMCH * theta * g0, curvature), curvature)
    to_minimum = -slope / curvature
    to_next = jnp.concatenate([ts_finite, jnp.full((1,), jnp.inf, dtype)]) - tk
    to_next = jnp.where(k < num_breaks, to_next, jnp.inf)
    stop = (to_minimum < to_next) | (k >= num_breaks)
    # Past the chunk's last breakpoint the next one is unknown.
    stop = stop & (complete | (k < L))
    first = jnp.argmax(stop)
    # With every breakpoint passed the path has ended: the GCP is its end point.
    step = jnp.where(first >= num_breaks, 0.0, jnp.maximum(to_minimum[first], 0.0))
    t_passed = jnp.where(first > 0, tk[first], -jnp.inf)
    return _Stop(jnp.any(stop), tk[first] + step, t_passed, ck[:, first] + step * pk[:, first])


def cauchy_point(
    x, g, lower, upper, memory: Memory, M: jax.Array, chunks: tuple[int, ...] | None = None
):
    """The exact GCP of the model F + g.z + z^T B z / 2 along P(x - t g).

    Returns (xcp, free, c): the point, the variables not at a bound there (scipy's free set),
    and c = W^T (xcp - x), (2m,), for the subspace step. The walk looks at the k smallest
    breakpoints (`lax.top_k`) for each k in `chunks` (default `chunk_sizes(n)`) until one
    holds the GCP, and sorts all n only when none does; prefix sums over the sorted
    breakpoints, no loop over them.
    """
    return cauchy_point_of_model(x, g, lower, upper, model_of(memory, M), chunks)


def cauchy_point_of_model(x, g, lower, upper, model: Model, chunks: tuple[int, ...] | None = None):
    theta, M = model.theta, model.M
    fixed, moving, d, t = path(x, g, lower, upper)
    n = x.shape[0]
    chunks = chunk_sizes(n) if chunks is None else tuple(k for k in chunks if k < n)
    num_breaks = jnp.sum(moving)
    g0 = jnp.sum(d * d)
    p0 = model.W @ d
    gm = jnp.where(moving, g, 0.0)

    def walk(index, ts, complete):
        return walk_breakpoints(
            ts, gm[index], model.W[:, index], num_breaks, complete, g0, p0, theta, M
        )

    def search(level: int) -> _Stop:
        if level == len(chunks):
            order = jnp.argsort(t)
            return walk(order, t[order], True)
        negated, index = jax.lax.top_k(-t, chunks[level])  # the smallest, ascending
        stop = walk(index, -negated, num_breaks <= chunks[level])
        return jax.lax.cond(stop.found, lambda: stop, lambda: search(level + 1))

    stop = search(0)
    xcp = jnp.where(moving, jnp.clip(x + stop.t_gcp * d, lower, upper), x)
    passed = moving & (t <= stop.t_passed)
    free = ~fixed & ~passed
    return xcp, free, stop.c


def cauchy_point_no_memory(x, g, lower, upper, theta):
    """The GCP when B = theta I: the model is separable and its first minimiser along the
    path is at t = 1 / theta, so the GCP is P(x - g / theta) (scipy's walk ends there too)."""
    _, moving, d, _ = path(x, g, lower, upper)
    return jnp.where(moving, jnp.clip(x + d / theta, lower, upper), x)
