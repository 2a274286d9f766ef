"""Argument checks shared by flatmin's public functions.

Every check raises ValueError with a message that starts with the argument's name and says what
was expected and what was given, e.g. ``k must be an integer in [1, 8], got True (a bool)``. The
scalar checks return the value as a plain Python int or float, so a checked value can be used
as a static argument under `jax.jit`.

bool is a subclass of int in Python; none of these checks accepts a bool where a number is
expected (``batch_size=True`` is a mistake, not 1).
"""

import math
import numbers
from collections.abc import Callable, Collection
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np


def _is_bool(value: Any) -> bool:
    return isinstance(value, bool | np.bool_) or (
        isinstance(value, np.ndarray | jax.Array) and value.dtype == np.bool_
    )


def _got(value: Any) -> str:
    """How the rejected value is shown in a message."""
    if isinstance(value, np.generic):
        value = value.item()  # 1.5, not np.float32(1.5)
    if _is_bool(value):
        return f"{value!r} (a bool)"
    if isinstance(value, np.ndarray | jax.Array) and np.ndim(value) > 0:
        return f"an array of shape {np.shape(value)}"
    return repr(value)


def _interval(
    minimum: float | None, maximum: float | None, above: float | None, below: float | None
) -> str:
    """'>= 1', '> 0', 'in [0, 1)', ... or '' when there is no bound."""
    low = (f"[{minimum}", minimum) if minimum is not None else (f"({above}", above)
    high = (f"{maximum}]", maximum) if maximum is not None else (f"{below})", below)
    if low[1] is not None and high[1] is not None:
        return f" in {low[0]}, {high[0]}"
    if minimum is not None:
        return f" >= {minimum}"
    if above is not None:
        return f" > {above}"
    if maximum is not None:
        return f" <= {maximum}"
    if below is not None:
        return f" < {below}"
    return ""


def _requirement(kind: str, interval: str, note: str, optional: bool) -> str:
    note = f" ({note})" if note else ""
    return f"{'None or ' if optional else ''}{kind}{interval}{note}"


def check_int(
    name: str,
    value: Any,
    *,
    minimum: int | None = None,
    maximum: int | None = None,
    note: str = "",
    _optional: bool = False,
) -> int:
    """`value` as a Python int: an int or NumPy integer (not a bool) in [minimum, maximum].

    Args:
      name: the argument's name, as the caller spells it.
      minimum, maximum: inclusive bounds; None for none.
      note: appended in parentheses to the requirement, e.g. what a bound stands for.

    Raises:
      ValueError: ``"{name} must be an integer >= {minimum}, got {value!r}"`` and the like.
    """
    valid = isinstance(value, numbers.Integral) and not _is_bool(value)
    if valid:
        value = int(value)
        valid = (minimum is None or value >= minimum) and (maximum is None or value <= maximum)
    if not valid:
        interval = _interval(minimum, maximum, None, None)
        requirement = _requirement("an integer", interval, note, _optional)
        raise ValueError(f"{name} must be {requirement}, got {_got(value)}")
    return value


def check_optional_int(name: str, value: Any, **bounds: Any) -> int | None:
    """None, or `check_int(name, value, **bounds)`; the message says None is allowed."""
    return None if value is None else check_int(name, value, **bounds, _optional=True)


def check_float(
    name: str,
    value: Any,
    *,
    minimum: float | None = None,
    maximum: float | None = None,
    above: float | None = None,
    below: float | None = None,
    note: str = "",
    _optional: bool = False,
) -> float:
    """`value` as a finite Python float.

    Accepted: Python and NumPy ints and floats and concrete 0-d real arrays (not bools, NaN,
    infinities or complex numbers). Bounds: `minimum` / `maximum` are inclusive, `above` /
    `below` exclusive (at most one of each pair): ``above=0`` for a positive number,
    ``minimum=0`` for a non-negative one, ``minimum=0, below=1`` for [0, 1).

    Raises:
      ValueError: ``"{name} must be a finite number > 0, got nan"`` and the like.
    """
    if (minimum is not None and above is not None) or (maximum is not None and below is not None):
        raise TypeError("check_float: give at most one lower and one upper bound")
    number = None
    if not _is_bool(value) and not isinstance(value, jax.core.Tracer):
        if isinstance(value, numbers.Real):
            number = float(value)
        elif (
            isinstance(value, np.ndarray | jax.Array)
            and value.ndim == 0
            and jnp.issubdtype(value.dtype, jnp.number)
            and not jnp.issubdtype(value.dtype, jnp.complexfloating)
        ):
            number = float(value)
    valid = number is not None and math.isfinite(number)
    if valid:
        valid = (
            (minimum is None or number >= minimum)
            and (above is None or number > above)
            and (maximum is None or number <= maximum)
            and (below is None or number < below)
        )
    if not valid:
        interval = _interval(minimum, maximum, above, below)
        requirement = _requirement("a finite number", interval, note, _optional)
        raise ValueError(f"{name} must be {requirement}, got {_got(value)}")
    return number


