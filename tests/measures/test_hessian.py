"""Tests of flatmin.measures' Hessian: Lanczos eigenvalues, Hutchinson's trace and Hessian-vector
products.

Every expected number is known in closed form (quadratics 1/2 x^T H x + b^T x with
H = Q diag(lam) Q^T for a chosen spectrum lam) or comes from the dense Hessian (`jax.hessian`)
diagonalised by NumPy in float64; none is taken from flatmin's own output, except where a
test checks that two ways of running it agree (jit, vmap, batches).
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.flatten_util import ravel_pytree

from flatmin.measures import (
    HessianEigenvalues,
    Status,
    TraceEstimate,
    hessian_eigenvalues,
    hessian_trace,
    hvp,
)


def _nested(n: int, rng: np.random.Generator, dtype) -> dict:
    """A nested pytree of n random numbers, one leaf a scalar."""
    shapes = {"dense": {"kernel": (3, 4), "bias": (4,)}, "scale": (), "rest": (n - 17,)}
    return jax.tree.map(
        lambda s: jnp.asarray(rng.normal(size=s), dtype),
        shapes,
        is_leaf=lambda s: isinstance(s, tuple),
    )


@functools.cache
def _quadratic(lam: tuple, seed: int = 0, dtype=np.float32):
    """(loss, params, H) for 1/2 x^T H x + b^T x on a nested pytree x, with spec(H) = lam.

    H (float64, n x n) is Q diag(lam) Q^T for a random orthogonal Q; the loss uses H rounded to
    `dtype`. Cached, so that every test of one problem shares one compiled program.
    """
    rng = np.random.default_rng(seed)
    n = len(lam)
    Q, _ = np.linalg.qr(rng.normal(size=(n, n)))
    H = (Q * np.asarray(lam)) @ Q.T
    H = (H + H.T) / 2
    H_j, b_j = jnp.asarray(H, dtype), jnp.asarray(rng.normal(size=n), dtype)

    def loss(params):
        x = ravel_pytree(params)[0]
        return 0.5 * x @ (H_j @ x) + b_j @ x

    return loss, _nested(n, rng, dtype), H


def _spectrum(top, bulk_low, bulk_high, n, seed=1) -> tuple:
    """top followed by n - len(top) eigenvalues uniform in [bulk_low, bulk_high]."""
    bulk = np.random.default_rng(seed).uniform(bulk_low, bulk_high, n - len(top))
    return tuple(float(v) for v in np.concatenate([top, bulk]))


SEPARATED = _spectrum([50.0, 20.0, 10.0, 7.0, 5.0], -1.0, 1.0, 200)
REPEATED_FEW_DISTINCT = (10.0, 10.0, 10.0, 5.0, 5.0) + (1.0,) * 45
REPEATED = _spectrum([10.0, 10.0, 10.0, 5.0, 5.0], 0.0, 1.0, 300)
CLUSTERED = _spectrum([10.0, 10.0 - 1e-3, 10.0 - 2e-3, 5.0], 0.0, 1.0, 200)
INDEFINITE = _spectrum([4.0, 3.0, 2.0, -30.0, -20.0, -10.0], -1.0, 1.0, 100)
LOW_RANK = (4.0, 2.0, 1.0) + (0.0,) * 47


def _top(lam: tuple, k: int) -> np.ndarray:
    return np.sort(np.asarray(lam))[::-1][:k]


def _values_and_vectors(loss, params, **kwargs) -> tuple:
    """hessian_eigenvalues(..., return_eigenvectors=True) as (values, vectors), after checking
    the result's shape: a finished `HessianEigenvalues`."""
    result = hessian_eigenvalues(loss, params, **kwargs)
    assert isinstance(result, HessianEigenvalues) and result.vectors is not None
    assert int(result.status) == Status.FINISHED
    return result.value, result.vectors


def _flat_rows(tree) -> np.ndarray:
    """A pytree with a leading axis k as a (k, n) float64 array, in ravel_pytree order."""
    return np.asarray(jax.vmap(lambda t: ravel_pytree(t)[0])(tree), np.float64)


