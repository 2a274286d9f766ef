"""flatmin.objective: the evaluation-mode loss is a deterministic function of the parameters."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from flatmin.models import build_model, init_variables
from flatmin.objective import batch_norm_statistics, evaluate, make_loss_fn


@pytest.fixture(scope="module")
def c1_setup():
    """A C1 network (dropout and batch norm) on random 8x8x3 images, with non-trivial stats."""
    model = build_model("c1", 5)
    variables = init_variables(model, jax.random.key(0), (8, 8, 3))
    x = jax.random.uniform(jax.random.key(1), (23, 8, 8, 3))
    y = jax.random.randint(jax.random.key(2), (23,), 0, 5)
    # One training-mode pass moves the running statistics away from their (0, 1) start.
    _, updates = model.apply(
        variables, x, train=True, mutable=["batch_stats"], rngs={"dropout": jax.random.key(3)}
    )
    return model, variables["params"], updates["batch_stats"], x, y


def test_loss_matches_an_explicit_eval_mode_pass(c1_setup):
    model, params, batch_stats, x, y = c1_setup
    logits = model.apply({"params": params, "batch_stats": batch_stats}, x, train=False)
    expected = optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
    accuracy = jnp.mean(jnp.argmax(logits, -1) == y)
    loss, acc = evaluate(model, params, batch_stats, x, y)
    np.testing.assert_allclose(loss, expected, rtol=1e-6)
    np.testing.assert_allclose(acc, accuracy)


@pytest.mark.parametrize("chunk_size", [1, 5, 7, 23, 100])
def test_chunking_and_padding_do_not_change_the_result(c1_setup, chunk_size):
    model, params, batch_stats, x, y = c1_setup
    whole = evaluate(model, params, batch_stats, x, y, chunk_size=1000)
    chunked = evaluate(model, params, batch_stats, x, y, chunk_size=chunk_size)
    np.testing.assert_allclose(chunked, whole, rtol=1e-5)


def test_no_dropout_and_running_statistics(c1_setup):
    model, params, batch_stats, x, y = c1_setup
    loss_fn = make_loss_fn(model, batch_stats, x, y)
    assert loss_fn(params) == loss_fn(params)  # dropout would make two calls differ
    # The running statistics are used: changing them changes f; the batch's own would not.
    shifted = jax.tree.map(lambda s: s + 0.5, batch_stats)
    assert make_loss_fn(model, shifted, x, y)(params) != loss_fn(params)


# batch_norm_statistics: the exact full-data statistics of every BatchNorm layer's input.

BN_EPS = 1e-5  # flax's BatchNorm epsilon


def _mlp_with_bn(hidden, seed=0):
    """An MLP with BatchNorm, random kernels, scales and offsets, and 23 off-centre inputs."""
    model = build_model("mlp", 3, hidden=hidden)
    params = init_variables(model, jax.random.key(seed), (6,))["params"]
    rng = np.random.default_rng(seed)
    params = jax.tree.map(lambda p: jnp.asarray(rng.normal(size=p.shape), p.dtype), params)
    x = jnp.asarray(rng.normal(size=(23, 6)) * 2 + 1, jnp.float32)
    return model, params, x


def _np(a) -> np.ndarray:
    return np.asarray(a, np.float64)


@pytest.mark.parametrize("chunk_size", [23, 7, 1, 100])
def test_batch_norm_statistics_of_the_first_layer_by_hand(chunk_size):
    model, params, x = _mlp_with_bn((5,))
    stats = batch_norm_statistics(model, params, x, chunk_size=chunk_size)
    h = _np(x) @ _np(params["Dense_0"]["kernel"])  # the first Dense has no bias (BN follows)
    np.testing.assert_allclose(stats["BatchNorm_0"]["mean"], h.mean(0), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(stats["BatchNorm_0"]["var"], h.var(0), rtol=1e-5)  # biased
    assert jax.tree.structure(stats) == jax.tree.structure(
        init_variables(model, jax.random.key(0), (6,))["batch_stats"]
    )


@pytest.mark.parametrize("chunk_size", [23, 5])
def test_batch_norm_statistics_of_the_second_layer_use_the_first_layers_exact_ones(chunk_size):
    model, params, x = _mlp_with_bn((5, 4))
    stats = batch_norm_statistics(model, params, x, chunk_size=chunk_size)
    h1 = _np(x) @ _np(params["Dense_0"]["kernel"])
    bn = params["BatchNorm_0"]
    normalised = (h1 - h1.mean(0)) / np.sqrt(h1.var(0) + BN_EPS)  # by the exact statistics
    normalised = normalised * _np(bn["scale"]) + _np(bn["bias"])
    h2 = np.maximum(normalised, 0) @ _np(params["Dense_1"]["kernel"])
    np.testing.assert_allclose(stats["BatchNorm_1"]["mean"], h2.mean(0), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(stats["BatchNorm_1"]["var"], h2.var(0), rtol=1e-5)
    # The oracle discriminates: normalising layer 1 by its initial statistics (0, 1) instead
    # would give a second layer's input with visibly different statistics.
    wrong = np.maximum(h1 / np.sqrt(1 + BN_EPS) * _np(bn["scale"]) + _np(bn["bias"]), 0)
    wrong = wrong @ _np(params["Dense_1"]["kernel"])
    assert np.max(np.abs(wrong.var(0) / h2.var(0) - 1)) > 0.1


class _ConvBN(nn.Module):
    """Conv -> BN -> ReLU -> Conv -> BN -> mean-pool -> Dense: BN over (batch, height, width)."""

    @nn.compact
    def __call__(self, x, *, train):
        for width in (4, 3):
            x = nn.Conv(width, (3, 3), use_bias=False)(x)
            x = nn.relu(nn.BatchNorm(use_running_average=not train, momentum=0.9)(x))
        return nn.Dense(2)(x.mean((1, 2)))


def test_batch_norm_statistics_equal_one_full_batch_train_mode_pass():
    """A conv net without dropout: chunked statistics = the batch statistics flax itself computes
    on all 10 images as one batch, and evaluation with them = the train-mode forward pass."""
    model = _ConvBN()
    x = jax.random.uniform(jax.random.key(1), (10, 5, 5, 2)) + 0.5
    variables = model.init(jax.random.key(0), x[:1], train=False)
    params = jax.tree.map(lambda p: p + 0.3, variables["params"])  # BN scale and offset != 1, 0
    stats = batch_norm_statistics(model, params, x, chunk_size=3)  # 3 + 3 + 3 + 1 (padded)
    start = jax.tree.map(jnp.zeros_like, variables["batch_stats"])
    logits, updates = model.apply(
        {"params": params, "batch_stats": start}, x, train=True, mutable=["batch_stats"]
    )
    # From zero, one update leaves (1 - momentum) x the batch's statistics.
    expected = jax.tree.map(lambda s: s / (1 - 0.9), updates["batch_stats"])
    for got, want in zip(jax.tree.leaves(stats), jax.tree.leaves(expected), strict=True):
        assert got.shape == want.shape and got.dtype == want.dtype
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-6)
    evaluated = model.apply({"params": params, "batch_stats": stats}, x, train=False)
    np.testing.assert_allclose(evaluated, logits, rtol=1e-4, atol=1e-5)


def test_batch_norm_statistics_jit_and_vmap():
    model, params, x = _mlp_with_bn((5, 4))
    other = jax.tree.map(lambda p: -0.5 * p, params)
    stacked = jax.tree.map(lambda a, b: jnp.stack([a, b]), params, other)
    vmapped = jax.jit(jax.vmap(lambda p: batch_norm_statistics(model, p, x, chunk_size=7)))(stacked)
    for i, one in enumerate((params, other)):
        alone = batch_norm_statistics(model, one, x, chunk_size=7)
        for got, want in zip(jax.tree.leaves(vmapped), jax.tree.leaves(alone), strict=True):
            np.testing.assert_allclose(got[i], want, rtol=1e-5, atol=1e-6)


def test_batch_norm_statistics_without_batch_norm_and_bad_chunk_size():
    model = build_model("mlp", 3, hidden=(4,), batch_norm=False)
    params = init_variables(model, jax.random.key(0), (6,))["params"]
    assert batch_norm_statistics(model, params, jnp.ones((5, 6))) == {}
    with pytest.raises(ValueError, match="chunk_size"):
        batch_norm_statistics(model, params, jnp.ones((5, 6)), chunk_size=0)
