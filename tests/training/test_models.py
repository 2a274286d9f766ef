"""Shapes, batch-norm and dropout behaviour, and exact parameter counts of
flatmin.training.models."""

import functools
import math
from itertools import pairwise

import flax.linen as nn
import jax
import numpy as np
import pytest

from flatmin.training.models import MODELS, build_model, init_variables

from ..support.forward_oracles import deep_cnn_logits, mlp_logits, shallow_cnn_logits

NUM_CLASSES = 7  # not 10, so that a hard-coded class count would show


def _inputs(shape: tuple[int, ...], batch: int = 2, seed: int = 0) -> jax.Array:
    return jax.random.uniform(jax.random.key(seed), (batch, *shape))


@functools.cache
def _init(name: str, input_shape: tuple[int, ...] = (8, 8, 1)) -> tuple[nn.Module, dict]:
    """Model and variables, shared between tests: initialising C2 eagerly takes seconds."""
    model = build_model(name, NUM_CLASSES)
    return model, init_variables(model, jax.random.key(0), input_shape)


def _count(tree) -> int:
    return sum(math.prod(leaf.shape) for leaf in jax.tree.leaves(tree))


def _shapes(name: str, input_shape: tuple[int, ...], num_classes: int = 10) -> dict:
    """Variable shapes without computing anything."""
    model = build_model(name, num_classes)
    return jax.eval_shape(lambda: init_variables(model, jax.random.key(0), input_shape))


def _apply(model: nn.Module, variables: dict, x: jax.Array, *, train: bool, seed: int = 0):
    """Logits (batch, classes); with train=True, also the updated {"batch_stats": ...}."""
    rngs = {"dropout": jax.random.key(seed)}
    if train:
        return model.apply(variables, x, train=True, mutable=["batch_stats"], rngs=rngs)
    return model.apply(variables, x, train=False, rngs=rngs)


def test_model_names():
    assert MODELS == ("mlp", "f1", "f2", "c1", "c2", "c3", "c4")


def _randomised(variables: dict, seed: int = 0) -> dict:
    """The variables with BatchNorm scales, offsets and running statistics drawn at random:
    from flax's start (1, 0, 0, 1) batch norm in evaluation mode is nearly the identity, and
    an oracle that left it out, or mixed up its parts, would still agree."""
    rng = np.random.default_rng(seed)
    draw = {
        "scale": lambda shape: rng.uniform(0.5, 1.5, shape),
        "bias": lambda shape: rng.normal(size=shape) * 0.3,
        "mean": lambda shape: rng.normal(size=shape) * 0.3,
        "var": lambda shape: rng.uniform(0.5, 2.0, shape),
    }

    def randomise(path, leaf):
        layer, name = path[-2].key, path[-1].key
        if not layer.startswith("BatchNorm"):
            return leaf
        return jax.numpy.asarray(draw[name](leaf.shape), leaf.dtype)

    return jax.tree_util.tree_map_with_path(randomise, variables)


# name -> its float64 NumPy forward pass in evaluation mode (tests/forward_oracles.py).
ORACLES = {
    "mlp": lambda v, x: mlp_logits(v, x, 3),
    "f1": lambda v, x: mlp_logits(v, x, 5),
    "f2": lambda v, x: mlp_logits(v, x, 7),
    "c1": shallow_cnn_logits,
    "c3": shallow_cnn_logits,
    "c2": deep_cnn_logits,
    "c4": deep_cnn_logits,
}


def _assert_logits_close(got, want: np.ndarray, tol: float = 1e-5) -> None:
    """float32 logits against float64 ones, within `tol` of the largest logit. In evaluation
    mode each layer's sums (<= 4608 terms for C2's 3x3x512 convolutions) carry relative
    rounding errors of a few float32 ulps times log2 of their length; over up to 15 layers
    with well-conditioned batch norm (running variances in [0.5, 2]) the measured error is
    4e-7 of the largest logit, so 1e-5 leaves a factor 25. Batch norm with flax's epsilon
    replaced by 1e-3 moves logits by 7e-4 or more, 70 times the tolerance (checked below)."""
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, rtol=0, atol=tol * np.max(np.abs(want)))


def _oracle_with_eps(name: str, variables: dict, x, eps: float) -> np.ndarray:
    if name in ("mlp", "f1", "f2"):
        return mlp_logits(variables, x, {"mlp": 3, "f1": 5, "f2": 7}[name], eps=eps)
    return (shallow_cnn_logits if name in ("c1", "c3") else deep_cnn_logits)(variables, x, eps=eps)


