"""Argument checks shared by every function that takes `loss_fn(params) -> scalar`."""

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np


def check_loss_and_params(loss_fn: Callable[[Any], jax.Array], params: Any) -> int:
    """Validates `loss_fn` and `params` from their shapes alone (no loss is computed); returns n,
    the number of parameters. Raises ValueError naming the argument."""
    if not callable(loss_fn):
        raise ValueError(f"loss_fn must be callable, got {type(loss_fn).__name__}")
    leaves = jax.tree.leaves(params)
    if not leaves:
        raise ValueError("params must contain at least one array, got an empty pytree")
    for path, leaf in jax.tree_util.tree_leaves_with_path(params):
        if not jnp.issubdtype(jnp.result_type(leaf), jnp.floating):
            raise ValueError(
                f"params must hold floating arrays; leaf {jax.tree_util.keystr(path)} has dtype "
                f"{jnp.result_type(leaf)}"
            )
    out = jax.eval_shape(loss_fn, params)
    if not (hasattr(out, "shape") and out.shape == () and jnp.issubdtype(out.dtype, jnp.floating)):
        raise ValueError(
            f"loss_fn must return a floating scalar, got {getattr(out, 'shape', out)} "
            f"of dtype {getattr(out, 'dtype', type(out).__name__)}"
        )
    return sum(int(np.size(leaf)) for leaf in leaves)
