"""flatmin.training.train: Adam steps, vmapped seeds, stopping rules, divergence, bad input."""

import math
import operator

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import scipy.special

import flatmin.training.train
from flatmin.training.data import Dataset, load_dataset
from flatmin.training.models import build_model, init_variables
from flatmin.training.objective import evaluate
from flatmin.training.train import Schedule, TrainState, make_train_step, train_seeds

SMALL = {"batch_size": 64, "epochs": 3}
MODEL = build_model("mlp", 10, hidden=(32,))


def _train(keys, data, *, model=MODEL, learning_rate=1e-3, **kwargs):
    """train_seeds of `model` (a 32-unit MLP) with Adam, the SMALL schedule unless overridden."""
    return train_seeds(model, optax.adam(learning_rate), data, keys, **(SMALL | kwargs))


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


# An independent oracle: the loss, its gradient by hand-written backpropagation, and optax's
# Adam (b1 0.9, b2 0.999, eps 1e-8 outside the square root, bias-corrected), all in float64
# NumPy, for a 4-5-3 ReLU MLP without batch norm or dropout.

ADAM_B1, ADAM_B2, ADAM_EPS = 0.9, 0.999, 1e-8
LR = 1e-2


def _f64(tree):
    return jax.tree.map(lambda a: np.asarray(a, np.float64), tree)


def _loss_and_grad_np(params: dict, x, y) -> tuple[float, dict, np.ndarray]:
    """Mean cross-entropy of Dense -> ReLU -> Dense, its gradient, and the pre-activations."""
    p = _f64(params)
    x, y = np.asarray(x, np.float64).reshape(len(x), -1), np.asarray(y)
    rows = np.arange(len(y))
    pre = x @ p["Dense_0"]["kernel"] + p["Dense_0"]["bias"]
    h = np.maximum(pre, 0.0)
    logits = h @ p["Dense_1"]["kernel"] + p["Dense_1"]["bias"]
    log_softmax = logits - scipy.special.logsumexp(logits, axis=1, keepdims=True)
    loss = -log_softmax[rows, y].mean()
    d_logits = np.exp(log_softmax)
    d_logits[rows, y] -= 1.0
    d_logits /= len(y)
    d_pre = (d_logits @ p["Dense_1"]["kernel"].T) * (pre > 0)
    grad = {
        "Dense_0": {"kernel": x.T @ d_pre, "bias": d_pre.sum(0)},
        "Dense_1": {"kernel": h.T @ d_logits, "bias": d_logits.sum(0)},
    }
    accuracy = np.mean(np.argmax(logits, axis=1) == y)
    return loss, grad, pre, accuracy


def _adam_np(params: dict, batches) -> tuple[dict, list[float]]:
    """Adam steps from zero moments, one per (x, y) batch; also the loss before each step."""
    p, m, v = _f64(params), None, None
    losses = []
    for t, (x, y) in enumerate(batches, start=1):
        loss, g, pre, _ = _loss_and_grad_np(p, x, y)
        # Guards: no pre-activation near ReLU's kink, and every gradient entry >= 1e-3, so that
        # float32 rounding (absolute ~1e-7 here) moves no entry by more than ~1e-4 of itself.
        assert np.min(np.abs(pre)) > 1e-3
        assert min(np.min(np.abs(leaf)) for leaf in jax.tree.leaves(g)) > 1e-3
        m = (
            jax.tree.map(lambda gi: (1 - ADAM_B1) * gi, g)
            if m is None
            else jax.tree.map(lambda mi, gi: ADAM_B1 * mi + (1 - ADAM_B1) * gi, m, g)
        )
        v = (
            jax.tree.map(lambda gi: (1 - ADAM_B2) * gi**2, g)
            if v is None
            else jax.tree.map(lambda vi, gi: ADAM_B2 * vi + (1 - ADAM_B2) * gi**2, v, g)
        )
        correction1, correction2 = 1 - ADAM_B1**t, 1 - ADAM_B2**t
        p = jax.tree.map(
            lambda pi, mi, vi, c1=correction1, c2=correction2: (
                pi - LR * (mi / c1) / (np.sqrt(vi / c2) + ADAM_EPS)
            ),
            p,
            m,
            v,
        )
        losses.append(loss)
    return p, losses


