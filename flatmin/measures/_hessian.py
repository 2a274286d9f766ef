"""The Hessian of the loss at a minimiser, without ever forming it.

Keskar et al. (ICLR 2017) characterise sharp minimisers by "a significant number of large
positive eigenvalues" of the Hessian of the training loss, and set the eigenvalues aside as
prohibitive to compute for networks of realistic size. Only Hessian-vector products are needed:
forward-over-reverse differentiation gives H v at the cost of a few gradients, and

- `hessian_eigenvalues` finds the k largest eigenvalues by Lanczos on those products
  (memory O(n * num_iterations) for n parameters, instead of O(n^2) for H), and
- `hessian_trace` estimates tr H, the sum of all of them, by Hutchinson's estimator.
"""

from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax.flatten_util import ravel_pytree

from flatmin._checks import check_int, check_key, check_loss_and_params, check_optional_int
from flatmin._types import LossFn, PyTree, Status
from flatmin.measures._montecarlo import map_samples, mean_and_stderr


class HessianEigenvalues(NamedTuple):
    """The Lanczos estimate of the Hessian's largest eigenvalues.

    Attributes:
      value: (k,) the eigenvalues, descending (Ritz values: each a lower bound, up to rounding).
      status: int32, a `flatmin.Status`: FINISHED, or DIVERGED when f or its gradient at the
        point is not finite (the values are then meaningless).
      vectors: with `return_eigenvectors`, a pytree shaped like `params` with a leading axis k:
        unit Ritz vectors (over all leaves together), each up to sign; else None.
    """

    value: jax.Array
    status: jax.Array
    vectors: PyTree


class TraceEstimate(NamedTuple):
    """Hutchinson's estimate of tr H.

    Attributes:
      value: scalar, the mean of z^T H z over the probes z.
      status: int32, a `flatmin.Status`: FINISHED, or DIVERGED (as `HessianEigenvalues`).
      stderr: scalar, its standard error: the sample standard deviation (ddof=1) of z^T H z
        divided by sqrt(num_samples).
      num_samples: scalar int, the number of probes.
    """

    value: jax.Array
    status: jax.Array
    stderr: jax.Array
    num_samples: jax.Array


def hvp(loss_fn: LossFn, params: PyTree, v: PyTree, *, args: tuple = ()) -> PyTree:
    """The Hessian-vector product H v at `params`, forward-over-reverse.

    Args:
      loss_fn: (params, *args) -> scalar loss.
      params: a pytree of floating arrays.
      v: a pytree with the structure, shapes and dtypes of `params`.
      args: loss_fn's further arguments.

    Returns:
      H v, shaped like `params`.
    """
    return jax.jvp(jax.grad(lambda p: loss_fn(p, *args)), (params,), (v,))[1]


