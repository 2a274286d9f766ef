"""Tests of flatmin.lbfgsb, flatmin's L-BFGS-B, against independent references.

- The generalized Cauchy point against jaxopt 0.8.5's `_find_cauchy_point` (a sequential walk
  over the sorted breakpoints, the textbook Algorithm CP): point, free set and c = W^T(xcp - x).
- The whole minimiser against scipy's `fmin_l_bfgs_b` on convex box-constrained quadratics: the
  same solution, and (float64) the same number of iterations and evaluations.
- The program's shape: no loop whose trip count depends on n.
"""

import warnings

import jax
import jax.extend
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.optimize

from flatmin.measures import _lbfgsb as lbfgsb
from flatmin.measures._lbfgsb import _cauchy

with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)  # jaxopt is archived; a reference here
    from jaxopt._src.lbfgsb import _find_cauchy_point


def _instance(seed, n, pairs, dtype, m=5):
    """A random box, a point inside it (some coordinates on a face), a gradient, and `pairs`
    curvature pairs from a random positive definite quadratic pushed into an m-slot memory (so
    that more than m pairs wrap around)."""
    rng = np.random.default_rng(seed)
    lower = -rng.uniform(0.5, 2.0, n)
    upper = rng.uniform(0.5, 2.0, n)
    x = rng.uniform(lower, upper)
    faces = rng.random(n) < 0.1
    x = np.where(faces, np.where(rng.random(n) < 0.5, lower, upper), x)
    g = rng.normal(size=n)
    memory = lbfgsb.empty_memory(m, n, dtype)
    scales = rng.uniform(0.5, 3.0, n)
    for _ in range(pairs):
        # H = diag(scales) + a rank-3 term: positive definite, not diagonal, cheap at n = 1e5.
        s = 0.3 * rng.normal(size=n)
        U = rng.normal(size=(n, 3)) / np.sqrt(n)
        y = scales * s + U @ (U.T @ s)
        memory = lbfgsb.push_pair(memory, *(jnp.asarray(v, dtype) for v in (s, y, s @ y, y @ y)))
    arrays = [jnp.asarray(v, dtype) for v in (x, g, lower, upper)]
    return arrays, memory


def _jaxopt_form(memory):
    """W (n, 2k) and M (2k, 2k) in chronological order, the k stored pairs only, as jaxopt
    builds them (Byrd et al. 1995, eqs. 3.3-3.4)."""
    m = memory.s.shape[0]
    order = (memory.head + jnp.arange(m)) % m
    k = int(memory.count)
    S, Y = memory.s[order][:k], memory.y[order][:k]
    W = jnp.concatenate([Y.T, memory.theta * S.T], axis=1)
    SY = S @ Y.T
    K = jnp.block(
        [[-jnp.diag(jnp.diag(SY)), jnp.tril(SY, -1).T], [jnp.tril(SY, -1), memory.theta * S @ S.T]]
    )
    return W, jnp.linalg.inv(K), order[:k]


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["float32", "float64"])
@pytest.mark.parametrize(
    ("n", "pairs", "seed"),
    [(10, 1, 0), (10, 3, 1), (50, 7, 2), (1000, 2, 3), (1000, 5, 4), (100_000, 3, 5)],
)
def test_cauchy_point_equals_jaxopt(dtype, n, pairs, seed):
    """Oracle: jaxopt's sequential GCP walk. Same point, same free set, same c."""
    with jax.enable_x64(dtype == np.float64):
        (x, g, lower, upper), memory = _instance(seed, n, pairs, dtype)
        M = lbfgsb.middle_matrix(memory)
        xcp, free, c = jax.jit(lbfgsb.cauchy_point)(x, g, lower, upper, memory, M)
        W, M_ref, order = _jaxopt_form(memory)
        xcp_ref, c_ref, free_ref = jax.jit(_find_cauchy_point)(
            x, g, lower, upper, memory.theta, W, M_ref
        )
        m = memory.s.shape[0]
        c_chrono = jnp.concatenate([c[:m][order], c[m:][order]])
        tol = 1e-4 if dtype == np.float32 else 1e-10
        # The walk passed a good part of the breakpoints (not a trivial first-segment stop).
        assert 0 < int(jnp.sum(~free_ref)) < n
        np.testing.assert_array_equal(np.asarray(free), np.asarray(free_ref))
        np.testing.assert_allclose(np.asarray(xcp), np.asarray(xcp_ref), rtol=tol, atol=tol)
        scale = float(jnp.max(jnp.abs(c_ref)))
        np.testing.assert_allclose(np.asarray(c_chrono), np.asarray(c_ref), atol=tol * scale)


