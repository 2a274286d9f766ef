"""flatmin._checks: the argument checks every public function shares.

Oracles: the rules stated in the helpers' docstrings, case by case. Every rejection must be a
ValueError whose message starts with the argument's name and shows the rejected value.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from flatmin._checks import (
    check_args,
    check_callable,
    check_finite_array,
    check_float,
    check_floating_pytree,
    check_int,
    check_loss_and_params,
    check_one_of,
    check_optional_float,
    check_optional_int,
    is_concrete,
    trace_shape,
)

# check_int ----------------------------------------------------------------------------------


@pytest.mark.parametrize("value", [3, np.int8(3), np.int64(3), np.uint32(3)])
def test_check_int_accepts_python_and_numpy_integers_as_int(value):
    out = check_int("k", value, minimum=1)
    assert out == 3 and type(out) is int


@pytest.mark.parametrize(
    ("value", "shown"),
    [
        (True, r"True \(a bool\)"),
        (np.bool_(True), r"True \(a bool\)"),
        (3.0, r"3\.0"),
        ("3", "'3'"),
        (None, "None"),
        (np.array([3]), r"an array of shape \(1,\)"),
        (jnp.int32(3), "Array"),  # a jax scalar cannot be a static argument
    ],
)
def test_check_int_rejects_non_integers_and_bools(value, shown):
    with pytest.raises(ValueError, match=rf"^k must be an integer >= 1, got {shown}"):
        check_int("k", value, minimum=1)


@pytest.mark.parametrize(
    ("bounds", "value", "message"),
    [
        ({"minimum": 1}, 0, r"k must be an integer >= 1, got 0$"),
        ({"maximum": 5}, 6, r"k must be an integer <= 5, got 6$"),
        ({"minimum": 1, "maximum": 5}, 6, r"k must be an integer in \[1, 5\], got 6$"),
        ({"minimum": 2, "note": "n = 5"}, 1, r"k must be an integer >= 2 \(n = 5\), got 1$"),
        ({}, 1.5, r"k must be an integer, got 1\.5$"),
    ],
)
def test_check_int_bounds_are_inclusive_and_named(bounds, value, message):
    with pytest.raises(ValueError, match=message):
        check_int("k", value, **bounds)


def test_check_int_bounds_are_inclusive():
    assert check_int("k", 1, minimum=1, maximum=1) == 1
    assert check_int("k", -7) == -7  # no bound: any integer


def test_check_optional_int():
    assert check_optional_int("batch_size", None, minimum=1) is None
    assert check_optional_int("batch_size", np.int16(4), minimum=1) == 4
    with pytest.raises(ValueError, match=r"^batch_size must be None or an integer >= 1, got 0$"):
        check_optional_int("batch_size", 0, minimum=1)
    with pytest.raises(ValueError, match=r"^batch_size must be None or .* got True \(a bool\)"):
        check_optional_int("batch_size", True, minimum=1)


# check_float --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "value",
    [0.5, 1, np.float32(0.5), np.float64(0.5), np.int32(1), np.array(0.5), jnp.float32(0.5)],
)
def test_check_float_accepts_real_numbers_as_float(value):
    out = check_float("lr", value, above=0)
    assert type(out) is float and out == float(value)


@pytest.mark.parametrize(
    ("value", "shown"),
    [
        (math.nan, "nan"),
        (np.float32(np.nan), "nan"),
        (math.inf, "inf"),
        (-math.inf, "-inf"),
        (True, r"True \(a bool\)"),
        (np.bool_(False), r"False \(a bool\)"),
        (1 + 0j, r"\(1\+0j\)"),
        ("0.1", "'0.1'"),
        (None, "None"),
        (np.array([0.1, 0.2]), r"an array of shape \(2,\)"),
    ],
)
def test_check_float_rejects_nan_inf_bools_and_non_numbers(value, shown):
    with pytest.raises(ValueError, match=rf"^lr must be a finite number, got {shown}$"):
        check_float("lr", value)


@pytest.mark.parametrize(
    ("bounds", "bad", "good", "requirement"),
    [
        ({"above": 0}, 0.0, 1e-30, "> 0"),
        ({"minimum": 0}, -1e-30, 0.0, ">= 0"),
        ({"below": 1}, 1.0, 0.999, "< 1"),
        ({"maximum": 1}, 1.5, 1.0, "<= 1"),
        ({"minimum": 0, "below": 1}, 1.0, 0.0, r"in \[0, 1\)"),
        ({"above": 0, "maximum": 1}, 0.0, 1.0, r"in \(0, 1\]"),
    ],
)
def test_check_float_bounds(bounds, bad, good, requirement):
    assert check_float("x", good, **bounds) == good
    with pytest.raises(ValueError, match=rf"^x must be a finite number {requirement}, got "):
        check_float("x", bad, **bounds)


def test_check_float_refuses_two_lower_bounds():
    with pytest.raises(TypeError):
        check_float("x", 1.0, minimum=0, above=0)


def test_check_float_rejects_traced_values():
    # A traced number has no value to check; the helpers are for static arguments.
    def f(v):
        check_float("lr", v)
        return v

    with pytest.raises(ValueError, match=r"^lr must be a finite number"):
        jax.jit(f)(1.0)


def test_check_optional_float():
    assert check_optional_float("target_loss", None, minimum=0) is None
    assert check_optional_float("target_loss", 0, minimum=0) == 0.0
    with pytest.raises(
        ValueError, match=r"^target_loss must be None or a finite number >= 0, got nan$"
    ):
        check_optional_float("target_loss", math.nan, minimum=0)


# check_one_of -------------------------------------------------------------------------------


def test_check_one_of():
    assert check_one_of("solver", "lbfgsb", ("lbfgsb", "pg")) == "lbfgsb"
    with pytest.raises(ValueError, match=r"^solver must be one of \('lbfgsb', 'pg'\), got 'x'$"):
        check_one_of("solver", "x", ("lbfgsb", "pg"))
    with pytest.raises(ValueError, match=r"^solver must be one of .*, got \['lbfgsb'\]$"):
        check_one_of("solver", ["lbfgsb"], ("lbfgsb", "pg"))  # unhashable: not a choice


def test_check_callable():
    assert check_callable("fn", len) is len
    assert check_callable("fn", None, optional=True) is None
    with pytest.raises(ValueError, match=r"^fn must be callable, got str$"):
        check_callable("fn", "len")
    with pytest.raises(ValueError, match=r"^fn must be callable, got NoneType$"):
        check_callable("fn", None)
    with pytest.raises(ValueError, match=r"^fn must be callable or None, got int$"):
        check_callable("fn", 3, optional=True)


# check_floating_pytree and check_loss_and_params --------------------------------------------


def test_check_floating_pytree_counts_elements():
    tree = {"w": jnp.ones((2, 3)), "b": np.zeros(4, np.float64), "s": 1.5}
    assert check_floating_pytree("params", tree) == 6 + 4 + 1


@pytest.mark.parametrize(
    ("tree", "message"),
    [
        ({}, r"^params must contain at least one array, got an empty pytree$"),
        ((), r"^params must contain at least one array"),
        ({"w": jnp.ones(2), "b": jnp.arange(2)}, r"^params must hold floating .*\['b'\].*int32"),
        ({"w": jnp.ones(2, bool)}, r"^params must hold floating .*\['w'\].*bool"),
        ({"w": jnp.ones(2, jnp.complex64)}, r"^params must hold floating .*complex64"),
        ({"w": "1.0"}, r"^params must hold floating .*\['w'\] has type str"),
    ],
)
def test_check_floating_pytree_rejects(tree, message):
    with pytest.raises(ValueError, match=message):
        check_floating_pytree("params", tree)


def test_check_loss_and_params():
    params = {"w": jnp.ones((2, 2))}
    assert check_loss_and_params(lambda p: jnp.sum(p["w"]), params) == 4
    with pytest.raises(ValueError, match=r"^loss_fn must be callable, got str"):
        check_loss_and_params("loss", params)
    with pytest.raises(ValueError, match=r"^loss_fn must return a floating scalar, got \(2,\)"):
        check_loss_and_params(lambda p: p["w"][0], params)
    with pytest.raises(ValueError, match=r"^loss_fn must return a floating scalar.*int32"):
        check_loss_and_params(lambda p: jnp.sum(p["w"]).astype(jnp.int32), params)
    with pytest.raises(ValueError, match=r"^params must contain at least one array"):
        check_loss_and_params(lambda p: 0.0, {})


def test_check_loss_and_params_with_args():
    """loss_fn(params, *args): the args are part of the call traced; a list is taken as a
    tuple, anything else refused, and a loss_fn's own `validate(params, *args)` runs first."""
    params = {"w": jnp.ones((2, 2))}
    loss = lambda p, scale, shift: scale * jnp.sum(p["w"]) + shift
    args = (jnp.float32(2.0), jnp.float32(1.0))
    assert check_loss_and_params(loss, params, args) == 4
    assert check_loss_and_params(loss, params, list(args)) == 4
    with pytest.raises(ValueError, match=r"^args must be a tuple of loss_fn's further arguments"):
        check_loss_and_params(loss, params, jnp.ones(2))
    with pytest.raises(ValueError, match=r"^loss_fn could not be called .* 1 further argument"):
        check_loss_and_params(loss, params, args[:1])
    with pytest.raises(ValueError, match=r"^loss_fn must return a floating scalar, got \(2,\)"):
        check_loss_and_params(lambda p, v: p["w"][0] * v, params, (jnp.ones(2),))

    seen = []

    class Validated:
        def __call__(self, p, scale, shift):
            return loss(p, scale, shift)

        def validate(self, p, *a):
            seen.append(len(a))
            if a[0] < 0:
                raise ValueError("scale must be >= 0")

    assert check_loss_and_params(Validated(), params, args) == 4 and seen == [2]
    with pytest.raises(ValueError, match=r"^scale must be >= 0$"):
        check_loss_and_params(Validated(), params, (jnp.float32(-1.0), args[1]))


