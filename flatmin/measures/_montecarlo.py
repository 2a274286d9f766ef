"""Monte Carlo pieces shared by the stochastic estimators (Hutchinson's trace, noise sharpness)."""

import math
from collections.abc import Callable

import jax
import jax.numpy as jnp


def map_samples(fn: Callable, xs, batch_size: int | None):
    """fn over the leading axis of `xs`: all at once (vmapped) when `batch_size` is None, else
    `batch_size` at a time in sequence (`jax.lax.map`), which bounds memory by one chunk."""
    return jax.vmap(fn)(xs) if batch_size is None else jax.lax.map(fn, xs, batch_size=batch_size)


def mean_and_stderr(samples: jax.Array) -> tuple[jax.Array, jax.Array]:
    """The mean of (N,) samples, N >= 2, and its standard error std(ddof=1) / sqrt(N)."""
    num_samples = samples.shape[0]
    # Shifted by the first sample: identical samples give exactly that value and a standard
    # error of exactly 0, which a mean rounded in floating point would not.
    d = samples - samples[0]
    mean_d = jnp.mean(d)
    std = jnp.sqrt(jnp.sum((d - mean_d) ** 2) / (num_samples - 1))
    return samples[0] + mean_d, std / math.sqrt(num_samples)