@pytest.fixture(scope="module")
def tiny_problem():
    """(model, float32 params, x (12, 4), y (12,) in 0..2): weights N(0, 0.5^2), no BN. Seed 20
    keeps every gradient entry of every step away from 0 (see the guards in `_adam_np`)."""
    rng = np.random.default_rng(20)
    model = build_model("mlp", 3, hidden=(5,), batch_norm=False)
    shapes = init_variables(model, jax.random.key(0), (4,))["params"]
    params = jax.tree.map(lambda a: jnp.asarray(rng.normal(size=a.shape) * 0.5, a.dtype), shapes)
    x = jnp.asarray(rng.normal(size=(12, 4)), jnp.float32)
    y = jnp.asarray(rng.integers(0, 3, size=12), jnp.int32)
    return model, params, x, y


def _assert_params_close(got, want64) -> None:
    """float32 parameters against float64 ones. Each Adam step is lr * m_hat / (sqrt(v_hat) +
    eps), computed from float32 gradients with relative error ~1e-6 (sums of <= 12 terms); the
    parameters themselves round to float32 (|p| <= ~2: ulp 2.4e-7). Tolerance: 1e-5 * lr per
    step plus 4 ulps of |p|. A missing bias correction or a swapped b1/b2 changes a step by
    more than 0.5 lr."""
    for (path, g), w in zip(
        jax.tree_util.tree_leaves_with_path(got), jax.tree.leaves(want64), strict=True
    ):
        g = np.asarray(g, np.float64)
        atol = 2 * 1e-5 * LR + 4 * np.spacing(np.float32(np.max(np.abs(w))))
        np.testing.assert_allclose(g, w, rtol=0, atol=atol, err_msg=jax.tree_util.keystr(path))


def test_train_step_equals_a_float64_numpy_adam_oracle(tiny_problem):
    model, params, x, y = tiny_problem
    optimizer = optax.adam(LR)
    state = TrainState(
        params, {}, optimizer.init(params), jax.random.key(1), jnp.zeros((), jnp.int32)
    )
    step = jax.jit(make_train_step(model, optimizer))
    batches = [(x[:8], y[:8]), (x[4:], y[4:])]  # two different batches: momentum matters
    expected, losses = _adam_np(params, batches)
    for (xb, yb), loss in zip(batches, losses, strict=True):
        _, _, _, accuracy = _loss_and_grad_np(state.params, xb, yb)
        state, metrics = step(state, (xb, yb))
        np.testing.assert_allclose(metrics["loss"], loss, rtol=1e-5)  # before the step
        assert round(float(metrics["accuracy"]) * len(yb)) == round(accuracy * len(yb))
    assert int(state.step) == 2 and state.batch_stats == {}
    _assert_params_close(state.params, expected)
    # The oracle discriminates: one step alone, or Adam without bias correction, is far off.
    one_step, _ = _adam_np(params, batches[:1])
    assert (
        max(
            np.max(np.abs(a - b))
            for a, b in zip(jax.tree.leaves(one_step), jax.tree.leaves(expected), strict=True)
        )
        > 0.5 * LR
    )


