"""Networks and training: data sets, the paper's flax networks, the evaluation-mode objective,
many seeds trained at once, and measures over stacked seeds."""

from flatmin.training.data import DATASETS, Dataset, DatasetNotFoundError, load_dataset
from flatmin.training.models import MODELS, build_model, init_variables
from flatmin.training.objective import Objective, batch_norm_statistics, evaluate
from flatmin.training.seeds import seed_gradients, seed_measure, seed_sharpness
from flatmin.training.train import EpochMetrics, Schedule, TrainResult, train_seeds

__all__ = [
    "DATASETS",
    "MODELS",
    "Dataset",
    "DatasetNotFoundError",
    "EpochMetrics",
    "Objective",
    "Schedule",
    "TrainResult",
    "batch_norm_statistics",
    "build_model",
    "evaluate",
    "init_variables",
    "load_dataset",
    "seed_gradients",
    "seed_measure",
    "seed_sharpness",
    "train_seeds",
]
