"""Tests of flatmin.measures.adaptive: worst-case and average-case sharpness and the PAC-Bayes
sigma.

Every expected number is a closed form computed in float64 from the float32 problem: dual norms
for linear losses, the top eigenvalue of C H C and traces for quadratics, the exact variance of
the Monte Carlo samples, the vertex maximum of a separable quadratic over Keskar's box, and a
scipy root of an exact expectation for a non-differentiable loss. None is taken from flatmin's
own output, except where a test checks that two ways of running it agree (jit, vmap, batches,
keys) or compares it with flatmin.sharpness.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.optimize
import scipy.stats

import flatmin
from flatmin.measures import (
    AverageCaseSharpness,
    PacBayesSigma,
    WorstCaseSharpness,
    average_case_sharpness,
    pac_bayes_sigma,
    worst_case_sharpness,
)

from ..support.oracles import U32, flat64, halfwidths, phi, spacing32
from ..support.quadratics import N, h32, linear, linear_slack, nested, quadratic, rotated, separable


def _normal(rng, scale=1.0):
    return lambda shape: scale * rng.normal(size=shape)


def _scale(w: np.ndarray, adaptive: bool, xi: float = 0.0) -> np.ndarray:
    return np.abs(w) + xi if adaptive else np.ones_like(w)


def _quadratic_slack(H: np.ndarray, w: np.ndarray, delta: np.ndarray, f_max: float) -> float:
    """Bound on float32 rounding in f(w + delta) - f(w) for f = c0 + 1/2 d^T H d: w + delta
    rounded (half an ulp per entry, times the gradient there) and the n^2-term sums."""
    bound = np.sum(np.abs(H @ delta) * spacing32(np.abs(w) + np.abs(delta)))
    return float(
        bound + 2 * (w.size + 2) * U32 * (f_max + np.abs(delta) @ np.abs(H) @ np.abs(delta))
    )


# Worst case ---------------------------------------------------------------------------------


def _linear_problem(seed: int = 0):
    rng = np.random.default_rng(seed)
    params = nested(_normal(rng))
    g = nested(_normal(rng))
    return linear(g), params, flat64(g), flat64(params)


@pytest.mark.parametrize(
    ("norm", "adaptive", "xi"),
    [
        ("inf", True, 0.0),
        ("inf", True, 0.5),
        ("inf", False, 0.0),
        (2, True, 0.0),
        (2, True, 0.5),
        (2, False, 0.0),
    ],
)
def test_worst_case_of_a_linear_loss_is_the_dual_norm(norm, adaptive, xi):
    """Oracle: max over ||u||_p <= rho of (c g) . u is rho ||c g||_1 for p = inf (at
    u = rho sign(c g)) and rho ||c g||_2 for p = 2 (at u = rho c g / ||c g||), delta = c u."""
    loss, params, g, w = _linear_problem()
    rho = 0.05
    # For p = 2, APGD's momentum averages points on the sphere into the ball's interior, which
    # costs a linear f value: its maximiser converges more slowly than its value (an angle of
    # 5e-4 after the default 20 steps, 3e-7 after 40).
    steps = 20 if norm == "inf" else 40
    result = worst_case_sharpness(
        loss, params, rho, norm=norm, adaptive=adaptive, xi=xi, solver=flatmin.APGD(maxiter=steps)
    )
    assert isinstance(result, WorstCaseSharpness)
    c = _scale(w, adaptive, xi)
    cg = c * g
    if norm == "inf":
        exact, u = rho * np.sum(np.abs(cg)), rho * np.sign(cg)
    else:
        exact, u = rho * np.linalg.norm(cg), rho * cg / np.linalg.norm(cg)
    delta = flat64(result.delta)
    slack = linear_slack(g, w, delta)
    assert abs(float(result.value) - exact) <= slack, (float(result.value), exact, slack)
    # The value is f at the returned delta: for a linear f, g . delta.
    assert abs(float(result.value) - g @ delta) <= slack
    np.testing.assert_allclose(delta, c * u, rtol=1e-4, atol=1e-6 * rho * np.max(c))
    _assert_inside(delta, c, rho, norm)
    assert float(result.max_loss - result.loss) == float(result.value)


def _assert_inside(delta: np.ndarray, c: np.ndarray, rho: float, norm) -> None:
    u = delta / c
    size = np.max(np.abs(u)) if norm == "inf" else np.linalg.norm(u)
    assert size <= rho * (1 + 4 * U32), (size, rho)


def test_worst_case_history_is_the_best_so_far():
    loss, params, _, _ = _linear_problem(1)
    solver = flatmin.APGD(maxiter=12, restarts=3)
    result = worst_case_sharpness(loss, params, 0.05, norm=2, solver=solver)
    history = np.asarray(result.history)
    assert history.shape == (12,) and int(result.num_steps) == 12
    assert int(result.num_evaluations) == 13 and int(result.status) == flatmin.Status.FINISHED
    assert np.all(history >= 0) and np.all(np.diff(history) >= 0)
    np.testing.assert_allclose(history[-1], result.value, rtol=1e-5)


@pytest.mark.parametrize("adaptive", [True, False])
def test_worst_case_l2_of_a_convex_quadratic_is_its_top_eigenvalue(adaptive):
    """Oracle: at the minimiser of f = c0 + 1/2 d^T H d (H positive definite), the maximum over
    ||delta / c||_2 <= rho is rho^2 / 2 lambda_max(C H C), C = diag(c), on the boundary."""
    rng = np.random.default_rng(2)
    params = nested(_normal(rng))
    lam = np.concatenate([[8.0, 3.0], rng.uniform(0.1, 2.0, N - 2)])
    H = rotated(lam, rng)
    c0, rho = 0.25, 0.1
    loss = quadratic(H, params, c0)
    w = flat64(params)
    c = _scale(w, adaptive)
    exact = rho**2 / 2 * np.linalg.eigvalsh(c[:, None] * h32(H) * c[None, :])[-1]
    result = worst_case_sharpness(
        loss, params, rho, norm=2, adaptive=adaptive, solver=flatmin.APGD(maxiter=60)
    )
    delta = flat64(result.delta)
    slack = _quadratic_slack(h32(H), w, delta, c0 + exact)
    assert float(result.value) <= exact + slack, (float(result.value), exact, slack)
    assert float(result.value) >= exact * (1 - 1e-4), (float(result.value), exact)
    _assert_inside(delta, c, rho, 2)


def test_worst_case_with_xi_1_is_keskars_inner_maximum():
    """Oracle: with xi = 1 and rho = eps the l-inf ball is Metric 2.1's box |delta_i| <=
    eps (|w_i| + 1); for a separable convex quadratic centred at w its maximum is
    1/2 sum h_i r_i^2, at any vertex. flatmin.sharpness reports the same maximum as a percentage
    of 1 + f(w) (its defaults reach 99.5% of it here: tests/measures/test_sharpness.py)."""
    rng = np.random.default_rng(1)
    eps, c0 = 1e-3, 0.25
    params = nested(_normal(rng))
    h = nested(lambda s: 10.0 ** rng.uniform(2.0, 5.0, size=s))  # 3 decades
    loss = separable(h, params, c0)
    w, hv = flat64(params), flat64(h)
    r = halfwidths(w, eps)
    exact = 0.5 * np.sum(hv * r**2)
    slack = np.sum(hv * r * spacing32(np.abs(w) + r)) + 2 * (N + 2) * U32 * (c0 + exact)

    result = worst_case_sharpness(loss, params, eps, norm="inf", xi=1.0)
    assert abs(float(result.value) - exact) <= slack, (float(result.value), exact, slack)
    assert np.all(np.abs(flat64(result.delta)) <= r * (1 + 4 * U32))

    keskar = float(flatmin.sharpness(loss, params, eps=eps))
    assert keskar <= phi(c0 + exact, c0) + 100 * slack / (1 + c0)
    np.testing.assert_allclose(keskar * (1 + float(result.loss)) / 100, result.value, rtol=5e-3)
    # One harness: the same maximum by Metric 2.1's own solver, through worst_case_sharpness.
    by_lbfgsb = worst_case_sharpness(loss, params, eps, norm="inf", xi=1.0, solver=flatmin.LBFGSB())
    assert abs(float(by_lbfgsb.value) - exact) <= max(slack, 5e-3 * exact)


def test_worst_case_at_a_maximum_is_zero_at_delta_zero():
    # Every perturbation lowers f: the best point is delta = 0, never a lower start.
    rng = np.random.default_rng(3)
    params = nested(_normal(rng))
    loss = separable(jax.tree.map(lambda p: -jnp.ones_like(p), params), params, 1.0)
    result = worst_case_sharpness(loss, params, 0.1, solver=flatmin.APGD(restarts=2))
    assert float(result.value) == 0.0 and float(result.max_loss) == float(result.loss) == 1.0
    assert np.all(flat64(result.delta) == 0) and np.all(np.asarray(result.history) == 0)


# Average case -------------------------------------------------------------------------------


def _offset_quadratic(seed: int):
    """(loss, params, H32, w, g): f = 0.1 + 1/2 d^T H d with the centre off w (g = H d != 0)."""
    rng = np.random.default_rng(seed)
    params = nested(_normal(rng))
    center = jax.tree.map(
        lambda p: p + 0.05 * jnp.asarray(rng.normal(size=p.shape), p.dtype), params
    )
    H = rotated(rng.uniform(0.5, 5.0, N), rng)
    w = flat64(params)
    return quadratic(H, center, 0.1), params, h32(H), w, h32(H) @ (w - flat64(center))


@pytest.mark.parametrize(
    ("distribution", "adaptive"), [("gaussian", True), ("gaussian", False), ("uniform", True)]
)
def test_average_case_of_a_quadratic_and_its_standard_error(distribution, adaptive):
    """Oracle: delta = sigma C z with E z = 0, E z z^T = m2 I (m2 = 1 Gaussian, 1/3 uniform) gives
    E f(w + delta) - f(w) = m2 / 2 tr(A), A = sigma^2 C H C, whatever the gradient g. Each
    sample is a.z + 1/2 z^T A z (a = sigma C g), of variance ||a||^2 + tr(A^2) / 2 (Gaussian) or
    ||a||^2 / 3 + 1/4 (4/45 sum_i A_ii^2 + 2/9 sum_{i != j} A_ij^2) (uniform: E z^4 = 1/5)."""
    loss, params, H, w, g = _offset_quadratic(4)
    sigma, num_samples = (0.05 if adaptive else 0.03), 400
    c = _scale(w, adaptive)
    A = sigma**2 * c[:, None] * H * c[None, :]
    a = sigma * c * g
    if distribution == "gaussian":
        exact = np.trace(A) / 2
        variance = a @ a + np.sum(A**2) / 2
    else:
        exact = np.trace(A) / 6
        off = np.sum(A**2) - np.sum(np.diag(A) ** 2)
        variance = a @ a / 3 + (4 / 45 * np.sum(np.diag(A) ** 2) + 2 / 9 * off) / 4
    stderr = math.sqrt(variance / num_samples)

    result = average_case_sharpness(
        loss,
        params,
        sigma,
        distribution=distribution,
        adaptive=adaptive,
        num_samples=num_samples,
    )
    assert isinstance(result, AverageCaseSharpness) and int(result.num_samples) == num_samples
    assert abs(float(result.value) - exact) < 4 * stderr, (float(result.value), exact, stderr)
    np.testing.assert_allclose(result.stderr, stderr, rtol=0.25)
    np.testing.assert_allclose(result.loss, 0.1 + 0.5 * (g @ np.linalg.solve(H, g)), rtol=1e-5)


def test_average_case_stderr_matches_the_spread_of_independent_estimates():
    loss, params, *_ = _offset_quadratic(5)
    keys = jax.random.split(jax.random.key(3), 40)
    estimates = jax.vmap(
        lambda k: average_case_sharpness(loss, params, 0.05, num_samples=25, key=k)
    )(keys)
    spread = np.std(np.asarray(estimates.value), ddof=1)
    assert 0.7 < spread / np.mean(np.asarray(estimates.stderr)) < 1.4


def test_average_case_in_batches_equals_all_at_once():
    loss, params, *_ = _offset_quadratic(6)
    at_once = average_case_sharpness(loss, params, 0.05, num_samples=20)
    batched = average_case_sharpness(loss, params, 0.05, num_samples=20, batch_size=7)
    np.testing.assert_allclose(batched.value, at_once.value, rtol=1e-5)
    np.testing.assert_allclose(batched.stderr, at_once.stderr, rtol=1e-5)


# PAC-Bayes sigma ----------------------------------------------------------------------------


def _minimum_quadratic(seed: int):
    """(loss, params, H32, w): f = 0.1 + 1/2 (x - w)^T H (x - w), minimised at w."""
    rng = np.random.default_rng(seed)
    params = nested(_normal(rng))
    H = rotated(rng.uniform(0.5, 5.0, N), rng)
    return quadratic(H, params, 0.1), params, h32(H), flat64(params)


@pytest.mark.parametrize(("adaptive", "magnitude_eps"), [(False, 0.0), (True, 0.0), (True, 0.01)])
def test_pac_bayes_sigma_of_a_quadratic(adaptive, magnitude_eps):
    """Oracle: at the minimiser, Gaussian noise of variances v_i raises f by 1/2 sum_i H_ii v_i
    in expectation: v = sigma^2 gives sigma* = sqrt(2 T / tr H); v = sigma^2 w^2 + eps^2 gives
    sigma* = sqrt((2 T - eps^2 tr H) / sum_i H_ii w_i^2). The estimate uses N fixed samples:
    1/2 z^T D H D z with D^2 = diag(v), relative standard deviation sqrt(2 tr((DHD)^2)) / tr(DHD)
    / sqrt(N), of which sigma* inherits about half; plus the bisection's resolution."""
    loss, params, H, w = _minimum_quadratic(7)
    target, num_samples, steps, sigma_max = 0.02, 64, 20, 2.0
    weights = w**2 if adaptive else np.ones_like(w)
    exact = math.sqrt((2 * target - magnitude_eps**2 * np.trace(H)) / (np.diag(H) @ weights))
    d = np.sqrt(exact**2 * weights + magnitude_eps**2)
    DHD = d[:, None] * H * d[None, :]
    relative = math.sqrt(2 * np.sum(DHD**2) / num_samples) / np.trace(DHD)
    resolution = sigma_max / 2**steps

    result = pac_bayes_sigma(
        loss,
        params,
        target,
        adaptive=adaptive,
        magnitude_eps=magnitude_eps,
        steps=steps,
        num_samples=num_samples,
        sigma_max=sigma_max,
    )
    assert isinstance(result, PacBayesSigma) and int(result.num_steps) == steps
    sigma = float(result.value)
    assert abs(sigma - exact) <= exact * 2 * relative + resolution, (sigma, exact, relative)
    # The returned sigma is the bracket's lower end, one resolution below the upper end.
    assert float(result.increase) <= target
    np.testing.assert_allclose(float(result.upper) - sigma, resolution, rtol=1e-3)