def hessian_eigenvalues(
    loss_fn: LossFn,
    params: PyTree,
    k: int = 10,
    *,
    args: tuple = (),
    key: jax.Array | None = None,
    num_iterations: int | None = None,
    return_eigenvectors: bool = False,
) -> HessianEigenvalues:
    """The k largest (algebraic, not absolute) eigenvalues of the Hessian of `loss_fn`, by Lanczos.

    Lanczos builds an orthonormal basis V, (m, n), of the Krylov space of H from a random start
    vector, one Hessian-vector product per iteration, reorthogonalising every new vector against
    the whole basis (twice: "twice is enough"). The eigenvalues returned are those of the
    projection T = V H V^T, (m, m): the Ritz values. T is tridiagonal in exact arithmetic; it is
    kept in full, assembled from the reorthogonalisation coefficients at no extra cost, so that
    it is exactly the Rayleigh-Ritz matrix of the basis even after a restart (below). Hence, up
    to rounding, the i-th value returned never exceeds the i-th largest eigenvalue of H (Cauchy
    interlacing) and converges to it from below as m grows; the largest converge first.

    Breakdown: when the new vector is numerically in the span of the basis (the Krylov space is
    invariant: H of low rank, few distinct eigenvalues, or m close to n), that is when its norm
    after reorthogonalisation is below 100 eps times the largest ||H q|| so far, Lanczos
    continues from a fresh random vector orthogonalised against the basis instead of dividing
    by ~0.

    Repeated eigenvalues: a Krylov space from one vector holds one eigenvector of each distinct
    eigenvalue, so an eigenvalue of multiplicity r shows up once until that space is exhausted.
    Each restart after a breakdown brings one further copy of every eigenvalue it reaches, so
    multiplicities are resolved when breakdowns happen within the m iterations; in particular
    m = n returns the whole spectrum with multiplicities. Otherwise (m << n) further copies can
    only come from rounding errors, which seed them: for an eigenvalue well separated from the
    rest they often converge within some more iterations, but nothing guarantees it, and the
    slot of a missing copy holds the next smaller Ritz value. Clustered but distinct eigenvalues
    are resolved as m grows.

    Cost: m Hessian-vector products, O(m^2 n) flops for the reorthogonalisation and memory for
    V; the dense (m, m) eigenproblem is negligible.

    Args:
      loss_fn: (params, *args) -> scalar loss, e.g. the training loss in evaluation mode.
        Static under `jax.jit`, as are `k`, `num_iterations` and `return_eigenvectors`: pass
        the same function object across calls to reuse the compiled program.
      params: a pytree of floating arrays, the point x (n numbers in all). Everything is
        computed in its dtype, or in float32 for half-precision params (the loss itself still
        runs in theirs).
      k: how many eigenvalues, 1 <= k <= n.
      args: loss_fn's further arguments (data, batch statistics), traced.
      key: PRNG key for the start vector (and restarts); a fixed default keeps results
        deterministic.
      num_iterations: m, the Lanczos iterations (= Hessian-vector products), k <= m <= n.
        Default min(n, max(2 k + 20, 40)): the k-th Ritz value needs a Krylov space well
        beyond k, and 40 products cost little next to the memory of 40 vectors of size n.
      return_eigenvectors: also return the Ritz vectors.

    Returns:
      A `HessianEigenvalues`: `.value` the (k,) eigenvalues in descending order, `.vectors`
      (with `return_eigenvectors`) unit vectors with H v_i ~ lambda_i v_i.

    Raises:
      ValueError: for bad arguments, before any work.
    """
    n = check_loss_and_params(loss_fn, params, args)
    k = check_int("k", k, minimum=1, maximum=n, note=f"n = {n}, the number of parameters")
    if num_iterations is None:
        num_iterations = min(n, max(2 * k + 20, 40))
    num_iterations = check_int(
        "num_iterations", num_iterations, minimum=k, maximum=n, note=f"from k = {k} to n = {n}"
    )
    return _lanczos(
        loss_fn, params, tuple(args), check_key(key), k, num_iterations, bool(return_eigenvectors)
    )


def hessian_trace(
    loss_fn: LossFn,
    params: PyTree,
    *,
    args: tuple = (),
    key: jax.Array | None = None,
    num_samples: int = 100,
    batch_size: int | None = None,
) -> TraceEstimate:
    """Hutchinson's estimate of the trace of the Hessian of `loss_fn` at `params`.

    tr H = E[z^T H z] for probes z with independent Rademacher (+-1) entries; the estimate is
    the mean over `num_samples` probes. Its variance is 2 sum_{i != j} H_ij^2 / num_samples:
    zero for a diagonal H, where every probe gives tr H exactly.

    Args:
      loss_fn: (params, *args) -> scalar loss. Static under `jax.jit`, as are `num_samples`
        and `batch_size`: pass the same function object across calls to reuse the compiled
        program.
      params: a pytree of floating arrays (n numbers in all).
      args: loss_fn's further arguments (data, batch statistics), traced.
      key: PRNG key for the probes; a fixed default keeps results deterministic.
      num_samples: number of probes, >= 2 (the standard error needs two).
      batch_size: None evaluates all probes at once (vmapped): fastest, but memory grows with
        num_samples times that of one Hessian-vector product, which for a loss over a whole
        training set can be prohibitive. An integer evaluates that many at a time, in
        sequence (`jax.lax.map`).

    Returns:
      A `TraceEstimate`.

    Raises:
      ValueError: for bad arguments, before any work.
    """
    check_loss_and_params(loss_fn, params, args)
    num_samples = check_int("num_samples", num_samples, minimum=2)
    batch_size = check_optional_int("batch_size", batch_size, minimum=1)
    return _hutchinson(loss_fn, params, tuple(args), check_key(key), num_samples, batch_size)


class FlatHessian(NamedTuple):
    """The Hessian at the flattened parameters x, (n,), as products on flat vectors."""

    x: jax.Array
    hv: Callable[[jax.Array], jax.Array]  # v -> H v
    unravel: Callable[[jax.Array], PyTree]
    status: jax.Array  # FINISHED, or DIVERGED where f or its gradient at x is not finite


