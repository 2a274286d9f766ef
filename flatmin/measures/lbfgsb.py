"""L-BFGS-B in JAX: minimise F over a box [lower, upper] with a fixed-size, vmappable program.

The algorithm is scipy's (L-BFGS-B 3.0: Byrd, Lu, Nocedal & Zhu 1995, with the subspace
projection of Morales & Nocedal 2011): the compact limited-memory matrix
B = theta I - W M W^T, W = [Y, theta S]; the generalized Cauchy point (GCP), the first local
minimiser of the quadratic model along the projected steepest-descent path; direct primal
subspace minimisation over the variables free at the GCP; then either a unit step or scipy's
Moré-Thuente line search (MINPACK-2 `dcsrch`). Its stopping rules are scipy's `pgtol` and
`factr`, evaluated per lane: a stopped lane is frozen, the loop keeps its fixed length.

How it differs from a transliteration, and why:

* The GCP has no loop over breakpoints. The walk along the path is a sequence of segments;
  after k breakpoints the model's slope and curvature are closed forms of prefix sums over
  the sorted breakpoints (sums of g_i^2, g_i w_i and g_i t_i w_i, w_i the i-th row of W), so
  cumulative sums give every segment at once and the GCP is the first segment whose minimiser
  lies inside it. jaxopt walks the breakpoints in a `while_loop`, one per step: under `vmap`
  that loop runs to the slowest lane and selects every lane's state at every step (measured:
  5 seeds vmapped cost 4.35x solving them one after another).
* The step with pairs is computed on the coordinates off the faces, gathered: maximising
  sharpness on F1 (n = 1.46M) ~90% sit on a face with the gradient pushing out, and those
  neither move at the GCP nor enter the subspace step.
* Only the smallest breakpoints are sorted (`lax.top_k`, `chunk_sizes`), and all of them only
  when the GCP lies beyond those. On F1 the GCP passed at most ~2k of the ~90k breakpoints;
  an argsort of n cost about three evaluations of f there.
* W = [Y, theta S] is built once per step (gathered straight into that form), and a new pair's
  products with the stored ones, Y^T s and theta S^T s, are the step's own W^T d times the
  step length: only S^T y, y being dense, reads all of S when a pair is pushed (three such
  passes before, ~13 ms per accepted pair on F1).
* The (m, n) pair arrays are never the output of a `cond` or a `where` in the loop (either
  copies them every iteration, measured at 2/3 of the solver's own time without pairs at
  n = 1.46M); a new pair is written into its row in place.
* With no curvature pairs stored (B = theta I) the model is separable and the GCP is simply
  P(x - g / theta), with no subspace step. Maximising near a minimiser means minimising a
  concave -f, where every pair has s.y <= 0 and is rejected, so this is the common case.
  `_dispatch` takes that branch for a whole vmapped batch when no lane holds a pair, instead
  of letting `vmap` turn the branch into a select that pays for the sort in every lane.
* The line search runs at most `maxls` trials in a `while_loop` whose condition reads two
  carried flags, never F: its trip count is bounded by `maxls` and independent of n.
"""

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

# scipy's machine epsilon (float64) in the update-skip test and factr * epsmch, whatever dtype.
EPSMCH = float(np.finfo(np.float64).eps)
# Moré-Thuente constants of scipy's lnsrlb.
FTOL, GTOL, XTOL = 1e-3, 0.9, 0.1
# Largest step scipy's lnsrlb allows along a direction that meets no bound.
BIG_STEP = 1e10


class Memory(NamedTuple):
    """The limited-memory pairs, stored in slots; `head` is the slot of the oldest pair.

    s, y: (m, n); sy[i, j] = s_i . y_j and ss[i, j] = s_i . s_j, (m, m), kept up to date as
    pairs arrive, so forming M costs O(m^3), never O(m^2 n).
    """

    s: jax.Array
    y: jax.Array
    sy: jax.Array
    ss: jax.Array
    theta: jax.Array
    count: jax.Array
    head: jax.Array


def empty_memory(m: int, n: int, dtype) -> Memory:
    zeros = jnp.zeros((m, n), dtype)
    square = jnp.zeros((m, m), dtype)
    one, zero = jnp.ones((), dtype), jnp.zeros((), jnp.int32)
    return Memory(zeros, zeros, square, square, one, zero, zero)