# Eigenvalues -------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", [0, 1])
def test_top_eigenvalues_of_a_separated_spectrum(seed):
    loss, params, _ = _quadratic(SEPARATED)
    values = hessian_eigenvalues(loss, params, k=5, key=jax.random.key(seed)).value
    assert values.shape == (5,) and values.dtype == jnp.float32
    np.testing.assert_allclose(values, _top(SEPARATED, 5), rtol=1e-4)


def test_largest_algebraic_not_largest_in_magnitude():
    # The spectrum's largest magnitudes are negative (-30, -20, -10): they must not appear.
    loss, params, _ = _quadratic(INDEFINITE)
    values = hessian_eigenvalues(loss, params, k=3).value
    np.testing.assert_allclose(values, [4.0, 3.0, 2.0], rtol=1e-4)


def test_num_iterations_n_returns_the_whole_spectrum_with_multiplicities():
    lam = (6.0, 6.0, 6.0, 2.0, 2.0, 0.0, 0.0, -1.0, -1.0, -1.0, -3.0, -3.0)
    lam = lam + _spectrum([], -2.0, 5.0, 8, seed=2)  # n = 20, leaves of sizes 12, 4, 1, 3
    loss, params, _ = _quadratic(lam)
    values = hessian_eigenvalues(loss, params, k=20, num_iterations=20).value
    np.testing.assert_allclose(values, _top(lam, 20), atol=1e-5)


def test_repeated_eigenvalues_are_resolved_by_restarts_after_breakdown():
    # Three distinct eigenvalues: the Krylov space of the start vector is invariant after 3
    # iterations and holds one copy of each. Each restart finds one further copy of every
    # eigenvalue it reaches: 10, 5, 1 | 10, 5, 1 | 10, 1, so 8 iterations find all five.
    loss, params, _ = _quadratic(REPEATED_FEW_DISTINCT)
    values = hessian_eigenvalues(loss, params, k=5, num_iterations=8).value
    np.testing.assert_allclose(values, [10.0, 10.0, 10.0, 5.0, 5.0], rtol=1e-5)
    # One iteration short of the last restart, the third copy of 10 is missing.
    values = hessian_eigenvalues(loss, params, k=3, num_iterations=7).value
    np.testing.assert_allclose(values, [10.0, 10.0, 5.0], rtol=1e-5)


def test_repeated_eigenvalues_without_breakdown_keep_the_documented_promise():
    # n = 300 >> m: no breakdown, so only one copy of 10 and of 5 is promised. Whatever fills
    # the other slots, Rayleigh-Ritz values interlace: the i-th never exceeds the true i-th.
    loss, params, _ = _quadratic(REPEATED)
    values = np.asarray(hessian_eigenvalues(loss, params, k=5).value)
    np.testing.assert_allclose(values[0], 10.0, rtol=1e-5)
    assert np.min(np.abs(values - 5.0)) < 5e-5
    assert np.all(values <= _top(REPEATED, 5) + 1e-5 * 10)


def test_clustered_eigenvalues_are_resolved():
    # Gaps of 1e-3 at 10, about a thousand float32 spacings there; the tolerance is gap / 20.
    loss, params, _ = _quadratic(CLUSTERED)
    values = hessian_eigenvalues(loss, params, k=4).value
    np.testing.assert_allclose(values, [10.0, 10.0 - 1e-3, 10.0 - 2e-3, 5.0], rtol=0, atol=5e-5)


def test_low_rank_hessian_breaks_down_without_nan():
    loss, params, H = _quadratic(LOW_RANK)
    values, vectors = _values_and_vectors(loss, params, k=10, return_eigenvectors=True)
    v = _flat_rows(vectors)
    assert np.all(np.isfinite(values)) and np.all(np.isfinite(v))
    np.testing.assert_allclose(values[:3], [4.0, 2.0, 1.0], rtol=1e-5)
    np.testing.assert_allclose(values[3:], 0.0, atol=4e-5)
    np.testing.assert_allclose(v @ v.T, np.eye(10), atol=1e-5)
    residual = H @ v[:3].T - v[:3].T * np.asarray(values[:3], np.float64)
    assert np.linalg.norm(residual, axis=0).max() < 1e-4 * 4


