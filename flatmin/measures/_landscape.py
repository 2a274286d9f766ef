"""The loss landscape between two solutions: the parametric plots of Keskar et al. (ICLR 2017).

The paper plots the loss and accuracy of the networks

    (1 - alpha) x_a + alpha x_b                                  (the straight line), and
    cos(alpha pi / 2) x_a + sin(alpha pi / 2) x_b                (a curved path, appendix)

for alpha on a grid over an interval containing [0, 1], with x_a and x_b the small- and
large-batch minimisers. Both paths pass through x_a at alpha = 0 and x_b at alpha = 1.
"""

from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from flatmin._checks import check_args, check_callable, check_floating_pytree, check_optional_int
from flatmin._types import PyTree, Status


class Landscape(NamedTuple):
    """fn along a path between two points.

    Attributes:
      value: fn's output with a leading axis a: an (a,) array for a scalar fn, or fn's pytree
        with (a, ...) leaves.
      status: int32, a `flatmin.Status`: FINISHED, or NONFINITE_NEARBY when some output is not
        finite (a point where the loss overflowed, extrapolating far from both ends, say).
      alphas: (a,) the points of the path, as given.
    """

    value: PyTree
    status: jax.Array
    alphas: jax.Array


def interpolate(
    fn: Callable[[PyTree], PyTree],
    params_a: PyTree,
    params_b: PyTree,
    alphas: jax.Array,
    *,
    args: tuple = (),
    batch_size: int | None = None,
) -> Landscape:
    """`fn` along the straight line (1 - alpha) params_a + alpha params_b.

    Args:
      fn: (params, *args) -> a scalar or a pytree of arrays, e.g. the loss or (loss,
        accuracy). Static under `jax.jit`, as is `batch_size`: pass the same function object
        across calls to reuse the compiled program.
      params_a: a pytree of floating arrays, the point at alpha = 0.
      params_b: a pytree with the structure, shapes and dtypes of `params_a`, at alpha = 1.
      alphas: (a,) real numbers; any values, including outside [0, 1] (extrapolation).
      args: fn's further arguments (data, batch statistics), traced.
      batch_size: None evaluates `fn` at all alphas at once (vmapped): fastest, but memory grows
        with a times that of one evaluation, which for a loss over a whole training set can be
        prohibitive. An integer evaluates that many at a time, in sequence (`jax.lax.map`).

    Returns:
      A `Landscape`, `.value` fn's outputs along the path.

    Raises:
      ValueError: for bad arguments, before any work.
    """
    alphas = jnp.asarray(alphas)
    batch_size = _check_arguments(fn, params_a, params_b, alphas, args, batch_size)
    return _interpolate(fn, params_a, params_b, alphas, tuple(args), "line", batch_size)


def interpolate_curved(
    fn: Callable[[PyTree], PyTree],
    params_a: PyTree,
    params_b: PyTree,
    alphas: jax.Array,
    *,
    args: tuple = (),
    batch_size: int | None = None,
) -> Landscape:
    """`fn` along the curved path cos(alpha pi / 2) params_a + sin(alpha pi / 2) params_b.

    The arguments and the output are those of `interpolate`.
    """
    alphas = jnp.asarray(alphas)
    batch_size = _check_arguments(fn, params_a, params_b, alphas, args, batch_size)
    return _interpolate(fn, params_a, params_b, alphas, tuple(args), "curve", batch_size)


def _interpolate(fn, params_a, params_b, alphas, args, path, batch_size):
    def at(alpha: jax.Array) -> PyTree:
        if path == "line":
            weight_a, weight_b = 1 - alpha, alpha
        else:
            # cos(alpha pi / 2) written as sin((1 - alpha) pi / 2): both weights are then exactly
            # 0 or 1 at the endpoints, whereas cos(pi / 2) rounds to -4.4e-8 in float32.
            weight_a, weight_b = jnp.sin((1 - alpha) * np.pi / 2), jnp.sin(alpha * np.pi / 2)
        point = jax.tree.map(
            lambda a, b: weight_a.astype(a.dtype) * a + weight_b.astype(b.dtype) * b,
            params_a,
            params_b,
        )
        return fn(point, *args)

    given = alphas
    if not jnp.issubdtype(alphas.dtype, jnp.floating):
        alphas = alphas.astype(jnp.result_type(float))
    if batch_size is None:
        value = jax.vmap(at)(alphas)
    else:
        value = jax.lax.map(at, alphas, batch_size=batch_size)
    finite = jnp.all(jnp.stack([jnp.all(jnp.isfinite(v)) for v in jax.tree.leaves(value)]))
    status = jnp.where(finite, Status.FINISHED, Status.NONFINITE_NEARBY).astype(jnp.int32)
    return Landscape(value, status, given)


_interpolate = jax.jit(_interpolate, static_argnames=("fn", "path", "batch_size"))


def _check_arguments(fn, params_a, params_b, alphas, args, batch_size) -> int | None:
    """Validates everything from shapes and dtypes alone; returns batch_size as an int."""
    check_callable("fn", fn)
    check_args(args)
    check_floating_pytree("params_a", params_a)
    structure_a, structure_b = jax.tree.structure(params_a), jax.tree.structure(params_b)
    if structure_a != structure_b:
        raise ValueError(
            f"params_b must have the tree structure of params_a: {structure_b} != {structure_a}"
        )
    for (path, a), b in zip(
        jax.tree_util.tree_leaves_with_path(params_a), jax.tree.leaves(params_b), strict=True
    ):
        if np.shape(a) != np.shape(b) or jnp.result_type(a) != jnp.result_type(b):
            raise ValueError(
                f"params_b must match params_a leaf by leaf; at {jax.tree_util.keystr(path)} "
                f"params_a has {np.shape(a)} {jnp.result_type(a)}, params_b has {np.shape(b)} "
                f"{jnp.result_type(b)}"
            )
    if alphas.ndim != 1 or not (
        jnp.issubdtype(alphas.dtype, jnp.floating) or jnp.issubdtype(alphas.dtype, jnp.integer)
    ):
        raise ValueError(
            f"alphas must be a 1-D array of real numbers, got shape {alphas.shape} of dtype "
            f"{alphas.dtype}"
        )
    return check_optional_int("batch_size", batch_size, minimum=1)