def reset_memory(memory: Memory) -> Memory:
    """scipy's "refresh the lbfgs memory": no pairs, theta = 1 (stale slots are masked)."""
    return memory._replace(
        theta=jnp.ones_like(memory.theta),
        count=jnp.zeros_like(memory.count),
        head=jnp.zeros_like(memory.head),
    )


def push_pair(
    memory: Memory,
    s: jax.Array,
    y: jax.Array,
    sy: jax.Array,
    yy: jax.Array,
    update=True,
    w_s: jax.Array | None = None,
) -> Memory:
    """Stores the pair (s, y) with s.y = sy, y.y = yy, dropping the oldest when full; with
    `update` False (traced or not) the memory is returned unchanged.

    w_s = W^T s = [Y^T s, theta S^T s], (2m,), over the pairs stored before this one, when
    the caller has it (`minimize` gets it from the step, where it costs a product over the
    coordinates that moved only); otherwise it is computed here (two passes over (m, n)).
    The (m, n) arrays get one row written in place whatever `update` is (the row is the old
    one when False); a `cond` or `where` around them would copy both every iteration.
    """
    m = memory.s.shape[0]
    update = jnp.asarray(update)
    full = memory.count >= m
    slot = jnp.where(full, memory.head, (memory.head + memory.count) % m)
    w_s = w_dot(memory, s) if w_s is None else w_s
    s_mat = memory.s.at[slot].set(jnp.where(update, s, memory.s[slot]))
    y_mat = memory.y.at[slot].set(jnp.where(update, y, memory.y[slot]))

    def dots(s_mat):
        # s_i . y_new: the one product over all n that the step cannot give (y is dense).
        return s_mat @ y, jnp.sum(s * s)

    zeros = jnp.zeros((m,), memory.sy.dtype)
    s_dot_y, ss_new = jax.lax.cond(
        update, dots, lambda _: (zeros, jnp.zeros((), zeros.dtype)), s_mat
    )
    # Products with the pairs kept; the new pair's own slot gets sy and s.s.
    y_dot_s = w_s[:m].astype(zeros.dtype)
    s_dot_s = (w_s[m:] / memory.theta).astype(zeros.dtype).at[slot].set(ss_new)
    pushed = memory._replace(
        sy=memory.sy.at[:, slot].set(s_dot_y).at[slot, :].set(y_dot_s).at[slot, slot].set(sy),
        ss=memory.ss.at[:, slot].set(s_dot_s).at[slot, :].set(s_dot_s),
        theta=(yy / sy).astype(memory.theta.dtype),
        count=jnp.minimum(memory.count + 1, m),
        head=jnp.where(full, (memory.head + 1) % m, memory.head),
    )
    kept = jax.tree.map(lambda a, b: jnp.where(update, a, b), pushed, memory)
    return kept._replace(s=s_mat, y=y_mat)


def middle_matrix(memory: Memory) -> jax.Array:
    """M = [[-D, L^T], [L, theta S^T S]]^{-1}, (2m, 2m), in slot order (rows y-slots, then
    s-slots), with the rows and columns of empty slots zero.

    D = diag(s_i . y_i), L_ij = s_i . y_j for pair i newer than pair j.
    """
    m = memory.s.shape[0]
    rank = (jnp.arange(m) - memory.head) % m  # 0 = oldest
    valid = rank < memory.count
    lower = jnp.where(rank[:, None] > rank[None, :], memory.sy, 0.0)
    K = jnp.block(
        [
            [-jnp.diag(jnp.diag(memory.sy)), lower.T],
            [lower, memory.theta * memory.ss],
        ]
    )
    keep = jnp.concatenate([valid, valid])
    keep = keep[:, None] & keep[None, :]
    eye = jnp.eye(2 * m, dtype=K.dtype)
    M = jnp.linalg.inv(jnp.where(keep, K, eye))
    return jnp.where(keep, M, 0.0)


def w_dot(memory: Memory, v: jax.Array) -> jax.Array:
    """W^T v, (2m,), for v (n,) or (n, k) -> (2m, k)."""
    return jnp.concatenate([memory.y @ v, memory.theta * (memory.s @ v)])


# --- the generalized Cauchy point --------------------------------------------------------------