@pytest.mark.parametrize(("n", "pairs", "seed"), [(1000, 2, 3), (1000, 5, 4), (20_000, 3, 8)])
def test_cauchy_point_chunks_holding_the_gcp_or_not(n, pairs, seed, monkeypatch):
    """The walk over the k smallest breakpoints decides alone whether it holds the GCP; the
    next k, then the sort of all n, run only when it does not. Whichever holds it, the answer
    is jaxopt's. A spy records (breakpoints walked, found) for every walk that runs."""
    (x, g, lower, upper), memory = _instance(seed, n, pairs, np.float32)
    M = lbfgsb.middle_matrix(memory)
    W, M_ref, _ = _jaxopt_form(memory)
    xcp_ref, _, free_ref = _find_cauchy_point(x, g, lower, upper, memory.theta, W, M_ref)
    fixed = lbfgsb.path(x, g, lower, upper)[0]
    passed = int(jnp.sum(~np.asarray(free_ref) & ~np.asarray(fixed)))
    assert passed >= 4
    walked = []
    walk = lbfgsb.walk_breakpoints

    def spy(ts, *args):
        stop = walk(ts, *args)
        # Fires only where the walk runs (not in a cond branch that is not taken).
        jax.debug.callback(lambda found: walked.append((ts.shape[0], bool(found))), stop.found)
        return stop

    monkeypatch.setattr(_cauchy, "walk_breakpoints", spy)
    small, large = passed // 2, passed + 1
    cases = [
        ((large,), [(large, True)]),
        ((small,), [(small, False), (n, True)]),
        ((small, large), [(small, False), (large, True)]),
        ((2, small), [(2, False), (small, False), (n, True)]),
    ]
    for chunks, expected in cases:
        walked.clear()
        xcp, free, _ = jax.jit(lbfgsb.cauchy_point, static_argnums=6)(
            x, g, lower, upper, memory, M, chunks
        )
        jax.effects_barrier()
        assert walked == expected, chunks
        np.testing.assert_array_equal(np.asarray(free), np.asarray(free_ref))
        np.testing.assert_allclose(np.asarray(xcp), np.asarray(xcp_ref), rtol=1e-4, atol=1e-4)


def test_subspace_step_equals_the_dense_newton_step():
    """Oracle: the dense model B = theta I - W M W^T (n = 300) and its reduced Newton step
    -(Z^T B Z)^{-1} Z^T (g + B (xcp - x)) over the free variables, solved by numpy; projected
    onto the box."""
    n = 300
    (x, g, lower, upper), memory = _instance(11, n, 4, np.float32)
    M = lbfgsb.middle_matrix(memory)
    xcp, free, c = lbfgsb.cauchy_point(x, g, lower, upper, memory, M)
    point = np.asarray(lbfgsb.subspace_point(x, g, lower, upper, memory, M, xcp, free, c))

    W, M_ref, _ = (np.asarray(a, np.float64) for a in _jaxopt_form(memory))
    theta = float(memory.theta)
    B = theta * np.eye(n) - W @ M_ref @ W.T
    x, g, xcp, lower, upper = (np.asarray(a, np.float64) for a in (x, g, xcp, lower, upper))
    Z = np.asarray(free)
    assert 0 < Z.sum() < n
    reduced = (g + B @ (xcp - x))[Z]
    du = -np.linalg.solve(B[np.ix_(Z, Z)], reduced)
    expected = xcp.copy()
    expected[Z] = np.clip(xcp[Z] + du, lower[Z], upper[Z])
    # This instance takes the projected Newton point (not the cut-back branch).
    assert np.sum((expected - x) * g) <= 0 or not np.any(
        (expected[Z] == lower[Z]) | (expected[Z] == upper[Z])
    )
    np.testing.assert_allclose(point, expected, rtol=1e-4, atol=1e-4)


