"""Sharpness under weight-scaled perturbations: worst case, average case and PAC-Bayes sigma.

With w the flattened parameters (n numbers), f the loss and the elementwise scale

    c = |w| + xi   (adaptive, as in Kwon et al. 2021 and Andriushchenko et al. 2023)
    c = 1          (adaptive=False: plain perturbations),

Andriushchenko et al. (ICML 2023, "A modern look at the relationship between sharpness and
generalization"; github.com/tml-epfl/sharpness-vs-generalization) define

    worst case     S_max = max_{||delta / c||_p <= rho} f(w + delta) - f(w),   p in {inf, 2},
    average case   S_avg = E_delta f(w + delta) - f(w),   delta = sigma c z,

z standard Gaussian (or uniform on [-1, 1]^n). With xi = 1, p = inf and rho = eps, the worst
case is the inner maximum of Keskar et al.'s Metric 2.1 in the full space:
flatmin.sharpness = S_max / (1 + f(w)) * 100. Jiang et al. (ICLR 2020, "Fantastic
generalization measures and where to find them") measure flatness by the largest noise level
that the loss tolerates: `pac_bayes_sigma`.

f may be the full training loss, as in the papers' definitions, or the loss on one batch; these
functions cannot tell which and record nothing about it (a field echoing an argument would be
unchecked, and a string in the result would not pass through `jax.jit`): say which in the name
of the figure you report. Andriushchenko et al. report batch
("m-sharpness") figures: the worst case of every batch of m examples solved separately and
averaged, which is at least the worst case of the averaged loss; to reproduce them, call the
measure once per batch (or vmap it over batches) and average the values.

Every function here is pure and jit/vmap-able (`loss_fn` static), takes the loss's further
arguments as `args=` (data entering the compiled program as arguments), an explicit PRNG key
with a fixed default, validates its arguments before any work, and takes `only=` (see
flatmin.measures._layers) to perturb only some leaves of `params`. Every result has `.value`
(its figure) and `.status` (a `flatmin.Status`).
"""

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree

from flatmin._checks import (
    check_bool,
    check_int,
    check_key,
    check_one_of,
    check_optional_int,
    check_scalar,
)
from flatmin._types import LossFn, PyTree, Status
from flatmin.measures import _multistart
from flatmin.measures._layers import Only, check_measure_inputs, restrict_by_mask, split_by_mask
from flatmin.measures._montecarlo import map_samples, mean_and_stderr
from flatmin.measures._regions import Ball, Box
from flatmin.measures._solvers import APGD, Solver, check_solver

NORMS = ("inf", 2)
DISTRIBUTIONS = ("gaussian", "uniform")


class WorstCaseSharpness(NamedTuple):
    """What `worst_case_sharpness` found.

    Attributes:
      value: scalar f(w + delta) - f(w) >= 0, the largest increase found, f evaluated at the
        returned delta (in loss units); NaN for a non-finite f(w), inf where the loss
        overflowed inside the ball.
      status: int32, a `flatmin.Status` (as `flatmin.SharpnessResult.status`).
      delta: the maximiser, a pytree shaped like `params` (zeros in leaves `only` leaves out),
        inside the ball ||delta / c||_p <= rho up to rounding.
      loss: scalar f(w).
      max_loss: scalar f(w + delta).
      history: (maxiter,) the largest increase found by any restart after each solver
        iteration, counting delta = 0 (so >= 0 and nondecreasing); its last entry is `value`
        up to rounding.
      num_steps: scalar int, solver iterations run from the winning start.
      num_evaluations: scalar int, value-and-gradient evaluations from the winning start.
    """

    value: jax.Array
    status: jax.Array
    delta: PyTree
    loss: jax.Array
    max_loss: jax.Array
    history: jax.Array
    num_steps: jax.Array
    num_evaluations: jax.Array


class AverageCaseSharpness(NamedTuple):
    """The Monte Carlo estimate of `average_case_sharpness`.

    Attributes:
      value: scalar, the mean of f(w + delta_k) - f(w) over the samples (in loss units).
      status: int32, a `flatmin.Status`: FINISHED, DIVERGED (f(w) not finite: value NaN) or
        NONFINITE_NEARBY (a sample's loss was not finite: value NaN).
      stderr: scalar, its standard error: sample standard deviation (ddof=1) / sqrt(N).
      loss: scalar f(w).
      num_samples: scalar int N.
    """

    value: jax.Array
    status: jax.Array
    stderr: jax.Array
    loss: jax.Array
    num_samples: jax.Array


