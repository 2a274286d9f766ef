"""`vmap` over a leading axis that leaves an axis of size 1 unbatched, and a `cond` that stays
a branch under `vmap`.

On XLA's CPU backend a network's products batched over an axis of size 1 ran several times
slower than the same products unbatched (docs/benchmarks.md, "Where the solver's time goes").
"""

from collections.abc import Callable

import jax
import jax.numpy as jnp


def vmap_leading(fn: Callable, *stacked):
    """jax.vmap(fn)(*stacked) over the leading axis of every leaf; called on the one slice, and
    the axis added back, when that axis has size 1."""
    if jax.tree.leaves(stacked)[0].shape[0] == 1:
        return jax.tree.map(lambda leaf: leaf[None], fn(*jax.tree.map(lambda a: a[0], stacked)))
    return jax.vmap(fn)(*stacked)


def dispatch(predicate: Callable, if_true: Callable, if_false: Callable) -> Callable:
    """`lax.cond(predicate(*args), if_true, if_false, *args)` that stays a branch under vmap.

    `vmap` turns a cond with a batched predicate into a select that runs both branches in
    every lane. Here, when any lane needs `if_true`, the batch goes lane by lane (`lax.map`),
    each lane taking its own branch; otherwise it takes `if_false` vmapped. Both branches must
    give the same answer where the predicate is false, so the choice is one of cost only.
    Nested vmaps (seeds, restarts) reduce over every level.
    """

    @jax.custom_batching.custom_vmap
    def branch(*args):
        return jax.lax.cond(predicate(*args), if_true, if_false, *args)

    @branch.def_vmap
    def rule(axis_size, in_batched, *args):
        args = [
            jax.tree.map(
                lambda a, b: a if b else jnp.broadcast_to(a, (axis_size, *jnp.shape(a))), arg, bat
            )
            for arg, bat in zip(args, in_batched, strict=True)
        ]
        # Lane by lane, each lane takes its own branch: a lane that needs only the cheap
        # branch, in a batch where another needs the dear one, costs the cheap one.
        batched = dispatch(
            lambda *a: jnp.any(jax.vmap(predicate)(*a)),
            _lane_by_lane(branch),
            jax.vmap(if_false),
        )
        out = batched(*args)
        return out, jax.tree.map(lambda _: True, out)

    return branch


def _lane_by_lane(f: Callable) -> Callable:
    """f over the leading axis of every argument, one lane at a time (lax.map)."""
    return lambda *args: jax.lax.map(lambda lane: f(*lane), args)
