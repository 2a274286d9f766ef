"""flatmin._vmap.vmap_leading: jax.vmap's answer, and no batching over an axis of size 1."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from flatmin._vmap import vmap_leading


@pytest.mark.parametrize("size", [1, 3])
def test_equals_vmap_and_calls_unbatched_at_size_one(size):
    def fn(tree, scale):
        return {"out": tree["w"] @ tree["v"] * scale, "n": jnp.sum(tree["v"])}

    rng = np.random.default_rng(size)
    tree = {"w": rng.normal(size=(size, 4, 5)), "v": rng.normal(size=(size, 5))}
    scale = rng.normal(size=(size,))
    got = vmap_leading(fn, tree, scale)
    expected = jax.vmap(fn)(tree, scale)
    close = lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)  # float32 sums
    jax.tree.map(close, got, expected)
    assert got["out"].shape == (size, 4)
    # At size 1 the product is traced without a batch dimension (none of vmap's batched
    # dot_general, whose dimension numbers name batch dimension 0 of both operands).
    jaxpr = str(jax.make_jaxpr(lambda t, s: vmap_leading(fn, t, s))(tree, scale))
    assert "dot_general" in jaxpr
    assert ("([0], [0])" in jaxpr) == (size > 1)
