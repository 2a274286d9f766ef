"""flatmin: how sharp or flat are the minima that training finds? (Keskar et al., ICLR 2017)."""

from flatmin.checkpoint import CheckpointError as CheckpointError
from flatmin.checkpoint import Checkpoints as Checkpoints
from flatmin.checkpoint import RunDirectory as RunDirectory
from flatmin.checkpoint import json_ready as json_ready
from flatmin.data import Dataset as Dataset
from flatmin.data import DatasetNotFoundError as DatasetNotFoundError
from flatmin.data import load_dataset as load_dataset
from flatmin.experiment import CONFIGS as CONFIGS
from flatmin.experiment import ExperimentConfig as ExperimentConfig
from flatmin.experiment import run_sharpness_table as run_sharpness_table
from flatmin.experiment import seed_sharpness as seed_sharpness
from flatmin.hessian import TraceEstimate as TraceEstimate
from flatmin.hessian import hessian_eigenvalues as hessian_eigenvalues
from flatmin.hessian import hessian_trace as hessian_trace
from flatmin.hessian import hvp as hvp
from flatmin.landscape import interpolate as interpolate
from flatmin.landscape import interpolate_curved as interpolate_curved
from flatmin.models import MODELS as MODELS
from flatmin.models import build_model as build_model
from flatmin.models import init_variables as init_variables
from flatmin.objective import batch_norm_statistics as batch_norm_statistics
from flatmin.objective import evaluate as evaluate
from flatmin.objective import make_loss_fn as make_loss_fn
from flatmin.sharding import gather as gather
from flatmin.sharding import initialize_distributed as initialize_distributed
from flatmin.sharding import seed_mesh as seed_mesh
from flatmin.sharpness import SharpnessResult as SharpnessResult
from flatmin.sharpness import box_radius as box_radius
from flatmin.sharpness import sharpness as sharpness
from flatmin.sharpness import solve_sharpness as solve_sharpness
from flatmin.solvers import LBFGSB as LBFGSB
from flatmin.solvers import ProjectedGradient as ProjectedGradient
from flatmin.subspace import random_subspace as random_subspace
from flatmin.train import TrainConfig as TrainConfig
from flatmin.train import TrainResult as TrainResult
from flatmin.train import epoch_program as epoch_program
from flatmin.train import make_train_step as make_train_step
from flatmin.train import train_seeds as train_seeds

__version__ = "0.1.0"