def test_train_seeds_full_batch_epochs_equal_the_numpy_adam_oracle(tiny_problem):
    """batch_size = N: each epoch is one Adam step on all N examples (in a permuted order,
    which changes only the order of the gradient's sum), so two epochs are two full-batch
    steps of the oracle, and each epoch's reported training loss is f at the new point."""
    _, params, x, y = tiny_problem
    data = Dataset(np.asarray(x), np.asarray(y), np.asarray(x[:6]), np.asarray(y[:6]), 3, "tiny")
    model = build_model("mlp", 3, hidden=(5,), batch_norm=False)
    starts = {"params": jax.tree.map(lambda p: jnp.stack([p, p]), params), "batch_stats": {}}
    result = train_seeds(
        model, optax.adam(LR), data, jax.random.split(jax.random.key(0), 2), batch_size=12,
        epochs=2, variables=starts,
    )  # fmt: skip
    expected, _ = _adam_np(params, [(x, y), (x, y)])
    for seed in range(2):  # both seeds start from the same parameters: the same steps
        _assert_params_close(
            jax.tree.map(operator.itemgetter(seed), result.variables["params"]), expected
        )
    after_one, _ = _adam_np(params, [(x, y)])
    for epoch, point in enumerate((after_one, expected)):
        loss, _, _, accuracy = _loss_and_grad_np(point, x, y)
        np.testing.assert_allclose(result.history.train_loss[:, epoch], loss, rtol=1e-5)
        # Accuracies as counts of examples (a compiled count / N may differ in the last bit).
        np.testing.assert_array_equal(
            np.round(result.history.train_accuracy[:, epoch] * 12), round(accuracy * 12)
        )
        _, _, _, test_accuracy = _loss_and_grad_np(point, x[:6], y[:6])
        np.testing.assert_array_equal(
            np.round(result.history.test_accuracy[:, epoch] * 6), round(test_accuracy * 6)
        )


def _leaves(tree):
    return [np.asarray(leaf) for leaf in jax.tree.leaves(tree)]


def test_vmapped_seeds_equal_seeds_trained_alone(digits):
    keys = jax.random.split(jax.random.key(0), 3)
    together = _train(keys, digits)
    assert together.history.train_loss.shape == (3, SMALL["epochs"])
    for k in range(3):
        alone = _train(keys[k : k + 1], digits)
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
    config = {"learning_rate": 3e-3, "epochs": 30, "target_loss": 0.3}
    keys = jax.random.split(jax.random.key(4), 4)
    together = _train(keys, digits, **config)
    epochs = together.epochs
    assert np.all(together.history.train_loss[np.arange(4), epochs - 1] <= 0.3)
    assert len(set(epochs.tolist())) > 1, f"seeds stopped together ({epochs}); pick another target"
    for k in np.argsort(epochs)[:1]:  # the seed that stopped first was frozen the longest
        alone = _train(keys[k : k + 1], digits, **config)
        assert alone.epochs[0] == epochs[k]
        for a, b in zip(_leaves(together.variables), _leaves(alone.variables), strict=True):
            np.testing.assert_allclose(a[k], b[0], rtol=2e-5, atol=2e-6)
        # After stopping, its history repeats its final metrics.
        tail = together.history.train_loss[k, epochs[k] - 1 :]
        np.testing.assert_array_equal(tail, tail[0])


def test_patience_stops_a_plateau(digits):
    result = _train(
        jax.random.split(jax.random.key(0), 2), digits, learning_rate=1e-9, epochs=20, patience=2
    )
    # The loss cannot improve by 1% at this learning rate: epoch 1 sets the best, 2 and 3 stale.
    np.testing.assert_array_equal(result.epochs, [3, 3])


def test_a_diverged_seed_is_reported_and_the_others_finish(digits):
    def init_fn(key):
        variables = init_variables(MODEL, key, (8, 8, 1))
        # Seed-dependent poison: exactly the seeds whose key draws > 0.5 start from NaN.
        poison = jnp.where(jax.random.uniform(key) > 0.5, jnp.nan, 1.0)
        return jax.tree.map(lambda leaf: leaf * poison, variables)

    keys = jax.random.split(jax.random.key(7), 4)
    expected = np.array([float(jax.random.uniform(jax.random.split(k)[0])) > 0.5 for k in keys])
    assert expected.any() and not expected.all()
    starts = jax.vmap(lambda k: init_fn(jax.random.split(k)[0]))(keys)
    result = _train(keys, digits, variables=starts)
    np.testing.assert_array_equal(result.diverged_epoch > 0, expected)
    np.testing.assert_array_equal(result.diverged_epoch[expected], 1)
    assert np.all(result.epochs[~expected] == SMALL["epochs"])
    assert np.all(np.isfinite(result.history.train_loss[~expected]))
    # A NaN network has no accuracy (argmax of NaN logits would "predict" class 0).
    for accuracy in (result.history.train_accuracy, result.history.test_accuracy):
        assert np.all(np.isnan(accuracy[expected])) and np.all(np.isfinite(accuracy[~expected]))