def _subsm_reference(x, g, lower, upper, xcp, free, du):
    """scipy's subsm after the Newton step du (on the free variables, in index order), as its
    Fortran reads: project; if that hits a bound and (xp - x).g > 0, backtrack from xcp along
    du to the first bound met instead. Returns (point, cut)."""
    index = np.flatnonzero(free)
    point = xcp.copy()
    point[index] = np.clip(xcp[index] + du, lower[index], upper[index])
    hit = np.any((point[index] == lower[index]) | (point[index] == upper[index]))
    if not (hit and np.sum((point - x) * g) > 0):
        return point, False
    point, alpha, limit, du = xcp.copy(), 1.0, None, du.copy()
    for i, k in enumerate(index):
        room = lower[k] - xcp[k] if du[i] < 0 else upper[k] - xcp[k]
        if du[i] == 0:
            continue
        step = 0.0 if room * np.sign(du[i]) <= 0 else room / du[i]
        if step < alpha:
            alpha, limit = step, i
    if limit is not None:
        point[index[limit]] = upper[index[limit]] if du[limit] > 0 else lower[index[limit]]
        du[limit] = 0.0
    point[index] += alpha * du
    return point, True


def test_subspace_projection_and_cut_back_equal_scipy_subsm():
    """Oracle: the dense Newton step (numpy) and scipy's subsm projection and backtracking,
    transliterated. A GCP stand-in uphill from x makes the projected point ascend, so the
    cut-back branch runs; one downhill takes the projection. Both branches are seen."""
    n = 200
    branches = set()
    for seed in range(6):
        with jax.enable_x64(True):
            (x, g, lower, upper), memory = _instance(20 + seed, n, 3, np.float64)
            rng = np.random.default_rng(seed)
            side = 1.0 if seed % 2 else -1.0  # uphill (xcp - x).g > 0, or downhill
            xcp = jnp.clip(x + side * 0.3 * g, lower, upper)
            free = jnp.asarray(rng.random(n) < 0.4) & (xcp > lower) & (xcp < upper)
            c = lbfgsb.w_dot(memory, xcp - x)
            M = lbfgsb.middle_matrix(memory)
            point = lbfgsb.subspace_point(x, g, lower, upper, memory, M, xcp, free, c)
            W, M_ref, _ = (np.asarray(a) for a in _jaxopt_form(memory))
            B = float(memory.theta) * np.eye(n) - W @ M_ref @ W.T
            x, g, xcp, lower, upper, Z = (np.asarray(a) for a in (x, g, xcp, lower, upper, free))
            du = -np.linalg.solve(B[np.ix_(Z, Z)], (g + B @ (xcp - x))[Z])
            expected, cut = _subsm_reference(x, g, lower, upper, xcp, Z, du)
            branches.add(cut)
            np.testing.assert_allclose(np.asarray(point), expected, rtol=1e-9, atol=1e-12)
    assert branches == {True, False}


