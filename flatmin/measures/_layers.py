"""Restricting a measure to part of the parameters (one layer, say) by their pytree paths.

A filter `only` selects leaves of the params pytree: a regular expression searched
(`re.search`) in each leaf's path as `jax.tree_util.keystr` writes it, e.g. "['dense']['kernel']"
(so `only="dense"` selects every leaf under a "dense" key), or a callable taking the leaf's key
path (a tuple of keys) and returning a bool. Selected leaves are "measured", the others "frozen".
Both halves keep the structure of `params`, with None in place of the other half's leaves (None
is an empty pytree, so `ravel_pytree`, `jax.tree.map` and the measures skip it).

Worst- and average-case sharpness, the PAC-Bayes sigma and the Hessian's density take `only=`
directly. Any other measure of `(loss_fn, params, args)`, flatmin.sharpness for one, is
restricted by `restrict`, which passes the frozen leaves on as an argument (not a constant
compiled into the program, so another seed's parameters reuse it):

    loss_of_layer, layer, layer_args = flatmin.restrict(loss_fn, params, "dense_1", args=args)
    flatmin.sharpness(loss_of_layer, layer, eps=1e-3, args=layer_args)
"""

import dataclasses
import re
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from flatmin._checks import check_args, check_loss_and_params
from flatmin._types import LossFn, PyTree

Only = str | re.Pattern | Callable[[tuple], bool]


def path_mask(params: PyTree, only: Only) -> tuple[bool, ...]:
    """Whether `only` selects each leaf of `params`, in `jax.tree.leaves` order.

    Raises:
      ValueError: when `only` is neither a string, a compiled pattern nor a callable, is an
        invalid regular expression, or selects no leaf (the message lists the paths).
    """
    if isinstance(only, str):
        try:
            pattern = re.compile(only)
        except re.error as error:
            message = f"only is not a valid regular expression ({error}): {only!r}"
            raise ValueError(message) from None
    elif isinstance(only, re.Pattern):
        pattern = only
    elif callable(only):
        pattern = None
    else:
        raise ValueError(
            "only must be a regular expression (str) or a callable on a key path, got "
            f"{type(only).__name__}"
        )
    paths = [path for path, _ in jax.tree_util.tree_leaves_with_path(params)]
    if pattern is None:
        mask = tuple(bool(only(path)) for path in paths)
    else:
        mask = tuple(pattern.search(jax.tree_util.keystr(path)) is not None for path in paths)
    if not any(mask):
        names = ", ".join(jax.tree_util.keystr(path) for path in paths)
        raise ValueError(f"only selects no parameter: it matched none of the paths {names}")
    return mask


def split_params(params: PyTree, only: Only) -> tuple[PyTree, PyTree]:
    """(measured, frozen): `params` with None in place of the unselected, resp. selected, leaves."""
    return split_by_mask(params, path_mask(params, only))


def merge_params(measured: PyTree, frozen: PyTree) -> PyTree:
    """The inverse of `split_params`: each leaf from whichever half holds it."""
    return jax.tree.map(
        lambda m, f: f if m is None else m, measured, frozen, is_leaf=lambda leaf: leaf is None
    )


@dataclasses.dataclass(frozen=True)
class Restricted:
    """loss_fn as a function of the measured leaves: (measured, frozen, *args) -> scalar.

    A value (equal for equal loss functions), so a measure compiled for it is reused."""

    loss_fn: LossFn

    def __call__(self, measured: PyTree, frozen: PyTree, *args) -> jax.Array:
        return self.loss_fn(merge_params(measured, frozen), *args)


def restrict(
    loss_fn: LossFn, params: PyTree, only: Only, *, args: tuple = ()
) -> tuple[Restricted, PyTree, tuple]:
    """(loss_of_measured, measured, measured_args): the loss as a function of the selected
    leaves alone, those leaves, and the arguments to pass with them, (frozen, *args): the
    other leaves stay at their values in `params` and travel as an argument."""
    measured, frozen = split_params(params, only)
    return Restricted(loss_fn), measured, (frozen, *check_args(args))


def split_by_mask(params: PyTree, mask: tuple[bool, ...]) -> tuple[PyTree, PyTree]:
    """`split_params` with the selection given as a mask from `path_mask`."""
    leaves, treedef = jax.tree.flatten(params)
    measured = treedef.unflatten([x if m else None for x, m in zip(leaves, mask, strict=True)])
    frozen = treedef.unflatten([None if m else x for x, m in zip(leaves, mask, strict=True)])
    return measured, frozen


def restrict_by_mask(
    loss_fn: LossFn, params: PyTree, mask: tuple[bool, ...] | None
) -> tuple[LossFn, PyTree, Callable[[PyTree], PyTree]]:
    """For the measures, inside their jitted programs (where the closure costs nothing):
    (loss of the measured part, measured part, embed), the loss taking the same further
    arguments, and embed mapping a pytree shaped like the measured part to one shaped like
    `params`, zeros in the frozen leaves. `mask` None selects everything and returns `loss_fn`
    and `params` themselves."""
    if mask is None:
        return loss_fn, params, lambda tree: tree
    measured, frozen = split_by_mask(params, mask)
    zeros = jax.tree.map(jnp.zeros_like, frozen)
    return (
        lambda m, *args: loss_fn(merge_params(m, frozen), *args),
        measured,
        lambda tree: merge_params(tree, zeros),
    )


def check_measure_inputs(
    loss_fn: Any, params: Any, only: Only | None, args: tuple = ()
) -> tuple[bool, ...] | None:
    """loss_fn, params (floating, non-empty), args and the filter `only`, before any work;
    returns the leaf mask `only` selects (None: every leaf)."""
    check_loss_and_params(loss_fn, params, args)
    return None if only is None else path_mask(params, only)
