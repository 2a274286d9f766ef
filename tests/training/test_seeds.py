"""flatmin.training.seeds: measures of stacked seeds equal each seed measured alone."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import flatmin
from flatmin.training.data import load_dataset
from flatmin.training.objective import Objective


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits")


@pytest.fixture(scope="module")
def three_seeds(digits):
    """Three seeds of a small MLP trained one epoch (stacked variables), and the model."""
    model = flatmin.build_model("mlp", digits.num_classes, hidden=(16,))
    keys = jax.random.split(jax.random.key(0), 3)
    trained = flatmin.train_seeds(model, optax.adam(1e-3), digits, keys, batch_size=64, epochs=1)
    return model, trained.variables


def _seed(variables, seed):
    return jax.tree.map(lambda v: v[seed], variables)


@pytest.mark.parametrize("bn", ["running", "batch"])
def test_seed_sharpness_equals_each_seed_alone(digits, three_seeds, bn):
    model, variables = three_seeds
    x, y = jnp.asarray(digits.x_train), jnp.asarray(digits.y_train)
    key = jax.random.key(3)
    vmapped = flatmin.seed_sharpness(model, variables, x, y, None, 1e-3, key=key, bn=bn).value

    def alone(seed: int) -> float:
        v = _seed(variables, seed)
        args = (v["batch_stats"], x, y)
        return float(flatmin.sharpness(Objective(model, bn), v["params"], None, 1e-3, args=args,
                                       key=key))  # fmt: skip

    assert vmapped.shape == (3,) and np.all(vmapped > 0)
    # Distinct seeds, values apart by several times the tolerance below: a grouping that lost
    # or reordered seeds would show.
    assert np.min(np.diff(np.sort(vmapped))) > 3e-3 * np.max(vmapped)
    # One seed alone and three vmapped compile to different float32 reductions.
    np.testing.assert_allclose(vmapped, [alone(seed) for seed in range(3)], rtol=1e-3)


@pytest.mark.parametrize(
    "solver",
    [flatmin.LBFGSB(), flatmin.LBFGSB.paper(), flatmin.ProjectedGradient()],
    ids=["lbfgsb", "paper", "projected_gradient"],
)
@pytest.mark.parametrize("seeds_per_solve", [1, 2, None])
def test_seed_sharpness_in_groups_equals_one_solve(digits, three_seeds, solver, seeds_per_solve):
    model, variables = three_seeds
    x, y = jnp.asarray(digits.x_train), jnp.asarray(digits.y_train)
    key = jax.random.key(3)
    stops = getattr(solver, "pgtol", 0) > 0  # the paper's route: scipy's stopping rules
    # The solver carries its start: LBFGSB.paper() from y = 0, the others at random.
    assert solver.init == ("zero" if stops else "random")
    kwargs = dict(key=key, solver=solver)
    together = flatmin.seed_sharpness(
        model, variables, x, y, None, 1e-3, seeds_per_solve=8, **kwargs
    )
    grouped = flatmin.seed_sharpness(
        model, variables, x, y, None, 1e-3, seeds_per_solve=seeds_per_solve, **kwargs
    )
    # A batch of 1 and a batch of 3 compile to different float32 reductions: 2e-5 seen.
    np.testing.assert_allclose(grouped.value, together.value, rtol=1e-4)
    assert grouped.status.shape == (3,) and grouped.history.shape == (3, solver.maxiter)
    np.testing.assert_array_equal(grouped.status < flatmin.Status.DIVERGED, True)
    if not stops:
        # Without stopping rules every solve runs maxiter iterations. With them, factr's test of
        # a relative decrease near 2e-9 reads rounding, which the batch size changes.
        np.testing.assert_array_equal(grouped.num_steps, together.num_steps)


@pytest.mark.parametrize("bn", ["running", "batch"])
def test_seed_gradients_are_each_seeds_gradient(digits, three_seeds, bn):
    """Oracle: jax.grad of each seed's own f, and NumPy norms of it."""
    model, variables = three_seeds
    x, y = jnp.asarray(digits.x_train), jnp.asarray(digits.y_train)
    got = flatmin.seed_gradients(model, variables, x, y, bn=bn)
    for seed in range(3):
        v = _seed(variables, seed)
        loss, grad = jax.value_and_grad(Objective(model, bn))(v["params"], v["batch_stats"], x, y)
        flat = np.concatenate([np.ravel(g) for g in jax.tree.leaves(grad)]).astype(np.float64)
        np.testing.assert_allclose(got["loss"][seed], float(loss), rtol=1e-5)
        np.testing.assert_allclose(got["grad_inf_norm"][seed], np.max(np.abs(flat)), rtol=1e-4)
        np.testing.assert_allclose(got["grad_2_norm"][seed], np.linalg.norm(flat), rtol=1e-4)


