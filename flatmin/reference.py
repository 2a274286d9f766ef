"""The paper's route as the authors ran it: scipy's `fmin_l_bfgs_b` on the host.

Keskar et al. solved Metric 2.1's inner maximum with 10 iterations of scipy's L-BFGS-B and its
default settings. `scipy_sharpness` does exactly that around flatmin's f and box: scipy drives
the iterations from Python in float64, calling one jitted value-and-gradient of f in the
dtype of the parameters. It is the reference `flatmin.LBFGSB.paper()` reproduces on the
device, for checks, ablations and benchmarks. Unlike the measures (`flatmin.measures`, pure
JAX), it runs on the host and is neither jit- nor vmap-able: hence a module of its own,
imported as `flatmin.reference`.
"""

from collections.abc import Callable
from functools import partial
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import scipy.optimize
from jax.flatten_util import ravel_pytree

from flatmin._checks import check_args, check_loss_and_params
from flatmin.measures import box_radius

_box_radius = jax.jit(box_radius)


@partial(jax.jit, static_argnums=0)
def _neg_value_and_grad(loss_fn, params, args, A, y):
    """-f(x + A y) and its gradient in y; compiled once per loss_fn and shapes."""
    x, unravel = ravel_pytree(params)
    f = lambda v: -loss_fn(unravel(x + (v if A is None else A @ v)), *args)
    return jax.value_and_grad(f)(y)


class ScipySharpness(NamedTuple):
    """What scipy's route found.

    Attributes:
      value: phi (%), from f at scipy's final point.
      y: (p,) float64, scipy's final point (inside the box).
      loss, max_loss: f(x) and f(x + A y).
      num_steps: scipy's nit.
      num_evaluations: scipy's funcalls (value-and-gradient evaluations).
      message: why scipy stopped (its `task`).
    """

    value: float
    y: np.ndarray
    loss: float
    max_loss: float
    num_steps: int
    num_evaluations: int
    message: str


def scipy_sharpness(
    loss_fn: Callable[[Any], jax.Array],
    params: Any,
    A: jax.Array | None = None,
    eps: float = 1e-3,
    *,
    args: tuple = (),
    maxiter: int = 10,
    pgtol: float = 1e-5,
    factr: float = 1e7,
) -> ScipySharpness:
    """Metric 2.1 by `scipy.optimize.fmin_l_bfgs_b(-f, y0=0, bounds=C_eps, maxiter=maxiter)`.

    pgtol and factr are scipy's defaults, which the authors kept; the box is
    `flatmin.box_radius(params, A, eps)`; f(params) = loss_fn(params, *args).
    """
    args = check_args(args)
    check_loss_and_params(loss_fn, params, args)
    x, _ = ravel_pytree(params)
    A = None if A is None else jnp.asarray(A, x.dtype)
    radius = np.asarray(_box_radius(params, A, eps), np.float64)

    def fun(y64: np.ndarray) -> tuple[float, np.ndarray]:
        value, grad = _neg_value_and_grad(loss_fn, params, args, A, jnp.asarray(y64, x.dtype))
        return float(value), np.asarray(grad, np.float64)

    y, _, info = scipy.optimize.fmin_l_bfgs_b(
        fun,
        np.zeros_like(radius),
        bounds=np.stack([-radius, radius], axis=1),
        maxiter=maxiter,
        pgtol=pgtol,
        factr=factr,
    )
    # scipy keeps its iterates inside the bounds; f is read again at the point returned.
    y = np.clip(y, -radius, radius)
    loss = -float(
        _neg_value_and_grad(loss_fn, params, args, A, jnp.zeros(radius.shape, x.dtype))[0]
    )
    max_loss = -float(_neg_value_and_grad(loss_fn, params, args, A, jnp.asarray(y, x.dtype))[0])
    return ScipySharpness(
        value=(max_loss - loss) / (1 + loss) * 100,
        y=y,
        loss=loss,
        max_loss=max_loss,
        num_steps=int(info["nit"]),
        num_evaluations=int(info["funcalls"]),
        message=str(info["task"]),
    )