def _path(x, g, lower, upper):
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
    (2m, k) array, both growing with k (n = 1.46M on this 2-core CPU: top_k 7 ms for k = 5.7k,
    30 ms for k = 91k, 290 ms for the whole argsort; the walk on the 182k coordinates off the
    faces: 6 ms for k = 4096, 140 ms for all). In an instrumented solve of
    benchmarks/sharpness.py's F1 problem the GCP passed at most ~2k of the ~90k breakpoints:
    the first chunk usually holds it, the second catches most of the rest.
    """
    sizes: list[int] = []
    for size in (max(CHUNK_MIN, n // 256), max(CHUNK_MIN, n // 16)):
        if size < n and (not sizes or size >= 2 * sizes[-1]):
            sizes.append(size)
    return tuple(sizes)


class _Model(NamedTuple):
    """B = theta I - W M W^T on the coordinates at hand: W = [Y, theta S] there, transposed,
    (2m, k), built once per step (the GCP and the subspace step both read it)."""

    W: jax.Array
    theta: jax.Array
    M: jax.Array


def _model(memory: Memory, M: jax.Array) -> _Model:
    return _Model(jnp.concatenate([memory.y, memory.theta * memory.s]), memory.theta, M)


class _Stop(NamedTuple):
    """Where the walk along the sorted breakpoints stops: `found` (False: the chunk ended
    first), the path's t at the GCP, the t of the last breakpoint passed (-inf: none), and
    c = W^T (xcp - x)."""

    found: jax.Array
    t_gcp: jax.Array
    t_passed: jax.Array
    c: jax.Array


def _walk(ts, gs, rows, num_breaks, complete, g0, p0, theta, M) -> _Stop:
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
    return _cauchy_point(x, g, lower, upper, _model(memory, M), chunks)


def _cauchy_point(x, g, lower, upper, model: _Model, chunks: tuple[int, ...] | None = None):
    theta, M = model.theta, model.M
    fixed, moving, d, t = _path(x, g, lower, upper)
    n = x.shape[0]
    chunks = chunk_sizes(n) if chunks is None else tuple(k for k in chunks if k < n)
    num_breaks = jnp.sum(moving)
    g0 = jnp.sum(d * d)
    p0 = model.W @ d
    gm = jnp.where(moving, g, 0.0)

    def walk(index, ts, complete):
        return _walk(ts, gm[index], model.W[:, index], num_breaks, complete, g0, p0, theta, M)

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
    _, moving, d, _ = _path(x, g, lower, upper)
    return jnp.where(moving, jnp.clip(x + d / theta, lower, upper), x)


# --- subspace minimisation -----------------------------------------------------------------------


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
    return _subspace_point(x, g, lower, upper, _model(memory, M), xcp, free, c)


def _subspace_point(x, g, lower, upper, model: _Model, xcp, free, c):
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


class _Target(NamedTuple):
    """Where L-BFGS-B steps towards from x: `point`, (n,), and w_step = W^T (point - x),
    (2m,), over the stored pairs (zeros when there are none), which `push_pair` needs."""

    point: jax.Array
    w_step: jax.Array


def step_point(x, g, lower, upper, memory: Memory):
    """The point L-BFGS-B steps towards from x: the subspace minimiser (no pairs: the GCP)."""
    return _step_target(x, g, lower, upper, memory).point


def _step_target(x, g, lower, upper, memory: Memory) -> _Target:
    def with_pairs(x, g, lower, upper, memory):
        return _step_off_the_faces(x, g, lower, upper, memory, middle_matrix(memory))

    def without_pairs(x, g, lower, upper, memory):
        point = cauchy_point_no_memory(x, g, lower, upper, memory.theta)
        return _Target(point, jnp.zeros((2 * memory.s.shape[0],), x.dtype))

    has_pairs = lambda x, g, lower, upper, memory: memory.count > 0
    return _dispatch(has_pairs, with_pairs, without_pairs)(x, g, lower, upper, memory)


def _subspace_minimiser(x, g, lower, upper, model: _Model) -> _Target:
    xcp, free, c = _cauchy_point(x, g, lower, upper, model)
    point = _subspace_point(x, g, lower, upper, model, xcp, free, c)
    return _Target(point, model.W @ (point - x))


def open_capacity(n: int) -> int:
    """Variables off the faces the step gathers before it works on all n: n / 8, at least
    CHUNK_MIN (maximising sharpness on F1, ~10% of the coordinates are off them)."""
    return min(n, max(CHUNK_MIN, n // 8))


# Block length of `_compact_index`'s two-level prefix sum.
COMPACT_BLOCK = 256


def _compact_index(mask: jax.Array, size: int) -> jax.Array:
    """`jnp.nonzero(mask, size=size, fill_value=n)[0]`: the first `size` indices where the
    (n,) bool `mask` holds, ascending, then n.

    The positions come from a prefix sum in two levels (within blocks of COMPACT_BLOCK, then
    over the block totals), then one scatter. At n = 1.46M on this 2-core CPU jnp.nonzero took
    13-15 ms and this 8-10 ms (of which the two-level prefix sum ~6 ms, the scatter ~3 ms).
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