def test_zero_hessian_breaks_down_at_every_iteration_without_nan():
    # A linear loss: every H q is exactly 0, so every iteration is a breakdown.
    params = _nested(30, np.random.default_rng(3), np.float32)
    loss = lambda p: jnp.sum(p["rest"]) - 2.0 * p["scale"]
    values, vectors = _values_and_vectors(loss, params, k=4, return_eigenvectors=True)
    np.testing.assert_array_equal(values, np.zeros(4))
    v = _flat_rows(vectors)
    np.testing.assert_allclose(v @ v.T, np.eye(4), atol=1e-6)


def test_eigenvectors_are_unit_and_satisfy_h_v_equals_lambda_v():
    loss, params, H = _quadratic(SEPARATED)
    values, vectors = _values_and_vectors(loss, params, k=5, return_eigenvectors=True)
    assert jax.tree.structure(vectors) == jax.tree.structure(params)
    for leaf, param in zip(jax.tree.leaves(vectors), jax.tree.leaves(params), strict=True):
        assert leaf.shape == (5, *param.shape) and leaf.dtype == param.dtype
    v = _flat_rows(vectors)
    np.testing.assert_allclose(v @ v.T, np.eye(5), atol=1e-5)
    residual = H @ v.T - v.T * np.asarray(values, np.float64)
    assert np.linalg.norm(residual, axis=0).max() < 1e-4 * 50
    # hvp on the pytree eigenvector agrees with the dense product.
    first = jax.tree.map(lambda leaf: leaf[0], vectors)
    np.testing.assert_allclose(
        ravel_pytree(hvp(loss, params, first))[0], H @ v[0], rtol=0, atol=1e-4
    )


# A nonquadratic loss: a 2-layer tanh network on random points ------------------------------


@functools.cache
def _mlp():
    """(loss, params, dense float64 Hessian) of a 4-12-3 tanh MLP's squared error, n = 99."""
    rng = np.random.default_rng(4)
    X = jnp.asarray(rng.normal(size=(16, 4)), jnp.float32)
    Y = jnp.asarray(rng.normal(size=(16, 3)), jnp.float32)
    params = {
        "hidden": {"w": rng.normal(size=(4, 12)) * 0.8, "b": rng.normal(size=12) * 0.1},
        "out": {"w": rng.normal(size=(12, 3)) * 0.5, "b": np.zeros(3)},
    }
    params = jax.tree.map(lambda a: jnp.asarray(a, jnp.float32), params)

    def loss(p):
        h = jnp.tanh(X @ p["hidden"]["w"] + p["hidden"]["b"][None, :])
        out = h @ p["out"]["w"] + p["out"]["b"][None, :]
        return 0.5 * jnp.mean(jnp.sum((out - Y) ** 2, axis=1))

    x, unravel = ravel_pytree(params)
    H = np.asarray(jax.jit(jax.hessian(lambda y: loss(unravel(y))))(x), np.float64)
    return loss, params, (H + H.T) / 2


def test_mlp_eigenvalues_match_the_dense_hessian():
    loss, params, H = _mlp()
    exact = np.linalg.eigvalsh(H)[::-1]
    assert exact[-1] < 0  # indefinite away from a minimiser
    values = hessian_eigenvalues(loss, params, k=5).value  # m = 40 < n = 99
    np.testing.assert_allclose(values, exact[:5], rtol=1e-3)


def test_mlp_hvp_matches_the_dense_hessian():
    loss, params, H = _mlp()
    v = _nested_like(params, np.random.default_rng(5))
    product = ravel_pytree(hvp(loss, params, v))[0]
    expected = H @ np.asarray(ravel_pytree(v)[0], np.float64)
    np.testing.assert_allclose(product, expected, rtol=0, atol=1e-5 * np.abs(expected).max())


