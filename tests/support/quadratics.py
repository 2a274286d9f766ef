"""Test problems with closed-form answers for flatmin.measures (adaptive, density, layers).

The losses run in float32 in JAX; every expected number is computed in float64 NumPy from the
float32 numbers handed to flatmin, never from flatmin's output.
"""

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree

from .oracles import U32, spacing32

NESTED_SHAPES = {
    "dense": {"kernel": (4, 5), "bias": (5,)},
    "scale": (),
    "conv": (3, 2, 2),
    "z": (7,),
}  # n = 45 parameters, one scalar leaf
N = 45


def nested(sample, dtype=np.float32) -> dict:
    """A pytree shaped like NESTED_SHAPES with leaves sample(shape) cast to dtype."""
    return jax.tree.map(
        lambda s: jnp.asarray(np.asarray(sample(s), dtype=dtype)),
        NESTED_SHAPES,
        is_leaf=lambda s: isinstance(s, tuple),
    )


def linear(g_tree):
    """f(w) = g . w, summed leaf by leaf."""
    return lambda w: sum(jax.tree.leaves(jax.tree.map(lambda gi, wi: jnp.sum(gi * wi), g_tree, w)))


def quadratic(H: np.ndarray, center, c0: float = 0.0):
    """f(w) = c0 + 1/2 (x - x_c)^T H (x - x_c), x = ravel(w), H rounded to float32."""
    H32 = jnp.asarray(H, jnp.float32)
    xc = ravel_pytree(center)[0]

    def loss(w):
        d = ravel_pytree(w)[0] - xc
        return c0 + 0.5 * d @ (H32 @ d)

    return loss


def separable(h_tree, center, c0: float = 0.0):
    """f(w) = c0 + 1/2 sum_i h_i (w_i - center_i)^2, leafwise."""

    def loss(w):
        terms = jax.tree.map(lambda wi, ci, hi: jnp.sum(hi * (wi - ci) ** 2), w, center, h_tree)
        return c0 + 0.5 * sum(jax.tree.leaves(terms))

    return loss


def rotated(lam, rng: np.random.Generator) -> np.ndarray:
    """Q diag(lam) Q^T for a random orthogonal Q, exactly symmetric, float64."""
    n = len(lam)
    Q, _ = np.linalg.qr(rng.normal(size=(n, n)))
    H = (Q * np.asarray(lam, np.float64)) @ Q.T
    return (H + H.T) / 2


def h32(H: np.ndarray) -> np.ndarray:
    """H as the float32 loss sees it, back in float64."""
    return np.asarray(H, np.float32).astype(np.float64)


def linear_slack(g: np.ndarray, w: np.ndarray, delta: np.ndarray) -> float:
    """Bound on float32 rounding in g.(w + delta) - g.w, plus relative 4u of the increase:
    w + delta rounded (half an ulp per entry), two n-term sums, the scale c rounded."""
    n = g.size
    bound = np.sum(np.abs(g) * spacing32(np.abs(w) + np.abs(delta))) / 2
    bound += 2 * (n + 2) * U32 * np.sum(np.abs(g) * (np.abs(w) + np.abs(delta)))
    return float(bound + 4 * U32 * abs(np.dot(g, delta)))
