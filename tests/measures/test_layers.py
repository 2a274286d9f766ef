"""Tests of the per-layer filter (flatmin.restrict, split_params, merge_params) and of every
measure restricted to one layer.

Oracles: the measures' closed forms (tests/measures/test_adaptive.py and test_density.py) on
the selected block alone: the dual norm of the layer's gradient, the trace and spectrum of the
layer's diagonal block of H, the vertex maximum over the layer's part of Keskar's box. Per-layer
on a one-layer model must equal the whole-model measure.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.flatten_util import ravel_pytree

import flatmin
from flatmin.measures import merge_params, restrict, split_params
from flatmin.measures._layers import path_mask

from ..support.oracles import U32, flat64, halfwidths, phi, spacing32
from ..support.quadratics import N, h32, linear, linear_slack, nested, quadratic, rotated, separable

# jax.tree.leaves order of NESTED_SHAPES: conv, dense.bias, dense.kernel, scale, z.
DENSE = (False, True, True, False, False)


def _normal(seed: int, scale: float = 1.0):
    rng = np.random.default_rng(seed)
    return lambda shape: scale * rng.normal(size=shape)


def _selected(tree, mask) -> np.ndarray:
    """(n,) bool over ravel_pytree's order: True in the leaves the mask selects."""
    return np.concatenate(
        [np.full(np.size(x), m) for x, m in zip(jax.tree.leaves(tree), mask, strict=True)]
    )


# The filter ----------------------------------------------------------------------------------


def test_path_mask_by_regex_and_by_callable():
    params = nested(_normal(0))
    assert path_mask(params, "dense") == DENSE
    assert path_mask(params, r"\['dense'\]\['kernel'\]") == (False, False, True, False, False)
    by_key = lambda path: path[0].key in ("conv", "z")
    assert path_mask(params, by_key) == (True, False, False, False, True)


def test_split_and_merge_round_trip():
    params = nested(_normal(1))
    measured, frozen = split_params(params, "dense")
    assert measured["conv"] is None and frozen["dense"]["kernel"] is None
    assert [x.shape for x in jax.tree.leaves(measured)] == [(5,), (4, 5)]
    merged = merge_params(measured, frozen)
    assert jax.tree.structure(merged) == jax.tree.structure(params)
    for a, b in zip(jax.tree.leaves(merged), jax.tree.leaves(params), strict=True):
        np.testing.assert_array_equal(a, b)


def test_restrict_freezes_the_other_leaves():
    params = nested(_normal(2))
    g = nested(_normal(3))
    loss = linear(g)
    loss_of_layer, layer, layer_args = restrict(loss, params, "dense")
    # The frozen leaves travel as the first of the arguments to pass with the layer.
    (frozen,) = layer_args
    assert frozen["dense"]["kernel"] is None
    np.testing.assert_array_equal(frozen["conv"], params["conv"])
    np.testing.assert_allclose(loss_of_layer(layer, *layer_args), loss(params), rtol=1e-5)
    # Its gradient is the full gradient's dense part: g there.
    grad = jax.grad(loss_of_layer)(layer, *layer_args)
    np.testing.assert_array_equal(grad["dense"]["kernel"], g["dense"]["kernel"])
    assert grad["conv"] is None


def test_restrict_passes_the_loss_functions_arguments_after_the_frozen_leaves():
    params = nested(_normal(20))
    g = nested(_normal(21))
    loss = lambda p, scale, shift: scale * linear(g)(p) + shift
    data = (jnp.float32(3.0), jnp.float32(-1.0))
    loss_of_layer, layer, layer_args = restrict(loss, params, "dense", args=data)
    assert len(layer_args) == 3 and layer_args[1:] == data
    np.testing.assert_allclose(loss_of_layer(layer, *layer_args), loss(params, *data), rtol=1e-5)
    # A value: restricting the same loss again (another seed's parameters, say) gives an equal
    # function, so a measure compiled for the first is reused.
    assert restrict(loss, nested(_normal(22)), "dense", args=data)[0] == loss_of_layer
    with pytest.raises(ValueError, match=r"^args must"):
        restrict(loss, params, "dense", args=jnp.ones(2))


