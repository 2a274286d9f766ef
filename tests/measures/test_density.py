"""Tests of flatmin.hessian_density: the Hessian's spectral density by stochastic Lanczos
quadrature.

Oracles: for a diagonal Hessian with few distinct eigenvalues and Rademacher probes every
probe's spectral measure is exactly the true one, (e_i . v)^2 = 1/n, and Lanczos' Gauss
quadrature reproduces it, so the estimate equals the broadened true density pointwise. For a
rotated Hessian with known clusters, each probe's mass on a cluster is v^T P_c v and its mean
v^T H v, whose expectations (n_c / n, tr(H) / n) and exact variances over the probes
(2 sum_{i != j} A_ij^2 / n^2 for Rademacher probes, 2 / (n + 2) (tr(A^2) / n - (tr(A) / n)^2)
for uniform unit probes) are computed in float64. None is taken from flatmin's own output,
except where a test checks that two ways of running it agree (jit, vmap, batches, keys).
"""

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.flatten_util import ravel_pytree

from flatmin.measures import HessianDensity, Status, hessian_density

from ..support.quadratics import N, h32, nested, quadratic, rotated, separable


def _normal(seed: int):
    rng = np.random.default_rng(seed)
    return lambda shape: rng.normal(size=shape)


def _broadened(grid: np.ndarray, lam: np.ndarray, sigma: float) -> np.ndarray:
    """1/n sum_i g_sigma(t - lambda_i) on the grid, float64."""
    z = (grid[:, None] - lam[None, :]) / sigma
    return np.mean(np.exp(-(z**2) / 2), axis=1) / (sigma * math.sqrt(2 * math.pi))


def _mass(density: np.ndarray, grid: np.ndarray, lo: float, hi: float) -> float:
    inside = (grid >= lo) & (grid <= hi)
    return float(np.trapezoid(density[inside], grid[inside]))


def _off_diagonal_sq(A: np.ndarray) -> float:
    return float(np.sum(A**2) - np.sum(np.diag(A) ** 2))


def test_diagonal_hessian_with_few_distinct_eigenvalues_gives_the_exact_density():
    lam = np.repeat([1.0, 2.0, 5.0, 5.5], [15, 10, 12, 8])  # n = 45, 4 distinct
    params = nested(_normal(0))
    h = ravel_pytree(params)[1](jnp.asarray(lam, jnp.float32))
    grid = np.linspace(-1.0, 7.0, 801)
    # m = 10 > 4: Lanczos breaks down after 4 iterations and restarts, at no cost in accuracy.
    result = hessian_density(
        separable(h, params), params, grid, num_probes=3, num_iterations=10, sigma=0.1
    )
    assert isinstance(result, HessianDensity) and int(result.status) == Status.FINISHED
    assert result.value.shape == (801,) and result.nodes.shape == result.weights.shape == (3, 10)
    expected = _broadened(grid, lam, 0.1)
    np.testing.assert_allclose(result.value, expected, rtol=0, atol=1e-4 * expected.max())


# A rotated Hessian with three clusters, one a single repeated eigenvalue. ---------------------

_CLUSTERS = [(-3.0, 2.75, 40), (2.75, 6.0, 30), (6.0, 13.0, 50)]  # (lo, hi, count): n = 120
_GRID = np.linspace(-3.0, 13.0, 1601)


@functools.cache
def _clustered():
    rng = np.random.default_rng(1)
    lam = np.concatenate([rng.uniform(0.5, 1.5, 40), np.full(30, 4.0), rng.uniform(8.0, 10.0, 50)])
    n = lam.size
    Q, _ = np.linalg.qr(rng.normal(size=(n, n)))
    H = (Q * lam) @ Q.T
    H = (H + H.T) / 2
    params = {"a": jnp.asarray(rng.normal(size=(10, 10)), jnp.float32), "b": jnp.zeros(20)}
    projectors = []
    start = 0
    for _, _, count in _CLUSTERS:
        Qc = Q[:, start : start + count]
        projectors.append(Qc @ Qc.T)
        start += count
    return quadratic(H, params), params, h32(H), projectors


@pytest.mark.parametrize("probe", ["rademacher", "gaussian"])
def test_clustered_spectrum_mass_per_cluster_and_moments(probe):
    loss, params, H, projectors = _clustered()
    n, P, sigma = H.shape[0], 20, 0.1
    result = hessian_density(
        loss, params, _GRID, num_probes=P, num_iterations=40, sigma=sigma, probe=probe
    )
    density = np.asarray(result.value, np.float64)

    def probe_sd(A: np.ndarray) -> float:
        """Standard deviation of the mean over P probes of v^T A v, v a unit probe."""
        if probe == "rademacher":
            variance = 2 * _off_diagonal_sq(A) / n**2
        else:
            variance = 2 / (n + 2) * (np.trace(A @ A) / n - (np.trace(A) / n) ** 2)
        return math.sqrt(variance / P)

    # Mixture of unit-mass Gaussians, nodes within [0.5, 10]: the grid holds all but e^-600.
    np.testing.assert_allclose(np.trapezoid(density, _GRID), 1.0, atol=1e-4)
    for (lo, hi, count), Pc in zip(_CLUSTERS, projectors, strict=True):
        mass = _mass(density, _GRID, lo, hi)
        assert abs(mass - count / n) <= 4 * probe_sd(Pc) + 1e-3, (lo, hi, mass, count / n)
    mean = np.trapezoid(density * _GRID, _GRID)
    assert abs(mean - np.trace(H) / n) <= 4 * probe_sd(H), (mean, np.trace(H) / n)
    # Quadrature is exact for degree < 2m: the second moment is ||H v||^2, broadened by sigma^2.
    second = np.trapezoid(density * _GRID**2, _GRID)
    expected = np.trace(H @ H) / n + sigma**2
    assert abs(second - expected) <= 4 * probe_sd(H @ H), (second, expected)


