"""Subspaces for Metric 2.1: the (n, p) matrix A of x + A y, random or the caller's, and the
coordinates A^+ x that size its box."""

from typing import Any

import jax
import jax.numpy as jnp

from flatmin._checks import check_floating_pytree, check_int, check_one_of

DISTRIBUTIONS = ("gaussian", "uniform")


def random_subspace(
    key: jax.Array,
    params: Any,
    p: int = 100,
    *,
    distribution: str = "gaussian",
    normalize: bool = False,
) -> jax.Array:
    """Draws A, (n, p), n the number of parameters in `params`, in their dtype.

    Entries are standard normal ("gaussian") or uniform on [-1, 1] ("uniform"); with
    `normalize=True` every column is scaled to unit Euclidean norm.

    The paper says only that A's columns are "randomly generated" (its authors never said
    how), and the choice moves the numbers by orders of magnitude: on a 3x512 MLP on digits,
    unit-norm columns gave subspace sharpness near 1e-3 at every batch size, unnormalised
    Gaussian columns 1.8 (small batch) to 13 (full batch), the scale of the paper's Table 4.
    Unnormalised columns have norm ~sqrt(n), so y moves x much further than the box size
    suggests. Record `distribution` and `normalize` with every result.

    Raises:
      ValueError: naming the argument: params empty or not all floating, p not an integer
        (a bool or a float included) in [1, n], an unknown distribution.
    """
    n = check_floating_pytree("params", params)
    p = check_int("p", p, minimum=1, maximum=n, note=f"n = {n}, the number of parameters")
    check_one_of("distribution", distribution, DISTRIBUTIONS)
    dtype = jnp.result_type(*jax.tree.leaves(params))  # as ravel_pytree(params) would have it
    if distribution == "gaussian":
        A = jax.random.normal(key, (n, p), dtype)
    else:
        A = jax.random.uniform(key, (n, p), dtype, minval=-1.0, maxval=1.0)
    if normalize:
        A = A / jnp.linalg.norm(A, axis=0, keepdims=True)
    return A


def subspace_coordinates(A: jax.Array, x: jax.Array) -> jax.Array:
    """A^+ x, (p,), for a tall (n, p) A and (n,) x: the coordinates of x's projection on A.

    Through the (p, p) Gram matrix A^T A, one matrix product and a p x p eigendecomposition,
    instead of an SVD of the tall A, which costs more than the ten solver iterations it feeds
    (benchmarks/sharpness.py times it). One step of iterative refinement
    on the residual recovers the digits that squaring A's condition number costs. Directions
    with A^T A eigenvalue below `p * eps(dtype)` of the largest (singular values below
    sqrt(p * eps) of the largest: ~3.5e-3 in float32 at p = 100) count as A's null space,
    which gives the minimum-norm solution for a rank-deficient A, as a pseudo-inverse does.
    """
    gram = A.T @ A
    w, V = jnp.linalg.eigh(gram)
    keep = w > jnp.max(w) * max(A.shape[1], 1) * jnp.finfo(A.dtype).eps
    inverse = jnp.where(keep, 1 / jnp.where(keep, w, 1), 0)

    def solve(b: jax.Array) -> jax.Array:
        return V @ (inverse * (V.T @ (A.T @ b)))

    coords = solve(x)
    return coords + solve(x - A @ coords)