class PacBayesSigma(NamedTuple):
    """What `pac_bayes_sigma` found.

    Attributes:
      value: scalar sigma, the largest noise level tried whose estimated expected increase
        stayed <= target (0 when none did). Relative to |w| when adaptive (Jiang's sigma').
      status: int32, a `flatmin.Status`: FINISHED, or DIVERGED when f(w) is not finite (then
        no level counts as within the target, and value is 0).
      upper: scalar, the smallest level tried whose estimate exceeded the target (`sigma_max`
        when none did: then the target was not reached below sigma_max).
      increase: scalar, the estimated E f(w + u) - f(w) at `value` (NaN when value is 0: not
        evaluated).
      stderr: scalar, the standard error of `increase` (NaN likewise).
      flatness: scalar 1 / value^2, Jiang et al.'s pacbayes.flatness (53), or
        pacbayes.mag.flatness (61) when adaptive; inf when value is 0.
      kl_term: scalar, the complexity term of their bound at `value` (see `pac_bayes_sigma`).
      loss: scalar f(w).
      num_steps: scalar int, bisection steps (= `steps`).
    """

    value: jax.Array
    status: jax.Array
    upper: jax.Array
    increase: jax.Array
    stderr: jax.Array
    flatness: jax.Array
    kl_term: jax.Array
    loss: jax.Array
    num_steps: jax.Array


def worst_case_sharpness(
    loss_fn: LossFn,
    params: PyTree,
    rho: float,
    *,
    args: tuple = (),
    norm: str | int = "inf",
    adaptive: bool = True,
    xi: float = 0.0,
    solver: Solver = APGD(),
    key: jax.Array | None = None,
    only: Only | None = None,
) -> WorstCaseSharpness:
    """max over ||delta / c||_p <= rho of f(w + delta) - f(w), f = loss_fn(., *args).

    The ascent runs in u = delta / c, over the plain ball ||u||_p <= rho, where projection is
    exact (clipping for p = inf, rescaling for p = 2); coordinates with c_i = 0 start at 0 and
    cannot move. The solver (`flatmin.APGD()` by default: Croce & Hein's APGD as Andriushchenko
    et al. apply it to weights, 20 steps, one random start) and the harness shared with
    Metric 2.1 (`flatmin.measures._multistart`) keep the best point seen, so the value reported
    is always f at the returned delta, and never below f(w) (delta = 0 is in the ball). For
    p = inf any solver of `flatmin.sharpness` works (`flatmin.LBFGSB()` too); with xi = 1,
    adaptive and rho = eps this is Metric 2.1's inner maximum in the full space.

    Args:
      loss_fn: (params, *args) -> scalar loss f: the full training loss (the papers'
        definition) or a batch loss (see the module's docstring). Static under `jax.jit`.
      params: a pytree of floating arrays, the point w.
      rho: radius, > 0: relative to |w| + xi when adaptive, absolute otherwise.
      args: loss_fn's further arguments (data, batch statistics), traced.
      norm: "inf" (or `math.inf`) or 2.
      adaptive: c = |w| + xi (True) or c = 1 (False: plain rho-sharpness).
      xi: >= 0, added to |w| when adaptive (0 in Andriushchenko et al.; 1 gives Keskar's box).
      solver: the maximiser, its starts and restarts (`flatmin.APGD(maxiter=20, restarts=1)`).
      key: PRNG key for the starting points; a fixed default keeps results deterministic.
      only: perturb only the leaves this filter selects (flatmin.measures._layers); None: all.

    Returns:
      A `WorstCaseSharpness`.

    Raises:
      ValueError: for bad arguments, before any work. A non-finite f(w) (a diverged seed)
        gives a NaN value eagerly, under `jax.jit` and under `jax.vmap` alike.
    """
    if norm == math.inf:
        norm = "inf"
    check_one_of("norm", norm, NORMS)
    mask = check_measure_inputs(loss_fn, params, only, args)
    check_scalar("rho", rho, above=0)
    check_scalar("xi", xi, minimum=0)
    check_bool("adaptive", adaptive)
    check_solver(solver)
    return _worst_case(
        loss_fn, params, rho, xi, tuple(args), check_key(key), norm, adaptive, solver, mask
    )