def _step_off_the_faces(x, g, lower, upper, memory: Memory, M: jax.Array):
    """The subspace minimiser, computed on the variables not fixed at x (on a face with the
    gradient pushing out) when at most `open_capacity(n)` are: those do not move at the GCP,
    are not free there and so keep x in the subspace step, and c = W^T (xcp - x) has no term
    from them. The step over the others is L-BFGS-B's step for the problem restricted to
    them, with the same M; padding slots are pinned (x = lower = upper = g = 0, W rows 0).
    """
    n = x.shape[0]
    capacity = open_capacity(n)
    if capacity >= n:
        return _subspace_minimiser(x, g, lower, upper, _model(memory, M))
    fixed = _path(x, g, lower, upper)[0]

    def gathered():
        index = _compact_index(~fixed, capacity)
        # Padding slots (index n) read 0. W is gathered straight into its (2m, capacity) form.
        at = lambda a: a.at[index].get(mode="fill", fill_value=0.0)
        rows = lambda a: a.at[:, index].get(mode="fill", fill_value=0.0)
        W = jnp.concatenate([rows(memory.y), memory.theta * rows(memory.s)])
        model = _Model(W, memory.theta, M)
        # Padding slots stay at 0, so they add nothing to w_step.
        point, w_step = _subspace_minimiser(at(x), at(g), at(lower), at(upper), model)
        return _Target(x.at[index].set(point, mode="drop"), w_step)

    def everything():
        return _subspace_minimiser(x, g, lower, upper, _model(memory, M))

    return jax.lax.cond(jnp.sum(~fixed) <= capacity, gathered, everything)


def _dispatch(predicate: Callable, if_true: Callable, if_false: Callable) -> Callable:
    """`lax.cond(predicate(*args), if_true, if_false, *args)` that stays a branch under vmap.

    `vmap` turns a cond with a batched predicate into a select that runs both branches in
    every lane. Here, when any lane needs `if_true`, the batch goes lane by lane (`lax.map`),
    each lane taking its own branch; otherwise it takes `if_false` vmapped. Both branches must
    give the same answer where the predicate is false, so the choice is one of cost only.
    Nested vmaps (seeds, restarts) reduce over every level.
    """

    @jax.custom_batching.custom_vmap
    def branch(*args):
        return jax.lax.cond(predicate(*args), if_true, if_false, *args)

    @branch.def_vmap
    def rule(axis_size, in_batched, *args):
        args = [
            jax.tree.map(
                lambda a, b: a if b else jnp.broadcast_to(a, (axis_size, *jnp.shape(a))), arg, bat
            )
            for arg, bat in zip(args, in_batched, strict=True)
        ]
        # Lane by lane, each lane takes its own branch: a lane without pairs in a batch
        # where another has them costs the closed form, not the exact GCP's sort.
        batched = _dispatch(
            lambda *a: jnp.any(jax.vmap(predicate)(*a)),
            _lane_by_lane(branch),
            jax.vmap(if_false),
        )
        out = batched(*args)
        return out, jax.tree.map(lambda _: True, out)

    return branch


def _lane_by_lane(f: Callable) -> Callable:
    """f over the leading axis of every argument, one lane at a time (lax.map)."""
    return lambda *args: jax.lax.map(lambda lane: f(*lane), args)


# --- Moré-Thuente line search (MINPACK-2 dcsrch / dcstep, as scipy's lnsrlb calls them) --------

FG, CONVERGED, WARNED = 0, 1, 2


class Search(NamedTuple):
    """dcsrch's saved state; `task` is FG (evaluate at stp), CONVERGED or WARNED."""

    stp: jax.Array
    task: jax.Array
    brackt: jax.Array
    stage: jax.Array
    ginit: jax.Array
    gtest: jax.Array
    finit: jax.Array
    stx: jax.Array
    fx: jax.Array
    gx: jax.Array
    sty: jax.Array
    fy: jax.Array
    gy: jax.Array
    stmin: jax.Array
    stmax: jax.Array
    width: jax.Array
    width1: jax.Array
    stpmax: jax.Array