def test_pac_bayes_sigma_of_a_non_differentiable_loss():
    """Oracle: f(w) = the fraction of coordinates whose sign differs from w's (a 0-1 error,
    as Jiang et al. use) has E f(w + u) = mean_i Phi(-|w_i| / sigma) under plain noise; sigma*
    solves mean_i Phi(-|w_i| / sigma) = T (scipy). The estimate's error, through the slope of
    that expectation, bounds sigma's."""
    rng = np.random.default_rng(8)
    params = nested(_normal(rng))
    signs = jax.tree.map(jnp.sign, params)

    def loss(p):
        flips = jax.tree.map(lambda s, x: jnp.sum(jnp.sign(x) != s), signs, p)
        return sum(jax.tree.leaves(flips)).astype(jnp.float32) / N

    w = np.abs(flat64(params))
    target, num_samples = 0.1, 64
    expected = lambda s: np.mean(scipy.stats.norm.cdf(-w / s)) - target
    exact = scipy.optimize.brentq(expected, 1e-3, 10.0, xtol=1e-12)
    p = scipy.stats.norm.cdf(-w / exact)
    sample_sd = math.sqrt(np.sum(p * (1 - p))) / N
    slope = np.mean(scipy.stats.norm.pdf(w / exact) * w / exact**2)
    result = pac_bayes_sigma(loss, params, target, adaptive=False, num_samples=num_samples)
    tolerance = 4 * sample_sd / math.sqrt(num_samples) / slope + 2.0 / 2**20
    assert abs(float(result.value) - exact) <= tolerance, (float(result.value), exact, tolerance)


