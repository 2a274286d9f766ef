"""Measures of many trained seeds at once: variables stacked over seeds, solved vmapped.

Each seed's f is `Objective(model)` with its own batch-norm statistics as an argument: the
measure is `jax.vmap`ped over the stacked (params, batch_stats), the data passed once. The
seeds are sharded over a mesh (default: all devices) and solved in groups through one compiled
program. A diverged seed gives NaN and status DIVERGED, never an error.
"""

import dataclasses
import operator
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np

from flatmin._checks import check_floating_pytree, check_optional_int, check_scalar
from flatmin._vmap import vmap_leading
from flatmin.measures import LBFGSB, SharpnessResult, Solver, solve_sharpness
from flatmin.measures._solvers import check_solver
from flatmin.runtime.sharding import (
    check_mesh,
    gather,
    pad_seeds,
    padded_size,
    place,
    replicated,
    seed_sharding,
)
from flatmin.training.objective import Objective, check_examples


def seed_sharpness(
    model,
    variables: dict,
    x: jax.Array,
    y: jax.Array,
    A: jax.Array | None = None,
    eps: float = 1e-3,
    *,
    key: jax.Array | None = None,
    solver: Solver = LBFGSB(),
    bn: str = "running",
    chunk_size: int = 2048,
    seeds_per_solve: int | None = None,
    mesh: jax.sharding.Mesh | None = None,
) -> SharpnessResult:
    """Metric 2.1 of every seed: `flatmin.solve_sharpness` (same A, eps, solver, key and
    defaults) of `Objective(model, bn, chunk_size)` with args (the seed's batch_stats, x, y).

    seeds_per_solve: how many seeds one vmapped solve takes (rounded up to a multiple of the
      mesh size; None: all of them); the groups run one after another through the same
      compiled program, the last one padded. Memory grows with the seeds solved together (each
      vmapped loss evaluation holds every seed's activations): give a size for many seeds.

    Returns:
      A `SharpnessResult` of (S,) NumPy arrays ((S, maxiter) for history), y left out (None):
      it is as large as the variables.

    Raises:
      ValueError: before anything is compiled: eps not > 0; variables, x or y that
        `check_seeds` refuses; the arguments `solve_sharpness` checks.
    """
    seeds_per_solve = check_optional_int("seeds_per_solve", seeds_per_solve, minimum=1)
    check_scalar("eps", eps, above=0)
    check_solver(solver)
    objective = Objective(model, bn, chunk_size)
    check_seeds(model, variables, x, y, chunk_size)

    shared = (A, np.float32(eps), key if key is not None else jax.random.key(0))
    return _in_groups(objective, _Sharpness(solver), variables, x, y, shared, seeds_per_solve, mesh)


@dataclasses.dataclass(frozen=True)
class _Sharpness:
    """One seed's `solve_sharpness` without y; a value, so `_over_seeds` compiles once per
    solver."""

    solver: Solver

    def __call__(self, loss_fn, params, args, A, eps, key) -> SharpnessResult:
        found = solve_sharpness(loss_fn, params, A, eps, args=args, solver=self.solver, key=key)
        return found._replace(y=None)


def seed_gradients(
    model,
    variables: dict,
    x: jax.Array,
    y: jax.Array,
    *,
    bn: str = "running",
    chunk_size: int = 2048,
    mesh: jax.sharding.Mesh | None = None,
) -> dict[str, np.ndarray]:
    """Every seed's f and the infinity- and 2-norm of its gradient at the trained parameters,
    (S,) each: how stationary each solution is (scipy's pgtol tests a projected gradient)."""
    check_seeds(model, variables, x, y, chunk_size)
    objective = Objective(model, bn, chunk_size)
    return _in_groups(objective, _gradients, variables, x, y, (), None, mesh)


def _gradients(loss_fn, params, args) -> dict:
    loss, grad = jax.value_and_grad(loss_fn)(params, *args)
    flat = jnp.concatenate([jnp.ravel(g) for g in jax.tree.leaves(grad)])
    return {
        "loss": loss,
        "grad_inf_norm": jnp.max(jnp.abs(flat)),
        "grad_2_norm": jnp.linalg.norm(flat),
    }