def average_case_sharpness(
    loss_fn: LossFn,
    params: PyTree,
    sigma: float,
    *,
    args: tuple = (),
    distribution: str = "gaussian",
    adaptive: bool = True,
    xi: float = 0.0,
    num_samples: int = 100,
    key: jax.Array | None = None,
    batch_size: int | None = None,
    only: Only | None = None,
) -> AverageCaseSharpness:
    """E_delta f(w + delta) - f(w), delta = sigma c z, by Monte Carlo with its standard error.

    z has independent standard Gaussian entries ("gaussian": delta_i has standard deviation
    sigma c_i) or entries uniform on [-1, 1] ("uniform": delta_i uniform on
    [-sigma c_i, sigma c_i]), as in Andriushchenko et al.'s avg-l2 and avg-linf. The estimate is
    the mean of f(w + delta_k) - f(w) over N independent samples. For a quadratic f with
    Hessian H it is unbiased for sigma^2 / 2 tr(diag(c) H diag(c)) (Gaussian), a third of that
    (uniform).

    Args:
      loss_fn: (params, *args) -> scalar loss f, full or batch (see the module's docstring).
        Static under `jax.jit`, as are `num_samples` and `batch_size`.
      params: a pytree of floating arrays, the point w.
      sigma: noise scale, > 0: relative to |w| + xi when adaptive, absolute otherwise.
      args: loss_fn's further arguments (data, batch statistics), traced.
      distribution: "gaussian" or "uniform".
      adaptive: c = |w| + xi (True) or c = 1 (False).
      xi: >= 0, added to |w| when adaptive.
      num_samples: N, >= 2 (the standard error needs two).
      key: PRNG key for the noise; a fixed default keeps results deterministic.
      batch_size: None evaluates all samples at once (vmapped: memory grows with N times one
        loss evaluation); an integer evaluates that many at a time, in sequence.
      only: perturb only the leaves this filter selects (flatmin.measures.layers); None: all.

    Returns:
      An `AverageCaseSharpness`.

    Raises:
      ValueError: as `worst_case_sharpness`.
    """
    check_one_of("distribution", distribution, DISTRIBUTIONS)
    mask = check_measure_inputs(loss_fn, params, only, args)
    check_scalar("sigma", sigma, above=0)
    check_scalar("xi", xi, minimum=0)
    check_bool("adaptive", adaptive)
    num_samples = check_int("num_samples", num_samples, minimum=2)
    batch_size = check_optional_int("batch_size", batch_size, minimum=1)
    result = _average_case(
        loss_fn,
        params,
        tuple(args),
        sigma,
        xi,
        check_key(key),
        distribution,
        adaptive,
        num_samples,
        batch_size,
        mask,
    )
    return result


