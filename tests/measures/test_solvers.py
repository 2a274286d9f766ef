"""Tests of the solver objects (flatmin.LBFGSB, flatmin.LBFGSB.paper(), flatmin.ProjectedGradient,
flatmin.APGD) through flatmin.sharpness: the paper's route against scipy's fmin_l_bfgs_b, exact
evaluation counts, stopping per lane under vmap, compiled programs reused, configuration
checked, an overflow inside the box read as an infinite maximum.
"""

import dataclasses
import math

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.flatten_util import ravel_pytree

import flatmin
from flatmin import solver_to_json
from flatmin.measures import _lbfgsb as lbfgsb
from flatmin.measures._lbfgsb import _subspace_step

from ..support.oracles import halfwidths, phi, scipy_lbfgsb_route
from ..support.trained import digits_arrays, train


@pytest.fixture(scope="module")
def trained_mlps():
    """Two MLPs trained on all of digits by plain-JAX Adam: (name, loss_fn, params)."""
    X, y = digits_arrays()
    nets = []
    for name, sizes, act, steps in (
        ("tanh 64-32-10", [64, 32, 10], jnp.tanh, 300),
        ("relu 64-64-10", [64, 64, 10], jax.nn.relu, 200),
    ):
        loss, params = train(sizes, act, steps, 1e-2, X, y)
        nets.append((name, loss, params))
    return nets


@pytest.mark.parametrize("eps", [1e-3, 5e-4])
@pytest.mark.parametrize("subspace", [False, True], ids=["full", "p=10"])
def test_paper_route_agrees_with_scipy(trained_mlps, eps, subspace):
    """Oracle: scipy's fmin_l_bfgs_b from y = 0, maxiter 10, its default pgtol, factr and line
    search (the authors' route). LBFGSB.paper() with init="zero" must give its value within
    10% (or both below 1e-3) and run as many iterations."""
    for name, loss, params in trained_mlps:
        n = ravel_pytree(params)[0].size
        A = (
            jnp.asarray(np.random.default_rng(13).normal(size=(n, 10)), jnp.float32)
            if subspace
            else None
        )
        reference, info = scipy_lbfgsb_route(loss, params, eps, A, maxiter=10)
        result = flatmin.solve_sharpness(loss, params, A, eps, solver=flatmin.LBFGSB.paper())
        value = float(result.value)
        assert reference > 0.0, name  # scipy moved: this case tests the iterations
        assert abs(value - reference) <= 0.1 * reference, (name, value, reference)
        assert int(result.num_steps) == info["nit"], (name, int(result.num_steps), info)
        if info["nit"] == 10:
            assert int(result.status) == flatmin.Status.FINISHED, name


def _offset_quadratic(gradient_scale: float):
    """f(w) = 1/4 + 1/2 sum h (w - c)^2 on a 45-parameter pytree, c = x + delta with
    |h delta| = gradient_scale at x. Returns (loss, params, closed-form phi at eps 1e-3)."""
    rng = np.random.default_rng(21)
    shapes = {"a": (5, 4), "b": (25,)}
    params = {k: jnp.asarray(rng.normal(size=s), jnp.float32) for k, s in shapes.items()}
    h = {k: jnp.asarray(10.0 ** rng.uniform(1, 3, size=s), jnp.float32) for k, s in shapes.items()}
    sign = {k: jnp.asarray(rng.choice([-1.0, 1.0], size=s), jnp.float32) for k, s in shapes.items()}
    center = jax.tree.map(lambda x, hh, sg: x + sg * gradient_scale / hh, params, h, sign)

    def loss(w):
        terms = jax.tree.map(lambda wi, ci, hi: jnp.sum(hi * (wi - ci) ** 2), w, center, h)
        return 0.25 + 0.5 * sum(jax.tree.leaves(terms))

    x = np.asarray(ravel_pytree(params)[0], np.float64)
    d = np.asarray(ravel_pytree(center)[0], np.float64) - x
    hv = np.asarray(ravel_pytree(h)[0], np.float64)
    r = halfwidths(x, 1e-3)
    f0 = 0.25 + 0.5 * np.sum(hv * d**2)
    return loss, params, phi(0.25 + 0.5 * np.sum(hv * (r + np.abs(d)) ** 2), f0)


