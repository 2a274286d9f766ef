"""flatmin.training.objective: the evaluation-mode loss `Objective(model)(params, batch_stats,
x, y)` is a deterministic function of the parameters and the data."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import flatmin
import flatmin.training.objective
from flatmin.training.models import build_model, init_variables
from flatmin.training.objective import Objective, batch_norm_statistics, evaluate

from ..support.forward_oracles import BN_EPS, loss_and_accuracy, mlp_logits, shallow_cnn_logits


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
    # Same forward pass, but the sum over 23 examples runs in another order (per chunk, then
    # over chunks): float32 rounding of a 23-term sum is within ~23 ulps, so rtol 1e-5.
    np.testing.assert_allclose(loss, expected, rtol=1e-5)
    assert round(float(acc) * 23) == round(float(accuracy) * 23)  # as counts: 1/23 may round


# The oracle: forward passes written out in float64 NumPy (tests/forward_oracles.py), sharing
# no code with flax: Dense / Conv -> BatchNorm on the running statistics, (h - mean) /
# sqrt(var + 1e-5) * scale + bias -> ReLU [-> max pool], dropout off, a last Dense with bias.


def _np(a) -> np.ndarray:
    return np.asarray(a, np.float64)


def _check_against_numpy(logits_np: np.ndarray, evaluated, y) -> None:
    # The oracle can be trusted on accuracy only where no two logits nearly tie.
    top2 = np.sort(logits_np, axis=1)[:, -2:]
    assert np.min(top2[:, 1] - top2[:, 0]) > 1e-3
    loss_np, accuracy_np = loss_and_accuracy(logits_np, y)
    assert 0 < accuracy_np < 1  # some right, some wrong: a swapped label or argmax would show
    loss, accuracy = evaluated
    # float32 forward pass against float64: each logit carries a relative error of a few
    # hundred ulps at most (sums of <= 1600 products), far below 1e-5 of the loss.
    np.testing.assert_allclose(loss, loss_np, rtol=1e-5)
    assert round(float(accuracy) * len(y)) == round(accuracy_np * len(y))  # as counts


@pytest.mark.parametrize("chunk_size", [2048, 5])
def test_mlp_loss_and_accuracy_equal_a_float64_numpy_forward_pass(chunk_size):
    model, params, x = _mlp_with_bn((16, 8))
    rng = np.random.default_rng(1)
    # Running statistics far from flax's (0, 1) start and from the batch's own: a model that
    # normalised by the batch's statistics, or by none, would give other logits.
    stats = {
        f"BatchNorm_{i}": {
            "mean": jnp.asarray(rng.normal(size=w), jnp.float32),
            "var": jnp.asarray(rng.uniform(0.05, 3.0, size=w), jnp.float32),
        }
        for i, w in enumerate((16, 8))
    }
    y = jnp.asarray(rng.integers(0, 3, size=23), jnp.int32)
    logits_np = mlp_logits({"params": params, "batch_stats": stats}, x, 2)
    _check_against_numpy(logits_np, evaluate(model, params, stats, x, y, chunk_size=chunk_size), y)
    np.testing.assert_allclose(
        Objective(model, chunk_size=chunk_size)(params, stats, x, y),
        loss_and_accuracy(logits_np, y)[0],
        rtol=1e-5,
    )
    # The oracle discriminates: flax's epsilon replaced by 1e-3 moves the loss well past rtol.
    other_eps = {"params": params, "batch_stats": stats}
    other_eps = loss_and_accuracy(mlp_logits(other_eps, x, 2, eps=1e-3), y)[0]
    assert abs(other_eps / loss_and_accuracy(logits_np, y)[0] - 1) > 1e-4


def test_batch_mode_loss_equals_a_numpy_pass_with_the_data_sets_own_statistics():
    """Oracle: the float64 NumPy MLP with batch norm on the mean and biased variance of its
    input over all of x (training mode, one batch). The running statistics passed in are
    far from those and must not matter; dropout (C1 has it) must be off."""
    model, params, x = _mlp_with_bn((16, 8))
    rng = np.random.default_rng(2)
    y = jnp.asarray(rng.integers(0, 3, size=23), jnp.int32)
    stats = {
        f"BatchNorm_{i}": {
            "mean": jnp.asarray(rng.normal(size=w), jnp.float32),
            "var": jnp.asarray(rng.uniform(0.05, 3.0, size=w), jnp.float32),
        }
        for i, w in enumerate((16, 8))
    }
    variables = {"params": params, "batch_stats": stats}
    expected = loss_and_accuracy(mlp_logits(variables, x, 2, batch_statistics=True), y)[0]
    running = loss_and_accuracy(mlp_logits(variables, x, 2), y)[0]
    assert abs(expected / running - 1) > 1e-2  # the two modes differ here
    # flax's batch variance is E[h^2] - E[h]^2 in float32: a few digits fewer than rtol 1e-5.
    np.testing.assert_allclose(Objective(model, bn="batch")(params, stats, x, y), expected,
                               rtol=2e-4)  # fmt: skip
    with pytest.raises(ValueError, match=r"^bn must be one of"):
        Objective(model, bn="ghost")


def test_batch_mode_loss_equals_evaluation_with_the_exact_statistics(c1_setup):
    """Oracle: `batch_norm_statistics` (per-layer passes, chunked, Chan's pooled moments) then
    evaluation mode. C1 has dropout: batch mode must turn it off, as evaluation does, and be
    the same function of the parameters, under jit too."""
    model, params, batch_stats, x, y = c1_setup
    exact = batch_norm_statistics(model, params, x, chunk_size=7)
    expected, _ = evaluate(model, params, exact, x, y)
    loss_fn = Objective(model, bn="batch")
    np.testing.assert_allclose(loss_fn(params, batch_stats, x, y), expected, rtol=2e-4)
    np.testing.assert_allclose(jax.jit(loss_fn)(params, batch_stats, x, y), expected, rtol=2e-4)


def test_c1_loss_and_accuracy_equal_a_float64_numpy_forward_pass(c1_setup):
    model, params, batch_stats, x, y = c1_setup
    # Random BatchNorm scales and offsets (flax starts them at 1 and 0), so that a mix-up of
    # the two, or of a layer's statistics with another's, would show.
    rng = np.random.default_rng(4)
    params = jax.tree_util.tree_map_with_path(
        lambda path, p: (
            jnp.asarray(rng.uniform(0.5, 1.5, p.shape) * np.sign(rng.normal(size=p.shape)), p.dtype)
            if path[0].key.startswith("BatchNorm")
            else p
        ),
        params,
    )
    logits_np = shallow_cnn_logits({"params": params, "batch_stats": batch_stats}, x)
    _check_against_numpy(logits_np, evaluate(model, params, batch_stats, x, y, chunk_size=10), y)


@pytest.mark.parametrize("chunk_size", [1, 5, 7, 23, 100])
def test_chunking_and_padding_do_not_change_the_result(c1_setup, chunk_size):
    model, params, batch_stats, x, y = c1_setup
    whole = evaluate(model, params, batch_stats, x, y, chunk_size=1000)
    chunked = evaluate(model, params, batch_stats, x, y, chunk_size=chunk_size)
    np.testing.assert_allclose(chunked, whole, rtol=1e-5)


def test_no_dropout_and_running_statistics(c1_setup):
    model, params, batch_stats, x, y = c1_setup
    loss_fn = Objective(model)
    first = loss_fn(params, batch_stats, x, y)
    assert first == loss_fn(params, batch_stats, x, y)  # dropout would make two calls differ
    # The running statistics are used: changing them changes f; the batch's own would not.
    shifted = jax.tree.map(lambda s: s + 0.5, batch_stats)
    assert loss_fn(params, shifted, x, y) != first


def test_objective_is_a_value():
    """Equal models and settings give equal, hashable objectives: one compiled program per
    model and shapes, whichever instance a measure is handed."""
    model = build_model("mlp", 3, hidden=(5,))
    assert Objective(model) == Objective(build_model("mlp", 3, hidden=(5,)))
    assert hash(Objective(model)) == hash(Objective(model, "running", 2048))
    assert Objective(model) != Objective(model, bn="batch")
    assert Objective(model) != Objective(model, chunk_size=7)
    assert Objective(model, chunk_size=np.int64(7)).chunk_size == 7
    assert type(Objective(model, chunk_size=np.int64(7)).chunk_size) is int


# batch_norm_statistics: the exact full-data statistics of every BatchNorm layer's input.


def _mlp_with_bn(hidden, seed=0):
    """An MLP with BatchNorm, random kernels, scales and offsets, and 23 off-centre inputs."""
    model = build_model("mlp", 3, hidden=hidden)
    params = init_variables(model, jax.random.key(seed), (6,))["params"]
    rng = np.random.default_rng(seed)
    params = jax.tree.map(lambda p: jnp.asarray(rng.normal(size=p.shape), p.dtype), params)
    x = jnp.asarray(rng.normal(size=(23, 6)) * 2 + 1, jnp.float32)
    return model, params, x


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


# Bad input: a ValueError naming the argument, before anything is evaluated.


@pytest.fixture(scope="module")
def mlp_setup():
    """A 3-class MLP with batch norm, 23 examples of 6 features, labels 0..2."""
    model, params, x = _mlp_with_bn((5,))
    batch_stats = init_variables(model, jax.random.key(0), (6,))["batch_stats"]
    y = jnp.asarray(np.arange(23) % 3, jnp.int32)
    return model, params, batch_stats, x, y


def _with(x, index, value):
    x = np.array(x)
    x[index] = value
    return x


BAD_EXAMPLES = [
    ("different lengths", lambda x, y: (x, y[:-1]), r"^x and y must hold the same number .*23.*22"),
    (
        "label = num_classes",
        lambda x, y: (x, _with(y, 3, 3)),
        r"^y must hold class labels in \[0, 3\)",
    ),
    (
        "negative label",
        lambda x, y: (x, _with(y, 0, -1)),
        r"^y must hold class labels .* from -1 to 2",
    ),
    (
        "float labels",
        lambda x, y: (x, np.asarray(y, np.float32)),
        r"^y must be a 1-D array of integer",
    ),
    (
        "bool labels",
        lambda x, y: (x, np.asarray(y) > 0),
        r"^y must be a 1-D array of integer.*bool",
    ),
    ("2-D labels", lambda x, y: (x, y[:, None]), r"^y must be a 1-D array .* \(23, 1\)"),
    ("NaN input", lambda x, y: (_with(x, (4, 2), np.nan), y), r"^x must be finite"),
    ("inf input", lambda x, y: (jnp.asarray(_with(x, (0, 0), -np.inf)), y), r"^x must be finite"),
    ("no examples", lambda x, y: (x[:0], y[:0]), r"^x must have a leading example axis"),
    ("scalar x", lambda x, y: (x[0, 0], y), r"^x must have a leading example axis"),
]


@pytest.mark.parametrize("call", ["evaluate", "validate", "sharpness"])
@pytest.mark.parametrize(
    ("change", "match"), [c[1:] for c in BAD_EXAMPLES], ids=[c[0] for c in BAD_EXAMPLES]
)
def test_bad_examples_are_refused_before_any_evaluation(
    mlp_setup, monkeypatch, call, change, match
):
    model, params, batch_stats, x, y = mlp_setup
    x, y = change(x, y)

    def not_reached(*args):
        raise AssertionError("evaluated bad input")

    monkeypatch.setattr(flatmin.training.objective, "_evaluate", not_reached)
    with pytest.raises(ValueError, match=match):
        if call == "evaluate":
            evaluate(model, params, batch_stats, x, y)
        elif call == "validate":
            Objective(model).validate(params, batch_stats, x, y)
        else:  # every measure validates an Objective's arguments before compiling anything
            flatmin.sharpness(Objective(model), params, args=(batch_stats, x, y))


@pytest.mark.parametrize("chunk_size", [0, -1, True, 2.0, None])
def test_bad_chunk_size_is_refused(mlp_setup, chunk_size):
    model, params, batch_stats, x, y = mlp_setup
    with pytest.raises(ValueError, match=r"^chunk_size must be an integer >= 1"):
        evaluate(model, params, batch_stats, x, y, chunk_size=chunk_size)
    with pytest.raises(ValueError, match=r"^chunk_size must be an integer >= 1"):
        Objective(model, chunk_size=chunk_size)
    with pytest.raises(ValueError, match=r"^chunk_size must be an integer >= 1"):
        batch_norm_statistics(model, params, x, chunk_size=chunk_size)


def test_the_largest_valid_label_and_numpy_inputs_are_accepted(mlp_setup):
    model, params, batch_stats, x, _ = mlp_setup
    labels = np.full(23, 2, np.uint8)  # num_classes - 1, in an unsigned dtype
    loss, _ = evaluate(model, params, batch_stats, np.asarray(x), labels, chunk_size=np.int64(5))
    objective = Objective(model)
    objective.validate(params, batch_stats, np.asarray(x), labels)
    np.testing.assert_allclose(objective(params, batch_stats, x, labels), loss, rtol=1e-5)


def test_under_jit_only_shapes_are_checked(mlp_setup):
    """The documented limit: traced x and y have no values, so NaN inputs and out-of-range
    labels pass unnoticed (a NaN loss; label -1 silently read as num_classes - 1); shapes and
    dtypes are still refused."""
    model, params, batch_stats, x, y = mlp_setup
    jitted = jax.jit(lambda x, y: evaluate(model, params, batch_stats, x, y))
    assert np.isnan(jitted(_with(x, (4, 2), np.nan), y)[0])
    assert np.isnan(jitted(x, _with(y, 3, 3))[0])
    np.testing.assert_array_equal(jitted(x, _with(y, 3, -1))[0], jitted(x, _with(y, 3, 2))[0])
    with pytest.raises(ValueError, match=r"^x and y must hold the same number"):
        jitted(x, y[:-1])
    with pytest.raises(ValueError, match=r"^y must be a 1-D array of integer"):
        jitted(x, np.asarray(y, np.float32))
    # A concrete constant closed over by a jitted function is checked while tracing.
    with pytest.raises(ValueError, match=r"^y must hold class labels"):
        jax.jit(lambda p: evaluate(model, p, batch_stats, x, _with(y, 3, 7)))(params)


def test_batch_norm_statistics_refuses_nan_inputs(mlp_setup):
    model, params, _, x, _ = mlp_setup
    with pytest.raises(ValueError, match=r"^x must be finite"):
        batch_norm_statistics(model, params, _with(x, (0, 0), np.nan))


def test_a_model_without_class_logits_is_refused():
    class Scalar(nn.Module):
        @nn.compact
        def __call__(self, x, *, train):
            return nn.Dense(1)(x)[:, 0]

    model = Scalar()
    x, y = jnp.ones((4, 3)), jnp.zeros(4, jnp.int32)
    params = model.init(jax.random.key(0), x, train=False)["params"]
    with pytest.raises(
        ValueError, match=r"^model must map \(n, \.\.\.\) inputs to \(n, num_classes\)"
    ):
        evaluate(model, params, {}, x, y)
    with pytest.raises(ValueError, match=r"^model must map"):
        Objective(model).validate(params, {}, x, y)
    with pytest.raises(ValueError, match=r"^model must map"):
        flatmin.sharpness(Objective(model), params, args=({}, x, y))


def test_objective_refuses_what_is_not_a_model_and_arguments_not_of_three(mlp_setup):
    model, params, _, x, y = mlp_setup
    with pytest.raises(ValueError, match=r"^model must be a flax.linen.Module"):
        Objective(lambda variables, x, train: x)
    with pytest.raises(ValueError, match=r"^args must be \(batch_stats, x, y\)"):
        Objective(model).validate(params, x, y)
    with pytest.raises(ValueError, match=r"^args must be \(batch_stats, x, y\)"):
        flatmin.hessian_trace(Objective(model), params, args=(x, y))