def pac_bayes_sigma(
    loss_fn: LossFn,
    params: PyTree,
    target: float,
    *,
    args: tuple = (),
    adaptive: bool = True,
    magnitude_eps: float = 1e-3,
    init_params: PyTree | None = None,
    sigma_max: float = 2.0,
    steps: int = 20,
    num_samples: int = 32,
    key: jax.Array | None = None,
    batch_size: int | None = None,
    only: Only | None = None,
) -> PacBayesSigma:
    """The largest noise level sigma with E_u f(w + u) - f(w) <= target, by bisection.

    Jiang et al. (ICLR 2020, Appendix C; github.com/nitarshan/robust-generalization-measures).
    The noise u is Gaussian with independent entries of variance
        sigma^2                   (plain: pacbayes.*),
        sigma^2 w_i^2 + eps^2     (adaptive: pacbayes.mag.*, eps = `magnitude_eps`),
    as in their paper (their code passes this variance to torch.normal as a standard deviation;
    not copied). The expected increase is estimated by the mean over N samples u_k = std(sigma)
    z_k, with the same z_k at every sigma (common random numbers, so the estimate is a smooth
    function of sigma and the bisection compares like with like). Bisection on [0, sigma_max],
    `steps` times: the midpoint becomes the lower end when its estimate is <= target (and
    finite), else the upper end; the result is the final lower end, so its resolution is
    sigma_max / 2^steps. For a nonconvex f the estimate need not grow with sigma, and the
    bisection then finds one crossing of the target, not necessarily the largest.

    Jiang et al. use the 0-1 training error as f (a target of 0.1 in error); any scalar f works
    here, differentiable or not: only its values are used.

    The result's terms, with w0 = `init_params` (zeros when None), d = w - w0 and omega = n:
        flatness = 1 / sigma^2                                     (their 53 and 61)
        kl_term  = ||d||^2 / (4 sigma^2)                           (plain; 48, 49 for w0 = 0)
        kl_term  = 1/4 sum_i log((eps^2 + (sigma^2 + 1) ||d||^2 / omega)
                                 / (eps^2 + sigma^2 d_i^2))        (adaptive; their 56)
    without the bounds' log(m / sigma) + 10 (which needs the number of examples m). With w0 = 0
    the adaptive term has w_i^2 in the denominator, where their 57 keeps (w_i - w0_i)^2.

    Args:
      loss_fn: (params, *args) -> scalar loss f. Static under `jax.jit`, as are `steps`,
        `num_samples` and `batch_size`.
      params: a pytree of floating arrays, the point w.
      target: the tolerated expected increase, > 0, in loss units.
      args: loss_fn's further arguments (data, batch statistics), traced.
      adaptive: magnitude-aware noise (True) or plain (False).
      magnitude_eps: eps >= 0, the adaptive noise's floor (1e-3 in Jiang et al.).
      init_params: w0, a pytree like `params` (the initialisation), or None for zeros.
      sigma_max: the bisection's upper end, > 0 (2 in Jiang et al.'s code).
      steps: bisection steps, >= 1 (N loss evaluations each).
      num_samples: N, >= 2.
      key: PRNG key for the noise; a fixed default keeps results deterministic.
      batch_size: as in `average_case_sharpness`.
      only: perturb only the leaves this filter selects (flatmin.measures.layers); None: all. The
        terms then use the selected leaves alone (omega their number).

    Returns:
      A `PacBayesSigma`.

    Raises:
      ValueError: as `worst_case_sharpness`.
    """
    mask = check_measure_inputs(loss_fn, params, only, args)
    check_scalar("target", target, above=0)
    check_scalar("magnitude_eps", magnitude_eps, minimum=0)
    check_scalar("sigma_max", sigma_max, above=0)
    check_bool("adaptive", adaptive)
    steps = check_int("steps", steps, minimum=1)
    num_samples = check_int("num_samples", num_samples, minimum=2)
    batch_size = check_optional_int("batch_size", batch_size, minimum=1)
    if init_params is None:
        init_params = jax.tree.map(jnp.zeros_like, params)
    elif jax.tree.structure(init_params) != jax.tree.structure(params) or any(
        np.shape(a) != np.shape(b)
        for a, b in zip(jax.tree.leaves(init_params), jax.tree.leaves(params), strict=True)
    ):
        raise ValueError("init_params must have the structure and leaf shapes of params")
    result = _pac_bayes(
        loss_fn,
        params,
        tuple(args),
        init_params,
        target,
        magnitude_eps,
        sigma_max,
        check_key(key),
        adaptive,
        steps,
        num_samples,
        batch_size,
        mask,
    )
    return result


# Implementation ------------------------------------------------------------------------------


def _worst_case(loss_fn, params, rho, xi, args, key, norm, adaptive, solver, mask):
    loss_fn, params, embed = restrict_by_mask(loss_fn, params, mask)
    x, unravel = ravel_pytree(params)
    n, dtype = x.shape[0], x.dtype
    rho = jnp.asarray(rho, dtype)
    c = _scale(x, adaptive, xi)

    def f_of_u(u: jax.Array) -> jax.Array:
        return loss_fn(unravel(x + c * u), *args)

    region = Box(jnp.full((n,), rho)) if norm == "inf" else Ball(rho, n)
    found = _multistart.maximize(f_of_u, region, solver, key, movable=c > 0)
    return WorstCaseSharpness(
        value=found.value - found.centre,
        status=found.status,
        delta=embed(unravel(c * found.argmax)),
        loss=found.centre,
        max_loss=found.value,
        history=found.history - found.centre,
        num_steps=found.num_steps,
        num_evaluations=found.num_evaluations,
    )


_worst_case = jax.jit(
    _worst_case, static_argnames=("loss_fn", "norm", "adaptive", "solver", "mask")
)


def _average_case(
    loss_fn, params, args, sigma, xi, key, distribution, adaptive, num_samples, batch_size, mask
):
    loss_fn, params, _ = restrict_by_mask(loss_fn, params, mask)
    x, unravel = ravel_pytree(params)
    std = jnp.asarray(sigma, x.dtype) * _scale(x, adaptive, xi)
    loss = loss_fn(params, *args)
    keys = jax.random.split(key, num_samples)
    increases = _noise_increases(
        loss_fn, args, x, unravel, loss, std, keys, distribution, batch_size
    )
    value, stderr = mean_and_stderr(increases)
    return AverageCaseSharpness(
        value=value,
        status=_sampled_status(loss, increases),
        stderr=stderr,
        loss=loss,
        num_samples=jnp.asarray(num_samples),
    )


