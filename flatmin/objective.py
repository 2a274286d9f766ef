"""The training objective f as a pure function of the parameters, in evaluation mode.

Sharpness, Hessians and landscapes all measure the same f: the mean cross-entropy over a whole
data set with batch norm on its running statistics and dropout off, so f depends on the
parameters alone. It is evaluated in fixed-size chunks under `jax.lax.map`, so memory stays
bounded on CIFAR-sized sets whatever the data set's size.
"""

from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

PyTree = Any


def evaluate(
    model: nn.Module,
    params: PyTree,
    batch_stats: PyTree,
    x: jax.Array,
    y: jax.Array,
    *,
    chunk_size: int = 2048,
) -> tuple[jax.Array, jax.Array]:
    """Mean cross-entropy (nats) and accuracy (fraction) over all N examples, evaluation mode.

    Args:
      x: (N, ...) inputs; y: (N,) integer labels.
      chunk_size: examples per forward pass; the last chunk is padded and masked.
    """
    n = x.shape[0]
    size = min(chunk_size, n)
    num_chunks = -(-n // size)
    pad = num_chunks * size - n
    x = jnp.pad(x, [(0, pad)] + [(0, 0)] * (x.ndim - 1)).reshape(num_chunks, size, *x.shape[1:])
    y = jnp.pad(y, (0, pad)).reshape(num_chunks, size)
    mask = (jnp.arange(num_chunks * size) < n).reshape(num_chunks, size)
    variables = {"params": params, "batch_stats": batch_stats}

    def chunk_sums(chunk):
        xc, yc, mc = chunk
        logits = model.apply(variables, xc, train=False)
        ce = optax.softmax_cross_entropy_with_integer_labels(logits, yc)
        correct = jnp.argmax(logits, -1) == yc
        return jnp.sum(jnp.where(mc, ce, 0.0)), jnp.sum(mc & correct)

    ce_sums, correct_counts = jax.lax.map(chunk_sums, (x, y, mask))
    return jnp.sum(ce_sums) / n, jnp.sum(correct_counts) / n


def make_loss_fn(
    model: nn.Module,
    batch_stats: PyTree,
    x: jax.Array,
    y: jax.Array,
    *,
    chunk_size: int = 2048,
) -> Callable[[PyTree], jax.Array]:
    """f(params) -> scalar: the evaluation-mode mean cross-entropy over (x, y).

    batch_stats (the running statistics) stay fixed: they are not parameters being perturbed.
    """

    def loss_fn(params: PyTree) -> jax.Array:
        return evaluate(model, params, batch_stats, x, y, chunk_size=chunk_size)[0]

    return loss_fn