def test_a_network_with_non_finite_outputs_has_nan_accuracy(digits):
    variables = init_variables(MODEL, jax.random.key(0), (8, 8, 1))
    x, y = digits.x_test[:100], np.zeros(100, np.int32)  # every label 0: argmax(NaN)'s answer
    accuracy_of = jax.jit(
        lambda params: evaluate(MODEL, params, variables["batch_stats"], x, y, chunk_size=32)
    )
    loss, accuracy = accuracy_of(variables["params"])
    assert np.isfinite(loss) and 0 <= accuracy < 1
    kernel = variables["params"]["Dense_0"]["kernel"]
    for bad in (np.nan, np.inf):
        params = {**variables["params"], "Dense_0": {"kernel": kernel.at[:, 0].set(bad)}}
        loss, accuracy = accuracy_of(params)
        assert not np.isfinite(loss) and np.isnan(accuracy), (bad, loss, accuracy)


@pytest.mark.parametrize(
    ("changes", "match"),
    [
        ({"epochs": 0}, "epochs"),
        ({"batch_size": 0}, "batch_size"),
        ({"patience": 0}, "patience"),
        # bool is an int subclass: True is refused wherever a number is expected.
        ({"patience": True}, r"^patience must be None or an integer >= 1, got True \(a bool\)"),
        ({"batch_size": True}, r"^batch_size must be an integer >= 1, got True \(a bool\)"),
        ({"epochs": 2.0}, r"^epochs must be an integer >= 1, got 2\.0"),
        ({"eval_chunk": 0}, r"^eval_chunk\b"),
        ({"target_loss": math.nan}, r"^target_loss must be None or a finite number >= 0, got nan"),
        ({"target_loss": -0.1}, r"^target_loss\b"),
        ({"target_loss": math.inf}, r"^target_loss\b"),
        ({"min_improvement": math.nan}, r"^min_improvement must be a finite number in \[0, 1\)"),
        ({"min_improvement": 1.0}, r"^min_improvement\b.*got 1\.0"),
        ({"min_improvement": -0.01}, r"^min_improvement\b"),
        ({"min_improvement": False}, r"^min_improvement\b.*\(a bool\)"),
    ],
)
def test_bad_schedule_raises(digits, monkeypatch, changes, match):
    with pytest.raises(ValueError, match=match):
        Schedule(**(SMALL | changes))
    monkeypatch.setattr(flatmin.training.train, "epoch_program", _not_compiled)
    with pytest.raises(ValueError, match=match):
        _train(jax.random.split(jax.random.key(0), 2), digits, **changes)


def test_schedule_numbers_are_stored_as_python_numbers():
    schedule = Schedule(batch_size=np.int64(16), epochs=np.int32(2), target_loss=0, patience=2)
    assert type(schedule.batch_size) is int and schedule.batch_size == 16
    assert type(schedule.target_loss) is float and schedule.min_improvement == 1e-2


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
    monkeypatch.setattr(flatmin.training.train, "epoch_program", _not_compiled)
    with pytest.raises(ValueError, match=match):
        _train(keys, digits)


def test_raw_key_data_is_accepted(digits):
    keys = jax.random.split(jax.random.key(0), 2)
    typed, raw = (_train(k, digits, epochs=1) for k in (keys, jax.random.key_data(keys)))
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
        "num_classes not the model's",
        {"num_classes": lambda d: 7},
        r"^model must output data\.num_classes = 7 logits, got 10",
    ),
    ("bad num_classes", {"num_classes": lambda d: 10.0}, r"^data\.num_classes must be an integer"),
]