def test_pac_bayes_terms_follow_jiang_et_al():
    """flatness = 1 / sigma^2; kl_term = ||w - w0||^2 / (4 sigma^2) (plain) and
    1/4 sum_i log((eps^2 + (sigma^2 + 1) ||d||^2 / n) / (eps^2 + sigma^2 d_i^2)) (adaptive),
    recomputed in float64 from the reported sigma."""
    loss, params, _, w = _minimum_quadratic(9)
    rng = np.random.default_rng(9)
    init = nested(_normal(rng, 0.5))
    for init_params, w0 in ((None, np.zeros_like(w)), (init, flat64(init))):
        d2 = (w - w0) ** 2
        plain = pac_bayes_sigma(loss, params, 0.02, adaptive=False, init_params=init_params)
        s = float(plain.value)
        np.testing.assert_allclose(plain.flatness, 1 / s**2, rtol=1e-5)
        np.testing.assert_allclose(plain.kl_term, np.sum(d2) / (4 * s**2), rtol=1e-5)
        eps = 1e-3
        mag = pac_bayes_sigma(loss, params, 0.02, init_params=init_params, magnitude_eps=eps)
        s = float(mag.value)
        ratio = (eps**2 + (s**2 + 1) * np.sum(d2) / N) / (eps**2 + s**2 * d2)
        np.testing.assert_allclose(mag.flatness, 1 / s**2, rtol=1e-5)
        np.testing.assert_allclose(mag.kl_term, np.sum(np.log(ratio)) / 4, rtol=1e-5)


