"""flatmin.train: Adam steps, vmapped seeds, stopping rules, divergence, bad input."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from flatmin.data import load_dataset
from flatmin.models import build_model, init_variables
from flatmin.train import TrainConfig, TrainState, make_train_step, train_seeds

SMALL = TrainConfig(model="mlp", model_kwargs={"hidden": (32,)}, batch_size=64, epochs=3)


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits")


def test_train_step_lowers_the_loss(digits):
    model = build_model("mlp", 10, hidden=(32,))
    variables = init_variables(model, jax.random.key(0), (8, 8, 1))
    optimizer = optax.adam(1e-2)
    state = TrainState(
        variables["params"],
        variables["batch_stats"],
        optimizer.init(variables["params"]),
        jax.random.key(1),
        jnp.zeros((), jnp.int32),
    )
    step = jax.jit(make_train_step(model, optimizer))
    batch = (jnp.asarray(digits.x_train[:128]), jnp.asarray(digits.y_train[:128]))
    losses = []
    for _ in range(20):
        state, metrics = step(state, batch)
        losses.append(float(metrics["loss"]))
    assert losses[-1] < 0.5 * losses[0]
    assert int(state.step) == 20


def _leaves(tree):
    return [np.asarray(leaf) for leaf in jax.tree.leaves(tree)]


def test_vmapped_seeds_equal_seeds_trained_alone(digits):
    keys = jax.random.split(jax.random.key(0), 3)
    together = train_seeds(SMALL, keys, digits)
    assert together.history.train_loss.shape == (3, SMALL.epochs)
    for k in range(3):
        alone = train_seeds(SMALL, keys[k : k + 1], digits)
        for a, b in zip(_leaves(together.variables), _leaves(alone.variables), strict=True):
            np.testing.assert_allclose(a[k], b[0], rtol=2e-5, atol=2e-6)
        np.testing.assert_allclose(
            together.history.train_loss[k], alone.history.train_loss[0], rtol=1e-5
        )
    # Different seeds are different runs.
    first = _leaves(together.variables)[0]
    assert not np.allclose(first[0], first[1])


def test_seeds_stop_at_their_own_epoch_and_stay_frozen(digits):
    """With a target loss seeds stop at different epochs; each equals that seed trained alone."""
    config = dataclasses.replace(SMALL, learning_rate=3e-3, epochs=30, target_loss=0.3)
    keys = jax.random.split(jax.random.key(4), 4)
    together = train_seeds(config, keys, digits)
    epochs = together.epochs
    assert np.all(together.history.train_loss[np.arange(4), epochs - 1] <= 0.3)
    assert len(set(epochs.tolist())) > 1, f"seeds stopped together ({epochs}); pick another target"
    for k in np.argsort(epochs)[:1]:  # the seed that stopped first was frozen the longest
        alone = train_seeds(config, keys[k : k + 1], digits)
        assert alone.epochs[0] == epochs[k]
        for a, b in zip(_leaves(together.variables), _leaves(alone.variables), strict=True):
            np.testing.assert_allclose(a[k], b[0], rtol=2e-5, atol=2e-6)
        # After stopping, its history repeats its final metrics.
        tail = together.history.train_loss[k, epochs[k] - 1 :]
        np.testing.assert_array_equal(tail, tail[0])


def test_patience_stops_a_plateau(digits):
    config = dataclasses.replace(SMALL, learning_rate=1e-9, epochs=20, patience=2)
    result = train_seeds(config, jax.random.split(jax.random.key(0), 2), digits)
    # The loss cannot improve by 1% at this learning rate: epoch 1 sets the best, 2 and 3 stale.
    np.testing.assert_array_equal(result.epochs, [3, 3])


def test_a_diverged_seed_is_reported_and_the_others_finish(digits):
    def init_fn(key):
        variables = init_variables(build_model("mlp", 10, hidden=(32,)), key, (8, 8, 1))
        # Seed-dependent poison: exactly the seeds whose key draws > 0.5 start from NaN.
        poison = jnp.where(jax.random.uniform(key) > 0.5, jnp.nan, 1.0)
        return jax.tree.map(lambda leaf: leaf * poison, variables)

    keys = jax.random.split(jax.random.key(7), 4)
    expected = np.array([float(jax.random.uniform(jax.random.split(k)[0])) > 0.5 for k in keys])
    assert expected.any() and not expected.all()
    result = train_seeds(SMALL, keys, digits, init_variables_fn=init_fn)
    np.testing.assert_array_equal(result.diverged_epoch > 0, expected)
    np.testing.assert_array_equal(result.diverged_epoch[expected], 1)
    assert np.all(result.epochs[~expected] == SMALL.epochs)
    assert np.all(np.isfinite(result.history.train_loss[~expected]))


@pytest.mark.parametrize(
    ("changes", "match"),
    [
        ({"model": "resnet"}, "model"),
        ({"dataset": "imagenet"}, "dataset"),
        ({"epochs": 0}, "epochs"),
        ({"batch_size": 0}, "batch_size"),
        ({"learning_rate": -1.0}, "learning_rate"),
        ({"patience": 0}, "patience"),
    ],
)
def test_bad_config_raises(changes, match):
    with pytest.raises(ValueError, match=match):
        dataclasses.replace(SMALL, **changes)


def test_bad_batch_size_and_keys_raise_before_training(digits):
    with pytest.raises(ValueError, match="batch_size"):
        train_seeds(
            dataclasses.replace(SMALL, batch_size=5000),
            jax.random.split(jax.random.key(0), 2),
            digits,
        )
    with pytest.raises(ValueError, match="keys"):
        train_seeds(SMALL, jax.random.split(jax.random.key(0), 0), digits)
