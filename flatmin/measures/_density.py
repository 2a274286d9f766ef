"""The spectral density of the Hessian by stochastic Lanczos quadrature (SLQ).

The density of the eigenvalues lambda_i of the n x n Hessian H,

    phi(t) = 1/n sum_i delta(t - lambda_i), smoothed: phi_sigma(t) = 1/n sum_i g_sigma(t - lambda_i)

with g_sigma the Gaussian density of standard deviation sigma, is estimated as in Lin, Saad & Yang
(SIAM Review 2016) and Ghorbani, Krishnan & Xiao (ICML 2019). For a unit probe v, v^T g(H) v =
sum_i (q_i . v)^2 g(lambda_i) is the integral of g against a measure whose weights sum to 1, and
for random v (Rademacher or Gaussian entries, normalised) E (q_i . v)^2 = 1/n. m Lanczos
iterations from v give a tridiagonal T whose eigenvalues theta_j (the nodes) and squared first
eigenvector components tau_j (the weights, sum_j tau_j = 1) form the m-point Gauss quadrature of
that measure, exact for polynomials of degree < 2m. Hence

    phi_sigma(t) ~ 1/P sum_{p=1}^P sum_{j=1}^m tau_j^(p) g_sigma(t - theta_j^(p)),

a mixture of Gaussians with weights summing to 1 per probe, averaged over P probes: it integrates
to 1 over the real line (over a grid covering the spectrum and a few sigma either side, up to the
grid's quadrature error). Its mean is 1/P sum_p v_p^T H v_p over the unit probes, tr(H)/n in
expectation (with Rademacher probes, Hutchinson's estimate of tr(H) with those probes, over n).
"""

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from flatmin._checks import (
    check_int,
    check_key,
    check_one_of,
    check_optional_int,
    check_scalar,
    is_concrete,
)
from flatmin._types import LossFn, PyTree
from flatmin.measures._hessian import flat_hessian, lanczos_basis
from flatmin.measures._layers import Only, check_measure_inputs, restrict_by_mask
from flatmin.measures._montecarlo import map_samples

PROBES = ("rademacher", "gaussian")
# Ghorbani et al.'s m; a Krylov space this size resolves the outliers and the bulk's shape.
DEFAULT_ITERATIONS = 90
# The default broadening, as a fraction of the grid's span.
DEFAULT_WIDTH = 0.01


class HessianDensity(NamedTuple):
    """The SLQ estimate of the Hessian's spectral density.

    Attributes:
      value: (G,) the Gaussian-broadened density at the grid's points, in inverse units of the
        eigenvalues: it integrates to 1 over t.
      status: int32, a `flatmin.Status`: FINISHED, or DIVERGED when f or its gradient at the
        point is not finite.
      nodes: (P, m) the Ritz values theta_j of each probe's Lanczos matrix (eigenvalues of H's
        projections; the quadrature nodes).
      weights: (P, m) the quadrature weights tau_j, >= 0, summing to 1 for each probe.
      sigma: scalar, the broadening's standard deviation used.
    """

    value: jax.Array
    status: jax.Array
    nodes: jax.Array
    weights: jax.Array
    sigma: jax.Array


