"""The best point a solver has seen: one rule, shared by every solver's loop.

Solvers minimise an objective F (the negated, perhaps rescaled, loss). The point kept is the one
of lowest F among those evaluated, with one exception that makes a maximum honest: a point
where F is not finite (the loss overflowed there) outranks every finite one. A maximum over a
region that holds such a point is not a large finite number, and a solver that discarded the
point would report the largest finite value it happened to see instead.
"""

from typing import NamedTuple

import jax
import jax.numpy as jnp

from flatmin._types import PyTree


class Best(NamedTuple):
    """The point of lowest F seen, F there, and whatever the solver keeps with it (extras: the
    gradient, the raw loss, ...)."""

    x: jax.Array
    value: jax.Array
    extras: PyTree


def _rank(value: jax.Array) -> jax.Array:
    """F as compared: NaN (an overflowed loss) ranks with -inf (an infinite loss), lowest."""
    return jnp.where(jnp.isnan(value), -jnp.inf, value)


def keep_best(best: Best, x: jax.Array, value: jax.Array, extras: PyTree, evaluated) -> Best:
    """`best`, or the candidate (x, F = value, extras) where it was `evaluated` and ranks lower.

    A non-finite best is never replaced: once the loss has overflowed, the maximum is infinite.
    """
    better = jnp.asarray(evaluated) & (_rank(value) < _rank(best.value))
    return jax.tree.map(lambda new, old: jnp.where(better, new, old), Best(x, value, extras), best)


def saw_nonfinite(best: Best) -> jax.Array:
    """Whether the best point is one where F was NaN or -inf (the loss overflowed there)."""
    return _rank(best.value) == -jnp.inf