def test_mlp_trace_matches_the_dense_hessian():
    loss, params, H = _mlp()
    estimate = hessian_trace(loss, params, num_samples=200)
    assert abs(float(estimate.value) - np.trace(H)) < 4 * float(estimate.stderr)
    np.testing.assert_allclose(estimate.stderr, _hutchinson_stderr(H, 200), rtol=0.25)


def _nested_like(params, rng: np.random.Generator):
    return jax.tree.map(lambda p: jnp.asarray(rng.normal(size=p.shape), p.dtype), params)


# Trace --------------------------------------------------------------------------------------


def _hutchinson_stderr(H: np.ndarray, num_samples: int) -> float:
    """Exact standard error with Rademacher probes: Var(z^T H z) = 2 sum_{i != j} H_ij^2."""
    off_diagonal = H - np.diag(np.diag(H))
    return float(np.sqrt(2 * np.sum(off_diagonal**2) / num_samples))


def test_trace_of_a_quadratic_and_its_standard_error():
    loss, params, H = _quadratic(SEPARATED)
    stderrs = []
    for num_samples in (100, 1600):
        estimate = hessian_trace(loss, params, num_samples=num_samples)
        assert isinstance(estimate, TraceEstimate) and int(estimate.num_samples) == num_samples
        assert abs(float(estimate.value) - sum(SEPARATED)) < 4 * float(estimate.stderr)
        np.testing.assert_allclose(estimate.stderr, _hutchinson_stderr(H, num_samples), rtol=0.25)
        stderrs.append(float(estimate.stderr))
    # 16 times the probes, a quarter of the error.
    assert 0.2 < stderrs[1] / stderrs[0] < 0.3


def test_trace_of_a_diagonal_hessian_is_exact_with_zero_stderr():
    # z^T D z = sum_i d_i z_i^2 = tr D for every Rademacher z; integer d_i sum exactly.
    params = _nested(40, np.random.default_rng(6), np.float32)
    d = jax.tree.map(
        lambda p: jnp.asarray(np.arange(p.size).reshape(p.shape) % 7 + 1, p.dtype), params
    )
    loss = lambda p: 0.5 * sum(jax.tree.leaves(jax.tree.map(lambda w, h: jnp.sum(h * w**2), p, d)))
    exact = float(sum(np.sum(np.asarray(leaf)) for leaf in jax.tree.leaves(d)))
    for seed in (0, 1):
        estimate = hessian_trace(loss, params, key=jax.random.key(seed), num_samples=10)
        assert float(estimate.value) == exact
        assert float(estimate.stderr) == 0.0


def test_trace_in_batches_equals_all_at_once():
    loss, params, _ = _mlp()
    at_once = hessian_trace(loss, params, num_samples=20)
    batched = hessian_trace(loss, params, num_samples=20, batch_size=7)  # 7 + 7 + 6
    # Same probes, other summation orders: vmapped HVPs of batch 7 instead of 20 may block
    # their sums differently, and the mean adds them up in another order. Rounding errors of
    # random sign over the 20 x 99 products grow like sqrt(20 * 99) u ~ 3e-6 of the
    # magnitudes (probe values ~30, their spread ~15), so rtol 1e-5 for the trace and its
    # standard error. A probe dropped or counted twice would move the trace by ~1/20 of the
    # spread, 2.5%.
    np.testing.assert_allclose(batched.value, at_once.value, rtol=1e-5)
    np.testing.assert_allclose(batched.stderr, at_once.stderr, rtol=1e-5)


def test_a_nonfinite_loss_at_the_point_is_reported_as_diverged():
    # A diverged run's parameters: f itself is NaN there. Not an error: the status says so.
    params = {"w": jnp.asarray([1.0, -2.0, 3.0], jnp.float32)}
    loss = lambda p: jnp.sum(jnp.log(p["w"]) ** 2)  # log(-2) is NaN
    finite = lambda p: jnp.sum(p["w"] ** 2)
    assert int(hessian_eigenvalues(loss, params, k=1).status) == Status.DIVERGED
    assert int(hessian_trace(loss, params, num_samples=2).status) == Status.DIVERGED
    assert int(hessian_eigenvalues(finite, params, k=1).status) == Status.FINISHED
    assert int(hessian_trace(finite, params, num_samples=2).status) == Status.FINISHED