def hessian_density(
    loss_fn: LossFn,
    params: PyTree,
    grid: jax.Array,
    *,
    args: tuple = (),
    key: jax.Array | None = None,
    num_probes: int = 10,
    num_iterations: int | None = None,
    sigma: float | None = None,
    probe: str = "rademacher",
    batch_size: int | None = None,
    only: Only | None = None,
) -> HessianDensity:
    """The Hessian's spectral density at `grid` by stochastic Lanczos quadrature.

    Each probe runs `num_iterations` Lanczos iterations (Hessian-vector products) with full
    reorthogonalisation (flatmin.measures._hessian's Lanczos, started from the probe). Where the
    probe's Krylov space is invariant (few distinct eigenvalues) Lanczos continues from fresh
    vectors orthogonal to it; their nodes carry weight ~0, so the quadrature is unaffected.

    Cost: P m Hessian-vector products; memory O(m n) per probe evaluated at once.

    Args:
      loss_fn: (params, *args) -> scalar loss. Static under `jax.jit`, as are `num_probes`,
        `num_iterations`, `probe` and `batch_size`.
      params: a pytree of floating arrays, the point w (n numbers in all). The linear algebra
        runs in their dtype, or in float32 for half precision.
      grid: (G,) points t at which to evaluate the density, in the Hessian's units.
      args: loss_fn's further arguments (data, batch statistics), traced.
      key: PRNG key for the probes; a fixed default keeps results deterministic.
      num_probes: P, >= 1.
      num_iterations: m, 1 <= m <= n; default min(n, 90).
      sigma: the broadening's standard deviation, > 0; default 1% of the grid's span.
      probe: "rademacher" (+-1 entries) or "gaussian", normalised to unit length.
      batch_size: None runs all probes at once (vmapped: memory P m n); an integer runs that
        many at a time, in sequence.
      only: the Hessian of the leaves this filter selects (flatmin.measures._layers), the others
        frozen: the diagonal block of H for them, n their number. None: all.

    Returns:
      A `HessianDensity`.

    Raises:
      ValueError: for bad arguments, before any work.
    """
    mask = check_measure_inputs(loss_fn, params, only, args)
    leaves = jax.tree.leaves(params)
    selected = [True] * len(leaves) if mask is None else mask
    n = sum(int(np.size(x)) for x, m in zip(leaves, selected, strict=True) if m)
    check_one_of("probe", probe, PROBES)
    num_probes = check_int("num_probes", num_probes, minimum=1)
    if num_iterations is None:
        num_iterations = min(n, DEFAULT_ITERATIONS)
    num_iterations = check_int("num_iterations", num_iterations, minimum=1)
    if num_iterations > n:
        raise ValueError(f"num_iterations must be <= n = {n} parameters, got {num_iterations}")
    batch_size = check_optional_int("batch_size", batch_size, minimum=1)
    if np.ndim(grid) != 1 or np.shape(grid)[0] < 1:
        raise ValueError(f"grid must be a 1-D array of points, got shape {np.shape(grid)}")
    if not jnp.issubdtype(jnp.result_type(grid), jnp.number) or jnp.iscomplexobj(grid):
        raise ValueError(f"grid must hold real numbers, got dtype {jnp.result_type(grid)}")
    if is_concrete(grid) and not np.all(np.isfinite(np.asarray(grid))):
        raise ValueError("grid must hold finite numbers")
    if sigma is None:
        sigma = DEFAULT_WIDTH * (jnp.max(grid) - jnp.min(grid))
        if is_concrete(sigma) and not float(sigma) > 0:
            raise ValueError("sigma must be given when the grid spans no interval")
    check_scalar("sigma", sigma, above=0)
    return _density(
        loss_fn,
        params,
        tuple(args),
        jnp.asarray(grid),
        sigma,
        check_key(key),
        num_probes,
        num_iterations,
        probe,
        batch_size,
        mask,
    )


def _density(loss_fn, params, args, grid, sigma, key, num_probes, m, probe, batch_size, mask):
    loss_fn, params, _ = restrict_by_mask(loss_fn, params, mask)
    x, hv, _, status = flat_hessian(loss_fn, params, args)
    n, dtype = x.shape[0], x.dtype

    def quadrature(k: jax.Array) -> tuple[jax.Array, jax.Array]:
        probe_key, restart_key = jax.random.split(k)
        if probe == "rademacher":
            v = jax.random.rademacher(probe_key, (n,), dtype)
        else:
            v = jax.random.normal(probe_key, (n,), dtype)
        _, T = lanczos_basis(hv, v, restart_key, m)
        theta, S = jnp.linalg.eigh(T)
        return theta, S[0] ** 2

    nodes, weights = map_samples(quadrature, jax.random.split(key, num_probes), batch_size)
    grid = grid.astype(dtype)
    sigma = jnp.asarray(sigma, dtype)
    kernel = jnp.exp(-(((grid[None, None, :] - nodes[:, :, None]) / sigma) ** 2) / 2)
    kernel = kernel / (sigma * math.sqrt(2 * math.pi))
    value = jnp.einsum("pm,pmg->g", weights, kernel) / num_probes
    return HessianDensity(value=value, status=status, nodes=nodes, weights=weights, sigma=sigma)


_density = jax.jit(
    _density,
    static_argnames=("loss_fn", "num_probes", "m", "probe", "batch_size", "mask"),
)
