"""Small networks trained by hand (plain JAX, full-batch Adam) for the solver tests.

Nothing here goes through flatmin, so the trained points do not depend on the code under test.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
from sklearn.datasets import load_digits


def digits_arrays() -> tuple[jax.Array, jax.Array]:
    """All 1797 of scikit-learn's digits: x (1797, 64) in [0, 1] float32, y (1797,) int32."""
    X, y = load_digits(return_X_y=True)
    return jnp.asarray(X / 16.0, dtype=jnp.float32), jnp.asarray(y, dtype=jnp.int32)


def mlp_init(key, sizes):
    keys = jax.random.split(key, len(sizes) - 1)
    return [
        {
            "w": jax.random.normal(k, (m, o), jnp.float32) * np.float32(math.sqrt(2.0 / m)),
            "b": jnp.zeros((o,), jnp.float32),
        }
        for k, m, o in zip(keys, sizes[:-1], sizes[1:], strict=True)
    ]


def mlp_ce(layers, X, labels, act):
    h = X
    for layer in layers[:-1]:
        h = act(h @ layer["w"] + layer["b"][None, :])
    logits = h @ layers[-1]["w"] + layers[-1]["b"][None, :]
    picked = jnp.take_along_axis(logits, labels[:, None], axis=1)[:, 0]
    return jnp.mean(jax.nn.logsumexp(logits, axis=1) - picked)


def train(sizes, act, steps, lr, X, labels):
    """Full-batch Adam (plain JAX, default betas) on the mean cross-entropy.

    Returns (loss_fn, trained params).
    """
    loss = jax.jit(lambda p: mlp_ce(p, X, labels, act))
    b1, b2, tiny = 0.9, 0.999, 1e-8

    @jax.jit
    def step(params, m, v, t):
        grads = jax.grad(loss)(params)
        m = jax.tree.map(lambda a, g: b1 * a + (1 - b1) * g, m, grads)
        v = jax.tree.map(lambda a, g: b2 * a + (1 - b2) * g * g, v, grads)
        scale = lr * jnp.sqrt(1 - b2**t) / (1 - b1**t)
        params = jax.tree.map(lambda w, a, b: w - scale * a / (jnp.sqrt(b) + tiny), params, m, v)
        return params, m, v

    params = mlp_init(jax.random.key(0), sizes)
    m = jax.tree.map(jnp.zeros_like, params)
    v = jax.tree.map(jnp.zeros_like, params)
    for t in range(1, steps + 1):
        params, m, v = step(params, m, v, jnp.float32(t))
    return loss, params