def search_start(f, g, stp, stpmax) -> Search:
    """dcsrch's START: f, g = F and its slope at step 0 (g < 0), a first trial step."""
    zero = jnp.zeros_like(f)
    width = stpmax
    return Search(
        stp=stp,
        task=jnp.asarray(FG, jnp.int32),
        brackt=jnp.asarray(False),
        stage=jnp.asarray(1, jnp.int32),
        ginit=g,
        gtest=FTOL * g,
        finit=f,
        stx=zero,
        fx=f,
        gx=g,
        sty=zero,
        fy=f,
        gy=g,
        stmin=zero,
        stmax=stp + 4.0 * stp,
        width=width,
        width1=width / 0.5,
        stpmax=stpmax,
    )


def search_next(st: Search, f, g) -> Search:
    """dcsrch after an evaluation at st.stp giving F = f and slope g: converged, warned (both
    accept stp), or a new trial step."""
    ftest = st.finit + st.stp * st.gtest
    stage = jnp.where((st.stage == 1) & (f <= ftest) & (g >= 0), jnp.int32(2), st.stage)
    warn = (
        (st.brackt & ((st.stp <= st.stmin) | (st.stp >= st.stmax)))
        | (st.brackt & (st.stmax - st.stmin <= XTOL * st.stmax))
        | ((st.stp == st.stpmax) & (f <= ftest) & (g <= st.gtest))
        | ((st.stp == 0) & ((f > ftest) | (g >= st.gtest)))
    )
    converged = (f <= ftest) & (jnp.abs(g) <= GTOL * (-st.ginit))
    task = jnp.where(converged, CONVERGED, jnp.where(warn, WARNED, FG)).astype(jnp.int32)

    # A modified function predicts the step while the decrease is not yet sufficient.
    modified = (stage == 1) & (f <= st.fx) & (f > ftest)
    shift = jnp.where(modified, st.gtest, 0.0)
    stx, fx, gx, sty, fy, gy, stp, brackt = _dcstep(
        st.stx,
        st.fx - st.stx * shift,
        st.gx - shift,
        st.sty,
        st.fy - st.sty * shift,
        st.gy - shift,
        st.stp,
        f - st.stp * shift,
        g - shift,
        st.brackt,
        st.stmin,
        st.stmax,
    )
    fx, fy, gx, gy = fx + stx * shift, fy + sty * shift, gx + shift, gy + shift

    bisect = brackt & (jnp.abs(sty - stx) >= 0.66 * st.width1)
    stp = jnp.where(bisect, stx + 0.5 * (sty - stx), stp)
    width1 = jnp.where(brackt, st.width, st.width1)
    width = jnp.where(brackt, jnp.abs(sty - stx), st.width)
    stmin = jnp.where(brackt, jnp.minimum(stx, sty), stp + 1.1 * (stp - stx))
    stmax = jnp.where(brackt, jnp.maximum(stx, sty), stp + 4.0 * (stp - stx))
    stp = jnp.clip(stp, 0.0, st.stpmax)
    stuck = brackt & ((stp <= stmin) | (stp >= stmax) | (stmax - stmin <= XTOL * stmax))
    stp = jnp.where(stuck, stx, stp)

    moved = Search(
        stp, task, brackt, stage, st.ginit, st.gtest, st.finit,
        stx, fx, gx, sty, fy, gy, stmin, stmax, width, width1, st.stpmax,
    )  # fmt: skip
    stopped = st._replace(task=task, stage=stage)
    return jax.tree.map(lambda a, b: jnp.where(task == FG, a, b), moved, stopped)


