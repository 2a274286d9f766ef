"""Strict test settings: rank promotion raises, warnings are errors (pyproject), CPU only."""

import os

# Before jax is imported anywhere: the tests are written for the CPU and must not grab a GPU
# that a developer's machine happens to have.
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax
import pytest

jax.config.update("jax_numpy_rank_promotion", "raise")
# Dtype promotion stays "standard": optax's Adam computes `decay ** count` with an int32 count,
# which "strict" rejects inside optax itself.


@pytest.fixture(autouse=True, scope="module")
def _fresh_compilation_caches():
    """Each test module starts from empty JAX caches. The suite compiles hundreds of programs in
    one process; twice, late in a full run on a loaded machine, XLA's CPU compiler crashed
    (SIGSEGV) compiling a program that compiles cleanly when its module runs alone. Dropping
    the executables of finished modules keeps the process's compiler state and memory small."""
    yield
    jax.clear_caches()