_average_case = jax.jit(
    _average_case,
    static_argnames=(
        "loss_fn",
        "distribution",
        "adaptive",
        "num_samples",
        "batch_size",
        "mask",
    ),
)


def _pac_bayes(
    loss_fn,
    params,
    args,
    init_params,
    target,
    magnitude_eps,
    sigma_max,
    key,
    adaptive,
    steps,
    num_samples,
    batch_size,
    mask,
):
    loss_fn, params, _ = restrict_by_mask(loss_fn, params, mask)
    x, unravel = ravel_pytree(params)
    dtype = x.dtype
    if mask is not None:
        init_params = split_by_mask(init_params, mask)[0]
    d = x - ravel_pytree(init_params)[0].astype(dtype)
    eps2 = jnp.asarray(magnitude_eps, dtype) ** 2
    target = jnp.asarray(target, dtype)
    loss = loss_fn(params, *args)
    keys = jax.random.split(key, num_samples)

    def std(sigma: jax.Array) -> jax.Array:
        if adaptive:
            return jnp.sqrt(sigma**2 * x**2 + eps2)
        return jnp.broadcast_to(sigma, x.shape)

    def step(_, carry):
        lo, hi, increase, stderr = carry
        mid = (lo + hi) / 2
        # The same keys at every step: common random numbers.
        samples = _noise_increases(
            loss_fn, args, x, unravel, loss, std(mid), keys, "gaussian", batch_size
        )
        mid_increase, mid_stderr = mean_and_stderr(samples)
        below = mid_increase <= target  # False for NaN: too much noise
        return (
            jnp.where(below, mid, lo),
            jnp.where(below, hi, mid),
            jnp.where(below, mid_increase, increase),
            jnp.where(below, mid_stderr, stderr),
        )

    nan = jnp.full((), jnp.nan, dtype)
    init = (jnp.zeros((), dtype), jnp.asarray(sigma_max, dtype), nan, nan)
    sigma, upper, increase, stderr = jax.lax.fori_loop(0, steps, step, init)
    d2 = d**2
    if adaptive:
        omega = x.shape[0]
        ratio = (eps2 + (sigma**2 + 1) * jnp.sum(d2) / omega) / (eps2 + sigma**2 * d2)
        kl_term = jnp.sum(jnp.log(ratio)) / 4
    else:
        kl_term = jnp.sum(d2) / (4 * sigma**2)
    return PacBayesSigma(
        value=sigma,
        status=_sampled_status(loss, jnp.zeros(())),
        upper=upper,
        increase=increase,
        stderr=stderr,
        flatness=1 / sigma**2,
        kl_term=kl_term,
        loss=loss,
        num_steps=jnp.asarray(steps),
    )


_pac_bayes = jax.jit(
    _pac_bayes,
    static_argnames=("loss_fn", "adaptive", "steps", "num_samples", "batch_size", "mask"),
)


def _sampled_status(loss: jax.Array, increases: jax.Array) -> jax.Array:
    """DIVERGED for a non-finite f(w), NONFINITE_NEARBY for a non-finite sample, else
    FINISHED (a Monte Carlo measure has no stopping rule)."""
    return jnp.select(
        [~jnp.isfinite(loss), ~jnp.all(jnp.isfinite(increases))],
        [Status.DIVERGED, Status.NONFINITE_NEARBY],
        Status.FINISHED,
    ).astype(jnp.int32)


def _noise_increases(loss_fn, args, x, unravel, loss, std, keys, distribution, batch_size):
    """(N,) f(w + std * z_k) - f(w), z_k drawn from keys[k]: standard Gaussian or U[-1, 1]."""

    def increase(k: jax.Array) -> jax.Array:
        if distribution == "gaussian":
            z = jax.random.normal(k, x.shape, x.dtype)
        else:
            z = jax.random.uniform(k, x.shape, x.dtype, -1.0, 1.0)
        return loss_fn(unravel(x + std * z), *args) - loss

    return map_samples(increase, keys, batch_size)


def _scale(x: jax.Array, adaptive: bool, xi) -> jax.Array:
    """c, (n,): |w| + xi when adaptive, else ones."""
    if adaptive:
        return jnp.abs(x) + jnp.asarray(xi, x.dtype)
    return jnp.ones_like(x)
