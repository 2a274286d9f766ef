"""The paper: Keskar et al.'s configurations and protocols (SB vs LB), its key scheme, its
other experiments (batch size, warm start, spectrum, 1-D landscape), the metric ablation, the
measures-against-generalization study, and Tables 2-4 with the paper's figures beside ours.

`import flatmin.paper` (the top-level `flatmin` exports the measures and training only).
"""

from flatmin.paper.ablation import run_metric_ablation
from flatmin.paper.batch_size import run_batch_size_sweep
from flatmin.paper.configs import CONFIGS, DEFAULT_ROUTES, ROUTES, ExperimentConfig, Regime
from flatmin.paper.generalization import run_measures
from flatmin.paper.landscape import run_parametric_plot
from flatmin.paper.protocol import run_sharpness_table, train_regime
from flatmin.paper.spectrum import run_spectrum
from flatmin.paper.tables import format_tables
from flatmin.paper.warm_start import run_warm_start

__all__ = [
    "CONFIGS",
    "DEFAULT_ROUTES",
    "ROUTES",
    "ExperimentConfig",
    "Regime",
    "format_tables",
    "run_batch_size_sweep",
    "run_measures",
    "run_metric_ablation",
    "run_parametric_plot",
    "run_sharpness_table",
    "run_spectrum",
    "run_warm_start",
    "train_regime",
]