# Transformations and dtypes -----------------------------------------------------------------


def test_jit_and_vmap():
    loss, params, _ = _quadratic(SEPARATED)
    eigenvalues = jax.jit(
        hessian_eigenvalues,
        static_argnums=(0, 2),
        static_argnames=("num_iterations", "return_eigenvectors"),
    )
    keys = jax.random.split(jax.random.key(7), 2)
    jitted = eigenvalues(loss, params, 5, key=keys[0])
    # Jitted as a whole, XLA may fuse and order the float32 sums differently. Lanczos is
    # backward stable: its Ritz values are exact for a matrix within ~m u ||H|| of H (m = 40
    # iterations, ||H|| = 50), so two runs agree to that, 1.2e-4 (2.4e-5 of the fifth value).
    atol = 40 * np.finfo(np.float32).eps / 2 * 50.0
    eager = hessian_eigenvalues(loss, params, 5, key=keys[0])
    np.testing.assert_allclose(jitted.value, eager.value, rtol=0, atol=atol)
    assert int(jitted.status) == Status.FINISHED and jitted.vectors is None
    batched = jax.vmap(lambda key: hessian_eigenvalues(loss, params, 5, key=key))(keys)
    assert batched.value.shape == (2, 5) and batched.status.shape == (2,)
    np.testing.assert_allclose(batched.value, np.tile(_top(SEPARATED, 5), (2, 1)), rtol=1e-4)

    trace = jax.jit(hessian_trace, static_argnums=0, static_argnames="num_samples")
    estimate = trace(loss, params, key=keys[1], num_samples=100)
    expected = hessian_trace(loss, params, key=keys[1], num_samples=100)
    # Other summation orders of 100 probes x 200 products: rtol 1e-5 (see the batches test).
    np.testing.assert_allclose(estimate.value, expected.value, rtol=1e-5)


def test_compiled_size_does_not_grow_with_num_iterations():
    loss, params, _ = _quadratic(LOW_RANK)

    def num_equations(m: int) -> int:
        jaxpr = jax.make_jaxpr(lambda p: hessian_eigenvalues(loss, p, k=2, num_iterations=m))
        (lanczos,) = [e for e in jaxpr(params).eqns if e.params.get("name") == "_lanczos"]
        return len(lanczos.params["jaxpr"].eqns)

    assert num_equations(5) == num_equations(40)


def test_float64():
    with jax.enable_x64(True):
        loss, params, H = _quadratic(SEPARATED, dtype=np.float64)
        values, vectors = _values_and_vectors(loss, params, k=5, return_eigenvectors=True)
        assert values.dtype == jnp.float64
        assert all(leaf.dtype == jnp.float64 for leaf in jax.tree.leaves(vectors))
        np.testing.assert_allclose(values, _top(SEPARATED, 5), rtol=1e-10)
        v = _flat_rows(vectors)
        residual = H @ v.T - v.T * np.asarray(values)
        assert np.linalg.norm(residual, axis=0).max() < 1e-10 * 50
        estimate = hessian_trace(loss, params, num_samples=100)
        assert estimate.value.dtype == jnp.float64 and estimate.stderr.dtype == jnp.float64
        assert abs(float(estimate.value) - sum(SEPARATED)) < 4 * float(estimate.stderr)


# Validation ---------------------------------------------------------------------------------