def test_check_args():
    assert check_args(()) == ()
    x = jnp.ones(2)
    assert check_args([x, 3]) == (x, 3)
    for bad in (x, None, {"x": x}, "xy"):
        with pytest.raises(ValueError, match=r"^args must be a tuple .* got "):
            check_args(bad)


def test_trace_shape_names_the_function():
    out = trace_shape("fn", lambda a, b: a @ b, jnp.ones((2, 3)), jnp.ones(3))
    assert out.shape == (2,) and out.dtype == jnp.float32
    with pytest.raises(ValueError, match=r"^fn must be traceable by JAX"):
        trace_shape("fn", lambda a: float(a), jnp.ones(()))
    with pytest.raises(ValueError, match=r"^fn could not be called as fn\(params, \*args\)"):
        trace_shape("fn", lambda a: a, jnp.ones(()), jnp.ones(()))


# check_finite_array and is_concrete ---------------------------------------------------------


@pytest.mark.parametrize("xp", [np, jnp])
def test_check_finite_array(xp):
    check_finite_array("x", xp.ones((3, 2)))
    check_finite_array("y", xp.arange(3))  # integers are always finite
    for bad in (np.nan, np.inf, -np.inf):
        with pytest.raises(ValueError, match=r"^x must be finite, but it holds NaN or infinite"):
            check_finite_array("x", xp.asarray([[0.0, bad]]))


def test_check_finite_array_skips_traced_values():
    def f(x):
        check_finite_array("x", x)  # the value is unknown here: no check, no error
        assert not is_concrete(x)
        return x

    assert np.isnan(jax.jit(f)(jnp.asarray(np.nan)))
    assert is_concrete({"a": np.ones(2), "b": jnp.ones(2), "c": 1.0})


def test_check_finite_array_checks_a_constant_met_while_tracing():
    x = jnp.asarray([1.0, np.nan])  # concrete, closed over by a jitted function

    def f(p):
        check_finite_array("x", x)
        return p

    with pytest.raises(ValueError, match=r"^x must be finite"):
        jax.jit(f)(1.0)