@pytest.mark.parametrize("capacity", ["gathered", "all"])
def test_step_off_the_faces_equals_the_dense_step(capacity, monkeypatch):
    """Oracle: jaxopt's GCP, numpy's dense reduced Newton step and scipy's subsm (above). The
    step computed on the variables off the faces only (gathered, with padding slots) and on
    all n give it; a third of the coordinates sit on a face with the gradient pushing out.
    W^T (point - x), which the step hands to push_pair, is numpy's product."""
    n = 300
    with jax.enable_x64(True):
        (x, g, lower, upper), memory = _instance(31, n, 4, np.float64)
        rng = np.random.default_rng(31)
        on_face = rng.random(n) < 0.33
        x = jnp.where(on_face, jnp.where(g > 0, lower, upper), x)
        limit = {"gathered": n - 1, "all": 1}[capacity]
        monkeypatch.setattr(lbfgsb, "open_capacity", lambda n: limit)
        point, w_step = lbfgsb.step_target(x, g, lower, upper, memory)
        # W^T (point - x) over every slot, for push_pair: numpy's product of the stored rows.
        W_slots = np.concatenate([memory.y, float(memory.theta) * np.asarray(memory.s)])
        np.testing.assert_allclose(w_step, W_slots @ np.asarray(point - x), rtol=1e-9, atol=1e-12)
        W, M_ref, _ = (np.asarray(a) for a in _jaxopt_form(memory))
        xcp, _, free = jax.jit(_find_cauchy_point)(x, g, lower, upper, memory.theta, W, M_ref)
        B = float(memory.theta) * np.eye(n) - W @ M_ref @ W.T
        x, g, xcp, lower, upper, Z = (np.asarray(a) for a in (x, g, xcp, lower, upper, free))
        open_ = int(np.sum(~np.asarray(lbfgsb.path(x, g, lower, upper)[0])))
        assert n / 2 < open_ < n - 1  # padding slots in the gathered case
        du = -np.linalg.solve(B[np.ix_(Z, Z)], (g + B @ (xcp - x))[Z])
        expected, _ = _subsm_reference(x, g, lower, upper, xcp, Z, du)
        np.testing.assert_allclose(np.asarray(point), expected, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("given", [True, False], ids=["w_s given", "w_s computed"])
def test_push_pair_keeps_the_products_of_the_stored_pairs(given):
    """Oracle: numpy's S Y^T and S S^T of the rows stored, after 9 pushes into 4 slots (the
    oldest dropped five times; two pushes skipped). With w_s given it is the step's
    W^T s = [Y^T s, theta S^T s] over the slots before the push, as `minimize` passes it."""
    n, m = 50, 4
    rng = np.random.default_rng(5)
    with jax.enable_x64(True):
        memory = lbfgsb.empty_memory(m, n, np.float64)
        for k in range(9):
            s = rng.normal(size=n)
            y = rng.uniform(0.5, 2.0, n) * s
            w_s = lbfgsb.w_dot(memory, jnp.asarray(s)) if given else None
            update = k not in (3, 6)
            memory = lbfgsb.push_pair(memory, s, y, s @ y, y @ y, update, w_s)
        assert int(memory.count) == m
        S, Y = np.asarray(memory.s), np.asarray(memory.y)
        np.testing.assert_allclose(np.asarray(memory.sy), S @ Y.T, rtol=1e-12)
        np.testing.assert_allclose(np.asarray(memory.ss), S @ S.T, rtol=1e-12)
        np.testing.assert_allclose(float(memory.theta), y @ y / (s @ y), rtol=1e-12)


@pytest.mark.parametrize(
    ("n", "density", "size"),
    [
        (1, 1.0, 1),
        (255, 0.5, 300),
        (256, 0.1, 40),
        (1000, 0.0, 64),
        (5000, 0.3, 800),
        (70_001, 0.093, 9000),
    ],
)
def test_compact_index_is_numpys_flatnonzero(n, density, size):
    """Oracle: numpy's flatnonzero, cut to `size` and padded with n; the sizes cover a single
    block, a partial last block, an empty mask and more True entries than slots."""
    mask = np.random.default_rng(n).random(n) < density
    expected = np.full(size, n)
    hits = np.flatnonzero(mask)[:size]
    expected[: hits.size] = hits
    got = jax.jit(lbfgsb.compact_index, static_argnums=1)(jnp.asarray(mask), size)
    np.testing.assert_array_equal(np.asarray(got), expected)


def test_chunk_sizes():
    assert lbfgsb.chunk_sizes(lbfgsb.CHUNK_MIN) == ()
    assert lbfgsb.chunk_sizes(5000) == (lbfgsb.CHUNK_MIN,)
    assert lbfgsb.chunk_sizes(70_000) == (lbfgsb.CHUNK_MIN,)  # n / 16 not twice as many
    assert lbfgsb.chunk_sizes(182_529) == (lbfgsb.CHUNK_MIN, 182_529 // 16)
    assert lbfgsb.chunk_sizes(1_460_234) == (1_460_234 // 256, 1_460_234 // 16)


def test_cauchy_point_without_pairs_is_the_projected_gradient_step():
    """Oracle: with B = theta I the model is separable, its first minimiser along the path is
    at t = 1/theta, so the GCP is clip(x - g/theta); the general routine agrees."""
    (x, g, lower, upper), memory = _instance(7, 200, 0, np.float32)
    memory = memory._replace(theta=jnp.float32(2.5))
    expected = np.clip(np.asarray(x) - np.asarray(g) / 2.5, np.asarray(lower), np.asarray(upper))
    fast = lbfgsb.cauchy_point_no_memory(x, g, lower, upper, memory.theta)
    general, _, _ = lbfgsb.cauchy_point(x, g, lower, upper, memory, lbfgsb.middle_matrix(memory))
    np.testing.assert_allclose(np.asarray(fast), expected, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(np.asarray(general), expected, rtol=1e-5, atol=1e-6)


def _quadratic(seed, n):
    rng = np.random.default_rng(seed)
    A = rng.normal(size=(n, n))
    H = A @ A.T / n + 0.1 * np.eye(n)
    b = 3.0 * rng.normal(size=n)
    lower, upper = -rng.uniform(0.5, 1.5, n), rng.uniform(0.5, 1.5, n)
    return H, b, lower, upper


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("memory", [3, 10])
def test_minimize_matches_scipy_on_convex_quadratics(seed, memory):
    """Oracle: scipy's fmin_l_bfgs_b (float64) on q(x) = x^T H x / 2 + b^T x over a box, from
    x = 0 with the same memory and line search, run to convergence (pgtol 1e-7, factr 1e5:
    short of the last digits, where rounding decides whether a line search fails): the same
    minimiser, the same value, and the same numbers of iterations and evaluations (the same
    algorithm, step by step). Many bounds are active at the solution and pairs are stored, so
    the GCP walk, the subspace step and the line search all take part."""
    n = 30
    H, b, lower, upper = _quadratic(seed, n)
    x_ref, f_ref, info = scipy.optimize.fmin_l_bfgs_b(
        lambda v: (0.5 * v @ H @ v + b @ v, H @ v + b),
        np.zeros(n),
        bounds=list(zip(lower, upper, strict=True)),
        m=memory,
        maxiter=200,
        pgtol=1e-7,
        factr=1e5,
    )
    assert info["warnflag"] == 0  # converged
    with jax.enable_x64(True):
        Hj, bj = jnp.asarray(H), jnp.asarray(b)

        def fun(v):
            q = 0.5 * v @ (Hj @ v) + bj @ v
            return q, q

        x0 = jnp.zeros(n)
        (f0, aux0), g0 = jax.value_and_grad(fun, has_aux=True)(x0)
        run = jax.jit(
            lambda: lbfgsb.minimize(
                fun, x0, jnp.asarray(lower), jnp.asarray(upper),
                maxiter=200, memory=memory, pgtol=1e-7, factr=1e5, maxls=20,
                first=(f0, aux0, g0),
            )
        )  # fmt: skip
        result = run()
    active = np.sum((x_ref <= lower) | (x_ref >= upper))
    assert 0 < active < n
    assert int(result.num_pairs) > 0
    np.testing.assert_allclose(np.asarray(result.x), x_ref, atol=1e-7)
    np.testing.assert_allclose(float(result.f), f_ref, rtol=1e-12)
    assert int(result.num_steps) == info["nit"]
    assert int(result.num_evaluations) == info["funcalls"]


def test_program_has_no_loop_over_coordinates():
    """Oracle: the jaxpr. flatmin's default (unit steps) holds no while loop at all; the paper's
    route exactly one, the line search, whose condition tests the trial count against maxls;
    and the program is the same sequence of operations for n = 13 and n = 1000: nothing loops
    over coordinates or breakpoints."""

    def program(n, maxls):
        def fun(v):
            f = jnp.sum(jnp.cos(v))
            return f, f

        x0 = jnp.zeros(n)
        first = (jnp.float32(n), jnp.float32(n), jnp.zeros(n))
        ones = jnp.ones(n)
        return jax.make_jaxpr(
            lambda x: lbfgsb.minimize(
                fun, x, -ones, ones, maxiter=10, memory=5, pgtol=0.0, factr=0.0, maxls=maxls,
                first=first,
            )
        )(x0)  # fmt: skip

    def equations(jaxpr):
        for eqn in jaxpr.eqns:
            yield eqn
            for sub in jax.extend.core.jaxprs_in_params(eqn.params):
                yield from equations(sub)

    for maxls in (0, 17):
        small, large = program(13, maxls), program(1000, maxls)
        names = [eqn.primitive.name for eqn in equations(small.jaxpr)]
        assert names == [eqn.primitive.name for eqn in equations(large.jaxpr)]
        loops = [eqn for eqn in equations(small.jaxpr) if eqn.primitive.name == "while"]
        assert len(loops) == (0 if maxls == 0 else 1)
        for loop in loops:
            assert "17" in str(loop.params["cond_jaxpr"])
