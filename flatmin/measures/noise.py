"""How much of a measure is noise: its spread under perturbations at float32's rounding scale.

A measure computed in float32 from a trained network inherits rounding at every step: the
parameters themselves are rounded to ~1e-7 relative, and a maximisation over a box can jump
between vertices for a perturbation that small. `noise_floor` measures that spread directly, so
a difference between two regimes smaller than it is read as noise, not as a finding.
"""

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from jax.flatten_util import ravel_pytree

from flatmin._checks import (
    check_bool,
    check_callable,
    check_floating_pytree,
    check_int,
    check_key,
    check_optional_int,
    check_scalar,
)

PyTree = Any


class NoiseFloor(NamedTuple):
    """`measure_fn` at params and its spread over perturbed copies.

    Attributes:
      value: measure_fn(params) itself (with keyed=True: with the key given).
      mean, std, min, max: over the num_samples perturbed evaluations (population std).
      values: (num_samples,) the perturbed evaluations.
    """

    value: jax.Array
    mean: jax.Array
    std: jax.Array
    min: jax.Array
    max: jax.Array
    values: jax.Array


def noise_floor(
    measure_fn: Callable[..., jax.Array],
    params: PyTree,
    *,
    key: jax.Array | None = None,
    relative: float = 1e-7,
    num_samples: int = 8,
    keyed: bool = False,
    batch_size: int | None = None,
) -> NoiseFloor:
    """The spread of `measure_fn(params) -> scalar` near params.

    Each sample multiplies every parameter by (1 + relative z), z standard normal (float32's
    unit roundoff is 6e-8: the default perturbs at rounding scale). With keyed=True,
    measure_fn(params, key) also gets a fresh key per sample (say a solver's random starts:
    `lambda p, k: flatmin.sharpness(loss_fn, p, key=k)`), so the spread covers both.

    Args:
      measure_fn: params -> scalar (keyed: (params, key) -> scalar), traceable: the samples go
        through `jax.lax.map`, `batch_size` at a time under vmap (None: all at once).
      params: a pytree of floating arrays.
      key: PRNG key of the perturbations (and of measure_fn's keys); None: a fixed default.
      relative: the perturbations' relative size, a finite number >= 0.
      num_samples: perturbed evaluations, an integer >= 2.

    Returns:
      A `NoiseFloor`; jit- and vmap-compatible (measure_fn static under jit).
    """
    check_callable("measure_fn", measure_fn)
    check_floating_pytree("params", params)
    key = check_key(key)
    check_scalar("relative", relative, minimum=0)
    num_samples = check_int("num_samples", num_samples, minimum=2)
    keyed = check_bool("keyed", keyed)
    batch_size = check_optional_int("batch_size", batch_size, minimum=1)
    x, unravel = ravel_pytree(params)
    perturb_key, measure_key = jax.random.split(key)
    noise = jax.random.normal(perturb_key, (num_samples, x.size), x.dtype)
    keys = jax.random.split(measure_key, num_samples)

    def evaluate(sample):
        z, k = sample
        perturbed = unravel(x * (1 + jnp.asarray(relative, x.dtype) * z))
        return measure_fn(perturbed, k) if keyed else measure_fn(perturbed)

    values = jax.lax.map(evaluate, (noise, keys), batch_size=batch_size or num_samples)
    value = measure_fn(params, measure_key) if keyed else measure_fn(params)
    return NoiseFloor(
        value=value,
        mean=jnp.mean(values),
        std=jnp.std(values),
        min=jnp.min(values),
        max=jnp.max(values),
        values=values,
    )
