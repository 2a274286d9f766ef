"""Strict test settings: rank promotion raises, warnings are errors (pyproject), CPU only."""

import os

# Before jax is imported anywhere: the tests are written for the CPU and must not grab a GPU
# that a developer's machine happens to have.
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax

jax.config.update("jax_numpy_rank_promotion", "raise")
# Dtype promotion stays "standard": optax's Adam computes `decay ** count` with an int32 count,
# which "strict" rejects inside optax itself.
