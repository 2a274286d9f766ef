"""The Hessian's spectrum at SB and LB solutions: its top eigenvalues and its trace, beside
Metric 2.1 (the paper's "large positive eigenvalues" of sharp minimisers)."""

from functools import partial

import jax
import numpy as np

from flatmin.measures import hessian_eigenvalues, hessian_trace
from flatmin.paper.configs import ExperimentConfig
from flatmin.paper.keys import hessian_key
from flatmin.paper.protocol import measure_routes, setup, train_regime
from flatmin.paper.summary import OnEpoch, callback
from flatmin.runtime.checkpoint import RunDirectory, json_ready
from flatmin.training.data import Dataset
from flatmin.training.objective import Objective


def run_spectrum(
    config: ExperimentConfig,
    key: jax.Array,
    data: Dataset,
    *,
    top_k: int = 10,
    trace_samples: int = 100,
    run: RunDirectory | None = None,
    mesh: jax.sharding.Mesh | None = None,
    on_epoch: OnEpoch = None,
) -> dict:
    """Every regime's seeds as the sharpness table trains them; per seed the top-k Hessian
    eigenvalues (Lanczos), the Hessian trace (Hutchinson) and full-space Metric 2.1 (every
    route, the first eps) of the training loss."""
    n = data.x_train.shape[0]
    sizes = config.batch_sizes(n)
    model, keys, x, y, staged = setup(config, data, key, run)
    regimes = {}
    for regime in config.regimes:
        trained = train_regime(
            config, data, sizes[regime.name], keys, run=run, name=regime.name, mesh=mesh,
            on_epoch=callback(on_epoch, regime.name),
        )  # fmt: skip
        eigenvalues, trace, stderr = staged(
            f"{regime.name}-spectra",
            lambda trained=trained: _spectra(
                model, trained.variables, x, y, hessian_key(key), top_k, trace_samples
            ),
        )
        eps = config.eps[0]
        solves = measure_routes(
            config, model, trained.variables, x, y, key, {"full": None}, eps=(eps,),
            staged=staged, prefix=regime.name, mesh=mesh,
        )  # fmt: skip
        last = trained.epochs - 1
        seeds = np.arange(config.seeds)
        regimes[regime.name] = {
            "batch_size": sizes[regime.name],
            "epochs": trained.epochs,
            "final_train_loss": trained.history.train_loss[seeds, last],
            "test_accuracy": trained.history.test_accuracy[seeds, last],
            "top_eigenvalues": eigenvalues,
            "trace": trace,
            "trace_stderr": stderr,
            "sharpness": {route: s["full"][str(eps)]["value"] for route, s in solves.items()},
        }
    return json_ready(
        {
            "train_size": n,
            "top_k": top_k,
            "trace_samples": trace_samples,
            "sharpness_space": "full",
            "sharpness_eps": config.eps[0],
            "loss": "evaluation-mode mean cross-entropy over the training set",
            "regimes": regimes,
        }
    )


@partial(jax.jit, static_argnums=(0, 5, 6))
def _spectra(model, variables, x, y, key, top_k, trace_samples):
    """(S, k) top eigenvalues, (S,) trace and its standard error, vmapped over seeds."""
    objective = Objective(model)

    def one(params, batch_stats):
        args = (batch_stats, x, y)
        eigenvalues = hessian_eigenvalues(objective, params, top_k, args=args, key=key).value
        # Probes in groups of 10: all at once would hold trace_samples HVPs' activations.
        estimate = hessian_trace(
            objective, params, args=args, key=key, num_samples=trace_samples, batch_size=10
        )
        return eigenvalues, estimate.value, estimate.stderr

    return jax.vmap(one)(variables["params"], variables["batch_stats"])