def test_pac_bayes_ends_of_the_search():
    loss, params, _, _ = _minimum_quadratic(10)
    # A target no noise below sigma_max reaches: the whole bracket stays below it.
    wide = pac_bayes_sigma(loss, params, 1e6, adaptive=False, steps=10, sigma_max=0.5)
    np.testing.assert_allclose(wide.value, 0.5 * (1 - 2.0**-10), rtol=1e-6)
    assert float(wide.upper) == 0.5
    # A target every tried sigma exceeds: sigma 0, nothing evaluated there.
    narrow = pac_bayes_sigma(loss, params, 1e-12, adaptive=False, steps=5)
    assert float(narrow.value) == 0.0 and math.isinf(float(narrow.flatness))
    assert math.isnan(float(narrow.increase)) and math.isnan(float(narrow.stderr))


# Transformations and keys --------------------------------------------------------------------


def _quartic(seed: int):
    """A nonquadratic loss 1/4 sum h x^4 + 1/2 x^T B x + g.x and one seed's params."""
    rng = np.random.default_rng(seed)
    h = jnp.asarray(rng.uniform(0.5, 2.0, N), jnp.float32)
    B = jnp.asarray(rotated(rng.uniform(0.1, 1.0, N), rng), jnp.float32)
    g = jnp.asarray(rng.normal(size=N), jnp.float32)

    def loss(p):
        x = jax.flatten_util.ravel_pytree(p)[0]
        return jnp.sum(h * x**4) / 4 + 0.5 * x @ (B @ x) + g @ x

    return loss


