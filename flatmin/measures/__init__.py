"""Measures: pure functions of a loss `loss_fn(params) -> scalar` and a params pytree.

No flax, no data, no I/O: Metric 2.1 (`sharpness`) with its solvers and random subspaces,
worst- and average-case sharpness and the PAC-Bayes sigma, the Hessian (eigenvalues, trace,
spectral density), the 1-D landscape, and a per-layer filter for all of them.
"""

from flatmin.measures.adaptive import (
    AverageCaseSharpness,
    PacBayesSigma,
    WorstCaseSharpness,
    average_case_sharpness,
    pac_bayes_sigma,
    worst_case_sharpness,
)
from flatmin.measures.density import HessianDensity, hessian_density
from flatmin.measures.hessian import TraceEstimate, hessian_eigenvalues, hessian_trace, hvp
from flatmin.measures.landscape import interpolate, interpolate_curved
from flatmin.measures.layers import merge_params, restrict, split_params
from flatmin.measures.noise import NoiseFloor, noise_floor
from flatmin.measures.sharpness import SharpnessResult, box_radius, sharpness, solve_sharpness
from flatmin.measures.solvers import LBFGSB, BoxMaximum, ProjectedGradient, solver_to_json
from flatmin.measures.subspace import random_subspace

__all__ = [
    "LBFGSB",
    "AverageCaseSharpness",
    "BoxMaximum",
    "HessianDensity",
    "NoiseFloor",
    "PacBayesSigma",
    "ProjectedGradient",
    "SharpnessResult",
    "TraceEstimate",
    "WorstCaseSharpness",
    "average_case_sharpness",
    "box_radius",
    "hessian_density",
    "hessian_eigenvalues",
    "hessian_trace",
    "hvp",
    "interpolate",
    "interpolate_curved",
    "merge_params",
    "noise_floor",
    "pac_bayes_sigma",
    "random_subspace",
    "restrict",
    "sharpness",
    "solve_sharpness",
    "solver_to_json",
    "split_params",
    "worst_case_sharpness",
]
