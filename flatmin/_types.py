"""The types every layer shares: pytrees, loss functions and how a measure ended."""

import enum
from collections.abc import Callable
from typing import Any

import jax

PyTree = Any
# loss_fn(params, *args) -> scalar: `args` are arrays (data, batch statistics) that enter a
# compiled measure as traced arguments, so a new data set of the same shapes reuses it.
LossFn = Callable[..., jax.Array]


class Status(enum.IntEnum):
    """How a measure ended: every result's `status`, an int32 array (one per seed when vmapped).

    Compare with the members, e.g. ``result.status == flatmin.Status.DIVERGED``; `describe`
    turns a code into words.
    """

    # Ran to completion: a solver used its whole iteration budget.
    FINISHED = 0
    # The projected gradient's infinity-norm fell to the solver's pgtol (scipy's rule); at the
    # start this means no step was taken.
    GRADIENT_TOLERANCE = 1
    # An iteration lowered the objective by at most factr * epsmch (scipy's other rule).
    REDUCTION_TOLERANCE = 2
    # The line search failed with no curvature pairs left to drop (scipy's abnormal stop).
    LINE_SEARCH_FAILED = 3
    # The loss at the point measured is not finite (a diverged seed): the value is NaN.
    DIVERGED = 4
    # The loss is finite at the point measured but not at a point the measure evaluated near
    # it (it overflowed): the value is inf for a maximum, NaN for an average.
    NONFINITE_NEARBY = 5


def describe(status: Any) -> str:
    """A status code (an int or a 0-d array) as its member's name, e.g. 'DIVERGED'."""
    return Status(int(status)).name