def check_optional_float(name: str, value: Any, **bounds: Any) -> float | None:
    """None, or `check_float(name, value, **bounds)`; the message says None is allowed."""
    return None if value is None else check_float(name, value, **bounds, _optional=True)


def check_one_of(name: str, value: Any, choices: Collection[Any]) -> Any:
    """`value` itself if it is one of `choices` (compared by hash and equality).

    Raises:
      ValueError: ``"{name} must be one of {choices}, got {value!r}"``.
    """
    try:
        valid = value in set(choices)
    except TypeError:  # unhashable: a list, an array
        valid = False
    if _is_bool(value) and not any(isinstance(choice, bool) for choice in choices):
        valid = False  # True == 1: a bool is no choice among numbers
    if not valid:
        raise ValueError(f"{name} must be one of {tuple(choices)}, got {value!r}")
    return value


def check_scalar(
    name: str, value: Any, *, minimum: float | None = None, above: float | None = None
) -> Any:
    """A real scalar that may be traced (vmapped over, say): its shape and dtype are checked
    always, its value (finite, and the bound) when it is concrete. Returns it unchanged.

    Raises:
      ValueError: ``"{name} must be a finite real scalar > 0, got ..."`` and the like.
    """
    bound = ""
    if minimum is not None:
        bound = f" >= {minimum}"
    elif above is not None:
        bound = f" > {above}"
    requirement = f"{name} must be a finite real scalar{bound}, got {_got(value)}"
    if _is_bool(value) or np.ndim(value) != 0:
        raise ValueError(requirement)
    dtype = jnp.result_type(value)
    if not jnp.issubdtype(dtype, jnp.number) or jnp.issubdtype(dtype, jnp.complexfloating):
        raise ValueError(requirement)
    if is_concrete(value):
        check_float(name, value, minimum=minimum, above=above, note="")
    return value


def check_bool(name: str, value: Any) -> bool:
    """A Python or NumPy bool (a static switch: 0 or "yes" would be a mistake)."""
    if not isinstance(value, bool | np.bool_):
        raise ValueError(f"{name} must be True or False, got {value!r}")
    return bool(value)


def check_key(key: Any) -> jax.Array:
    """A single typed PRNG key, or raw uint32 key data of the default implementation (wrapped);
    None gives the fixed default key(0), so results are deterministic.

    Raises:
      ValueError: ``"key must be a single PRNG key (jax.random.key(seed)) or None, got ..."``.
    """
    if key is None:
        return jax.random.key(0)
    if isinstance(key, jax.Array | np.ndarray):
        if jnp.issubdtype(key.dtype, jax.dtypes.prng_key) and key.shape == ():
            return key
        raw = jax.eval_shape(lambda: jax.random.key_data(jax.random.key(0)))
        if key.dtype == np.uint32 and key.shape == raw.shape:
            return jax.random.wrap_key_data(key)
    raise ValueError(
        "key must be a single PRNG key (jax.random.key(seed)) or None, got "
        f"{getattr(key, 'dtype', type(key).__name__)} of shape {np.shape(key)}"
    )


def check_callable(name: str, value: Any, *, optional: bool = False) -> Any:
    """`value` itself if it is callable (or None, with `optional`).

    Raises:
      ValueError: ``"{name} must be callable, got str"`` (``"callable or None"`` if optional).
    """
    if not (callable(value) or (optional and value is None)):
        either = "callable or None" if optional else "callable"
        raise ValueError(f"{name} must be {either}, got {type(value).__name__}")
    return value