def test_paper_route_stops_where_scipy_stops():
    """Oracle: scipy again. At a point whose projected gradient is below pgtol = 1e-5, scipy
    stops before its first step (nit 0, phi 0); so does LBFGSB.paper(), while flatmin's
    maximiser, which has no stopping rule, reaches the closed-form maximum from its default
    random start (from y = 0 it could not: in float32 the centre rounds onto x for most
    coordinates, whose gradient is then exactly 0)."""
    loss, params, phi_true = _offset_quadratic(gradient_scale=3e-6)
    reference, info = scipy_lbfgsb_route(loss, params, 1e-3)
    assert info["nit"] == 0 and reference == 0.0
    paper = flatmin.solve_sharpness(loss, params, solver=flatmin.LBFGSB.paper())
    assert int(paper.num_steps) == 0 and float(paper.value) == 0.0
    assert int(paper.status) == flatmin.Status.GRADIENT_TOLERANCE
    assert float(paper.projected_grad_start) < 1e-5
    assert int(paper.num_evaluations) == info["funcalls"] == 1
    maximiser = flatmin.solve_sharpness(loss, params)
    assert float(maximiser.value) >= 0.99 * phi_true
    assert int(maximiser.num_steps) == 10 and int(maximiser.status) == flatmin.Status.FINISHED


def test_lanes_stop_on_their_own_under_vmap():
    """Oracle: a Python loop. Two parameter sets of one f, one stationary (the paper's route
    stops at once) and one not (it runs): vmapped, each lane gives what it gives alone."""
    loss, params, _ = _offset_quadratic(gradient_scale=3e-6)
    moved = jax.tree.map(lambda x: x + 3e-3, params)  # far from stationary
    stacked = jax.tree.map(lambda a, b: jnp.stack([a, b]), params, moved)
    solver = flatmin.LBFGSB.paper()

    def solve(p):
        return flatmin.solve_sharpness(loss, p, solver=solver)._replace(y=None)

    batched = jax.vmap(solve)(stacked)
    alone = [solve(p) for p in (params, moved)]
    assert [int(s) for s in batched.num_steps] == [int(a.num_steps) for a in alone]
    assert [int(s) for s in batched.status] == [int(a.status) for a in alone]
    assert int(alone[0].num_steps) == 0 and int(alone[1].num_steps) > 0
    np.testing.assert_allclose(
        np.asarray(batched.value), [float(a.value) for a in alone], rtol=1e-5
    )


def _counted(loss):
    """loss with a host callback that counts its forward evaluations."""
    calls = []

    def counted(w):
        jax.debug.callback(lambda: calls.append(1))
        return loss(w)

    return counted, calls


@pytest.mark.parametrize(
    ("solver", "per_solve"),
    [
        (flatmin.LBFGSB(maxiter=7), 7 + 1),
        (flatmin.ProjectedGradient(maxiter=7), 7 + 2),
        (flatmin.APGD(maxiter=7), 7 + 1),
    ],
    ids=["lbfgsb", "projected_gradient", "apgd"],
)
def test_evaluations_are_counted_exactly(solver, per_solve):
    """Oracle: a host callback inside f. flatmin's L-BFGS-B and APGD evaluate f (with its
    gradient) once at the start and once per iteration: maxiter + 1, the floor; projected
    gradient once more. sharpness adds one evaluation of f(x). The result reports the same
    count."""
    loss, params, _ = _offset_quadratic(gradient_scale=1.0)
    counted, calls = _counted(loss)
    result = flatmin.solve_sharpness(counted, params, solver=solver)
    jax.block_until_ready(result)
    jax.effects_barrier()
    assert int(result.num_evaluations) == per_solve
    assert len(calls) == per_solve + 1


def test_paper_route_reports_scipys_evaluations(trained_mlps):
    """Oracle: a host callback, and scipy's own count. The paper's route evaluates f as often
    as scipy does on the same problem, and says so."""
    _, loss, params = trained_mlps[0]
    counted, calls = _counted(loss)
    _, info = scipy_lbfgsb_route(loss, params, 1e-3)
    result = flatmin.solve_sharpness(counted, params, solver=flatmin.LBFGSB.paper())
    jax.block_until_ready(result)
    jax.effects_barrier()
    assert int(result.num_evaluations) == info["funcalls"]
    assert len(calls) == info["funcalls"] + 1


