"""Moré-Thuente line search (MINPACK-2 `dcsrch` / `dcstep`), as scipy's `lnsrlb` drives it.

The search runs at most `maxls` trials in a `while_loop` whose condition reads two carried
flags, never F: its trip count is bounded by `maxls` and independent of n.
"""

from typing import NamedTuple

import jax
import jax.numpy as jnp

# Moré-Thuente constants of scipy's lnsrlb.
FTOL, GTOL, XTOL = 1e-3, 0.9, 0.1
# Largest step scipy's lnsrlb allows along a direction that meets no bound.
BIG_STEP = 1e10


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


def line_search(value_and_grad, x, f, g, d, target, lower, upper, iteration, maxls, aux0, active):
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
