"""Tests of flatmin.random_subspace: shape, dtype, determinism, distributions, normalization.

Oracles: the parameter count of the pytree, the stated distributions' ranges and moments (loose
tolerances, many samples), and unit column norms.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import flatmin
from flatmin.measures._subspace import subspace_coordinates


def _params(dtype=jnp.float32):
    """Nested pytree with a scalar leaf: n = 30 * 20 + 20 + 1 = 621 parameters."""
    return {
        "layer": {"w": jnp.ones((30, 20), dtype), "b": jnp.zeros((20,), dtype)},
        "scale": jnp.asarray(2.0, dtype),
    }


N = 621


def test_shape_and_dtype():
    """Oracle: n counts every parameter of the pytree; the dtype follows the params (float32)."""
    A = flatmin.random_subspace(jax.random.key(0), _params(), p=7)
    assert A.shape == (N, 7)
    assert A.dtype == jnp.float32
    assert flatmin.random_subspace(jax.random.key(0), _params()).shape == (N, 100)  # default p
    assert flatmin.random_subspace(jax.random.key(0), _params(), p=N).shape == (N, N)  # p = n ok


@pytest.mark.parametrize("distribution", ["gaussian", "uniform"])
def test_dtype_follows_params_under_x64(distribution):
    """Oracle: float64 params give a float64 A and float32 params a float32 A, also with x64."""
    with jax.enable_x64(True):
        A64 = flatmin.random_subspace(
            jax.random.key(0), _params(jnp.float64), p=3, distribution=distribution
        )
        A32 = flatmin.random_subspace(
            jax.random.key(0), _params(jnp.float32), p=3, distribution=distribution
        )
        assert A64.dtype == jnp.float64
        assert A32.dtype == jnp.float32


@pytest.mark.parametrize("normalize", [False, True])
@pytest.mark.parametrize("distribution", ["gaussian", "uniform"])
def test_deterministic_for_a_key_and_key_dependent(distribution, normalize):
    """Oracle: same key -> bitwise equal; a different key -> a different matrix."""
    kw = dict(p=5, distribution=distribution, normalize=normalize)
    a = flatmin.random_subspace(jax.random.key(1), _params(), **kw)
    b = flatmin.random_subspace(jax.random.key(1), _params(), **kw)
    c = flatmin.random_subspace(jax.random.key(2), _params(), **kw)
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert not np.array_equal(np.asarray(a), np.asarray(c))
    assert np.all(np.isfinite(np.asarray(a)))


def _big():
    return {"w": jnp.zeros((2000,), jnp.float32)}  # n = 2000; with p = 100, 2e5 entries


def test_gaussian_moments():
    """Oracle: standard normal entries. Mean 0 (std error ~0.002), std 1 (std error ~0.0016),
    and tails beyond 3 occur (P(|z| > 3) ~ 0.27%, ~540 expected), unlike a uniform draw.
    """
    A = np.asarray(flatmin.random_subspace(jax.random.key(3), _big(), p=100), np.float64)
    assert A.shape == (2000, 100)
    assert abs(A.mean()) < 0.02
    assert abs(A.std() - 1.0) < 0.02
    assert 200 < np.sum(np.abs(A) > 3.0) < 1000
    column_means = A.mean(axis=0)  # columns are independent draws, not copies of one another
    assert np.unique(column_means).size == 100


def test_uniform_range_and_moments():
    """Oracle: entries uniform on [-1, 1]: inside the interval, reaching near both ends,
    mean 0 and variance 1/3 (loose tolerances for 2e5 samples).
    """
    A = np.asarray(
        flatmin.random_subspace(jax.random.key(4), _big(), p=100, distribution="uniform"),
        np.float64,
    )
    assert np.all(A >= -1.0) and np.all(A <= 1.0)
    assert A.min() < -0.99 and A.max() > 0.99
    assert abs(A.mean()) < 0.01
    assert abs(A.var() - 1.0 / 3.0) < 0.01


@pytest.mark.parametrize("distribution", ["gaussian", "uniform"])
def test_normalize_gives_unit_columns(distribution):
    """Oracle: normalize=True makes every column unit Euclidean norm."""
    A = flatmin.random_subspace(
        jax.random.key(5), _params(), p=12, distribution=distribution, normalize=True
    )
    assert A.shape == (N, 12) and A.dtype == jnp.float32
    norms = np.linalg.norm(np.asarray(A, np.float64), axis=0)
    np.testing.assert_allclose(norms, np.ones(12), rtol=1e-5)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        (dict(p=0), r"\bp\b"),
        (dict(p=-3), r"\bp\b"),
        (dict(p=N + 1), r"\bp\b"),
        (dict(p=5, distribution="cauchy"), r"\bdistribution\b"),
        (dict(p=5.0), r"^p must be an integer in \[1, 621\] .* got 5\.0$"),
        (dict(p=True), r"^p must be an integer .* got True \(a bool\)$"),
        (dict(p=np.array(5)), r"^p must be an integer"),
        (dict(params={"w": jnp.ones(3), "i": jnp.arange(3)}), r"^params must hold floating.*'i'"),
        (dict(params={"w": jnp.ones(3, bool)}), r"^params must hold floating.*bool"),
        (dict(params={}), r"^params must contain at least one array"),
        (dict(params={"w": jnp.ones((2, 0))}, p=1), r"^p must be an integer in \[1, 0\]"),
    ],
    ids=[
        "p=0",
        "p<0",
        "p>n",
        "unknown distribution",
        "float p",
        "bool p",
        "array p",
        "integer params",
        "bool params",
        "empty params",
        "no numbers in params",
    ],
)
def test_bad_input_raises_value_error(kwargs, match):
    """Oracle: the spec's validation table; the message names the offending argument."""
    kwargs = {"params": _params()} | kwargs
    with pytest.raises(ValueError, match=match):
        flatmin.random_subspace(jax.random.key(0), **kwargs)


def test_numpy_integer_p_is_accepted():
    A = flatmin.random_subspace(jax.random.key(0), _params(), np.int64(3))
    np.testing.assert_array_equal(A, flatmin.random_subspace(jax.random.key(0), _params(), 3))


@pytest.mark.parametrize("kind", ["gaussian", "condition 100", "rank deficient"])
def test_subspace_coordinates_match_float64_pseudo_inverse(kind):
    """A^+ x against NumPy's float64 pinv: a random A, one with singular values spread over
    two decades, and one with a repeated column (minimum-norm solution). The tolerance is 5e-5
    of the largest coordinate: without its refinement step the second case errs by 2.8e-4."""
    rng = np.random.default_rng(0)
    n, p = 3000, 40
    A = rng.normal(size=(n, p))
    if kind == "condition 100":
        U, _, Vt = np.linalg.svd(A, full_matrices=False)
        A = U @ np.diag(np.logspace(0, -2, p)) @ Vt
    elif kind == "rank deficient":
        A[:, -1] = A[:, 0]
    x = rng.normal(size=n) + A @ rng.normal(size=p)
    expected = np.linalg.pinv(A) @ x
    A32, x32 = jnp.asarray(A, jnp.float32), jnp.asarray(x, jnp.float32)
    coords = np.asarray(subspace_coordinates(A32, x32))
    np.testing.assert_allclose(coords, expected, atol=5e-5 * np.max(np.abs(expected)))