@pytest.mark.parametrize(
    ("only", "match"),
    [("nothing", "only selects no parameter"), ("[", "regular expression"), (3, "only must")],
)
def test_bad_filters_raise_value_error(only, match):
    with pytest.raises(ValueError, match=match):
        path_mask(nested(_normal(4)), only)
    with pytest.raises(ValueError, match=match):
        flatmin.worst_case_sharpness(linear(nested(_normal(5))), nested(_normal(4)), 0.1, only=only)


# Per-layer on a one-layer model equals the whole model ---------------------------------------

_ONE_LAYER = {
    "dense": {
        "kernel": jnp.asarray(np.random.default_rng(6).normal(size=(3, 4)), jnp.float32),
        "bias": jnp.asarray(np.random.default_rng(7).normal(size=4), jnp.float32),
    }
}
_ONE_LAYER_LOSS = quadratic(
    rotated(np.linspace(0.5, 3.0, 16), np.random.default_rng(8)),
    jax.tree.map(lambda x: 0.9 * x, _ONE_LAYER),
    0.1,
)
_MEASURES = {
    "worst": lambda f, p, **kw: flatmin.worst_case_sharpness(
        f, p, 0.05, solver=flatmin.APGD(maxiter=4), **kw
    ),
    "average": lambda f, p, **kw: flatmin.average_case_sharpness(f, p, 0.05, num_samples=8, **kw),
    "pac_bayes": lambda f, p, **kw: flatmin.pac_bayes_sigma(f, p, 0.01, num_samples=8, **kw),
    "density": lambda f, p, **kw: flatmin.hessian_density(
        f, p, np.linspace(0, 4, 41), num_iterations=8, num_probes=2, **kw
    ),
}


@pytest.mark.parametrize("name", list(_MEASURES))
def test_per_layer_on_a_one_layer_model_equals_the_whole_model(name):
    measure = _MEASURES[name]
    whole = measure(_ONE_LAYER_LOSS, _ONE_LAYER)
    layer = measure(_ONE_LAYER_LOSS, _ONE_LAYER, only="dense")
    np.testing.assert_allclose(layer.value, whole.value, rtol=1e-5, atol=1e-7)
    assert int(layer.status) == int(whole.status) == flatmin.Status.FINISHED


# Per-layer closed forms ----------------------------------------------------------------------


def test_worst_case_of_one_layer_of_a_linear_loss():
    """Oracle: rho sum_{i in layer} |w_i g_i| (l-inf, adaptive, xi = 0); delta 0 elsewhere."""
    params, g_tree = nested(_normal(9)), nested(_normal(10))
    w, g = flat64(params), flat64(g_tree)
    inside = _selected(params, DENSE)
    rho = 0.05
    result = flatmin.worst_case_sharpness(linear(g_tree), params, rho, only="dense")
    exact = rho * np.sum(np.abs(w * g)[inside])
    delta = flat64(result.delta)
    assert np.all(delta[~inside] == 0)
    assert abs(float(result.value) - exact) <= linear_slack(g, w, delta)


def test_average_case_and_pac_bayes_of_one_layer_of_a_quadratic():
    """Oracle: the layer's diagonal block H_LL: E increase sigma^2 / 2 tr(C H_LL C) (variance of a
    sample tr((sigma^2 C H_LL C)^2) / 2 at the minimiser), and sigma* = sqrt(2 T / tr H_LL)."""
    params = nested(_normal(11))
    H = rotated(np.random.default_rng(12).uniform(0.5, 5.0, N), np.random.default_rng(13))
    loss = quadratic(H, params, 0.1)
    inside = _selected(params, DENSE)
    H_LL = h32(H)[np.ix_(inside, inside)]
    c = np.abs(flat64(params))[inside]
    sigma, num_samples = 0.05, 400
    A = sigma**2 * c[:, None] * H_LL * c[None, :]
    stderr = math.sqrt(np.sum(A**2) / 2 / num_samples)
    average = flatmin.average_case_sharpness(
        loss, params, sigma, num_samples=num_samples, only="dense"
    )
    assert abs(float(average.value) - np.trace(A) / 2) < 4 * stderr
    np.testing.assert_allclose(average.stderr, stderr, rtol=0.25)

    target, num_samples = 0.02, 64
    exact = math.sqrt(2 * target / np.trace(H_LL))
    relative = math.sqrt(2 * np.sum(H_LL**2) / num_samples) / np.trace(H_LL)
    pac = flatmin.pac_bayes_sigma(
        loss, params, target, adaptive=False, num_samples=num_samples, only="dense"
    )
    assert abs(float(pac.value) - exact) <= exact * 2 * relative + 2.0 / 2**20
    # Jiang et al.'s terms over the layer's 25 parameters alone.
    w = flat64(params)[inside]
    np.testing.assert_allclose(pac.kl_term, np.sum(w**2) / (4 * float(pac.value) ** 2), rtol=1e-5)