def test_compiled_program_is_reused_for_the_same_loss_fn():
    """Oracle: chex.assert_max_traces. A second call with the same loss_fn object and
    parameters of the same shapes runs the compiled program: loss_fn is not traced again."""
    loss, params, _ = _offset_quadratic(gradient_scale=1.0)
    probe, _ = _counted(loss)
    traces = []

    def tracing(w):
        traces.append(1)
        return probe(w)

    flatmin.sharpness(tracing, params)  # how many times one compilation traces f
    once = len(traces)
    limited = chex.assert_max_traces(loss, n=once)
    flatmin.sharpness(limited, params)
    flatmin.sharpness(limited, jax.tree.map(lambda x: x + 1.0, params))  # no AssertionError


def test_branch_without_pairs_is_taken_per_batch(monkeypatch):
    """Oracle: a Python loop over lanes. step_point takes the exact GCP-and-subspace branch
    when a lane holds curvature pairs and the closed form when none does; vmapped (and
    vmapped twice) over lanes with and without pairs, every lane matches its own result, and
    the exact branch runs only in the lanes that hold pairs (a spy counts its runs)."""
    runs = []
    exact = _subspace_step.step_off_the_faces

    def spy(x, g, lower, upper, memory, M):
        jax.debug.callback(lambda count: runs.append(int(count)), memory.count)
        return exact(x, g, lower, upper, memory, M)

    monkeypatch.setattr(_subspace_step, "step_off_the_faces", spy)
    rng = np.random.default_rng(3)
    n, lanes = 40, 4
    x = jnp.asarray(rng.uniform(-0.5, 0.5, (lanes, n)), jnp.float32)
    g = jnp.asarray(rng.normal(size=(lanes, n)), jnp.float32)
    lower, upper = -jnp.ones(n), jnp.ones(n)

    def memory_with(pairs: int):
        mem = lbfgsb.empty_memory(5, n, jnp.float32)
        for _ in range(pairs):
            s = jnp.asarray(rng.normal(size=n) * 0.1, jnp.float32)
            y = 2.0 * s
            mem = lbfgsb.push_pair(mem, s, y, s @ y, y @ y)
        return mem

    memories = [memory_with(k) for k in (0, 2, 0, 3)]
    stacked = jax.tree.map(lambda *leaves: jnp.stack(leaves), *memories)
    alone = [lbfgsb.step_point(x[i], g[i], lower, upper, memories[i]) for i in range(lanes)]
    batched = jax.vmap(lbfgsb.step_point, in_axes=(0, 0, None, None, 0))(
        x, g, lower, upper, stacked
    )
    np.testing.assert_allclose(np.asarray(batched), np.asarray(alone), rtol=1e-5, atol=1e-6)
    jax.effects_barrier()
    assert sorted(runs) == [2, 2, 3, 3]  # alone, then vmapped: the two lanes with pairs
    none = jax.tree.map(lambda *leaves: jnp.stack(leaves), *[memories[0]] * lanes)
    twice = jax.vmap(
        jax.vmap(lbfgsb.step_point, in_axes=(0, 0, None, None, 0)), in_axes=(0, 0, None, None, 0)
    )(
        jnp.stack([x, x]),
        jnp.stack([g, g]),
        lower,
        upper,
        jax.tree.map(lambda a, b: jnp.stack([a, b]), stacked, none),
    )
    expected_none = [lbfgsb.step_point(x[i], g[i], lower, upper, memories[0]) for i in range(lanes)]
    np.testing.assert_allclose(np.asarray(twice[0]), np.asarray(alone), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(
        np.asarray(twice[1]), np.asarray(expected_none), rtol=1e-5, atol=1e-6
    )


def test_paper_preset_and_json():
    """Oracle: scipy's documented fmin_l_bfgs_b defaults (m 10, pgtol 1e-5, factr 1e7,
    maxls 20) and the paper's 10 iterations; solvers are hashable values."""
    paper = flatmin.LBFGSB.paper()
    assert (paper.maxiter, paper.memory, paper.pgtol, paper.factr, paper.maxls) == (
        10, 10, 1e-5, 1e7, 20,
    )  # fmt: skip
    assert paper.rescale is False
    assert flatmin.LBFGSB() == flatmin.LBFGSB() and hash(flatmin.LBFGSB()) == hash(flatmin.LBFGSB())
    assert flatmin.LBFGSB() != paper
    assert paper.init == "zero" and paper.restarts == 1
    assert flatmin.LBFGSB.paper(restarts=3).restarts == 3
    assert solver_to_json(paper) == {
        "type": "LBFGSB", "init": "zero", "restarts": 1, "maxiter": 10, "memory": 10,
        "pgtol": 1e-5, "factr": 1e7, "maxls": 20, "rescale": False,
    }  # fmt: skip
    assert solver_to_json(flatmin.ProjectedGradient()) == {
        "type": "ProjectedGradient", "init": "random", "restarts": 1, "maxiter": 10,
    }  # fmt: skip
    assert solver_to_json(flatmin.APGD(restarts=2)) == {
        "type": "APGD", "init": "random", "restarts": 2, "maxiter": 20,
    }  # fmt: skip


BAD_SOLVERS = [
    (flatmin.LBFGSB, {"maxiter": 0}, "maxiter"),
    (flatmin.LBFGSB, {"maxiter": True}, "maxiter"),
    (flatmin.LBFGSB, {"maxiter": 2.0}, "maxiter"),
    (flatmin.LBFGSB, {"memory": 0}, "memory"),
    (flatmin.LBFGSB, {"maxls": -1}, "maxls"),
    (flatmin.LBFGSB, {"maxls": True}, "maxls"),
    (flatmin.LBFGSB, {"pgtol": -1e-5}, "pgtol"),
    (flatmin.LBFGSB, {"pgtol": math.nan}, "pgtol"),
    (flatmin.LBFGSB, {"pgtol": math.inf}, "pgtol"),
    (flatmin.LBFGSB, {"factr": -1.0}, "factr"),
    (flatmin.LBFGSB, {"factr": True}, "factr"),
    (flatmin.LBFGSB, {"rescale": 1}, "rescale"),
    (flatmin.ProjectedGradient, {"maxiter": 0}, "maxiter"),
    (flatmin.ProjectedGradient, {"maxiter": False}, "maxiter"),
    (flatmin.APGD, {"maxiter": 0}, "maxiter"),
    *[
        (cls, fields, name)
        for cls in (flatmin.LBFGSB, flatmin.ProjectedGradient, flatmin.APGD)
        for fields, name in (
            ({"init": "zeros"}, "init"),
            ({"init": None}, "init"),
            ({"restarts": 0}, "restarts"),
            ({"restarts": True}, "restarts"),
            ({"restarts": 1.0}, "restarts"),
        )
    ],
]


@pytest.mark.parametrize(("cls", "fields", "name"), BAD_SOLVERS)
def test_bad_solver_configuration_raises(cls, fields, name):
    """Oracle: the fields' documented ranges; the message names the field."""
    with pytest.raises(ValueError, match=rf"\b{name}\b"):
        cls(**fields)
    with pytest.raises(ValueError, match=rf"\b{name}\b"):
        dataclasses.replace(cls(), **fields)


def _equations(jaxpr) -> int:
    """Equations of a jaxpr and of every jaxpr nested in its equations' parameters."""
    total = 0
    for eqn in jaxpr.eqns:
        total += 1
        for value in eqn.params.values():
            for sub in value if isinstance(value, tuple | list) else (value,):
                inner = getattr(sub, "jaxpr", sub)
                if hasattr(inner, "eqns"):
                    total += _equations(inner)
    return total


@pytest.mark.parametrize(
    "make",
    [
        lambda m: flatmin.LBFGSB(maxiter=m),
        lambda m: flatmin.ProjectedGradient(maxiter=m),
        lambda m: flatmin.APGD(maxiter=m),
    ],
    ids=["lbfgsb", "projected_gradient", "apgd"],
)
@pytest.mark.parametrize("space", ["full", "subspace"])
def test_program_size_does_not_grow_with_maxiter(make, space):
    """The solver's loops are loops, not unrolled: the traced program for maxiter 100 has as
    many equations as for maxiter 3 (so compile time is flat in maxiter; benchmarks/compile.py
    times it)."""
    params = {"w": jnp.ones((4, 3)), "b": jnp.zeros(3)}
    loss = lambda p: jnp.sum(jnp.tanh(p["w"]) ** 2) + jnp.sum(p["b"] ** 2)
    A = None if space == "full" else jax.random.normal(jax.random.key(0), (15, 5))

    def size(maxiter: int) -> int:
        solve = lambda p: flatmin.sharpness(loss, p, A, 1e-3, solver=make(maxiter))
        return _equations(jax.make_jaxpr(solve)(params).jaxpr)

    assert size(3) == size(100) > 50


SOLVERS = {
    "lbfgsb": flatmin.LBFGSB(restarts=4),
    "lbfgsb_paper": flatmin.LBFGSB.paper(restarts=4),
    "projected_gradient": flatmin.ProjectedGradient(restarts=4),
    "apgd": flatmin.APGD(maxiter=10, restarts=4),
}
_C = jnp.array([1.0, -0.5, 0.25, 0.5, -1.0])


def _convex(d):
    """c.d + |d|^2: convex, so its maximum over a box sits at the vertex sign(c) r."""
    return jnp.sum(_C * d) + jnp.sum(d**2)


@pytest.mark.parametrize("init", ["zero", "random"])
@pytest.mark.parametrize("name", list(SOLVERS))
def test_an_overflow_inside_the_box_makes_the_maximum_infinite(name, init):
    """f is NaN (an overflow) where y_0 > r / 2, and rises towards +y_0, where every ascent
    heads: the maximum over the box is not a finite number, so the metric is inf, the status
    says why, and y is the point where the loss was not finite (inside the box)."""
    solver = dataclasses.replace(SOLVERS[name], init=init)

    def loss(p):
        return jnp.where(p["w"][0] > 0.25, jnp.nan, _convex(p["w"]))

    result = flatmin.solve_sharpness(
        loss, {"w": jnp.zeros(5)}, eps=0.5, solver=solver, key=jax.random.key(3)
    )
    y = result.y["w"]
    assert float(result.value) == math.inf, (name, float(result.value))
    assert int(result.status) == flatmin.Status.NONFINITE_NEARBY
    assert bool(jnp.all(jnp.abs(y) <= 0.5 + 1e-6)) and float(y[0]) > 0.25
    assert not math.isfinite(float(loss({"w": y})))
    assert float(result.loss) == 0.0


@pytest.mark.parametrize("name", list(SOLVERS))
def test_an_overflow_outside_the_box_is_never_read(name):
    """The same f with its NaN region moved just outside the box (y_0 > 0.6, r = 0.5): no
    solver reads f outside the box, so the maximum is finite, at most the closed-form vertex
    maximum sum(|c| r + r^2), equals f recomputed at y, and the maximisers reach it."""
    solver = SOLVERS[name]

    def loss(p):
        return jnp.where(p["w"][0] > 0.6, jnp.nan, _convex(p["w"]))

    result = flatmin.solve_sharpness(
        loss, {"w": jnp.zeros(5)}, eps=0.5, solver=solver, key=jax.random.key(3)
    )
    closed_form = 100 * float(jnp.sum(jnp.abs(_C) * 0.5 + 0.25))
    y = result.y["w"]
    assert int(result.status) != flatmin.Status.NONFINITE_NEARBY
    assert float(result.value) <= closed_form * (1 + 1e-6)
    np.testing.assert_allclose(float(result.max_loss), float(loss({"w": y})), rtol=1e-6)
    if name != "lbfgsb_paper":  # scipy's rules may stop the paper's route short of the vertex
        np.testing.assert_allclose(float(result.value), closed_form, rtol=1e-5)


def test_history_is_the_best_metric_after_each_iteration():
    """Oracle: the solver's own best value. The history has one entry per iteration, never
    decreases, starts at or above 0 (y = 0 is in the box) and ends at the metric."""
    loss, params, _ = _offset_quadratic(gradient_scale=1.0)
    for solver in (flatmin.LBFGSB(maxiter=6, restarts=2), flatmin.APGD(maxiter=6)):
        result = flatmin.solve_sharpness(loss, params, solver=solver)
        history = np.asarray(result.history)
        assert history.shape == (6,) and np.all(history >= 0) and np.all(np.diff(history) >= 0)
        np.testing.assert_allclose(history[-1], float(result.value), rtol=1e-4)


def test_lbfgsb_refuses_a_ball():
    """L-BFGS-B is a box solver: handed an l2 ball it says so, naming the alternatives."""
    with pytest.raises(ValueError, match=r"box.*APGD"):
        flatmin.LBFGSB().maximize(lambda y: jnp.sum(y), jnp.zeros(3), flatmin.Ball(1.0, 3))
