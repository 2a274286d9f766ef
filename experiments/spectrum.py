"""The Hessian spectrum of SB and LB solutions, next to Metric 2.1.

    python experiments/spectrum.py --config digits --out results/digits/spectrum

Trains S seeds per regime as the sharpness table does, then, for each seed, the top-k Hessian
eigenvalues (Lanczos) and the Hessian trace (Hutchinson) of its evaluation-mode training loss,
and Metric 2.1 in the full space at the config's first eps. Writes DIR/spectrum.json,
DIR/spectrum.md and DIR/spectrum.png.
"""

import time
from functools import partial

import jax
import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np
from _cli import (
    LB_COLOR,
    SB_COLOR,
    base_parser,
    build_config,
    load_data,
    mean_std,
    parse,
    run_directory,
    save_figure,
    say,
)

from flatmin.checkpoint import write_json, write_text
from flatmin.experiment import REGIMES, seed_keys, seed_sharpness, solve_key
from flatmin.hessian import hessian_eigenvalues, hessian_trace
from flatmin.models import build_model
from flatmin.objective import make_loss_fn
from flatmin.train import train_seeds


def main(argv: list[str] | None = None) -> dict:
    parser = base_parser(__doc__)
    parser.add_argument("--top-k", type=int, default=10, help="eigenvalues per solution")
    parser.add_argument("--trace-samples", type=int, default=100, help="Hutchinson probes")
    args = parse(parser, argv)
    config = build_config(args)
    run = run_directory(
        args,
        config,
        "spectrum",
        "spectrum.json",
        top_k=args.top_k,
        trace_samples=args.trace_samples,
    )
    out = run.out
    data = load_data(args, config)
    n = data.x_train.shape[0]
    start = time.perf_counter()
    key = jax.random.key(args.seed)
    keys = seed_keys(key, config.seeds)
    model = build_model(config.model, data.num_classes, **config.model_kwargs)
    x, y = jnp.asarray(data.x_train), jnp.asarray(data.y_train)
    hessian_key = jax.random.fold_in(key, 3)

    regimes = {}
    for regime in REGIMES:
        train_config = config.train_config(regime, n)
        trained = train_seeds(
            train_config,
            keys,
            data,
            progress=True,
            checkpoint_dir=run.train_dir(regime),
            checkpoint_every=run.checkpoint_every,
        )
        eigenvalues, trace, stderr = (
            np.asarray(v, float)
            for v in run.stage(
                f"{regime}-spectra",
                lambda trained=trained: _spectra(
                    model, trained.variables, x, y, hessian_key, args.top_k, args.trace_samples
                ),
            )
        )
        sharp = np.asarray(
            run.stage(
                f"{regime}-sharpness",
                lambda trained=trained: seed_sharpness(
                    model, trained.variables, x, y, None, config.eps[0], key=solve_key(key),
                    solver=config.solver, restarts=config.restarts, init=config.init,
                ).value,
            ),
            float,
        )  # fmt: skip
        last = trained.epochs - 1
        seeds = np.arange(config.seeds)
        regimes[regime] = {
            "batch_size": train_config.batch_size,
            "epochs": trained.epochs,
            "final_train_loss": trained.history.train_loss[seeds, last],
            "test_accuracy": trained.history.test_accuracy[seeds, last],
            "top_eigenvalues": np.asarray(eigenvalues),
            "trace": np.asarray(trace),
            "trace_stderr": np.asarray(stderr),
            "sharpness": np.asarray(sharp),
        }
        say(f"{regime}: top eigenvalue {np.asarray(eigenvalues)[:, 0]}, sharpness {sharp}")

    results = {
        "config": run.config,
        "train_size": n,
        "top_k": args.top_k,
        "trace_samples": args.trace_samples,
        "sharpness_space": "full",
        "sharpness_eps": config.eps[0],
        "loss": "evaluation-mode mean cross-entropy over the training set",
        "regimes": regimes,
        "seconds": round(time.perf_counter() - start, 1),
        "devices": f"{jax.device_count()} x {jax.devices()[0].device_kind}",
    }
    write_json(out / "spectrum.json", results)
    write_text(out / "spectrum.md", format_table(results))
    save_figure(plot(results, config.name), out / "spectrum.png")
    say(format_table(results))
    say(f"wrote {out / 'spectrum.json'}, .md and .png in {results['seconds']} s")
    return results