_LOSS = _quartic(11)
_SEEDS = [nested(_normal(np.random.default_rng(seed), 0.5)) for seed in (12, 13, 14)]
# At its minimiser only the random start decides where the worst-case ascent goes.
_CENTRED = quadratic(rotated(np.linspace(0.5, 5.0, N), np.random.default_rng(15)), _SEEDS[0], 0.1)
_MEASURES = {
    "worst_inf": lambda f, p, key=None: worst_case_sharpness(f, p, 0.05, key=key, solver=_APGD3),
    "worst_l2": lambda f, p, key=None: worst_case_sharpness(
        f, p, 0.05, norm=2, key=key, solver=_APGD3
    ),
    "average": lambda f, p, key=None: average_case_sharpness(f, p, 0.05, num_samples=8, key=key),
    "pac_bayes": lambda f, p, key=None: pac_bayes_sigma(
        f, p, 0.05, num_samples=8, steps=12, key=key
    ),
}
# The bisection may take the other branch where an estimate is within rounding of the target.
_ATOL = {"pac_bayes": 2.0 / 2**12}


@pytest.mark.parametrize("name", list(_MEASURES))
def test_vmap_over_stacked_seeds_equals_a_loop(name):
    measure = _MEASURES[name]
    stacked = jax.tree.map(lambda *leaves: jnp.stack(leaves), *_SEEDS)
    batched = jax.vmap(lambda p: measure(_LOSS, p).value)(stacked)
    looped = [float(measure(_LOSS, p).value) for p in _SEEDS]
    assert batched.shape == (3,)
    np.testing.assert_allclose(batched, looped, rtol=1e-5, atol=_ATOL.get(name, 0.0))


@pytest.mark.parametrize("name", list(_MEASURES))
def test_jit_equals_eager(name):
    measure = _MEASURES[name]
    jitted = jax.jit(lambda p: measure(_LOSS, p).value)(_SEEDS[0])
    eager = measure(_LOSS, _SEEDS[0]).value
    np.testing.assert_allclose(jitted, eager, rtol=1e-5, atol=_ATOL.get(name, 0.0))


@pytest.mark.parametrize("name", list(_MEASURES))
def test_same_key_same_value_other_key_other_value(name):
    measure = _MEASURES[name]
    first = measure(_CENTRED, _SEEDS[0], jax.random.key(1)).value
    np.testing.assert_array_equal(first, measure(_CENTRED, _SEEDS[0], jax.random.key(1)).value)
    assert float(first) != float(measure(_CENTRED, _SEEDS[0], jax.random.key(2)).value)
    # No key: a fixed default.
    default = measure(_CENTRED, _SEEDS[0]).value
    np.testing.assert_array_equal(default, measure(_CENTRED, _SEEDS[0]).value)


