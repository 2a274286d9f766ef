"""flatmin: how sharp or flat are the minima that training finds? (Keskar et al., ICLR 2017)."""

from flatmin.sharpness import SharpnessResult as SharpnessResult
from flatmin.sharpness import box_radius as box_radius
from flatmin.sharpness import sharpness as sharpness
from flatmin.sharpness import solve_sharpness as solve_sharpness
from flatmin.subspace import random_subspace as random_subspace

__version__ = "0.1.0"
