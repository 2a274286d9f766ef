"""The paper: Keskar et al.'s configurations and protocols (SB vs LB), its key scheme, its
other experiments (batch size, warm start, spectrum, 1-D landscape), and Tables 2-4 with the
paper's figures beside ours."""

from flatmin.paper.configs import (
    CONFIGS,
    MAXIMISER_ROUTE,
    PAPER_ROUTE,
    ROUTES,
    ExperimentConfig,
    Regime,
    Route,
)
from flatmin.paper.figures import (
    run_batch_size_sweep,
    run_parametric_plot,
    run_spectrum,
    run_warm_start,
)
from flatmin.paper.protocol import run_sharpness_table, train_regime
from flatmin.paper.tables import format_tables

__all__ = [
    "CONFIGS",
    "MAXIMISER_ROUTE",
    "PAPER_ROUTE",
    "ROUTES",
    "ExperimentConfig",
    "Regime",
    "Route",
    "format_tables",
    "run_batch_size_sweep",
    "run_parametric_plot",
    "run_sharpness_table",
    "run_spectrum",
    "run_warm_start",
    "train_regime",
]
