"""The training objective f as a pure function of the parameters and the data, evaluation mode.

Sharpness, Hessians and landscapes all measure the same f: the mean cross-entropy over a whole
data set with batch norm on its running statistics and dropout off. `Objective(model)` is that
f as `f(params, batch_stats, x, y)`: the measures take it with `args=(batch_stats, x, y)`, so
the data and statistics enter their compiled programs as arguments and another data set or
seed of the same shapes reuses them. It is evaluated in fixed-size chunks under `jax.lax.map`,
so memory stays bounded on CIFAR-sized sets whatever the data set's size.

`batch_norm_statistics` gives the statistics that belong to a set of parameters: the exact mean
and variance of every batch-norm layer's input over a whole data set. Parameters that training
never visited (a point on the line between two solutions) have no running statistics of their
own; SWA's "bn_update" recomputes them the same way, from minibatch estimates.
"""

import dataclasses
import math
from functools import partial
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from flatmin._checks import check_finite_array, check_int, check_one_of, is_concrete

PyTree = Any

# How batch norm normalises inside f (see `Objective`).
BN_MODES = ("running", "batch")


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

    The accuracy is NaN when the loss or any example's logits are not finite (a diverged
    network), not the fraction of argmax hits of its NaN logits.

    Args:
      model: called as ``model.apply(variables, x, train=False)``, mapping (n, ...) inputs to
        (n, num_classes) logits.
      x: (N, ...) inputs, N >= 1; y: (N,) integer labels in [0, num_classes).
      chunk_size: examples per forward pass; the last chunk is padded and masked.

    Raises:
      ValueError: naming the argument, before anything is compiled: see `check_examples`.
        Under `jax.jit` or `jax.vmap` with x or y traced (as in `train_seeds`' epoch
        program), only their shapes and dtypes are checked: NaN or infinite inputs and labels
        outside [0, num_classes) then go unnoticed. They give a NaN loss, except labels in
        [-num_classes, 0), which silently count as label + num_classes; so check the data
        before tracing.
    """
    variables = {"params": params, "batch_stats": batch_stats}
    chunk_size = check_examples(model, x, y, chunk_size, variables=variables)
    return _evaluate(model, params, batch_stats, x, y, chunk_size)


def _evaluate(model, params, batch_stats, x, y, chunk_size):
    """`evaluate` without the argument checks."""
    n = x.shape[0]
    (x, y), mask = _chunks((x, y), chunk_size)
    variables = {"params": params, "batch_stats": batch_stats}

    def chunk_sums(chunk):
        xc, yc, mc = chunk
        logits = model.apply(variables, xc, train=False)
        ce = optax.softmax_cross_entropy_with_integer_labels(logits, yc)
        correct = jnp.argmax(logits, -1) == yc
        broken = mc & ~jnp.all(jnp.isfinite(logits), axis=-1)
        return jnp.sum(jnp.where(mc, ce, 0.0)), jnp.sum(mc & correct), jnp.sum(broken)

    ce_sums, correct_counts, broken = jax.lax.map(chunk_sums, (x, y, mask))
    loss = jnp.sum(ce_sums) / n
    # argmax of NaN logits picks class 0, which would read as an accuracy; a network with a
    # non-finite output (or loss) has none.
    finite = jnp.isfinite(loss) & (jnp.sum(broken) == 0)
    return loss, jnp.where(finite, jnp.sum(correct_counts) / n, jnp.nan)


@dataclasses.dataclass(frozen=True)
class Objective:
    """f(params, batch_stats, x, y) -> scalar: the mean cross-entropy over (x, y), dropout off.

    A value (equal for equal models and settings, hence one compiled program per model and
    shapes): pass it to any measure with `args=(batch_stats, x, y)`, e.g.
    ``flatmin.sharpness(flatmin.Objective(model), params, args=(batch_stats, x, y))``.

    Attributes:
      model: a flax module called as ``model.apply(variables, x, train=False)``.
      bn: how batch norm normalises. "running": by `batch_stats`, the running averages, fixed
        (they are not parameters being perturbed): evaluation mode. "batch": by the statistics
        of the whole of x under the parameters being evaluated (training mode, all N examples
        as one batch), as the authors' Keras code normalised even at test time; batch_stats is
        unused, and x goes through in one forward pass, so memory grows with N (chunk_size is
        unused).
      chunk_size: examples per forward pass ("running"); the last chunk is padded and masked.
    """

    model: nn.Module
    bn: str = "running"
    chunk_size: int = 2048

    def __post_init__(self):
        if not isinstance(self.model, nn.Module):
            raise ValueError(f"model must be a flax.linen.Module, got {type(self.model).__name__}")
        check_one_of("bn", self.bn, BN_MODES)
        object.__setattr__(self, "chunk_size", check_int("chunk_size", self.chunk_size, minimum=1))

    def __call__(self, params: PyTree, batch_stats: PyTree, x: jax.Array, y: jax.Array):
        if self.bn == "batch":
            logits = _batch_mode_logits(self.model, params, batch_stats, x)
            return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
        return _evaluate(self.model, params, batch_stats, x, y, self.chunk_size)[0]

    def validate(self, params: PyTree, *args) -> None:
        """Checks the arguments a measure will pass, before it compiles anything: args must be
        (batch_stats, x, y), with x and y as `check_examples` requires them for the model
        (shapes always, values when concrete).

        Raises:
          ValueError: naming the argument.
        """
        if len(args) != 3:
            raise ValueError(
                "args must be (batch_stats, x, y) for a flatmin.Objective, got "
                f"{len(args)} argument(s)"
            )
        batch_stats, x, y = args
        check_examples(
            self.model,
            x,
            y,
            self.chunk_size,
            variables={"params": params, "batch_stats": batch_stats},
        )


def _batch_mode_logits(model, params, batch_stats, x):
    """Logits with batch norm on the statistics of x itself (training mode) and dropout off."""

    def without_dropout(next_fun, args, kwargs, context):
        if isinstance(context.module, nn.Dropout) and context.method_name == "__call__":
            return args[0] if args else kwargs["inputs"]
        return next_fun(*args, **kwargs)

    with nn.intercept_methods(without_dropout):
        logits, _ = model.apply(
            {"params": params, "batch_stats": batch_stats}, x, train=True, mutable=["batch_stats"]
        )
    return logits


def check_examples(
    model: nn.Module,
    x: jax.Array,
    y: jax.Array,
    chunk_size: int = 1,
    *,
    variables: PyTree | None = None,
    x_name: str = "x",
    y_name: str = "y",
) -> int:
    """Checks a data set (x, y) for `evaluate`; returns chunk_size as an int.

    From shapes and dtypes alone (also under `jax.jit`): x has a leading example axis of
    N >= 1 examples; y is a 1-D integer array (not floating, not bool) of N labels;
    chunk_size is an integer >= 1 (not a bool); the model maps x's examples to (n,
    num_classes) logits (found by `jax.eval_shape` of ``model.apply(variables, ...)``, or of
    ``model.init_with_output`` when `variables` is None: nothing is computed). When x and y
    are concrete, also their values: x holds no NaN or infinity, and every label lies in
    [0, num_classes). A traced x or y (under jit or vmap) has no values to check.

    Raises:
      ValueError: naming the argument (`x_name`, `y_name`, "chunk_size" or "model").
    """
    chunk_size = check_int("chunk_size", chunk_size, minimum=1)
    x_shape, y_shape = np.shape(x), np.shape(y)
    if len(x_shape) < 1 or x_shape[0] < 1:
        raise ValueError(
            f"{x_name} must have a leading example axis with at least one example, got shape "
            f"{x_shape}"
        )
    y_dtype = jnp.result_type(y)
    if len(y_shape) != 1 or not jnp.issubdtype(y_dtype, jnp.integer):
        raise ValueError(
            f"{y_name} must be a 1-D array of integer class labels, got shape {y_shape} of "
            f"dtype {y_dtype}"
        )
    if y_shape[0] != x_shape[0]:
        raise ValueError(
            f"{x_name} and {y_name} must hold the same number of examples: {x_name} has "
            f"{x_shape[0]}, {y_name} has {y_shape[0]}"
        )
    num_classes = _num_classes(model, x, variables)
    check_finite_array(x_name, x)
    if is_concrete(y):
        with jax.ensure_compile_time_eval():
            xp = np if isinstance(y, np.ndarray) else jnp
            low, high = int(xp.min(y)), int(xp.max(y))
        if low < 0 or high >= num_classes:
            raise ValueError(
                f"{y_name} must hold class labels in [0, {num_classes}) (num_classes = "
                f"{num_classes}, the width of the model's output), got labels from {low} to {high}"
            )
    return chunk_size


def _num_classes(model: nn.Module, x: jax.Array, variables: PyTree | None) -> int:
    """The width of the model's logits for one example of x, from shapes alone."""
    one = jax.ShapeDtypeStruct((1, *np.shape(x)[1:]), jnp.result_type(x))
    if variables is None:
        out = jax.eval_shape(
            lambda xs: model.init_with_output(jax.random.key(0), xs, train=False)[0], one
        )
    else:
        shapes = jax.tree.map(
            lambda a: jax.ShapeDtypeStruct(np.shape(a), jnp.result_type(a)), variables
        )
        out = jax.eval_shape(lambda v, xs: model.apply(v, xs, train=False), shapes, one)
    if getattr(out, "ndim", None) != 2 or out.shape[0] != 1:
        raise ValueError(
            "model must map (n, ...) inputs to (n, num_classes) logits; for inputs of shape "
            f"{one.shape} it returns {jax.tree.map(lambda o: o.shape, out)}"
        )
    return out.shape[1]


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
      x: (N, ...) inputs, N >= 1, without NaN or infinities (checked when x is concrete).
      chunk_size: examples per forward pass; the last chunk is padded and masked.

    Returns:
      A ``batch_stats`` pytree shaped as ``model.init`` makes it ({} for a model without batch
      norm), to use with ``evaluate(model, params, batch_stats, ...)``.
    """
    chunk_size = check_int("chunk_size", chunk_size, minimum=1)
    if jnp.ndim(x) < 1 or jnp.shape(x)[0] < 1:
        raise ValueError(f"x must have a leading example axis of size >= 1, got {jnp.shape(x)}")
    check_finite_array("x", x)
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
