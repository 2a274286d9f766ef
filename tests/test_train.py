"""flatmin.train: Adam steps, vmapped seeds, stopping rules, divergence, bad input."""

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import flatmin.train
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
        # bool is an int subclass: True is refused wherever a number is expected.
        ({"patience": True}, r"^patience must be None or an integer >= 1, got True \(a bool\)"),
        ({"batch_size": True}, r"^batch_size must be an integer >= 1, got True \(a bool\)"),
        ({"epochs": 2.0}, r"^epochs must be an integer >= 1, got 2\.0"),
        ({"eval_chunk": 0}, r"^eval_chunk\b"),
        ({"learning_rate": math.nan}, r"^learning_rate must be a finite number > 0, got nan"),
        ({"learning_rate": math.inf}, r"^learning_rate\b"),
        ({"learning_rate": True}, r"^learning_rate\b.*\(a bool\)"),
        ({"learning_rate": "1e-3"}, r"^learning_rate\b"),
        ({"target_loss": math.nan}, r"^target_loss must be None or a finite number >= 0, got nan"),
        ({"target_loss": -0.1}, r"^target_loss\b"),
        ({"target_loss": math.inf}, r"^target_loss\b"),
        ({"min_improvement": math.nan}, r"^min_improvement must be a finite number in \[0, 1\)"),
        ({"min_improvement": 1.0}, r"^min_improvement\b.*got 1\.0"),
        ({"min_improvement": -0.01}, r"^min_improvement\b"),
        ({"min_improvement": False}, r"^min_improvement\b.*\(a bool\)"),
    ],
)
def test_bad_config_raises(changes, match):
    with pytest.raises(ValueError, match=match):
        dataclasses.replace(SMALL, **changes)


def test_config_numbers_are_stored_as_python_numbers():
    config = dataclasses.replace(
        SMALL, batch_size=np.int64(16), learning_rate=np.float32(0.5), target_loss=0, patience=2
    )
    assert type(config.batch_size) is int and config.batch_size == 16
    assert type(config.learning_rate) is float and config.learning_rate == 0.5
    assert type(config.target_loss) is float and config.min_improvement == 1e-2


def _not_compiled(*args, **kwargs):
    raise AssertionError("bad input reached the epoch program")


def _with(array, index, value):
    array = np.array(array)
    array[index] = value
    return array


BAD_KEYS = [
    ("single typed key", jax.random.key(0), r"^keys must be a 1-D array .*got a single key"),
    ("typed keys (2, 2)", jax.random.split(jax.random.key(0), (2, 2)), r"^keys .* shape \(2, 2\)"),
    ("single raw key", jax.random.PRNGKey(0), r"^keys must be .*\(a single raw key\)"),
    ("raw keys (3, 4)", np.zeros((3, 4), np.uint32), r"^keys must be typed .* shape \(3, 4\)"),
    ("raw float keys", np.zeros((3, 2), np.float32), r"^keys must be typed .* float32"),
    ("no keys", jax.random.split(jax.random.key(0), 0), r"^keys must hold at least one"),
    ("a list", [jax.random.key(0)], r"^keys must be an array .* got list"),
]


@pytest.mark.parametrize(("keys", "match"), [c[1:] for c in BAD_KEYS], ids=[c[0] for c in BAD_KEYS])
def test_bad_keys_raise_before_training(digits, monkeypatch, keys, match):
    monkeypatch.setattr(flatmin.train, "epoch_program", _not_compiled)
    with pytest.raises(ValueError, match=match):
        train_seeds(SMALL, keys, digits)


def test_raw_key_data_is_accepted(digits):
    keys = jax.random.split(jax.random.key(0), 2)
    config = dataclasses.replace(SMALL, epochs=1)
    typed, raw = (train_seeds(config, k, digits) for k in (keys, jax.random.key_data(keys)))
    for a, b in zip(_leaves(typed.variables), _leaves(raw.variables), strict=True):
        np.testing.assert_array_equal(a, b)


BAD_DATA = [
    (
        "NaN input",
        {"x_train": lambda d: _with(d.x_train, (3, 2, 2, 0), np.nan)},
        r"^data\.x_train must be finite",
    ),
    (
        "inf test input",
        {"x_test": lambda d: _with(d.x_test, 0, np.inf)},
        r"^data\.x_test must be finite",
    ),
    (
        "label 10 of 10 classes",
        {"y_train": lambda d: _with(d.y_train, 5, 10)},
        r"^data\.y_train must hold class labels in \[0, 10\)",
    ),
    (
        "negative test label",
        {"y_test": lambda d: _with(d.y_test, 5, -1)},
        r"^data\.y_test must hold class labels",
    ),
    (
        "float labels",
        {"y_train": lambda d: d.y_train.astype(np.float32)},
        r"^data\.y_train must be a 1-D array of integer",
    ),
    (
        "lengths differ",
        {"y_train": lambda d: d.y_train[:-1]},
        r"^data\.x_train and data\.y_train must hold the same number",
    ),
    (
        "labels beyond num_classes",
        {"num_classes": lambda d: 5},
        r"^data\.y_train must hold class labels in \[0, 5\)",
    ),
    ("bad num_classes", {"num_classes": lambda d: 10.0}, r"^num_classes must be an integer >= 2"),
]


@pytest.mark.parametrize(
    ("changes", "match"), [c[1:] for c in BAD_DATA], ids=[c[0] for c in BAD_DATA]
)
def test_bad_data_raises_before_training(digits, monkeypatch, changes, match):
    monkeypatch.setattr(flatmin.train, "epoch_program", _not_compiled)
    data = digits._replace(**{name: change(digits) for name, change in changes.items()})
    with pytest.raises(ValueError, match=match):
        train_seeds(SMALL, jax.random.split(jax.random.key(0), 2), data)


@pytest.mark.parametrize("every", [True, 0, 2.0, None])
def test_bad_checkpoint_every_raises_before_training(digits, monkeypatch, tmp_path, every):
    monkeypatch.setattr(flatmin.train, "epoch_program", _not_compiled)
    with pytest.raises(ValueError, match=r"^checkpoint_every must be an integer >= 1"):
        train_seeds(
            SMALL,
            jax.random.split(jax.random.key(0), 2),
            digits,
            checkpoint_dir=tmp_path,
            checkpoint_every=every,
        )
    assert not any(tmp_path.iterdir())


def test_bad_batch_size_and_keys_raise_before_training(digits):
    with pytest.raises(ValueError, match="batch_size"):
        train_seeds(
            dataclasses.replace(SMALL, batch_size=5000),
            jax.random.split(jax.random.key(0), 2),
            digits,
        )
    with pytest.raises(ValueError, match="keys"):
        train_seeds(SMALL, jax.random.split(jax.random.key(0), 0), digits)
