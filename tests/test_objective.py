"""flatmin.objective: the evaluation-mode loss is a deterministic function of the parameters."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from flatmin.models import build_model, init_variables
from flatmin.objective import evaluate, make_loss_fn


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