_PARAMS = {"w": jnp.ones((2, 3), jnp.float32), "b": jnp.ones(2, jnp.float32)}  # n = 8
_LOSS = lambda p: jnp.sum(p["w"] ** 2) + jnp.sum(p["b"] ** 2)


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda: hessian_eigenvalues(_LOSS, _PARAMS, k=0), "k must"),
        (lambda: hessian_eigenvalues(_LOSS, _PARAMS, k=9), "k must"),
        (lambda: hessian_eigenvalues(_LOSS, _PARAMS, k=2.0), "k must"),
        (lambda: hessian_eigenvalues(_LOSS, _PARAMS, k=3, num_iterations=2), "num_iterations"),
        (lambda: hessian_eigenvalues(_LOSS, _PARAMS, k=3, num_iterations=9), "num_iterations"),
        (lambda: hessian_eigenvalues(_LOSS, {"w": jnp.ones(3, jnp.int32)}, k=1), "params"),
        (lambda: hessian_eigenvalues(_LOSS, {}, k=1), "params"),
        (lambda: hessian_eigenvalues(lambda p: p["b"], _PARAMS, k=1), "loss_fn"),
        (lambda: hessian_eigenvalues("loss", _PARAMS, k=1), "loss_fn"),
        (lambda: hessian_trace(lambda p: p["b"], _PARAMS), "loss_fn"),
        (lambda: hessian_trace(_LOSS, _PARAMS, num_samples=1), "num_samples"),
        (lambda: hessian_trace(_LOSS, _PARAMS, batch_size=0), "batch_size"),
        # bool is an int subclass; True is a mistake, not 1.
        (lambda: hessian_eigenvalues(_LOSS, _PARAMS, k=True), r"^k must .* got True \(a bool\)"),
        (lambda: hessian_eigenvalues(_LOSS, _PARAMS, k=2, num_iterations=True), "num_iterations"),
        (lambda: hessian_trace(_LOSS, _PARAMS, num_samples=True), r"\bnum_samples\b"),
        (lambda: hessian_trace(_LOSS, _PARAMS, num_samples=4.0), r"\bnum_samples\b"),
        (lambda: hessian_trace(_LOSS, _PARAMS, batch_size=True), r"\bbatch_size\b.*bool"),
        # args must be a tuple (or list) of loss_fn's further arguments.
        (lambda: hessian_eigenvalues(_LOSS, _PARAMS, k=1, args=jnp.ones(2)), r"^args must"),
        (lambda: hessian_trace(_LOSS, _PARAMS, args=jnp.ones(2)), r"^args must"),
    ],
)
def test_bad_arguments_raise_value_error_naming_them(call, match):
    with pytest.raises(ValueError, match=match):
        call()


def test_default_num_iterations_fits_small_n():
    # n = 8 < 40: the default becomes n, and the whole spectrum (2 with multiplicity 8) is found.
    # The Ritz values come from 8-term float32 sums (q . 2q and the reorthogonalisations): a
    # few ulps of 2 each, 8 u per sum at most, so rtol 1e-5 rather than the 1e-6 it had.
    values = hessian_eigenvalues(_LOSS, _PARAMS, k=8).value
    np.testing.assert_allclose(values, np.full(8, 2.0), rtol=1e-5)


def test_half_precision_params_run_the_linear_algebra_in_float32():
    # The loss runs in bfloat16 (eps = 8e-3); eigh has no bfloat16 kernel, so Lanczos and the
    # trace run in float32. Diagonal H with small integer entries: exact up to the bfloat16 HVP.
    d = {"a": jnp.asarray([6.0, 5.0, 4.0, 1.0], jnp.bfloat16), "b": jnp.full(3, 2.0, jnp.bfloat16)}
    params = jax.tree.map(jnp.ones_like, d)
    loss = lambda p: 0.5 * sum(jax.tree.leaves(jax.tree.map(lambda w, h: jnp.sum(h * w**2), p, d)))
    values, vectors = _values_and_vectors(loss, params, k=3, return_eigenvectors=True)
    assert values.dtype == jnp.float32
    assert all(leaf.dtype == jnp.bfloat16 for leaf in jax.tree.leaves(vectors))
    np.testing.assert_allclose(values, [6.0, 5.0, 4.0], rtol=2e-2)
    estimate = hessian_trace(loss, params, num_samples=4)
    assert estimate.value.dtype == jnp.float32 and float(estimate.value) == 22.0
