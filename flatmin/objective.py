"""The training objective f as a pure function of the parameters, in evaluation mode.

Sharpness, Hessians and landscapes all measure the same f: the mean cross-entropy over a whole
data set with batch norm on its running statistics and dropout off, so f depends on the
parameters alone. It is evaluated in fixed-size chunks under `jax.lax.map`, so memory stays
bounded on CIFAR-sized sets whatever the data set's size.

`batch_norm_statistics` gives the statistics that belong to a set of parameters: the exact mean
and variance of every batch-norm layer's input over a whole data set. Parameters that training
never visited (a point on the line between two solutions) have no running statistics of their
own; SWA's "bn_update" recomputes them the same way, from minibatch estimates.
"""

import math
from collections.abc import Callable
from functools import partial
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
    (x, y), mask = _chunks((x, y), chunk_size)
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


def batch_norm_statistics(
    model: nn.Module,
    params: PyTree,
    x: jax.Array,
    *,
    chunk_size: int = 2048,
) -> PyTree:
    """The exact batch-norm statistics of `params` over all N examples of x.

    For every `flax.linen.BatchNorm` layer: the mean and the biased variance of its input over the
    whole of x (and over every axis but the feature axes, e.g. the pixels of a conv layer), with
    the layers before it normalising by their own exact statistics and dropout off. These are
    the statistics a train-mode forward pass of all N examples as one batch would normalise by;
    here x goes through in chunks, so memory does not grow with N. Layer k's input depends on
    the statistics of the layers called before it, so there are as many passes over x as
    batch-norm layers; chunks are combined with Chan et al.'s pairwise update, not as raw sums
    of squares. Pure: `jax.jit` and `jax.vmap` (over params) go through it.

    Args:
      model: called as ``model.apply(variables, x, train=False)``, with batch norm taking its
        statistics from ``variables["batch_stats"]`` in that mode (flatmin's models do). Every
        BatchNorm layer is called once per forward pass, directly (not under a lifted
        transform such as `nn.scan`), and without a ``mask``.
      params: the model's ``params``.
      x: (N, ...) inputs, N >= 1.
      chunk_size: examples per forward pass; the last chunk is padded and masked.

    Returns:
      A ``batch_stats`` pytree shaped as ``model.init`` makes it ({} for a model without batch
      norm), to use with ``evaluate(model, params, batch_stats, ...)``.
    """
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1:
        raise ValueError(f"chunk_size must be an integer >= 1, got {chunk_size!r}")
    if jnp.ndim(x) < 1 or jnp.shape(x)[0] < 1:
        raise ValueError(f"x must have a leading example axis of size >= 1, got {jnp.shape(x)}")
    return _batch_norm_statistics(model, params, jnp.asarray(x), chunk_size)


@partial(jax.jit, static_argnums=(0, 3))
def _batch_norm_statistics(model, params, x, chunk_size):
    example = jax.ShapeDtypeStruct((1, *x.shape[1:]), x.dtype)
    shapes = jax.eval_shape(lambda xs: model.init(jax.random.key(0), xs, train=False), example)
    shapes = shapes.get("batch_stats", {})
    # flax's own starting values; they do not matter, every one is overwritten.
    stats = jax.tree_util.tree_map_with_path(
        lambda path, s: (jnp.zeros if path[-1].key == "mean" else jnp.ones)(s.shape, s.dtype),
        shapes,
    )
    num_layers = len(jax.tree.leaves(shapes)) // 2  # a "mean" and a "var" per layer
    chunks, mask = _chunks(x, chunk_size)
    # After pass k, the first k layers called hold their exact statistics.
    for _ in range(num_layers):
        stats = _statistics_pass(model, params, stats, chunks, mask)
    return stats


def _statistics_pass(model, params, stats, chunks, mask):
    """The statistics of every BatchNorm layer's input, the layers normalising by `stats`."""
    variables = {"params": params, "batch_stats": stats}

    def chunk_moments(chunk):
        xc, mc = chunk
        inputs = {}

        def record(next_fun, args, kwargs, context):
            module = context.module
            if isinstance(module, nn.BatchNorm) and context.method_name == "__call__":
                if kwargs.get("mask") is not None:
                    raise ValueError("batch_norm_statistics: BatchNorm masks are not supported")
                if module.path in inputs:
                    raise ValueError(
                        f"batch_norm_statistics: BatchNorm {module.path} is called more than "
                        "once per forward pass; its statistics are ambiguous"
                    )
                inputs[module.path] = (args[0] if args else kwargs["x"], module.axis)
            return next_fun(*args, **kwargs)

        with nn.intercept_methods(record):
            model.apply(variables, xc, train=False)
        return {path: _moments(h, axis, mc) for path, (h, axis) in inputs.items()}

    moments = jax.lax.map(chunk_moments, (chunks, mask))

    def combine(count, mean, m2):
        # Chan, Golub & LeVeque: per-chunk means and sums of squared deviations, pooled.
        total = jnp.sum(count)
        weights = count.reshape(-1, *[1] * (mean.ndim - 1))
        pooled = jnp.sum(weights * mean, axis=0) / total
        spread = jnp.sum(m2, axis=0) + jnp.sum(weights * (mean - pooled[None]) ** 2, axis=0)
        return pooled, spread / total

    exact = {path: combine(*m) for path, m in moments.items()}

    def update(path, old):
        names = tuple(key.key for key in path)
        if names[:-1] not in exact:  # a layer this forward pass did not call
            return old
        mean, var = exact[names[:-1]]
        return (mean if names[-1] == "mean" else var).astype(old.dtype)

    return jax.tree_util.tree_map_with_path(update, stats)


def _moments(h, axis, mask):
    """(count, mean, sum of squared deviations) of h over its non-feature axes, rows masked."""
    axes = (axis,) if isinstance(axis, int) else tuple(axis)
    features = {a % h.ndim for a in axes}
    reduce = tuple(a for a in range(h.ndim) if a not in features)
    h = h.astype(jnp.promote_types(h.dtype, jnp.float32))
    w = mask.astype(h.dtype).reshape(-1, *[1] * (h.ndim - 1))
    per_row = math.prod(h.shape[a] for a in reduce if a != 0)
    count = jnp.sum(w) * per_row
    mean = jnp.sum(w * h, axis=reduce, keepdims=True) / jnp.maximum(count, 1)
    m2 = jnp.sum(w * (h - mean) ** 2, axis=reduce)
    return count, jnp.squeeze(mean, axis=reduce), m2


def _chunks(arrays: PyTree, chunk_size: int) -> tuple[PyTree, jax.Array]:
    """Arrays with a leading axis N as (num_chunks, size, ...) zero-padded chunks, and the
    (num_chunks, size) mask of real rows."""
    n = jax.tree.leaves(arrays)[0].shape[0]
    size = min(chunk_size, n)
    num_chunks = -(-n // size)
    pad = num_chunks * size - n

    def split(a):
        a = jnp.pad(a, [(0, pad)] + [(0, 0)] * (a.ndim - 1))
        return a.reshape(num_chunks, size, *a.shape[1:])

    mask = (jnp.arange(num_chunks * size) < n).reshape(num_chunks, size)
    return jax.tree.map(split, arrays), mask
