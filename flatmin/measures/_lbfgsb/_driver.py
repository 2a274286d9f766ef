"""The L-BFGS-B driver: a fixed-length loop of steps, scipy's stopping rules per lane."""

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from flatmin._types import Status
from flatmin.measures._best import Best, keep_best
from flatmin.measures._lbfgsb._line_search import line_search
from flatmin.measures._lbfgsb._memory import (
    EPSMCH,
    Memory,
    empty_memory,
    push_pair,
    reset_memory,
)
from flatmin.measures._lbfgsb._subspace_step import step_target
from flatmin.measures._regions import bounds_projected_gradient_norm


class Result(NamedTuple):
    """The best point seen (`flatmin.measures._best`) and how the run went (per lane)."""

    x: jax.Array
    f: jax.Array
    g: jax.Array
    aux: jax.Array
    num_steps: jax.Array  # iterations whose step was accepted
    num_evaluations: jax.Array  # value-and-gradient evaluations of F, the initial one included
    num_pairs: jax.Array  # curvature pairs held at the end
    history: jax.Array  # (maxiter,) the best F after each iteration; later ones repeat it
    status: jax.Array  # a flatmin.Status: FINISHED or the stopping rule that ended the run


class _Step(NamedTuple):
    """One iteration's trial: accepted (ok), the point, F, gradient, aux, step length,
    evaluations spent, the direction d (target - x) and W^T d (`Target.w_step`)."""

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
    best: Best  # extras = (g, aux)
    history: jax.Array
    status: jax.Array


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
    not finite is not taken (the best point records it: `flatmin.measures._best`). maxls >= 1:
    scipy's line search with at most maxls evaluations; when it fails, scipy's rule: back to x,
    and with pairs stored, drop them and redo the iteration, without pairs stop. pgtol > 0 /
    factr > 0 stop a lane as scipy does; 0 turns the test off. Exactly `maxiter` iterations
    otherwise. A non-finite F at x0 stops the lane at once.
    """
    value_and_grad = jax.value_and_grad(fun, has_aux=True)
    n, dtype = x0.shape[0], x0.dtype
    f0, aux0, g0 = first
    first_norm = bounds_projected_gradient_norm(x0, g0, lower, upper)
    stopped = (pgtol > 0) & (first_norm <= pgtol)
    finished = jnp.asarray(Status.FINISHED, jnp.int32)
    carry = _Carry(
        x=x0,
        f=f0,
        g=g0,
        memory=empty_memory(memory, n, dtype),
        stopped=stopped | ~jnp.isfinite(f0),
        iterations=jnp.zeros((), jnp.int32),
        evaluations=jnp.ones((), jnp.int32),
        best=Best(x0, f0, (g0, aux0)),
        history=jnp.full((maxiter,), jnp.inf, dtype),
        status=jnp.where(stopped, jnp.int32(Status.GRADIENT_TOLERANCE), finished),
    )

    def step(carry: _Carry) -> _Step:
        x, f, g = carry.x, carry.f, carry.g
        target, w_d = step_target(x, g, lower, upper, carry.memory)
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
            ok, x_new, f_new, g_new, aux_new, stp, evaluations = line_search(
                value_and_grad, x, f, g, d, target, lower, upper, carry.iterations, maxls, aux0,
                active,
            )  # fmt: skip
        return _Step(ok, x_new, f_new, g_new, aux_new, stp, evaluations, d, w_d)

    def no_step(carry: _Carry) -> _Step:
        _, aux = carry.best.extras
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
        norm = bounds_projected_gradient_norm(x_new, g_new, lower, upper)
        scale = jnp.maximum(jnp.maximum(jnp.abs(f), jnp.abs(f_new)), 1.0)
        small_gradient = (pgtol > 0) & (norm <= pgtol)
        small_reduction = (factr > 0) & (f - f_new <= factr * EPSMCH * scale)
        # An accepted step, or an evaluation where F was not finite (the loss overflowed).
        seen = (evaluations > 0) & (ok | ~jnp.isfinite(f_new))
        best = keep_best(carry.best, x_new, f_new, (g_new, aux_new), seen)
        # The best F after this iteration, in its slot (rejected steps write nothing).
        slot = jnp.minimum(carry.iterations, maxiter - 1)
        history = carry.history.at[slot].set(jnp.where(ok, best.value, carry.history[slot]))
        # A rejected step keeps x and is not counted as an iteration (scipy's nit counts
        # accepted ones). A failed line search with pairs: scipy drops them and redoes the
        # iteration; without pairs it stops. maxls = 0 discards the step and goes on.
        redo = failed & (carry.memory.count > 0)
        memory = jax.tree.map(
            lambda a, b: jnp.where(redo, a, b), reset_memory(memory), memory
        )._replace(s=memory.s, y=memory.y)
        gave_up = failed & ~redo
        status = jnp.select(
            [ok & small_gradient, ok & small_reduction, gave_up],
            [Status.GRADIENT_TOLERANCE, Status.REDUCTION_TOLERANCE, Status.LINE_SEARCH_FAILED],
            carry.status,
        ).astype(jnp.int32)
        pick_ok = lambda new, old: jnp.where(ok, new, old)
        return _Carry(
            x=pick_ok(x_new, x),
            f=pick_ok(f_new, f),
            g=pick_ok(g_new, g),
            memory=memory,
            stopped=jnp.where(ok, small_gradient | small_reduction, carry.stopped | gave_up),
            iterations=carry.iterations + ok.astype(jnp.int32),
            evaluations=carry.evaluations + evaluations,
            best=best,
            history=history,
            status=status,
        )

    # A failed line search with pairs redoes its iteration, at most once each (the redo has
    # no pairs): 2 * maxiter trips bound the loop; stopped lanes pass through.
    trips = maxiter if maxls == 0 else 2 * maxiter
    carry = jax.lax.fori_loop(0, trips, body, carry)
    best_g, best_aux = carry.best.extras
    # Iterations never run (a stopped lane) repeat the best F before them; a NaN F (an
    # overflow, which the best point ranks lowest) reads -inf.
    rank = lambda F: jnp.where(jnp.isnan(F), -jnp.inf, F)
    history = jax.lax.cummin(jnp.minimum(rank(carry.history), rank(f0)))
    return Result(
        x=carry.best.x,
        f=carry.best.value,
        g=best_g,
        aux=best_aux,
        num_steps=carry.iterations,
        num_evaluations=carry.evaluations,
        num_pairs=carry.memory.count,
        history=history,
        status=carry.status,
    )
