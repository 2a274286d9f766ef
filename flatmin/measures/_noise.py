"""How much of a measure is noise: its spread under perturbations at float32's rounding scale.

A measure computed in float32 from a trained network inherits rounding at every step: the
parameters themselves are rounded to ~1e-7 relative, and a maximisation over a box can jump
between vertices for a perturbation that small. `noise_floor` measures that spread directly, so
a difference between two regimes smaller than it is read as noise, not as a finding.
"""

from collections.abc import Callable
from functools import partial
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax.flatten_util import ravel_pytree

from flatmin._checks import (
    check_args,
    check_bool,
    check_callable,
    check_floating_pytree,
    check_int,
    check_key,
    check_optional_int,
    check_scalar,
    trace_shape,
)
from flatmin._types import PyTree, Status


class NoiseFloor(NamedTuple):
    """`measure_fn` at params and its spread over perturbed copies.

    Attributes:
      value: measure_fn(params, *args) itself (keyed: with the key given).
      status: int32, a `flatmin.Status`: FINISHED, DIVERGED (value not finite) or
        NONFINITE_NEARBY (some perturbed evaluation not finite: the spread is NaN).
      mean, std, min, max: over the num_samples perturbed evaluations (population std).
      values: (num_samples,) the perturbed evaluations.
    """

    value: jax.Array
    status: jax.Array
    mean: jax.Array
    std: jax.Array
    min: jax.Array
    max: jax.Array
    values: jax.Array


def noise_floor(
    measure_fn: Callable[..., jax.Array],
    params: PyTree,
    *,
    args: tuple = (),
    key: jax.Array | None = None,
    relative: float = 1e-7,
    num_samples: int = 8,
    keyed: bool = False,
    batch_size: int | None = None,
) -> NoiseFloor:
    """The spread of `measure_fn(params, *args) -> scalar` near params.

    Each sample multiplies every parameter by (1 + relative z), z standard normal (float32's
    unit roundoff is 6e-8: the default perturbs at rounding scale). With keyed=True,
    measure_fn(params, *args, key=key) also gets a fresh key per sample (say a solver's random
    starts: `lambda p, *a, key: flatmin.sharpness(loss_fn, p, args=a, key=key)`), so the
    spread covers both.

    Args:
      measure_fn: (params, *args) -> scalar (keyed: also a `key=` keyword), traceable: the
        samples go through `jax.lax.map`, `batch_size` at a time under vmap (None: all at
        once).
      params: a pytree of floating arrays.
      args: measure_fn's further arguments (data), passed unperturbed to every sample.
      key: PRNG key of the perturbations (and of measure_fn's keys); None: a fixed default.
      relative: the perturbations' relative size, a finite number >= 0.
      num_samples: perturbed evaluations, an integer >= 2.

    Returns:
      A `NoiseFloor`; jit- and vmap-compatible (measure_fn static under jit: pass the same
      function object, or an equal one, to reuse the compiled program).
    """
    check_callable("measure_fn", measure_fn)
    check_floating_pytree("params", params)
    args = check_args(args)
    key = check_key(key)
    check_scalar("relative", relative, minimum=0)
    num_samples = check_int("num_samples", num_samples, minimum=2)
    keyed = check_bool("keyed", keyed)
    batch_size = check_optional_int("batch_size", batch_size, minimum=1)
    return _noise_floor(measure_fn, params, args, key, relative, num_samples, keyed, batch_size)


def _measure(measure_fn, keyed, params, key, *args):
    return measure_fn(params, *args, key=key) if keyed else measure_fn(params, *args)


def _noise_floor(measure_fn, params, args, key, relative, num_samples, keyed, batch_size):
    # Checked as the program is traced, before anything is compiled or run.
    out = trace_shape("measure_fn", partial(_measure, measure_fn, keyed), params, key, *args)
    scalar = isinstance(out, jax.ShapeDtypeStruct) and out.shape == ()
    real = scalar and jnp.issubdtype(out.dtype, jnp.number)
    real = real and not jnp.issubdtype(out.dtype, jnp.complexfloating)
    if not real:
        raise ValueError(
            "measure_fn must return a real scalar (the noise floor of a vector would mix its "
            f"coordinates with the samples), got {jax.tree.map(lambda o: o.shape, out)}"
        )
    x, unravel = ravel_pytree(params)
    perturb_key, measure_key = jax.random.split(key)
    noise = jax.random.normal(perturb_key, (num_samples, x.size), x.dtype)
    keys = jax.random.split(measure_key, num_samples)

    def evaluate(sample):
        z, k = sample
        perturbed = unravel(x * (1 + jnp.asarray(relative, x.dtype) * z))
        return _measure(measure_fn, keyed, perturbed, k, *args)

    values = jax.lax.map(evaluate, (noise, keys), batch_size=batch_size or num_samples)
    value = _measure(measure_fn, keyed, params, measure_key, *args)
    status = jnp.select(
        [~jnp.isfinite(value), ~jnp.all(jnp.isfinite(values))],
        [Status.DIVERGED, Status.NONFINITE_NEARBY],
        Status.FINISHED,
    ).astype(jnp.int32)
    return NoiseFloor(
        value=value,
        status=status,
        mean=jnp.mean(values),
        std=jnp.std(values),
        min=jnp.min(values),
        max=jnp.max(values),
        values=values,
    )


_noise_floor = jax.jit(
    _noise_floor, static_argnames=("measure_fn", "num_samples", "keyed", "batch_size")
)
