"""Data as arguments: every measure takes loss_fn(params, *args) with args traced, gives what
the same loss closed over its data gives, and compiles once for every data set and every
seed's statistics of the same shapes; the compiled program does not grow with the data.
"""

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import flatmin

from ..support.trained import digits_arrays

EXAMPLES = 200  # per data set: two disjoint slices of digits of this size


@dataclasses.dataclass(frozen=True)
class CountingObjective:
    """flatmin.Objective that counts how often it is traced (called on tracers): a value, so
    equal instances are the same static argument, as two Objective(model) are."""

    objective: flatmin.Objective
    traces: list = dataclasses.field(default_factory=list, compare=False, hash=False)

    def __call__(self, params, *args):
        if isinstance(jax.tree.leaves(params)[0], jax.core.Tracer):
            self.traces.append(1)
        return self.objective(params, *args)


@pytest.fixture(scope="module")
def problem():
    """A 64-16-10 MLP with batch norm at its initialisation, and two data sets (batch_stats,
    x, y) of the same shapes (the second with batch statistics of its own)."""
    x, y = digits_arrays()
    x = x.reshape(-1, 8, 8, 1)
    model = flatmin.build_model("mlp", 10, hidden=(16,))
    variables = flatmin.init_variables(model, jax.random.key(0), (8, 8, 1))
    stats = variables["batch_stats"]
    other_stats = jax.tree.map(lambda s: s * 1.5 + 0.1, stats)
    first = (stats, x[:EXAMPLES], y[:EXAMPLES])
    second = (other_stats, x[EXAMPLES : 2 * EXAMPLES], y[EXAMPLES : 2 * EXAMPLES])
    return model, variables["params"], first, second


def _measures():
    """name -> measure(loss_fn, params, args) -> scalar, each through its public function."""
    key = jax.random.key(1)
    return {
        "sharpness": lambda f, p, a: flatmin.sharpness(f, p, args=a, key=key),
        "sharpness_paper": lambda f, p, a: flatmin.sharpness(
            f, p, args=a, solver=flatmin.LBFGSB.paper()
        ),
        "worst_case_apgd": lambda f, p, a: (
            flatmin.worst_case_sharpness(f, p, 1e-3, args=a, key=key).value
        ),
        "worst_case_l2": lambda f, p, a: (
            flatmin.worst_case_sharpness(
                f, p, 1e-2, args=a, norm=2, solver=flatmin.ProjectedGradient(), key=key
            ).value
        ),
        "average_case": lambda f, p, a: (
            flatmin.average_case_sharpness(f, p, 1e-2, args=a, num_samples=4, key=key).value
        ),
        "pac_bayes": lambda f, p, a: (
            flatmin.pac_bayes_sigma(f, p, 1e-2, args=a, steps=4, num_samples=4, key=key).value
        ),
        "eigenvalue": lambda f, p, a: flatmin.hessian_eigenvalues(
            f, p, 1, args=a, num_iterations=6, key=key
        ).value[0],
        "trace": lambda f, p, a: flatmin.hessian_trace(f, p, args=a, num_samples=3, key=key).value,
        "density": lambda f, p, a: flatmin.hessian_density(
            f, p, jnp.linspace(-1.0, 1.0, 5), args=a, num_probes=2, num_iterations=4, key=key
        ).value[2],
        "interpolate": lambda f, p, a: flatmin.interpolate(
            f, p, jax.tree.map(lambda w: w * 0.9, p), jnp.array([0.0, 0.5]), args=a
        ).value[1],
        "noise_floor": lambda f, p, a: (
            flatmin.noise_floor(f, p, args=a, num_samples=2, key=key).std
        ),
    }


MEASURES = _measures()


@pytest.mark.parametrize("name", list(MEASURES))
def test_arguments_give_what_the_closure_gives(problem, name):
    """Oracle: the same f closed over its data (the form every measure took before). Traced
    arguments and compiled-in constants may fuse differently, hence a float32 tolerance."""
    model, params, first, _ = problem
    objective = flatmin.Objective(model)
    measure = MEASURES[name]
    with_args = float(measure(objective, params, first))
    closed = float(measure(lambda p: objective(p, *first), params, ()))
    assert math.isfinite(with_args), name
    np.testing.assert_allclose(with_args, closed, rtol=2e-4, atol=1e-6, err_msg=name)