@pytest.mark.parametrize("name", MODELS)
def test_logits_on_8x8_equal_a_float64_numpy_forward_pass(name):
    model, variables = _init(name)
    variables = _randomised(variables)
    assert set(variables) == {"params", "batch_stats"}
    # Batch 4 as in the other tests: eager JAX compiles each operation once per shape.
    x = _inputs((8, 8, 1), batch=4)
    logits = _apply(model, variables, x, train=False)
    assert logits.shape == (4, NUM_CLASSES)
    expected = ORACLES[name](variables, x)
    _assert_logits_close(logits, expected)
    other_eps = _oracle_with_eps(name, variables, x, 1e-3)  # the oracle discriminates
    assert np.max(np.abs(other_eps - expected)) > 50 * 1e-5 * np.max(np.abs(expected))
    train_logits, _ = _apply(model, variables, x, train=True)
    assert train_logits.shape == (4, NUM_CLASSES)
    if name in ("mlp", "f1", "f2"):
        # The MLPs have no dropout: training mode is exactly batch norm by the batch's own
        # statistics. flax computes the batch variance as E[h^2] - E[h]^2 in float32, which
        # cancels digits where mean^2 >> variance (4 examples): measured up to 3.4e-5 of the
        # largest logit (F2), hence 2e-4. Running statistics instead differ by over 1e-2.
        batch_stat_logits = mlp_logits(variables, x, len(model.hidden), batch_statistics=True)
        _assert_logits_close(train_logits, batch_stat_logits, tol=2e-4)
        assert np.max(np.abs(batch_stat_logits - expected)) > 1e-2 * np.max(np.abs(expected))
    # The conv nets' dropout makes training mode random: its shape only.


@pytest.mark.parametrize("name", ["c1", "c2"])
def test_logits_on_cifar_images_equal_a_float64_numpy_forward_pass(name):
    model, variables = _init(name, (32, 32, 3))
    variables = _randomised(variables, seed=1)
    x = _inputs((32, 32, 3))
    logits = _apply(model, variables, x, train=False)
    assert logits.shape == (2, NUM_CLASSES)
    expected = ORACLES[name](variables, x)
    _assert_logits_close(logits, expected)
    other_eps = _oracle_with_eps(name, variables, x, 1e-3)
    assert np.max(np.abs(other_eps - expected)) > 50 * 1e-5 * np.max(np.abs(expected))