def seed_measure(
    measure,
    model,
    variables: dict,
    x: jax.Array,
    y: jax.Array,
    *shared,
    bn: str = "running",
    chunk_size: int = 2048,
    seeds_per_solve: int | None = None,
    mesh: jax.sharding.Mesh | None = None,
):
    """`measure(loss_fn, params, args, *shared)` (a pytree of arrays) of every seed, vmapped
    over the stacked (params, batch_stats): any measure of flatmin.measures with loss_fn =
    `Objective(model, bn, chunk_size)` and args = (the seed's batch_stats, x, y), e.g.
    ``lambda f, p, a, k: flatmin.hessian_trace(f, p, args=a, key=k).value`` with shared =
    (key,). `shared` arrays are the same for every seed, traced. `measure` is static under jit:
    pass the same function object to reuse the compiled program. Leaves gain a seed axis."""
    seeds_per_solve = check_optional_int("seeds_per_solve", seeds_per_solve, minimum=1)
    check_seeds(model, variables, x, y, chunk_size)
    objective = Objective(model, bn, chunk_size)
    return _in_groups(objective, measure, variables, x, y, shared, seeds_per_solve, mesh)


def check_seeds(model, variables: dict, x: jax.Array, y: jax.Array, chunk_size: int) -> int:
    """Checks stacked variables against the model and the data before anything is compiled;
    returns S, the number of seeds.

    Raises:
      ValueError: naming the argument: variables that are not {"params", ...} stacked over a
        leading seed axis (every leaf the same S >= 1 first; one seed's slice must be what
        `model` takes); x and y as `check_examples` requires them.
    """
    if not isinstance(variables, dict) or "params" not in variables:
        raise ValueError(
            'variables must be a dict with "params" (and "batch_stats"), stacked over seeds, '
            f"e.g. train_seeds(...).variables; got {type(variables).__name__}"
        )
    check_floating_pytree("variables", variables["params"])
    leading = {np.shape(leaf)[0] if np.ndim(leaf) else None for leaf in jax.tree.leaves(variables)}
    if len(leading) != 1 or None in leading or 0 in leading:
        raise ValueError(
            "variables must be stacked over seeds: every leaf's first axis is the seed axis, of "
            f"one size S >= 1; got first-axis sizes {sorted(map(str, leading))} (unstacked "
            "variables of one model? add an axis: jax.tree.map(lambda a: a[None], variables))"
        )
    one = jax.tree.map(lambda leaf: jax.ShapeDtypeStruct(np.shape(leaf)[1:], leaf.dtype), variables)
    try:
        check_examples(model, x, y, chunk_size, variables=one)
    except ValueError:
        raise
    except Exception as error:  # the model could not apply one seed's variables
        raise ValueError(
            "variables must be stacked over seeds: one seed's slice (the first axis dropped) "
            f"does not fit the model: {type(error).__name__}: {error}"
        ) from error
    return leading.pop()


def _in_groups(objective, measure, variables, x, y, shared, group_size, mesh):
    """`measure` of every seed, over groups of seeds, sharded and gathered (NumPy arrays)."""
    mesh = check_mesh(mesh)
    num_seeds = jax.tree.leaves(variables)[0].shape[0]
    group = padded_size(min(group_size or num_seeds, num_seeds), mesh)
    data = place((x, y, *shared), replicated(mesh))
    parts = []
    for start in range(0, num_seeds, group):
        part = jax.tree.map(operator.itemgetter(slice(start, start + group)), variables)
        size = jax.tree.leaves(part)[0].shape[0]
        part = place(pad_seeds(part, group), seed_sharding(mesh))
        parts.append(gather(_over_seeds(objective, measure, part, *data), size))
    return jax.tree.map(lambda *columns: np.concatenate(columns), *parts)


@partial(jax.jit, static_argnames=("objective", "measure"))
def _over_seeds(objective, measure, variables, x, y, *shared):
    """measure(objective, params, (batch_stats, x, y), *shared), vmapped over the seeds."""

    def one(params, batch_stats):
        return measure(objective, params, (batch_stats, x, y), *shared)

    return vmap_leading(one, variables["params"], variables.get("batch_stats", {}))
