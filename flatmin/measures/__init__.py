"""Measures: pure functions of a loss `loss_fn(params, *args) -> scalar` and a params pytree.

No flax, no data sets, no I/O. Data, batch statistics and the like come in as `args=`, traced
arguments of the compiled programs (never closed-over constants), so another data set of the
same shapes reuses them. Metric 2.1 (`sharpness`) with its solvers and subspaces, worst- and
average-case sharpness and the PAC-Bayes sigma, the Hessian (eigenvalues, trace, spectral
density), the 1-D landscape, a per-layer filter and the noise floor of any of them. Every
measure returns a NamedTuple whose `.value` is its figure and whose `.status` says how it ended
(`Status`); `sharpness` returns the bare number.

The implementation modules are private; this package is their public face.
"""

from flatmin._types import LossFn, PyTree, Status, describe
from flatmin.measures._adaptive import (
    AverageCaseSharpness,
    PacBayesSigma,
    WorstCaseSharpness,
    average_case_sharpness,
    pac_bayes_sigma,
    worst_case_sharpness,
)
from flatmin.measures._density import HessianDensity, hessian_density
from flatmin.measures._hessian import (
    HessianEigenvalues,
    TraceEstimate,
    hessian_eigenvalues,
    hessian_trace,
    hvp,
)
from flatmin.measures._landscape import Landscape, interpolate, interpolate_curved
from flatmin.measures._layers import Restricted, merge_params, restrict, split_params
from flatmin.measures._noise import NoiseFloor, noise_floor
from flatmin.measures._problem import Maximum
from flatmin.measures._regions import Ball, Box
from flatmin.measures._sharpness import SharpnessResult, box_radius, sharpness, solve_sharpness
from flatmin.measures._solvers import (
    APGD,
    LBFGSB,
    ProjectedGradient,
    Solver,
    solver_to_json,
)
from flatmin.measures._subspace import random_subspace

__all__ = [
    "APGD",
    "LBFGSB",
    "AverageCaseSharpness",
    "Ball",
    "Box",
    "HessianDensity",
    "HessianEigenvalues",
    "Landscape",
    "LossFn",
    "Maximum",
    "NoiseFloor",
    "PacBayesSigma",
    "ProjectedGradient",
    "PyTree",
    "Restricted",
    "SharpnessResult",
    "Solver",
    "Status",
    "TraceEstimate",
    "WorstCaseSharpness",
    "average_case_sharpness",
    "box_radius",
    "describe",
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