def _dcstep(stx, fx, dx, sty, fy, dy, stp, fp, dp, brackt, stpmin, stpmax):
    """MINPACK-2 dcstep: a safeguarded cubic/quadratic step and the updated bracket. All four
    cases are computed and one is selected (a discarded case may hold NaN)."""
    sgnd = dp * jnp.sign(dx)
    theta = 3.0 * (fx - fp) / (stp - stx) + dx + dp
    s = jnp.maximum(jnp.abs(theta), jnp.maximum(jnp.abs(dx), jnp.abs(dp)))
    root = s * jnp.sqrt(jnp.maximum((theta / s) ** 2 - (dx / s) * (dp / s), 0.0))

    # 1: higher function value: the minimum is bracketed.
    gamma = jnp.where(stp < stx, -root, root)
    r = ((gamma - dx) + theta) / (((gamma - dx) + gamma) + dp)
    stpc = stx + r * (stp - stx)
    stpq = stx + ((dx / ((fx - fp) / (stp - stx) + dx)) / 2.0) * (stp - stx)
    case1 = jnp.where(jnp.abs(stpc - stx) < jnp.abs(stpq - stx), stpc, stpc + (stpq - stpc) / 2.0)

    # 2: lower value, derivatives of opposite sign: bracketed.
    gamma = jnp.where(stp > stx, -root, root)
    r = ((gamma - dp) + theta) / (((gamma - dp) + gamma) + dx)
    stpc = stp + r * (stx - stp)
    stpq = stp + (dp / (dp - dx)) * (stx - stp)
    case2 = jnp.where(jnp.abs(stpc - stp) > jnp.abs(stpq - stp), stpc, stpq)

    # 3: lower value, same sign, the derivative's magnitude decreases.
    r = ((gamma - dp) + theta) / ((gamma + (dx - dp)) + gamma)
    stpc = jnp.where(
        (r < 0) & (gamma != 0), stp + r * (stx - stp), jnp.where(stp > stx, stpmax, stpmin)
    )
    inner = jnp.where(jnp.abs(stpc - stp) < jnp.abs(stpq - stp), stpc, stpq)
    inner = jnp.where(
        stp > stx,
        jnp.minimum(stp + 0.66 * (sty - stp), inner),
        jnp.maximum(stp + 0.66 * (sty - stp), inner),
    )
    outer = jnp.clip(
        jnp.where(jnp.abs(stpc - stp) > jnp.abs(stpq - stp), stpc, stpq), stpmin, stpmax
    )
    case3 = jnp.where(brackt, inner, outer)

    # 4: lower value, same sign, the derivative does not decrease (e.g. a concave F).
    theta4 = 3.0 * (fp - fy) / (sty - stp) + dy + dp
    s4 = jnp.maximum(jnp.abs(theta4), jnp.maximum(jnp.abs(dy), jnp.abs(dp)))
    gamma4 = s4 * jnp.sqrt(jnp.maximum((theta4 / s4) ** 2 - (dy / s4) * (dp / s4), 0.0))
    gamma4 = jnp.where(stp > sty, -gamma4, gamma4)
    r4 = ((gamma4 - dp) + theta4) / (((gamma4 - dp) + gamma4) + dy)
    case4 = jnp.where(brackt, stp + r4 * (sty - stp), jnp.where(stp > stx, stpmax, stpmin))

    higher = fp > fx
    opposite = ~higher & (sgnd < 0)
    decreasing = ~higher & ~opposite & (jnp.abs(dp) < jnp.abs(dx))
    stpf = jnp.where(higher, case1, jnp.where(opposite, case2, jnp.where(decreasing, case3, case4)))
    new_sty = jnp.where(higher, stp, jnp.where(sgnd < 0, stx, sty))
    new_fy = jnp.where(higher, fp, jnp.where(sgnd < 0, fx, fy))
    new_dy = jnp.where(higher, dp, jnp.where(sgnd < 0, dx, dy))
    new_stx = jnp.where(higher, stx, stp)
    new_fx = jnp.where(higher, fx, fp)
    new_dx = jnp.where(higher, dx, dp)
    return new_stx, new_fx, new_dx, new_sty, new_fy, new_dy, stpf, brackt | higher | opposite


# --- the solver ----------------------------------------------------------------------------------


class Result(NamedTuple):
    """The best point seen (minimum of F) and how the run went (per lane)."""

    x: jax.Array
    f: jax.Array
    g: jax.Array
    aux: jax.Array
    num_steps: jax.Array  # iterations whose step was accepted
    num_evaluations: jax.Array  # value-and-gradient evaluations of F, the initial one included
    num_pairs: jax.Array  # curvature pairs held at the end


class _Step(NamedTuple):
    """One iteration's trial: accepted (ok), the point, F, gradient, aux, step length,
    evaluations spent, the direction d (target - x) and W^T d (`_Target.w_step`)."""

    ok: jax.Array
    x: jax.Array
    f: jax.Array
    g: jax.Array
    aux: Any
    stp: jax.Array
    evaluations: jax.Array
    d: jax.Array
    w_d: jax.Array


class _Carry(NamedTuple):
    x: jax.Array
    f: jax.Array
    g: jax.Array
    memory: Memory
    stopped: jax.Array
    iterations: jax.Array
    evaluations: jax.Array
    best: tuple  # (x, f, g, aux) at the lowest F seen


