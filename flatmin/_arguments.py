"""Argument checks for the measures in flatmin.adaptive and flatmin.density.

Each raises ValueError naming the argument, before any work. Values traced by an enclosing
`jax.jit`/`jax.vmap` cannot be inspected and pass unchecked.
"""

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from flatmin._checks import check_loss_and_params
from flatmin.layers import Only, path_mask


def concrete(value: Any) -> Any:
    """`value` itself when it is concrete, None when any part of it is traced."""
    if any(isinstance(leaf, jax.core.Tracer) for leaf in jax.tree.leaves(value)):
        return None
    return value


def check_measure_inputs(loss_fn: Any, params: Any, only: Only | None) -> tuple[bool, ...] | None:
    """loss_fn, params (floating, finite) and the filter `only`; returns the leaf mask that
    `only` selects (None for every leaf)."""
    check_loss_and_params(loss_fn, params)
    check_finite_params(params)
    return None if only is None else path_mask(params, only)


def default_key(key: jax.Array | None) -> jax.Array:
    """The key, or the fixed default that keeps results deterministic."""
    return jax.random.key(0) if key is None else key


def check_positive(name: str, value: Any) -> None:
    """A finite real scalar > 0."""
    _check_scalar(name, value, positive=True)


def check_nonnegative(name: str, value: Any) -> None:
    """A finite real scalar >= 0."""
    _check_scalar(name, value, positive=False)


def check_count(name: str, value: Any, minimum: int) -> int:
    """An integer >= minimum (bool is refused: True is no count); returns it as an int."""
    if isinstance(value, bool | np.bool_) or not isinstance(value, int | np.integer):
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def check_choice(name: str, value: Any, choices: tuple) -> None:
    """One of `choices` (compared with ==; bool is refused, since True == 1)."""
    if isinstance(value, bool | np.bool_) or value not in choices:
        raise ValueError(f"{name} must be one of {choices}, got {value!r}")


def check_finite_params(params: Any) -> None:
    """No NaN or infinity in concrete params: a diverged run is caught before compiling."""
    leaves = jax.tree.leaves(params)
    if concrete(leaves) is not None and not all(bool(jnp.isfinite(x).all()) for x in leaves):
        raise ValueError("params contain NaN or infinite values")


def check_finite_loss(loss: jax.Array) -> None:
    """f(w) finite, when it is concrete (outside jit/vmap a NaN would silently poison every
    figure; under a transformation it stays NaN, so one diverged seed does not stop the rest)."""
    if concrete(loss) is not None and not np.isfinite(loss):
        raise ValueError(
            f"loss_fn(params) is not finite ({float(loss)}): the measure is undefined at a point "
            "where the loss is NaN or infinite (a diverged run?)"
        )


def _check_scalar(name: str, value: Any, positive: bool) -> None:
    bound = "> 0" if positive else ">= 0"
    if isinstance(value, bool | np.bool_) or np.ndim(value) != 0:
        raise ValueError(f"{name} must be a finite real scalar {bound}, got {value!r}")
    if not jnp.issubdtype(jnp.result_type(value), jnp.number) or jnp.iscomplexobj(value):
        raise ValueError(f"{name} must be a finite real scalar {bound}, got {value!r}")
    if concrete(value) is None:
        return
    v = float(value)
    if not np.isfinite(v) or v < 0 or (positive and v == 0):
        raise ValueError(f"{name} must be a finite real scalar {bound}, got {v}")


def check_flag(name: str, value: Any) -> None:
    """A bool (a static switch: 0 or "yes" would be a mistake)."""
    if not isinstance(value, bool | np.bool_):
        raise ValueError(f"{name} must be a bool, got {value!r}")


def check_batch_size(batch_size: Any) -> int | None:
    """None (all at once) or an integer >= 1."""
    return None if batch_size is None else check_count("batch_size", batch_size, 1)