def test_train_updates_running_statistics_with_momentum_0_9():
    model = build_model("mlp", NUM_CLASSES, hidden=(16, 16))
    variables = init_variables(model, jax.random.key(0), (8, 8, 1))
    x = _inputs((8, 8, 1), batch=4)
    _, updates = _apply(model, variables, x, train=True)
    # First BatchNorm: running stats start at mean 0 and variance 1 and move 10% of the way to
    # the batch mean and (biased) variance of the first Dense layer's outputs.
    dense = variables["params"]["Dense_0"]
    assert "bias" not in dense  # batch norm's own offset plays its part
    pre_bn = x.reshape((4, -1)) @ dense["kernel"]
    stats = updates["batch_stats"]["BatchNorm_0"]
    np.testing.assert_allclose(stats["mean"], 0.1 * pre_bn.mean(axis=0), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(stats["var"], 0.9 + 0.1 * pre_bn.var(axis=0), rtol=1e-5)
    # Every BatchNorm layer's statistics move.
    for before, after in zip(
        jax.tree.leaves(variables["batch_stats"]),
        jax.tree.leaves(updates["batch_stats"]),
        strict=True,
    ):
        assert not np.allclose(before, after)


@pytest.mark.parametrize("name", MODELS)
def test_eval_is_per_example_and_deterministic(name):
    model, variables = _init(name)
    x = _inputs((8, 8, 1), batch=4)
    # Non-trivial running statistics, so that using them (not the batch's) is what is tested.
    _, updates = _apply(model, variables, _inputs((8, 8, 1), batch=4, seed=1), train=True)
    variables = {**variables, **updates}
    batch = _apply(model, variables, x, train=False)
    np.testing.assert_array_equal(batch, _apply(model, variables, x, train=False))
    alone = _apply(model, variables, x[:1], train=False)
    np.testing.assert_allclose(alone, batch[:1], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", ["c1", "c2"])
def test_dropout_depends_on_the_key_in_training_only(name):
    model, variables = _init(name)
    x = _inputs((8, 8, 1), batch=4)
    first, _ = _apply(model, variables, x, train=True, seed=0)
    again, _ = _apply(model, variables, x, train=True, seed=0)
    other, _ = _apply(model, variables, x, train=True, seed=1)
    np.testing.assert_array_equal(first, again)
    assert not np.allclose(first, other)
    evals = [_apply(model, variables, x, train=False, seed=seed) for seed in (0, 1)]
    np.testing.assert_array_equal(*evals)


def test_mlp_has_no_dropout():
    model, variables = _init("mlp")
    x = _inputs((8, 8, 1), batch=4)
    outputs = [_apply(model, variables, x, train=True, seed=seed)[0] for seed in (0, 1)]
    np.testing.assert_array_equal(*outputs)


def test_f1_parameter_count():
    widths = [784, 512, 512, 512, 512, 512, 10]
    # No bias on the hidden Dense layers (batch norm follows); the output layer has one.
    dense = sum(n_in * n_out for n_in, n_out in pairwise(widths)) + 10
    batch_norm = 5 * 2 * 512  # scale and bias per hidden unit
    shapes = _shapes("f1", (784,))
    assert _count(shapes["params"]) == dense + batch_norm
    assert _count(shapes["batch_stats"]) == 5 * 2 * 512  # running mean and variance


def test_f2_is_seven_hidden_layers_of_512():
    params = _shapes("f2", (39,), num_classes=1973)["params"]
    widths = [params[f"Dense_{i}"]["kernel"].shape for i in range(8)]
    assert widths == [(39, 512)] + [(512, 512)] * 6 + [(512, 1973)]


def test_c1_parameter_count_on_cifar():
    # Two 5x5 convs of 64 channels, each 3x3/2 "same" pool halves 32 -> 16 -> 8: 8 * 8 * 64 inputs.
    # Layers followed by batch norm have no bias.
    convs = (5 * 5 * 3 * 64) + (5 * 5 * 64 * 64)
    dense = (8 * 8 * 64 * 384) + (384 * 192) + (192 * 10 + 10)
    batch_norm = 2 * (64 + 64 + 384 + 192)
    assert _count(_shapes("c1", (32, 32, 3))["params"]) == convs + dense + batch_norm


@pytest.mark.parametrize("input_shape", [(32, 32, 3), (8, 8, 1)])
def test_c2_parameter_count(input_shape):
    channels = [input_shape[-1], 64, 64, 128, 128, 256, 256, 256, 512, 512, 512, 512, 512, 512]
    # 3x3 kernel (no bias: batch norm follows), BatchNorm scale and bias.
    convs = sum(3 * 3 * c_in * c_out + 2 * c_out for c_in, c_out in pairwise(channels))
    # Five 2x2 "same" pools leave 1x1x512 of 32x32 inputs and of 8x8 (8 -> 4 -> 2 -> 1 -> 1 -> 1).
    head = (512 * 512 + 2 * 512) + (512 * 10 + 10)
    assert _count(_shapes("c2", input_shape)["params"]) == convs + head


def test_c3_c4_are_c1_c2_with_other_class_counts():
    for small, large in (("c1", "c3"), ("c2", "c4")):
        assert _shapes(small, (32, 32, 3), 100) == _shapes(large, (32, 32, 3), 100)


def test_build_model_rejects_bad_arguments():
    with pytest.raises(ValueError, match=r"name must be one of .*'mlp'.*'c4'.*got 'c5'"):
        build_model("c5", 10)
    with pytest.raises(ValueError, match="num_classes"):
        build_model("mlp", 1)
    for bad in (10.0, True, "10", None):
        with pytest.raises(ValueError, match=r"^num_classes must be an integer >= 2"):
            build_model("mlp", bad)
    with pytest.raises(ValueError, match=r"^hidden\[1\] must be an integer >= 1, got 0$"):
        build_model("mlp", 10, hidden=(16, 0))
    with pytest.raises(ValueError, match=r"^hidden\[0\] must be an integer .* \(a bool\)$"):
        build_model("mlp", 10, hidden=(True,))
    with pytest.raises(ValueError, match=r"^hidden must be a sequence of integers >= 1, got 16$"):
        build_model("mlp", 10, hidden=16)
    assert build_model("mlp", np.int64(3), hidden=[np.int32(4)]) == build_model(
        "mlp", 3, hidden=(4,)
    )


def test_init_variables_rejects_bad_input_shapes():
    model = build_model("mlp", 3, hidden=(4,))
    for bad in ((8, 0), (8.0,), 8, (True,)):
        with pytest.raises(ValueError, match=r"^input_shape"):
            init_variables(model, jax.random.key(0), bad)


def test_a_model_without_batch_norm_has_empty_batch_stats():
    # train_seeds reads variables["batch_stats"]; it used to raise KeyError for such a model.
    model = build_model("mlp", 3, hidden=(4,), batch_norm=False)
    variables = init_variables(model, jax.random.key(0), (6,))
    assert variables["batch_stats"] == {} and set(variables["params"]) == {"Dense_0", "Dense_1"}