def test_density_of_one_layer_is_its_block_spectrum():
    """Oracle: a diagonal H with Rademacher probes gives the block's exact broadened density."""
    params = nested(_normal(14))
    lam = np.repeat([1.0, 2.0, 3.0, 4.0, 5.0], 9)
    h = ravel_pytree(params)[1](jnp.asarray(lam, jnp.float32))
    grid = np.linspace(0.0, 6.0, 301)
    result = flatmin.hessian_density(
        separable(h, params), params, grid, num_iterations=8, num_probes=2, sigma=0.1, only="dense"
    )
    block = lam[_selected(params, DENSE)]
    z = (grid[:, None] - block[None, :]) / 0.1
    expected = np.mean(np.exp(-(z**2) / 2), axis=1) / (0.1 * math.sqrt(2 * math.pi))
    np.testing.assert_allclose(result.value, expected, rtol=0, atol=1e-4 * expected.max())


def test_metric_2_1_of_one_layer_by_wrapping_loss_and_params():
    """flatmin.sharpness, unchanged, on `restrict`'s loss, params and args: Metric 2.1 with the
    box on the dense layer alone. Oracle: 1/2 sum_{i in layer} h_i r_i^2 for a separable convex
    quadratic centred at w; the l-inf worst case with xi = 1 and only= finds the same maximum."""
    rng = np.random.default_rng(15)
    eps, c0 = 1e-3, 0.25
    params = nested(_normal(16))
    h = nested(lambda s: 10.0 ** rng.uniform(2.0, 5.0, size=s))
    loss = separable(h, params, c0)
    inside = _selected(params, DENSE)
    w, hv = flat64(params)[inside], flat64(h)[inside]
    r = halfwidths(w, eps)
    exact = 0.5 * np.sum(hv * r**2)
    slack = np.sum(hv * r * spacing32(np.abs(w) + r)) + 2 * (N + 2) * U32 * (c0 + exact)
    phi_true = phi(c0 + exact, c0)

    loss_of_layer, layer, layer_args = restrict(loss, params, "dense")
    keskar = float(flatmin.sharpness(loss_of_layer, layer, eps=eps, args=layer_args))
    # Its defaults (10 L-BFGS-B iterations from a random start) reach 99.4% here; the whole
    # model's box would give 1.6 times the layer's figure.
    assert phi_true * (1 - 2e-2) <= keskar <= phi_true + 100 * slack / (1 + c0)

    worst = flatmin.worst_case_sharpness(loss, params, eps, xi=1.0, only="dense")
    assert abs(float(worst.value) - exact) <= slack
    np.testing.assert_allclose(keskar * (1 + c0) / 100, worst.value, rtol=2e-2)


def test_vmap_over_stacked_seeds_with_a_filter_equals_a_loop():
    seeds = [nested(_normal(seed)) for seed in (17, 18)]
    loss = quadratic(rotated(np.linspace(0.5, 3.0, N), np.random.default_rng(19)), seeds[0], 0.1)
    measure = lambda p: flatmin.average_case_sharpness(loss, p, 0.05, num_samples=8, only="z")
    stacked = jax.tree.map(lambda *leaves: jnp.stack(leaves), *seeds)
    batched = jax.vmap(lambda p: measure(p).value)(stacked)
    np.testing.assert_allclose(batched, [float(measure(p).value) for p in seeds], rtol=1e-5)