@pytest.mark.parametrize(
    ("changes", "match"), [c[1:] for c in BAD_DATA], ids=[c[0] for c in BAD_DATA]
)
def test_bad_data_raises_before_training(digits, monkeypatch, changes, match):
    monkeypatch.setattr(flatmin.training.train, "epoch_program", _not_compiled)
    data = digits._replace(**{name: change(digits) for name, change in changes.items()})
    with pytest.raises(ValueError, match=match):
        _train(jax.random.split(jax.random.key(0), 2), data)


def test_bad_model_optimizer_data_and_variables_raise_before_training(digits, monkeypatch):
    monkeypatch.setattr(flatmin.training.train, "epoch_program", _not_compiled)
    keys = jax.random.split(jax.random.key(0), 2)
    with pytest.raises(ValueError, match=r"^model must be a flax\.linen\.Module, got str"):
        train_seeds("mlp", optax.adam(1e-3), digits, keys, **SMALL)
    with pytest.raises(ValueError, match=r"^optimizer must be an optax\.GradientTransformation"):
        train_seeds(MODEL, 1e-3, digits, keys, **SMALL)
    with pytest.raises(ValueError, match=r"^data must be a flatmin\.Dataset, got tuple"):
        train_seeds(MODEL, optax.adam(1e-3), tuple(digits), keys, **SMALL)
    three = jax.vmap(lambda k: init_variables(MODEL, k, (8, 8, 1)))(
        jax.random.split(jax.random.key(1), 3)
    )
    with pytest.raises(ValueError, match=r"^variables must be stacked over the 2 seeds"):
        _train(keys, digits, variables=three)
    with pytest.raises(ValueError, match=r"^on_epoch must be callable or None"):
        _train(keys, digits, on_epoch="bar")


def test_on_epoch_sees_every_epochs_metrics(digits):
    seen = []

    def on_epoch(epoch, metrics):
        seen.append((epoch, metrics.train_loss))

    result = _train(jax.random.split(jax.random.key(0), 2), digits, on_epoch=on_epoch)
    assert [epoch for epoch, _ in seen] == [1, 2, 3]
    for epoch, loss in seen:
        np.testing.assert_array_equal(loss, result.history.train_loss[:, epoch - 1])


@pytest.mark.parametrize("every", [True, 0, 2.0, None])
def test_bad_checkpoint_every_raises_before_training(digits, monkeypatch, tmp_path, every):
    monkeypatch.setattr(flatmin.training.train, "epoch_program", _not_compiled)
    with pytest.raises(ValueError, match=r"^checkpoint_every must be an integer >= 1"):
        _train(
            jax.random.split(jax.random.key(0), 2),
            digits,
            checkpoint_dir=tmp_path,
            checkpoint_every=every,
        )
    assert not any(tmp_path.iterdir())


@pytest.mark.parametrize("under", [False, True], ids=["a file", "under a file"])
def test_a_checkpoint_dir_that_cannot_be_a_directory_is_refused_before_any_work(
    digits, monkeypatch, tmp_path, under
):
    """Not after an epoch of work, from orbax's NotADirectoryError: before anything is traced."""
    for name in ("epoch_program", "init_variables", "_logit_width", "run_identity"):
        monkeypatch.setattr(flatmin.training.train, name, _not_compiled)
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    path = blocker / "run" if under else blocker
    where = f"lies under the file {blocker}" if under else "is an existing file"
    with pytest.raises(
        ValueError,
        match=rf"^checkpoint_dir must be a directory or a path where one can be made; {path} "
        f"{where}$",
    ):
        _train(jax.random.split(jax.random.key(0), 2), digits, checkpoint_dir=path)
    assert [p.name for p in tmp_path.iterdir()] == ["file"]
    assert blocker.read_text() == "not a directory"


def test_bad_batch_size_and_keys_raise_before_training(digits):
    with pytest.raises(ValueError, match="batch_size"):
        _train(jax.random.split(jax.random.key(0), 2), digits, batch_size=5000)
    with pytest.raises(ValueError, match="keys"):
        _train(jax.random.split(jax.random.key(0), 0), digits)