def test_a_diverged_seed_gives_nan_and_diverged_and_leaves_the_others_alone(digits, three_seeds):
    """One seed's parameters NaN (a diverged run): its value is NaN with status DIVERGED, never
    an error, and the other seeds' values are exactly those of the run without it."""
    model, variables = three_seeds
    x, y = jnp.asarray(digits.x_train), jnp.asarray(digits.y_train)
    diverged = {
        **variables,
        "params": jax.tree.map(lambda p: jnp.asarray(p).at[1].set(jnp.nan), variables["params"]),
    }
    key = jax.random.key(3)
    clean = flatmin.seed_sharpness(model, variables, x, y, None, 1e-3, key=key)
    found = flatmin.seed_sharpness(model, diverged, x, y, None, 1e-3, key=key)
    assert np.isnan(found.value[1]) and found.status[1] == flatmin.Status.DIVERGED
    assert np.all(clean.status < flatmin.Status.DIVERGED)
    np.testing.assert_array_equal(found.value[[0, 2]], clean.value[[0, 2]])
    np.testing.assert_array_equal(found.status[[0, 2]], clean.status[[0, 2]])


def _trace(loss_fn, params, args, key):
    """A measure for seed_measure: module-level, so its compiled program is reused."""
    return flatmin.hessian_trace(loss_fn, params, args=args, key=key, num_samples=4).value


def test_seed_measure_passes_each_seeds_arguments_and_shared_keys(digits, three_seeds):
    """Oracle: each seed's hessian_trace alone, of Objective(model) with its own statistics."""
    model, variables = three_seeds
    x, y = jnp.asarray(digits.x_train[:300]), jnp.asarray(digits.y_train[:300])
    key = jax.random.key(5)
    got = flatmin.seed_measure(_trace, model, variables, x, y, key)
    assert got.shape == (3,)
    for seed in range(3):
        v = _seed(variables, seed)
        alone = _trace(Objective(model), v["params"], (v["batch_stats"], x, y), key)
        # One seed alone and three vmapped compile to different float32 reductions.
        np.testing.assert_allclose(got[seed], alone, rtol=1e-4)


@pytest.mark.parametrize("size", [0, True, 1.5])
def test_seed_sharpness_rejects_bad_group_size(digits, three_seeds, size):
    model, variables = three_seeds
    x, y = jnp.asarray(digits.x_train), jnp.asarray(digits.y_train)
    with pytest.raises(ValueError, match="seeds_per_solve"):
        flatmin.seed_sharpness(
            model, variables, x, y, None, 1e-3, key=jax.random.key(0), seeds_per_solve=size
        )


_BAD_INPUTS = {
    "eps 0": (lambda v, x, y: (v, x, y), {"eps": 0.0}, r"^eps must"),
    "eps < 0": (lambda v, x, y: (v, x, y), {"eps": -1e-3}, r"^eps must"),
    "one seed's variables, unstacked": (
        lambda v, x, y: (_seed(v, 0), x, y),
        {},
        r"^variables must be stacked over seeds",
    ),
    "no params": (lambda v, x, y: (v["params"], x, y), {}, r"^variables must be a dict"),
    "x and y of different lengths": (lambda v, x, y: (v, x, y[:-1]), {}, "same number"),
    "float labels": (lambda v, x, y: (v, x, y.astype(jnp.float32)), {}, r"^y must"),
    "labels out of range": (lambda v, x, y: (v, x, y.at[0].set(10)), {}, r"^y must hold class"),
    "NaN input": (lambda v, x, y: (v, x.at[0, 0, 0, 0].set(jnp.nan), y), {}, r"^x must"),
}


@pytest.mark.parametrize(
    ("measure", "case"),
    [(m, c) for m in ("sharpness", "gradients", "measure") for c in _BAD_INPUTS
     if m == "sharpness" or not c.startswith("eps")],
)  # fmt: skip
def test_stacked_seed_measures_refuse_bad_input_before_compiling(digits, three_seeds, case,
                                                                 measure, monkeypatch):  # fmt: skip
    """A ValueError naming the argument, and nothing compiled (jax.jit is never entered)."""
    model, variables = three_seeds
    make, kwargs, match = _BAD_INPUTS[case]
    v, x, y = make(variables, jnp.asarray(digits.x_train), jnp.asarray(digits.y_train))
    compiled = []
    monkeypatch.setattr(flatmin.training.seeds, "_in_groups", lambda *a: compiled.append(a))
    with pytest.raises(ValueError, match=match):
        if measure == "sharpness":
            flatmin.seed_sharpness(model, v, x, y, None, kwargs.get("eps", 1e-3),
                                   key=jax.random.key(0))  # fmt: skip
        elif measure == "gradients":
            flatmin.seed_gradients(model, v, x, y)
        else:
            flatmin.training.seeds.seed_measure(lambda f, p, a: f(p, *a), model, v, x, y)
    assert not compiled