def projected_gradient_norm(x, g, lower, upper) -> jax.Array:
    """scipy's `projgr`: max_i |P(x - g)_i - x_i| for a box, the quantity pgtol is tested on."""
    clipped = jnp.where(g < 0, jnp.maximum(x - upper, g), jnp.minimum(x - lower, g))
    return jnp.max(jnp.abs(clipped))


def minimize(
    fun: Callable[[jax.Array], tuple[jax.Array, jax.Array]],
    x0: jax.Array,
    lower: jax.Array,
    upper: jax.Array,
    *,
    maxiter: int,
    memory: int,
    pgtol: float,
    factr: float,
    maxls: int,
    first: tuple[jax.Array, jax.Array, jax.Array],
) -> Result:
    """Minimises F over [lower, upper] from x0 (inside), `fun(x) -> (F, aux)` differentiable;
    `first` = (F, aux, grad F) at x0, already evaluated by the caller (counted here).

    maxls = 0: each iteration steps to the subspace point (one evaluation); a step whose F is
    not finite is discarded. maxls >= 1: scipy's line search with at most maxls evaluations;
    when it fails, scipy's rule: back to x, and with pairs stored, drop them and redo the
    iteration, without pairs stop. pgtol > 0 / factr > 0 stop a lane as scipy does; 0 turns
    the test off. Exactly `maxiter` iterations otherwise.
    """
    value_and_grad = jax.value_and_grad(fun, has_aux=True)
    n, dtype = x0.shape[0], x0.dtype
    f0, aux0, g0 = first
    first_norm = projected_gradient_norm(x0, g0, lower, upper)
    stopped = (pgtol > 0) & (first_norm <= pgtol)
    carry = _Carry(
        x=x0,
        f=f0,
        g=g0,
        memory=empty_memory(memory, n, dtype),
        stopped=stopped | ~jnp.isfinite(f0),
        iterations=jnp.zeros((), jnp.int32),
        evaluations=jnp.ones((), jnp.int32),
        best=(x0, f0, g0, aux0),
    )

    def step(carry: _Carry) -> _Step:
        x, f, g = carry.x, carry.f, carry.g
        target, w_d = _step_target(x, g, lower, upper, carry.memory)
        d = target - x
        if maxls == 0:
            (f_new, aux_new), g_new = value_and_grad(target)
            x_new, stp, evaluations = target, jnp.ones((), dtype), jnp.ones((), jnp.int32)
            ok = jnp.isfinite(f_new) & jnp.all(jnp.isfinite(g_new))
        else:
            # Under vmap the cond in `body` becomes a select and this runs for finished lanes
            # too; their line search takes no trial, so trips after every lane has finished
            # evaluate nothing.
            active = ~(carry.stopped | (carry.iterations >= maxiter))
            ok, x_new, f_new, g_new, aux_new, stp, evaluations = _line_search(
                value_and_grad, x, f, g, d, target, lower, upper, carry.iterations, maxls, aux0,
                active,
            )  # fmt: skip
        return _Step(ok, x_new, f_new, g_new, aux_new, stp, evaluations, d, w_d)

    def no_step(carry: _Carry) -> _Step:
        _, _, _, aux = carry.best
        zero = jnp.zeros((), dtype)
        return _Step(
            jnp.zeros((), bool), carry.x, carry.f, carry.g, aux, zero,
            jnp.zeros((), jnp.int32), jnp.zeros_like(carry.x),
            jnp.zeros((2 * memory,), dtype),
        )  # fmt: skip

    def body(_, carry: _Carry) -> _Carry:
        done = carry.stopped | (carry.iterations >= maxiter)
        # Only the step is conditional (a finished lane evaluates nothing); the state update
        # below runs in every trip, so the memory's (m, n) arrays are never a cond's output
        # (which would copy them each trip).
        ok, x_new, f_new, g_new, aux_new, stp, evaluations, d, w_d = jax.lax.cond(
            done, no_step, step, carry
        )
        x, f, g = carry.x, carry.f, carry.g
        failed = ~ok & ~done & (maxls > 0)
        gd_old = jnp.sum(g * d)
        # The curvature pair of this step; scipy skips it unless s.y > epsmch * (-g.s).
        s, y = stp * d, g_new - g
        sy = (jnp.sum(g_new * d) - gd_old) * stp
        update = ok & (sy > EPSMCH * (-gd_old * stp))
        memory = push_pair(carry.memory, s, y, sy, jnp.sum(y * y), update, stp * w_d)
        norm = projected_gradient_norm(x_new, g_new, lower, upper)
        scale = jnp.maximum(jnp.maximum(jnp.abs(f), jnp.abs(f_new)), 1.0)
        converged = ((pgtol > 0) & (norm <= pgtol)) | (
            (factr > 0) & (f - f_new <= factr * EPSMCH * scale)
        )
        best_x, best_f, best_g, best_aux = carry.best
        better = ok & (f_new < best_f)
        pick = lambda new, old: jnp.where(better, new, old)
        best = (pick(x_new, best_x), pick(f_new, best_f), pick(g_new, best_g),
                jax.tree.map(pick, aux_new, best_aux))  # fmt: skip
        # A rejected step keeps x and is not counted as an iteration (scipy's nit counts
        # accepted ones). A failed line search with pairs: scipy drops them and redoes the
        # iteration; without pairs it stops. maxls = 0 discards the step and goes on.
        redo = failed & (carry.memory.count > 0)
        memory = jax.tree.map(
            lambda a, b: jnp.where(redo, a, b), reset_memory(memory), memory
        )._replace(s=memory.s, y=memory.y)
        pick_ok = lambda new, old: jnp.where(ok, new, old)
        return _Carry(
            x=pick_ok(x_new, x),
            f=pick_ok(f_new, f),
            g=pick_ok(g_new, g),
            memory=memory,
            stopped=jnp.where(ok, converged, carry.stopped | (failed & ~redo)),
            iterations=carry.iterations + ok.astype(jnp.int32),
            evaluations=carry.evaluations + evaluations,
            best=best,
        )

    # A failed line search with pairs redoes its iteration, at most once each (the redo has
    # no pairs): 2 * maxiter trips bound the loop; stopped lanes pass through.
    trips = maxiter if maxls == 0 else 2 * maxiter
    carry = jax.lax.fori_loop(0, trips, body, carry)
    best_x, best_f, best_g, best_aux = carry.best
    return Result(
        x=best_x,
        f=best_f,
        g=best_g,
        aux=best_aux,
        num_steps=carry.iterations,
        num_evaluations=carry.evaluations,
        num_pairs=carry.memory.count,
    )