def test_weights_sum_to_one_and_nodes_interlace():
    loss, params, H, _ = _clustered()
    result = hessian_density(loss, params, _GRID, num_probes=4, num_iterations=30, sigma=0.1)
    weights, nodes = np.asarray(result.weights), np.asarray(result.nodes)
    assert np.all(weights >= 0)
    np.testing.assert_allclose(weights.sum(axis=1), 1.0, rtol=1e-5)
    lam = np.linalg.eigvalsh(H)
    # Ritz values lie in [lambda_min, lambda_max] (Cauchy interlacing), up to rounding.
    assert np.all(nodes >= lam[0] - 1e-4 * lam[-1]) and np.all(nodes <= lam[-1] * (1 + 1e-5))


def test_default_sigma_is_one_percent_of_the_grid_span():
    loss, params, _, _ = _clustered()
    result = hessian_density(loss, params, _GRID, num_probes=2, num_iterations=20)
    np.testing.assert_allclose(result.sigma, 0.16, rtol=1e-6)


# Transformations and keys --------------------------------------------------------------------


def _quartic_loss():
    """1/4 sum h x^4 + 1/2 x^T B x: a Hessian 3 diag(h x^2) + B that depends on the point."""
    rng = np.random.default_rng(2)
    h = jnp.asarray(rng.uniform(0.5, 2.0, N), jnp.float32)
    B = jnp.asarray(rotated(rng.uniform(0.1, 1.0, N), rng), jnp.float32)

    def loss(p):
        x = ravel_pytree(p)[0]
        return jnp.sum(h * x**4) / 4 + 0.5 * x @ (B @ x)

    return loss


_LOSS = _quartic_loss()
_SEEDS = [nested(_normal(seed)) for seed in (3, 4, 5)]
_SMALL_GRID = np.linspace(-1.0, 12.0, 131)


def _density(p, key=None, batch_size=None):
    return hessian_density(
        _LOSS,
        p,
        _SMALL_GRID,
        key=key,
        num_probes=3,
        num_iterations=12,
        sigma=0.3,
        batch_size=batch_size,
    )


def test_vmap_over_stacked_seeds_equals_a_loop():
    stacked = jax.tree.map(lambda *leaves: jnp.stack(leaves), *_SEEDS)
    batched = jax.vmap(lambda p: _density(p).value)(stacked)
    looped = np.stack([np.asarray(_density(p).value) for p in _SEEDS])
    assert batched.shape == (3, 131)
    np.testing.assert_allclose(batched, looped, rtol=1e-5, atol=1e-5 * looped.max())


def test_jit_equals_eager_and_batches_equal_all_at_once():
    eager = np.asarray(_density(_SEEDS[0]).value)
    jitted = jax.jit(lambda p: _density(p).value)(_SEEDS[0])
    np.testing.assert_allclose(jitted, eager, rtol=1e-5, atol=1e-5 * eager.max())
    batched = _density(_SEEDS[0], batch_size=2).value
    np.testing.assert_allclose(batched, eager, rtol=1e-5, atol=1e-5 * eager.max())


def test_same_key_same_density_other_key_other_density():
    first = _density(_SEEDS[0], jax.random.key(1)).value
    np.testing.assert_array_equal(first, _density(_SEEDS[0], jax.random.key(1)).value)
    assert not np.allclose(first, _density(_SEEDS[0], jax.random.key(2)).value)
    np.testing.assert_array_equal(_density(_SEEDS[0]).value, _density(_SEEDS[0]).value)


# Validation ---------------------------------------------------------------------------------

_P = {"w": jnp.ones((2, 3), jnp.float32), "b": jnp.ones(2, jnp.float32)}  # n = 8
_F = lambda p: jnp.sum(p["w"] ** 2) + jnp.sum(p["b"] ** 2)
_G = np.linspace(0.0, 4.0, 9)
_D = lambda **kw: hessian_density(_F, _P, kw.pop("grid", _G), **kw)


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda: _D(grid=np.ones((3, 3))), "grid"),
        (lambda: _D(grid=np.array([])), "grid"),
        (lambda: _D(grid=np.array([0.0, np.nan])), "grid"),
        (lambda: _D(grid=np.array([1 + 1j, 2.0])), "grid"),
        (lambda: _D(grid=np.array([1.0])), "sigma"),
        (lambda: _D(sigma=0.0), "sigma"),
        (lambda: _D(sigma=-1.0), "sigma"),
        (lambda: _D(sigma=math.inf), "sigma"),
        (lambda: _D(num_probes=0), "num_probes"),
        (lambda: _D(num_probes=True), "num_probes"),
        (lambda: _D(num_iterations=0), "num_iterations"),
        (lambda: _D(num_iterations=9), "num_iterations"),
        (lambda: _D(probe="normal"), "probe"),
        (lambda: _D(batch_size=0), "batch_size"),
        (lambda: _D(only="nothing"), "only"),
        (lambda: _D(only="b", num_iterations=3), "num_iterations"),
        (lambda: hessian_density("f", _P, _G), "loss_fn"),
        (lambda: hessian_density(_F, {}, _G), "params"),
        (lambda: hessian_density(_F, {"w": jnp.ones(3, jnp.int32)}, _G), "params"),
        (lambda: _D(args=jnp.ones(2)), r"^args must"),
    ],
)
def test_bad_arguments_raise_value_error_naming_them(call, match):
    with pytest.raises(ValueError, match=match):
        call()