@partial(jax.jit, static_argnums=(0, 5, 6))
def _spectra(model, variables, x, y, key, top_k, trace_samples):
    """(S, k) top eigenvalues, (S,) trace and its standard error, vmapped over seeds."""

    def one(params, batch_stats):
        loss_fn = make_loss_fn(model, batch_stats, x, y)
        eigenvalues = hessian_eigenvalues(loss_fn, params, top_k, key=key)
        # Probes in groups of 10: all at once would hold trace_samples HVPs' activations.
        estimate = hessian_trace(loss_fn, params, key=key, num_samples=trace_samples, batch_size=10)
        return eigenvalues, estimate.trace, estimate.stderr

    return jax.vmap(one)(variables["params"], variables["batch_stats"])


def format_table(results: dict) -> str:
    """Markdown: per regime, mean ± std over seeds of lambda_1, lambda_k, trace and sharpness."""
    k = results["top_k"]
    lines = [
        f"Hessian of the training loss at the SB and LB solutions ({results['config']['name']}, "
        f"mean ± std over {results['config']['seeds']} seeds)",
        "",
        f"| regime | batch | test acc. (%) | λ_1 | λ_{k} | trace | "
        f"sharpness ε={results['sharpness_eps']:g} (%) |",
        "|---|---|---|---|---|---|---|",
    ]

    def cell(values, scale: float = 1.0, fmt: str = ".3g") -> str:
        stats = mean_std(scale * np.asarray(values, dtype=np.float64))
        if stats["mean"] is None:
            return "n/a"
        return f"{stats['mean']:{fmt}} ± {stats['std']:{fmt}}"

    for regime, r in results["regimes"].items():
        eig = np.asarray(r["top_eigenvalues"], dtype=np.float64)
        lines.append(
            f"| {regime} | {r['batch_size']} | {cell(r['test_accuracy'], 100, '.2f')} "
            f"| {cell(eig[:, 0])} | {cell(eig[:, -1])} | {cell(r['trace'])} "
            f"| {cell(r['sharpness'])} |"
        )
    return "\n".join(lines) + "\n"


def plot(results: dict, name: str) -> plt.Figure:
    """Top-k eigenvalues by rank, every seed a thin line, the seed mean a thick one."""
    fig, ax = plt.subplots(figsize=(6.5, 4.5), constrained_layout=True)
    ranks = np.arange(1, results["top_k"] + 1)
    for regime, color in zip(REGIMES, (SB_COLOR, LB_COLOR), strict=True):
        r = results["regimes"][regime]
        eig = np.asarray(r["top_eigenvalues"], dtype=np.float64)
        ax.plot(ranks, eig.T, color=color, alpha=0.3, linewidth=0.8)
        ax.plot(
            ranks, np.nanmean(eig, axis=0), color=color, marker="o", linewidth=2,
            label=f"{regime} (batch {r['batch_size']}), mean over {eig.shape[0]} seeds",
        )  # fmt: skip
    ax.set_yscale("log")
    ax.set_xticks(ranks)
    ax.set_xlabel("eigenvalue rank i")
    ax.set_ylabel(r"Hessian eigenvalue $\lambda_i$ of the training loss (log scale)")
    ax.grid(alpha=0.3, which="both")
    ax.legend()
    ax.set_title(f"{name}: top-{results['top_k']} Hessian eigenvalues (thin lines: seeds)")
    return fig


if __name__ == "__main__":
    main()
