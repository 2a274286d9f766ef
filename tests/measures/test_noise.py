"""flatmin.noise_floor: the spread of a measure under relative perturbations of the parameters."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import flatmin


def _quadratic(h, c):
    def f(params):
        return 0.5 * jnp.sum(h * (params["w"] - c) ** 2)

    return f


def test_spread_of_a_smooth_measure_is_its_first_order_spread():
    """Oracle: to first order f(x (1 + r z)) = f(x) + r sum_i g_i x_i z_i, z ~ N(0, I): a
    normal of std r ||g * x||. Float64, r = 1e-4, 4000 samples: within 5% (sampling error of a
    std from 4000 draws is 1.1%; the second-order term is 1e-4 of the first)."""
    with jax.enable_x64(True):
        rng = np.random.default_rng(0)
        x = jnp.asarray(rng.normal(size=30))
        h, c = jnp.asarray(rng.uniform(1, 5, 30)), jnp.asarray(rng.normal(size=30))
        f = _quadratic(h, c)
        params = {"w": x}
        floor = flatmin.noise_floor(f, params, relative=1e-4, num_samples=4000, batch_size=500)
        g = h * (x - c)
        expected = 1e-4 * float(jnp.linalg.norm(g * x))
        np.testing.assert_allclose(float(floor.std), expected, rtol=0.05)
        np.testing.assert_allclose(float(floor.value), float(f(params)), rtol=1e-12)
        assert int(floor.status) == flatmin.Status.FINISHED
        np.testing.assert_allclose(float(floor.mean), float(f(params)), atol=5 * expected / 63)
        assert float(floor.min) <= float(floor.mean) <= float(floor.max)
        assert floor.values.shape == (4000,)


def test_keyed_measures_get_a_fresh_key_per_sample():
    """Oracle: a measure that only draws a standard normal from its key has std 1 and ignores
    the perturbation; the same key gives the same floor, another key another."""
    measure = lambda params, *, key: jax.random.normal(key) + 0 * params["w"].sum()
    params = {"w": jnp.ones(3)}
    floor = flatmin.noise_floor(
        measure, params, keyed=True, num_samples=2000, key=jax.random.key(1)
    )
    assert abs(float(floor.std) - 1) < 0.05
    again = flatmin.noise_floor(
        measure, params, keyed=True, num_samples=2000, key=jax.random.key(1)
    )
    assert float(again.std) == float(floor.std)
    other = flatmin.noise_floor(
        measure, params, keyed=True, num_samples=2000, key=jax.random.key(2)
    )
    assert float(other.std) != float(floor.std)


def test_sharpness_noise_floor_at_float32_rounding():
    """Metric 2.1 of a separable quadratic at its minimum: the maximum is a vertex whatever the
    rounding, so relative perturbations of 1e-7 move phi by far less than phi itself."""
    h = jnp.asarray(np.linspace(10.0, 100.0, 20), jnp.float32)
    params = {"w": jnp.asarray(np.linspace(-1, 1, 20), jnp.float32)}
    loss = _quadratic(h, params["w"])
    floor = flatmin.noise_floor(
        lambda p, *, key: flatmin.sharpness(loss, p, key=key), params, keyed=True, num_samples=4
    )
    assert float(floor.value) > 0
    assert float(floor.std) < 1e-3 * float(floor.value)


def test_args_reach_the_measure_unperturbed():
    """Oracle: a measure of its data alone (the parameters enter times 0) has no spread
    however large the perturbations; keyed, the key comes after the args as a keyword."""
    params = {"w": jnp.linspace(1.0, 2.0, 5)}
    data = (jnp.asarray([1.0, 2.0, 3.0]), jnp.float32(0.5))
    measure = lambda p, x, s: jnp.sum(x) * s + 0 * jnp.sum(p["w"])
    floor = flatmin.noise_floor(measure, params, args=data, relative=0.1, num_samples=6)
    assert float(floor.value) == 3.0 and float(floor.std) == 0.0
    np.testing.assert_array_equal(floor.values, np.full(6, 3.0, np.float32))
    # The same with the data differently: a traced argument, not a compiled-in constant.
    other = flatmin.noise_floor(measure, params, args=(data[0] * 2, data[1]), num_samples=6)
    assert float(other.value) == 6.0
    keyed = lambda p, x, s, *, key: measure(p, x, s) + 0 * jax.random.normal(key)
    floor = flatmin.noise_floor(keyed, params, args=data, keyed=True, num_samples=3)
    assert float(floor.value) == 3.0 and float(floor.std) == 0.0


def test_status_tells_a_diverged_point_from_an_overflow_nearby():
    params = {"w": jnp.ones(3)}
    # inf wherever w[0] != 1: finite at the point, not at any perturbed copy.
    nearby = lambda p: jnp.where(p["w"][0] == 1.0, 0.0, jnp.inf)
    floor = flatmin.noise_floor(nearby, params, relative=1e-3)
    assert int(floor.status) == flatmin.Status.NONFINITE_NEARBY and float(floor.value) == 0.0
    # log(w - 1) = -inf at the point itself.
    diverged = lambda p: jnp.log(p["w"][0] - 1.0) + 0 * jnp.sum(p["w"])
    floor = flatmin.noise_floor(diverged, params, relative=1e-3)
    assert int(floor.status) == flatmin.Status.DIVERGED


@pytest.mark.parametrize(
    ("measure_fn", "match"),
    [
        (lambda p: p["w"], r"^measure_fn must return a real scalar"),
        (lambda p: (jnp.sum(p["w"]), jnp.sum(p["w"])), r"^measure_fn must return a real scalar"),
        (lambda p: jnp.sum(p["w"]) * 1j, r"^measure_fn must return a real scalar"),
        (lambda p, x: jnp.sum(p["w"]), r"^measure_fn could not be called"),
    ],
)
def test_measures_that_are_not_real_scalars_are_refused(measure_fn, match):
    with pytest.raises(ValueError, match=match):
        flatmin.noise_floor(measure_fn, {"w": jnp.ones(3)})


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"relative": -1e-7}, r"^relative\b"),
        ({"relative": float("nan")}, r"^relative\b"),
        ({"num_samples": 1}, r"^num_samples\b"),
        ({"num_samples": True}, r"^num_samples\b"),
        ({"keyed": 1}, r"^keyed\b"),
        ({"key": 3}, r"^key must be a single PRNG key"),
        ({"measure_fn": "sharpness"}, r"^measure_fn must be callable"),
        ({"params": {"w": jnp.arange(3)}}, r"^params\b"),
        ({"args": jnp.ones(3)}, r"^args must be a tuple"),
    ],
)
def test_bad_arguments_are_named(kwargs, match):
    arguments = {"measure_fn": lambda p: jnp.sum(p["w"]), "params": {"w": jnp.ones(3)}} | kwargs
    with pytest.raises(ValueError, match=match):
        flatmin.noise_floor(**arguments)