def check_floating_pytree(name: str, tree: Any) -> int:
    """Checks that `tree` holds at least one array and only floating ones; returns the total
    number of elements.

    Raises:
      ValueError: ``"{name} must contain at least one array, got an empty pytree"``, or
        ``"{name} must hold floating arrays; leaf ['b'] has dtype int32"``.
    """
    leaves = jax.tree_util.tree_leaves_with_path(tree)
    if not leaves:
        raise ValueError(f"{name} must contain at least one array, got an empty pytree")
    for path, leaf in leaves:
        try:
            dtype = jnp.result_type(leaf)
        except TypeError:
            dtype = None
        if dtype is None or not jnp.issubdtype(dtype, jnp.floating):
            raise ValueError(
                f"{name} must hold floating arrays; leaf {jax.tree_util.keystr(path)} has "
                f"{'dtype ' + str(dtype) if dtype is not None else 'type ' + type(leaf).__name__}"
            )
    return sum(int(np.size(leaf)) for _, leaf in leaves)


def is_concrete(tree: Any) -> bool:
    """Whether every leaf of `tree` has a value now (none is traced by jit, vmap or grad)."""
    return not any(isinstance(leaf, jax.core.Tracer) for leaf in jax.tree.leaves(tree))


def check_finite_array(name: str, value: Any) -> None:
    """Checks that a concrete floating array holds no NaN or infinity; a traced or non-floating
    one passes unchecked (its values are unknown, or always finite).

    Raises:
      ValueError: ``"{name} must be finite, but it holds NaN or infinite values"``.
    """
    if not is_concrete(value) or not jnp.issubdtype(jnp.result_type(value), jnp.inexact):
        return
    xp = np if isinstance(value, np.ndarray) else jnp
    # A concrete array met while tracing (a constant closed over by a jitted function) is
    # checked now, not staged into the traced program.
    with jax.ensure_compile_time_eval():
        finite = bool(xp.isfinite(value).all())
    if not finite:
        raise ValueError(f"{name} must be finite, but it holds NaN or infinite values")


def trace_shape(name: str, fn: Callable[..., Any], *args: Any) -> Any:
    """`jax.eval_shape(fn, *args)`: the output's shapes and dtypes, nothing computed; a
    function JAX cannot trace, or cannot call with these arguments, raises a ValueError that
    names it and says what to change.

    Raises:
      ValueError: ``"{name} must be traceable by JAX ..."`` or ``"{name} could not be called
        ..."``, chained to JAX's or Python's own error.
    """
    try:
        return jax.eval_shape(fn, *args)
    except jax.errors.JAXTypeError as error:
        raise ValueError(
            f"{name} must be traceable by JAX: it turns a traced array into a Python or NumPy "
            "value (float(), int(), bool(), `if` on an array, np.asarray ...), which the "
            "compiled measures cannot do. Use jax.numpy functions, jnp.where or jax.lax.cond "
            f"instead. JAX said: {type(error).__name__}: {str(error).splitlines()[0]}"
        ) from error
    except TypeError as error:
        raise ValueError(
            f"{name} could not be called as {name}(params, *args) with {len(args) - 1} further "
            f"argument(s) in args: {error}"
        ) from error


def check_args(args: Any) -> tuple:
    """The loss function's further arguments as a tuple: `args` must be a tuple or a list.

    Raises:
      ValueError: ``"args must be a tuple of loss_fn's further arguments ..."``.
    """
    if not isinstance(args, tuple | list):
        raise ValueError(
            "args must be a tuple of loss_fn's further arguments (loss_fn(params, *args)), "
            f"e.g. args=(batch_stats, x, y); got {type(args).__name__}"
        )
    return tuple(args)


def check_loss_and_params(loss_fn: Callable[..., jax.Array], params: Any, args: tuple = ()) -> int:
    """Validates `loss_fn(params, *args)` from shapes alone (no loss is computed); returns n,
    the number of parameters. A loss_fn with a `validate(params, *args)` method (as
    `flatmin.Objective` has) checks its arguments' values there first, with its own messages.

    Raises:
      ValueError: naming the argument.
    """
    check_callable("loss_fn", loss_fn)
    n = check_floating_pytree("params", params)
    args = check_args(args)
    validate = getattr(loss_fn, "validate", None)
    if callable(validate):
        validate(params, *args)
    out = trace_shape("loss_fn", loss_fn, params, *args)
    if not (hasattr(out, "shape") and out.shape == () and jnp.issubdtype(out.dtype, jnp.floating)):
        raise ValueError(
            f"loss_fn must return a floating scalar, got {getattr(out, 'shape', out)} "
            f"of dtype {getattr(out, 'dtype', type(out).__name__)}"
        )
    return n