def flat_hessian(loss_fn: LossFn, params: PyTree, args: tuple) -> FlatHessian:
    """`FlatHessian` of loss_fn(., *args) at params."""
    x, unravel = ravel_pytree(params)
    # Half-precision params: the loss still runs in their dtype, but the linear algebra runs in
    # float32 (eigh has no bfloat16 kernel, and eps = 8e-3 would drown every tolerance).
    work = x.astype(jnp.float32) if jnp.finfo(x.dtype).bits < 32 else x
    to_params = lambda y: unravel(y.astype(x.dtype))
    # Forward-over-reverse. The value and gradient at x do not depend on v: linearize computes
    # them once, and each product then costs only the tangent pass.
    (loss, grad), linear = jax.linearize(
        jax.value_and_grad(lambda y: loss_fn(to_params(y), *args)), work
    )
    finite = jnp.isfinite(loss) & jnp.all(jnp.isfinite(grad))
    status = jnp.where(finite, Status.FINISHED, Status.DIVERGED).astype(jnp.int32)
    return FlatHessian(work, lambda v: linear(v)[1], to_params, status)


def _lanczos(loss_fn, params, args, key, k, m, return_eigenvectors):
    x, hv, unravel, status = flat_hessian(loss_fn, params, args)
    V, T = lanczos_basis(hv, jnp.zeros_like(x), key, m)
    theta, S = jnp.linalg.eigh(T)
    vectors = None
    if return_eigenvectors:
        vectors = jax.vmap(unravel)(S[:, ::-1][:, :k].T @ V)
    return HessianEigenvalues(theta[::-1][:k], status, vectors)


def lanczos_basis(
    hv: Callable[[jax.Array], jax.Array], start: jax.Array, key: jax.Array, m: int
) -> tuple[jax.Array, jax.Array]:
    """m Lanczos iterations on v -> H v with full reorthogonalisation (see `hessian_eigenvalues`).

    Args:
      hv: the (n,) -> (n,) Hessian-vector product.
      start: (n,) the start vector (normalised here), or zeros for a random one from `key`.
      key: PRNG key for a random start and for the fresh vectors after a breakdown.
      m: iterations, 1 <= m <= n.

    Returns:
      (V, T): the orthonormal basis, (m, n), its first row the normalised start, and the
      Rayleigh-Ritz matrix T = V H V^T, (m, m), exactly symmetric.
    """
    n, dtype = start.shape[0], start.dtype
    # Rounding leaves a residual of a few eps * ||H q|| where the Krylov space is invariant;
    # anything this small relative to the largest ||H q|| seen is treated as a breakdown.
    tol = 100 * jnp.finfo(dtype).eps

    def orthogonalise(V: jax.Array, w: jax.Array) -> jax.Array:
        # Rows of V not filled yet are zero and drop out of the projection.
        return w - (V @ w) @ V

    def fresh(j: jax.Array, V: jax.Array) -> jax.Array:
        r = jax.random.normal(jax.random.fold_in(key, j), (n,), dtype)
        return orthogonalise(V, orthogonalise(V, r))

    def step(j, carry):
        V, C, w, scale = carry
        # w is the previous residual, orthogonal to the j rows of V; at j = 0 it is the start
        # vector. A zero start falls into the breakdown branch (scale is 0 there), which draws
        # a random one; j < m <= n leaves room for every fresh vector.
        q = jax.lax.cond(jnp.linalg.norm(w) <= tol * scale, fresh, lambda j, V: w, j, V)
        q = q / jnp.linalg.norm(q)
        V = V.at[j].set(q)
        hq = hv(q)
        # Column j of the projection: C[i, j] = q_i . H q_j for i <= j (rows > j are zero).
        h = V @ hq
        C = C.at[:, j].set(h)
        w = orthogonalise(V, hq - h @ V)
        return V, C, w, jnp.maximum(scale, jnp.linalg.norm(hq))

    init = (
        jnp.zeros((m, n), dtype),
        jnp.zeros((m, m), dtype),
        start,
        jnp.zeros((), dtype),
    )
    V, C, _, _ = jax.lax.fori_loop(0, m, step, init)
    # C holds the upper triangle of T = V H V^T; mirror it rather than average, so that T is
    # exactly symmetric.
    return V, jnp.triu(C) + jnp.triu(C, 1).T


_lanczos = jax.jit(_lanczos, static_argnames=("loss_fn", "k", "m", "return_eigenvectors"))


def _hutchinson(loss_fn, params, args, key, num_samples, batch_size) -> TraceEstimate:
    x, hv, _, status = flat_hessian(loss_fn, params, args)
    probes = jax.random.rademacher(key, (num_samples, x.shape[0]), x.dtype)
    trace, stderr = mean_and_stderr(map_samples(lambda z: z @ hv(z), probes, batch_size))
    return TraceEstimate(
        value=trace, status=status, stderr=stderr, num_samples=jnp.asarray(num_samples)
    )


_hutchinson = jax.jit(_hutchinson, static_argnames=("loss_fn", "num_samples", "batch_size"))
