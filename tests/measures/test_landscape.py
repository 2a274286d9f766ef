"""Tests of flatmin.interpolate and flatmin.interpolate_curved: the loss along straight and
curved paths between two solutions.

Expected values are closed forms computed in float64 NumPy: a quadratic restricted to a line
is a quadratic in alpha with known coefficients, and the paths themselves are checked through
a function that returns its argument.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.flatten_util import ravel_pytree

from flatmin.measures import Landscape, Status, interpolate, interpolate_curved

SHAPES = {"dense": {"kernel": (3, 4), "bias": (4,)}, "scale": (), "z": (6,)}  # n = 23
ALPHAS = np.linspace(-0.5, 1.5, 9)  # steps of 0.25: 0 and 1 are exact


def _tree(rng: np.random.Generator, dtype=np.float32) -> dict:
    return jax.tree.map(
        lambda s: jnp.asarray(rng.normal(size=s), dtype),
        SHAPES,
        is_leaf=lambda s: isinstance(s, tuple),
    )


def _flat64(tree) -> np.ndarray:
    return np.asarray(ravel_pytree(tree)[0], np.float64)


def _identity(params):
    return params


def _quadratic(seed: int = 0, dtype=np.float32):
    """(f, H, g, c): f(x) = 1/2 x^T H x + g^T x + c on the flattened pytree, H, g in float64."""
    rng = np.random.default_rng(seed)
    n = 23
    M = rng.normal(size=(n, n))
    H, g, c = (M + M.T) / 2, rng.normal(size=n), 0.5
    H_j, g_j = jnp.asarray(H, dtype), jnp.asarray(g, dtype)

    def f(params):
        x = ravel_pytree(params)[0]
        return 0.5 * x @ (H_j @ x) + g_j @ x + c

    return f, H.astype(dtype).astype(np.float64), g.astype(dtype).astype(np.float64), c


U32 = float(np.finfo(np.float32).eps) / 2  # float32's unit roundoff


def _reordering_atol(a, b, alphas, curved: bool = False, seed: int = 0) -> np.ndarray:
    """How far apart two float32 evaluations of `_quadratic(seed)` at the path's points may
    be when they sum in different orders (vmapped or in batches, jitted or not), per alpha.

    The standard bound for an m-term float32 sum is gamma_m = m u times the sum of the terms'
    magnitudes. f = 1/2 x.(H x) + g.x + c nests two n-term products (n = 23), then g.x and
    two additions, so each evaluation errs by at most (2n + 4) u S, with S = 1/2 |x|.|H| |x|
    + |g|.|x| + |c|; a point rounded differently (a fused multiply-add) moves f by one more u S.
    Two evaluations: 2 (2n + 5) u S, about 6e-6 S; S is up to 60 |f| here (H is indefinite,
    its terms cancel). A fresh clone saw 1.4e-6 of |f| against the rtol 1e-6 used before; a
    real fault (a value at the wrong alpha, a padded row kept) moves f by O(1)."""
    _, H, g, c = _quadratic(seed)
    alphas = np.asarray(alphas, np.float64)
    if curved:
        weights = np.cos(alphas * np.pi / 2), np.sin(alphas * np.pi / 2)
    else:
        weights = 1 - alphas, alphas
    X = np.abs(weights[0][:, None] * _flat64(a) + weights[1][:, None] * _flat64(b))
    S = 0.5 * np.einsum("ai,ij,aj->a", X, np.abs(H), X) + X @ np.abs(g) + abs(c)
    return 2 * (2 * H.shape[0] + 5) * U32 * S


def _assert_reordered_equal(got, want, atol: np.ndarray) -> None:
    diff = np.abs(np.asarray(got, np.float64) - np.asarray(want, np.float64))
    assert np.all(diff <= atol), (diff, atol)


def test_line_is_the_closed_form_quadratic_in_alpha():
    f, H, g, c = _quadratic()
    rng = np.random.default_rng(1)
    a, b = _tree(rng), _tree(rng)
    result = interpolate(f, a, b, ALPHAS)
    assert isinstance(result, Landscape) and int(result.status) == Status.FINISHED
    np.testing.assert_array_equal(result.alphas, ALPHAS)
    values = result.value
    assert values.shape == (9,) and values.dtype == jnp.float32
    # f(a + alpha d) = f(a) + alpha (H a + g) . d + alpha^2 / 2 d^T H d, with d = b - a.
    xa, d = _flat64(a), _flat64(b) - _flat64(a)
    f_a = 0.5 * xa @ H @ xa + g @ xa + c
    expected = f_a + ALPHAS * ((H @ xa + g) @ d) + ALPHAS**2 / 2 * (d @ H @ d)
    # Against float64: rounding errors of random sign grow like sqrt(n) u S, a few 1e-6 of the
    # largest value here (the worst case (2n + 4) u S of _reordering_atol is never reached).
    scale = np.abs(expected).max()
    np.testing.assert_allclose(values, expected, rtol=0, atol=1e-5 * scale)
    # The endpoints are f(a) and f(b) (the path hits them exactly; f vmapped sums in another
    # order than f called alone).
    atol = _reordering_atol(a, b, ALPHAS)
    _assert_reordered_equal(values[2], f(a), atol[2])
    _assert_reordered_equal(values[6], f(b), atol[6])


@pytest.mark.parametrize("path", [interpolate, interpolate_curved])
def test_paths_pass_exactly_through_both_endpoints(path):
    rng = np.random.default_rng(2)
    a, b = _tree(rng), _tree(rng)
    points = path(_identity, a, b, jnp.asarray([0.0, 1.0])).value
    assert jax.tree.structure(points) == jax.tree.structure(a)
    for leaf, leaf_a, leaf_b in zip(*map(jax.tree.leaves, (points, a, b)), strict=True):
        assert leaf.shape == (2, *leaf_a.shape)
        np.testing.assert_array_equal(leaf[0], leaf_a)
        np.testing.assert_array_equal(leaf[1], leaf_b)


def test_curved_path_is_cos_a_plus_sin_b():
    rng = np.random.default_rng(3)
    a, b = _tree(rng), _tree(rng)
    points = interpolate_curved(_identity, a, b, ALPHAS).value
    xa, xb = _flat64(a), _flat64(b)
    for i, alpha in enumerate(ALPHAS):
        expected = np.cos(alpha * np.pi / 2) * xa + np.sin(alpha * np.pi / 2) * xb
        got = _flat64(jax.tree.map(lambda leaf, i=i: leaf[i], points))
        np.testing.assert_allclose(got, expected, rtol=0, atol=1e-6 * np.abs(expected).max())


def test_pytree_valued_fn():
    f, _, _, _ = _quadratic()
    rng = np.random.default_rng(4)
    a, b = _tree(rng), _tree(rng)
    fn = lambda p: {"loss": f(p), "stats": (jnp.sum(p["z"]), p["dense"]["bias"] * 2)}
    out = interpolate(fn, a, b, ALPHAS).value
    assert out["loss"].shape == (9,)
    assert out["stats"][0].shape == (9,) and out["stats"][1].shape == (9, 4)
    atol = _reordering_atol(a, b, ALPHAS)
    for i, alpha in enumerate(ALPHAS):
        point = jax.tree.map(lambda x, y, s=float(alpha): (1 - s) * x + s * y, a, b)
        expected = fn(point)
        _assert_reordered_equal(out["loss"][i], expected["loss"], atol[i])
        # A 6-term sum and an elementwise product: within a few ulps.
        np.testing.assert_allclose(out["stats"][0][i], expected["stats"][0], rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(out["stats"][1][i], expected["stats"][1], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("path", [interpolate, interpolate_curved])
def test_batches_equal_all_at_once(path):
    f, _, _, _ = _quadratic()
    rng = np.random.default_rng(5)
    a, b = _tree(rng), _tree(rng)
    at_once = path(f, a, b, ALPHAS).value
    batched = path(f, a, b, ALPHAS, batch_size=4).value  # 4 + 4 + 1
    _assert_reordered_equal(
        batched, at_once, _reordering_atol(a, b, ALPHAS, path is not interpolate)
    )


def test_jit_and_integer_alphas():
    f, _, _, _ = _quadratic()
    rng = np.random.default_rng(6)
    a, b = _tree(rng), _tree(rng)
    jitted = jax.jit(interpolate, static_argnums=0)(f, a, b, jnp.asarray(ALPHAS, jnp.float32))
    _assert_reordered_equal(
        jitted.value, interpolate(f, a, b, ALPHAS).value, _reordering_atol(a, b, ALPHAS)
    )
    integers = np.arange(-1, 3)
    on_integers = interpolate(f, a, b, integers)
    # The alphas come back as given (integers), the path evaluated in floating point.
    assert jnp.issubdtype(on_integers.alphas.dtype, jnp.integer)
    _assert_reordered_equal(
        on_integers.value,
        interpolate(f, a, b, integers.astype(float)).value,
        _reordering_atol(a, b, integers),
    )


def test_float64():
    with jax.enable_x64(True):
        f, H, g, c = _quadratic(dtype=np.float64)
        rng = np.random.default_rng(7)
        a, b = _tree(rng, np.float64), _tree(rng, np.float64)
        values = interpolate(f, a, b, ALPHAS).value
        assert values.dtype == jnp.float64
        xa, d = _flat64(a), _flat64(b) - _flat64(a)
        f_a = 0.5 * xa @ H @ xa + g @ xa + c
        expected = f_a + ALPHAS * ((H @ xa + g) @ d) + ALPHAS**2 / 2 * (d @ H @ d)
        np.testing.assert_allclose(values, expected, rtol=1e-12)
        assert interpolate_curved(f, a, b, ALPHAS).value.dtype == jnp.float64


@pytest.mark.parametrize(
    ("path", "rate", "where"),
    # exp(rate w) overflows float32 beyond exp(88.7): on the line w = alpha, at alpha = 1.5
    # alone (exp(75) at 1.25 is finite); on the curve w = sin(alpha pi / 2), at alpha = 1 alone
    # (exp(92 * 0.924) = exp(85) at 0.75 and 1.25).
    [(interpolate, 60.0, 8), (interpolate_curved, 92.0, 6)],
)
def test_an_overflow_along_the_path_is_reported_not_an_error(path, rate, where):
    a = {"w": jnp.zeros(3, jnp.float32)}
    b = {"w": jnp.ones(3, jnp.float32)}
    fn = lambda p: jnp.exp(rate * p["w"][0])
    result = path(fn, a, b, ALPHAS)
    assert int(result.status) == Status.NONFINITE_NEARBY
    overflowed = np.arange(len(ALPHAS)) == where
    np.testing.assert_array_equal(np.isinf(result.value), overflowed)
    finite = path(fn, a, b, ALPHAS[~overflowed])
    assert int(finite.status) == Status.FINISHED


_A = {"w": jnp.ones((2, 3), jnp.float32), "b": jnp.zeros(2, jnp.float32)}
_FN = lambda p: jnp.sum(p["w"])


@pytest.mark.parametrize("path", [interpolate, interpolate_curved])
@pytest.mark.parametrize(
    ("fn", "params_b", "alphas", "match"),
    [
        (_FN, {"w": _A["w"]}, ALPHAS, "params_b"),
        (_FN, {"w": _A["w"], "b": (_A["b"],)}, ALPHAS, "params_b"),
        (_FN, {"w": _A["w"].T, "b": _A["b"]}, ALPHAS, "params_b"),
        (_FN, {"w": _A["w"], "b": jnp.zeros(2, jnp.bfloat16)}, ALPHAS, "params_b"),
        (_FN, _A, ALPHAS.reshape(3, 3), "alphas"),
        (_FN, _A, 0.5, "alphas"),
        (_FN, _A, np.array([True, False]), "alphas"),
        ("loss", _A, ALPHAS, "fn"),
    ],
)
def test_bad_arguments_raise_value_error_naming_them(path, fn, params_b, alphas, match):
    with pytest.raises(ValueError, match=match):
        path(fn, _A, params_b, alphas)


@pytest.mark.parametrize("path", [interpolate, interpolate_curved])
def test_bad_params_a_and_batch_size(path):
    with pytest.raises(ValueError, match="params_a"):
        path(_FN, {"w": jnp.ones(3, jnp.int32)}, {"w": jnp.ones(3, jnp.int32)}, ALPHAS)
    with pytest.raises(ValueError, match="params_a"):
        path(_FN, {}, {}, ALPHAS)
    with pytest.raises(ValueError, match="batch_size"):
        path(_FN, _A, _A, ALPHAS, batch_size=0)
    for bad in (True, 2.0, "4"):  # True is not 1: bools are refused like any non-integer
        with pytest.raises(ValueError, match=r"^batch_size must be None or an integer >= 1"):
            path(_FN, _A, _A, ALPHAS, batch_size=bad)
    np.testing.assert_array_equal(
        path(_FN, _A, _A, ALPHAS, batch_size=np.int64(4)).value,
        path(_FN, _A, _A, ALPHAS, batch_size=4).value,
    )
    with pytest.raises(ValueError, match=r"^args must"):
        path(_FN, _A, _A, ALPHAS, args=jnp.ones(2))