def _line_search(value_and_grad, x, f, g, d, target, lower, upper, iteration, maxls, aux0, active):
    """scipy's lnsrlb: Moré-Thuente from step 1 along d, at most maxls evaluations (none when
    the lane is not `active`).

    Returns (ok, x, F, g, aux, stp, evaluations) at the accepted step (ok) or at the last trial.
    """
    gd = jnp.sum(g * d)
    # The largest feasible step along d: 1 on the first iteration (scipy), else up to BIG_STEP.
    room = jnp.where(d < 0, (lower - x) / jnp.where(d < 0, d, 1.0), jnp.inf)
    room = jnp.minimum(room, jnp.where(d > 0, (upper - x) / jnp.where(d > 0, d, 1.0), jnp.inf))
    stpmax = jnp.where(iteration == 0, 1.0, jnp.minimum(jnp.min(room), BIG_STEP))
    # d ends at a point inside the box, so stpmax >= 1 but for rounding; scipy would stop with
    # an error there, flatmin keeps the unit step.
    stpmax = jnp.maximum(stpmax, 1.0).astype(x.dtype)
    search = search_start(f, gd, jnp.ones((), x.dtype), stpmax)
    # A direction that does not descend cannot be searched (scipy: info = -4, no evaluation).
    start = (search, jnp.zeros((), jnp.int32), x, f, g, aux0, ~(gd < 0))

    def cond(state):
        search, count, *_, bad = state
        return (search.task == FG) & (count < maxls) & ~bad & active

    def body(state):
        search, count, *_ = state
        stp = search.stp
        trial = jnp.where(stp == 1, target, jnp.clip(x + stp * d, lower, upper))
        (f_t, aux_t), g_t = value_and_grad(trial)
        bad = ~jnp.isfinite(f_t) | ~jnp.all(jnp.isfinite(g_t))
        new = search_next(search, f_t, jnp.sum(g_t * d))
        return new, count + 1, trial, f_t, g_t, aux_t, bad

    search, count, x_t, f_t, g_t, aux_t, bad = jax.lax.while_loop(cond, body, start)
    ok = (gd < 0) & (search.task != FG) & ~bad
    return ok, x_t, f_t, g_t, aux_t, search.stp, count
