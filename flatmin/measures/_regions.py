"""The regions a maximum is taken over, centred at 0: a box and a Euclidean ball.

Metric 2.1's C_eps is a box with a half-width per coordinate; worst-case sharpness takes an
l-infinity ball (a box of equal half-widths) or an l2 ball. Solvers work in the unit region
(z = y / radius), where a box is [-1, 1]^p and a ball the unit ball.
"""

import dataclasses

import jax
import jax.numpy as jnp


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class Box:
    """{y in R^p : |y_i| <= radius_i}; radius (p,) > 0."""

    radius: jax.Array

    @property
    def dim(self) -> int:
        return self.radius.shape[0]


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class Ball:
    """{y in R^dim : ||y||_2 <= radius}; radius a scalar > 0, dim static."""

    radius: jax.Array
    dim: int = dataclasses.field(metadata={"static": True})


Region = Box | Ball


def project(region: Region, y: jax.Array) -> jax.Array:
    """The point of `region` nearest to y (exact: a clip, or a rescaling onto the sphere)."""
    if isinstance(region, Box):
        return jnp.clip(y, -region.radius, region.radius)
    return y * (region.radius / jnp.maximum(jnp.linalg.norm(y), region.radius))


def unit(region: Region) -> Region:
    """The region scaled to radius 1 (in z = y / radius)."""
    return jax.tree.map(jnp.ones_like, region)


def uniform(region: Region, key: jax.Array, num: int, dtype) -> jax.Array:
    """(num, dim) points drawn uniformly from the region."""
    if isinstance(region, Box):
        return region.radius[None, :] * jax.random.uniform(key, (num, region.dim), dtype, -1.0, 1.0)
    directions, radii = jax.random.split(key)
    z = jax.random.normal(directions, (num, region.dim), dtype)
    # A uniform direction at radius R U^(1/dim) is uniform in the ball.
    r = region.radius * jax.random.uniform(radii, (num, 1), dtype) ** (1 / region.dim)
    return z / jnp.linalg.norm(z, axis=1, keepdims=True) * r


def dual_norm(region: Region, g: jax.Array) -> jax.Array:
    """How far a unit step along g reaches in the unit region's own norm: max |g_i| for a box,
    ||g||_2 for a ball."""
    return jnp.max(jnp.abs(g)) if isinstance(region, Box) else jnp.linalg.norm(g)


def projected_gradient_norm(region: Region, y: jax.Array, g: jax.Array) -> jax.Array:
    """max_i |P(y - g)_i - y_i| for g the gradient of the minimised objective."""
    if isinstance(region, Box):
        return bounds_projected_gradient_norm(y, g, -region.radius, region.radius)
    return jnp.max(jnp.abs(project(region, y - g) - y))


def bounds_projected_gradient_norm(x, g, lower, upper) -> jax.Array:
    """scipy's `projgr` for the box [lower, upper]: max_i |P(x - g)_i - x_i|, written as scipy
    writes it (the quantity its pgtol tests, rounded the same way)."""
    clipped = jnp.where(g < 0, jnp.maximum(x - upper, g), jnp.minimum(x - lower, g))
    return jnp.max(jnp.abs(clipped))
