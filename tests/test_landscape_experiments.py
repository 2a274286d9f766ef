"""Smoke runs of the landscape experiments' CLIs: a tiny MLP, 1-2 epochs, 2 seeds, into tmp_path.

The three that measure sharpness or Hessians are marked slow (each compiles a solver).
"""

import json
import math
import sys
from pathlib import Path

import pytest

import flatmin

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "experiments"))
import _cli
import batch_size_sweep
import parametric_plot
import spectrum
import warm_start

TINY = ["--config", "digits", "--hidden", "16", "--seeds", "2"]


def _numbers(value) -> list:
    """Every number in a JSON value, recursively (None counts: it stands for NaN)."""
    if isinstance(value, dict):
        return [n for v in value.values() for n in _numbers(v)]
    if isinstance(value, list):
        return [n for v in value for n in _numbers(v)]
    return [value] if value is None or isinstance(value, int | float) else []


def _load(out: Path, name: str, keys: set[str]) -> dict:
    png = out / f"{name}.png"
    assert png.stat().st_size > 1000 and png.read_bytes()[:4] == b"\x89PNG"
    assert not list(out.glob("*.tmp"))
    results = json.loads((out / f"{name}.json").read_text())
    assert keys <= set(results)
    assert results["config"]["model_kwargs"]["hidden"] == [16]
    return results


def _all_finite(value) -> bool:
    return all(n is not None and math.isfinite(n) for n in _numbers(value))


def test_parametric_plot(tmp_path):
    argv = [*TINY, "--epochs", "2", "--points", "7", "--out", str(tmp_path)]
    parametric_plot.main(argv)
    results = _load(tmp_path, "parametric", {"alpha", "paths", "solutions", "interpolated"})
    assert results["alpha"][0] == -1 and results["alpha"][-1] == 2 and len(results["alpha"]) == 7
    assert set(results["paths"]) == {"straight", "curved"}
    for path in results["paths"].values():
        assert set(path) == set(parametric_plot.METRICS)
        # alpha = 0 and 1 (indices 2 and 4 of 7) are the solutions themselves: always defined.
        for values in path.values():
            assert _all_finite([values[2], values[4]])
    assert _all_finite(results["solutions"])
    # The solutions with their own running statistics and with recomputed ones; the paths use
    # the recomputed ones, so they pass through those values at alpha = 0 and 1.
    for regime, index in (("SB", 2), ("LB", 4)):
        endpoint = results["endpoints"][regime]
        assert _all_finite(endpoint)
        for metric in parametric_plot.METRICS:
            on_path = results["paths"]["straight"][metric][index]
            assert math.isclose(endpoint["recomputed_statistics"][metric], on_path, rel_tol=1e-4)


@pytest.mark.slow  # compiles the sharpness solver: ~50 s on 2 loaded cores
def test_batch_size_sweep(tmp_path):
    argv = [*TINY, "--epochs", "1", "--batch-sizes", "64,1437", "--out", str(tmp_path)]
    batch_size_sweep.main(argv)
    results = _load(tmp_path, "batch_size_sweep", {"results", "epochs"})
    assert [row["batch_size"] for row in results["results"]] == [64, 1437]
    for row in results["results"]:
        assert set(row["sharpness"]) == {"0.001", "0.0005"}
        assert _all_finite([row["test_accuracy"], row["sharpness"]])
        assert 0 <= row["test_accuracy"]["mean"] <= 1


@pytest.mark.slow  # compiles the sharpness solver: ~50 s on 2 loaded cores
def test_warm_start(tmp_path):
    argv = [*TINY, "--sb-epochs", "2", "--lb-epochs", "1", "--out", str(tmp_path)]
    warm_start.main(argv)
    results = _load(tmp_path, "warm_start", {"results", "lb_batch", "sb_batch"})
    assert [row["sb_epochs"] for row in results["results"]] == [0, 1, 2]
    assert results["config"]["solver"]["type"] == "ProjectedGradient"  # the digits default
    for row in results["results"]:
        assert _all_finite([row["lb_test_accuracy"], row["lb_sharpness"]])
    # One sharpness solve per k, each kept on its own: an interrupted run loses no finished k.
    stages = tmp_path / "checkpoints" / "warm_start" / "stages"
    for row in results["results"]:
        kept = json.loads((stages / f"lb-sharpness-k{row['sb_epochs']}.json").read_text())
        assert kept["value"] == row["per_seed"]["lb_sharpness"]


@pytest.mark.slow  # compiles the sharpness solver: ~50 s on 2 loaded cores
def test_spectrum(tmp_path):
    argv = [*TINY, "--epochs", "1", "--top-k", "3", "--trace-samples", "4", "--out", str(tmp_path)]
    spectrum.main(argv)
    results = _load(tmp_path, "spectrum", {"regimes", "top_k"})
    assert set(results["regimes"]) == {"SB", "LB"}
    for regime in results["regimes"].values():
        assert len(regime["top_eigenvalues"]) == 2 and len(regime["top_eigenvalues"][0]) == 3
        assert _all_finite([regime["top_eigenvalues"], regime["trace"], regime["sharpness"]])
        assert all(seed[0] >= seed[-1] for seed in regime["top_eigenvalues"])  # descending
    assert "| SB |" in (tmp_path / "spectrum.md").read_text()


def test_hidden_flag_rejects_bad_widths():
    with pytest.raises(SystemExit):
        _cli.base_parser("x").parse_args(["--hidden", "16,0"])


def test_solver_flag_reaches_the_config():
    parse = _cli.base_parser("x").parse_args
    assert _cli.build_config(parse([])).solver == flatmin.LBFGSB()  # the configs' default
    assert _cli.build_config(parse(["--solver", "projected_gradient"])).solver == (
        flatmin.ProjectedGradient()
    )
    assert _cli.build_config(parse(["--solver", "paper"])).solver == flatmin.LBFGSB.paper()
    assert _cli.build_config(parse(["--solver", "paper", "--maxiter", "3"])).solver == (
        flatmin.LBFGSB(maxiter=3, pgtol=1e-5, factr=1e7, maxls=20, rescale=False)
    )
    assert _cli.build_config(parse(["--maxiter", "4"])).solver == flatmin.LBFGSB(maxiter=4)
    with pytest.raises(SystemExit):
        parse(["--solver", "adam"])
    with pytest.raises(SystemExit):
        _cli.build_config(parse(["--maxiter", "0"]))
    # The full-space experiments' digits default, and the flag or another config overriding it.
    assert _cli.full_space_solver(parse([])) == flatmin.ProjectedGradient()
    assert _cli.full_space_solver(parse(["--solver", "lbfgsb"])) == flatmin.LBFGSB()
    assert _cli.full_space_solver(parse(["--config", "f1"])) is None
    assert _cli.build_config(parse(["--config", "f1"]), solver=None).solver == flatmin.LBFGSB()