@pytest.mark.parametrize("name", list(MEASURES))
def test_a_second_data_set_reuses_the_compiled_program(problem, name):
    """Oracle: a trace counter inside f. After the first call, a second data set and another
    seed's batch statistics of the same shapes, and another point, trace f no more: the
    compiled program is reused (a closure over the data would be traced and compiled anew)."""
    model, params, first, second = problem
    objective = CountingObjective(flatmin.Objective(model))
    measure = MEASURES[name]
    jax.block_until_ready(measure(objective, params, first))
    traced = len(objective.traces)
    assert traced > 0, name  # the counter counts: f was traced at least once
    again = CountingObjective(flatmin.Objective(model), objective.traces)  # equal, not the same
    moved = jax.tree.map(lambda w: w + 0.01, params)
    jax.block_until_ready(measure(again, moved, second))
    assert len(objective.traces) == traced, (name, traced, len(objective.traces))


def test_a_closure_is_compiled_anew_for_each_data_set(problem):
    """The contrast that gives the test above its power: a closure over each data set is a
    new static argument, and its data a new constant: f is traced again."""
    model, params, first, second = problem
    objective = CountingObjective(flatmin.Objective(model))
    flatmin.sharpness(lambda p: objective(p, *first), params)
    traced = len(objective.traces)
    flatmin.sharpness(lambda p: objective(p, *second), params)
    assert len(objective.traces) > traced


def _program_size(objective, params, stats, x, y) -> int:
    """Characters of the lowered (StableHLO) default solve, data as arguments."""
    solve = lambda p, s, xs, ys: flatmin.sharpness(objective, p, args=(s, xs, ys))
    return len(jax.jit(solve).lower(params, stats, x, y).as_text())


def test_the_program_does_not_grow_with_the_data():
    """Oracle: the lowered program's text at 1,000 and at 60,000 MNIST-shaped examples: the
    same size but for the shapes written in it (the chunk counts and sizes: within 1%, where
    data inside the program would make it 60 times larger). The closed-over data at 1,000
    examples, for contrast, makes the program many times larger."""
    model = flatmin.build_model("mlp", 10, hidden=(32,))
    variables = flatmin.init_variables(model, jax.random.key(0), (28, 28, 1))
    params, stats = variables["params"], variables["batch_stats"]
    objective = flatmin.Objective(model)

    def shapes(n):
        return (
            jax.ShapeDtypeStruct((n, 28, 28, 1), jnp.float32),
            jax.ShapeDtypeStruct((n,), jnp.int32),
        )

    small = _program_size(objective, params, stats, *shapes(1_000))
    large = _program_size(objective, params, stats, *shapes(60_000))
    assert abs(large - small) <= 0.01 * small, (small, large)
    x = jnp.asarray(np.random.default_rng(0).random((1_000, 28, 28, 1)), jnp.float32)
    y = jnp.zeros(1_000, jnp.int32)
    closed = len(
        jax.jit(lambda p: flatmin.sharpness(lambda q: objective(q, stats, x, y), p))
        .lower(params)
        .as_text()
    )
    assert closed > 10 * small, (closed, small)


def test_seed_measures_pass_data_as_arguments(problem):
    """Oracle: the jitted seed program's cache. flatmin.seed_sharpness over stacked seeds
    compiles once; a second data set of the same shapes adds no executable."""
    model, params, first, second = problem
    variables = {"params": params, "batch_stats": first[0]}
    stacked = jax.tree.map(lambda a: jnp.stack([a, a * 1.01]), variables)
    program = flatmin.training.seeds._over_seeds
    flatmin.seed_sharpness(model, stacked, first[1], first[2])
    compiled = program._cache_size()
    flatmin.seed_sharpness(model, stacked, second[1], second[2])
    assert program._cache_size() == compiled