# Validation ---------------------------------------------------------------------------------

_P = {"w": jnp.ones((2, 3), jnp.float32), "b": jnp.ones(2, jnp.float32)}
_APGD3 = flatmin.APGD(maxiter=3)
_F = lambda p: jnp.sum(p["w"] ** 2) + jnp.sum(p["b"] ** 2)
_WORST = lambda **kw: worst_case_sharpness(_F, _P, kw.pop("rho", 0.1), **kw)
_AVERAGE = lambda **kw: average_case_sharpness(_F, _P, kw.pop("sigma", 0.1), **kw)
_PAC = lambda **kw: pac_bayes_sigma(_F, _P, kw.pop("target", 0.1), **kw)


@pytest.mark.parametrize(
    ("call", "match"),
    [
        *[(lambda v=v: _WORST(rho=v), "rho") for v in (0.0, -1.0, math.inf, math.nan, True)],
        *[(lambda v=v: _AVERAGE(sigma=v), "sigma") for v in (0.0, -0.1, math.inf, math.nan)],
        *[(lambda v=v: _PAC(target=v), "target") for v in (0.0, -0.1, math.inf, math.nan)],
        (lambda: _WORST(rho=jnp.ones(2)), "rho"),
        (lambda: _WORST(norm=1), "norm"),
        (lambda: _WORST(norm="l2"), "norm"),
        (lambda: _WORST(norm=True), "norm"),
        (lambda: _WORST(xi=-1.0), "xi"),
        (lambda: _WORST(adaptive=1), "adaptive"),
        (lambda: _WORST(solver="apgd"), "solver"),
        (lambda: _WORST(args=3.0), "args"),
        (lambda: _AVERAGE(args=(jnp.ones(2),)), "loss_fn"),
        (lambda: _AVERAGE(distribution="laplace"), "distribution"),
        (lambda: _AVERAGE(num_samples=1), "num_samples"),
        (lambda: _AVERAGE(num_samples=True), "num_samples"),
        (lambda: _AVERAGE(batch_size=0), "batch_size"),
        (lambda: _PAC(steps=0), "steps"),
        (lambda: _PAC(num_samples=0), "num_samples"),
        (lambda: _PAC(sigma_max=0.0), "sigma_max"),
        (lambda: _PAC(magnitude_eps=-1.0), "magnitude_eps"),
        (lambda: _PAC(init_params={"w": jnp.ones(6)}), "init_params"),
        (lambda: _PAC(init_params={"w": jnp.ones(6), "b": jnp.ones(2)}), "init_params"),
        (lambda: worst_case_sharpness("f", _P, 0.1), "loss_fn"),
        (lambda: average_case_sharpness(lambda p: p["b"], _P, 0.1), "loss_fn"),
        (lambda: pac_bayes_sigma(_F, {}, 0.1), "params"),
        (lambda: worst_case_sharpness(_F, {"w": jnp.ones(3, jnp.int32)}, 0.1), "params"),
        (lambda: _WORST(only="nothing"), "only"),
        (lambda: _AVERAGE(only=3), "only"),
        (lambda: _PAC(only="["), "only"),
    ],
)
def test_bad_arguments_raise_value_error_naming_them(call, match):
    with pytest.raises(ValueError, match=match):
        call()


def test_non_finite_loss_gives_nan_eagerly_and_under_jit():
    """The policy flatmin.sharpness follows too: a NaN figure, never an exception, so one
    diverged seed in a vmapped batch does not stop the others."""
    loss = lambda p: jnp.log(-_F(p))
    result = worst_case_sharpness(loss, _P, 0.1)
    assert math.isnan(float(result.value)) and int(result.status) == flatmin.Status.DIVERGED
    average = average_case_sharpness(loss, _P, 0.1)
    assert math.isnan(float(average.value)) and int(average.status) == flatmin.Status.DIVERGED
    assert math.isnan(float(jax.jit(lambda p: worst_case_sharpness(loss, p, 0.1).value)(_P)))
    # A diverged seed's parameters (NaN) are no bad argument either: its figure is NaN.
    nan_params = {"w": jnp.full(3, jnp.nan), "b": _P["b"]}
    assert math.isnan(float(worst_case_sharpness(_F, nan_params, 0.1).value))
