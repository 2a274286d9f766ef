"""The experiments' key scheme: every random choice derived from one master key.

    training keys  split(fold_in(key, 0), S)        seed k of every experiment and regime
    subspace A     split(fold_in(key, 1))[0]        one A shared by every seed and regime
    solver starts  split(fold_in(key, 1))[1]        the random starts of Metric 2.1's solves
    warm start LB  split(fold_in(key, 2), (K+1) S)  the large-batch continuations
    Hessian        fold_in(key, 3)                  Lanczos and Hutchinson probes
    other measures fold_in(key, 4)                  worst/average case, PAC-Bayes, density
    noise floors   fold_in(key, 5)                  perturbations and solver starts

Seed k gets the same key whatever the seed count, so runs of 3 and 5 seeds share seeds 0-2,
and the SB and LB runs of seed k start from the same initialisation.
"""

import jax


def seed_keys(key: jax.Array, seeds: int) -> jax.Array:
    """(seeds,) training keys: seed k of every experiment and regime starts alike."""
    return jax.random.split(jax.random.fold_in(key, 0), seeds)


def subspace_key(key: jax.Array) -> jax.Array:
    """The key of the random subspace A."""
    return jax.random.split(jax.random.fold_in(key, 1))[0]


def solve_key(key: jax.Array) -> jax.Array:
    """The key of the sharpness solvers' random starts."""
    return jax.random.split(jax.random.fold_in(key, 1))[1]


def warm_start_keys(key: jax.Array, runs: int) -> jax.Array:
    """(runs,) keys of the warm-started large-batch runs."""
    return jax.random.split(jax.random.fold_in(key, 2), runs)


def hessian_key(key: jax.Array) -> jax.Array:
    """The key of the Hessian's probe vectors."""
    return jax.random.fold_in(key, 3)


def measures_key(key: jax.Array) -> jax.Array:
    """The key of the other measures' random perturbations and starts."""
    return jax.random.fold_in(key, 4)


def noise_key(key: jax.Array) -> jax.Array:
    """The key of the noise floors' perturbations and redrawn solver starts."""
    return jax.random.fold_in(key, 5)
