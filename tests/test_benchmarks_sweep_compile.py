"""Smoke tests of benchmarks/sweep.py, compile.py and solver_cost.py: tiny sizes, well-formed JSON.

Timings are never asserted (shared, noisy machines); only structure, finiteness and positivity.
"""

import json
import math
import os
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest
from benchmark_support import TIMING_KEYS, json_numbers, load_benchmark

from benchmarks import _timing as timing


def _check_json(tmp_path: Path, timing: ModuleType, results: dict) -> dict:
    """Writes `results` as JSON (NaN refused), reads it back; every timing is finite and > 0."""
    results = json.loads(timing.write_json(tmp_path / "out.json", results).read_text())
    assert {"device_platform", "versions", "cpu_count"} <= set(results["environment"])
    for path, value in json_numbers(results):
        assert math.isfinite(value), path
        if path.endswith("_s") or "_repeats_s/" in path or "/repeats_s/" in path:
            assert value > 0, path
    return results


def test_sweep_quick(tmp_path, capsys):
    sweep = load_benchmark("sweep")
    results = _check_json(tmp_path, timing, sweep.run(quick=True, repeats=1))
    seeds = [str(s) for s in sweep.QUICK_SEEDS]
    assert results["config"]["seeds"] == list(sweep.QUICK_SEEDS)
    assert set(results["regimes"]) == set(sweep.REGIMES) == set(results["targets"])
    for regime in results["regimes"].values():
        assert list(regime["seeds"]) == seeds
        assert regime["matmul_flops_per_seed_epoch"] > 0 and regime["compile_growth"] > 0
        for entry in regime["seeds"].values():
            assert TIMING_KEYS <= set(entry["vmapped"]) and TIMING_KEYS <= set(entry["sequential"])
            for key in ("lower_s", "compile_s", "ratio", "vmapped_seed_epochs_per_s"):
                assert entry[key] > 0, key
            assert entry["sequential_seed_epochs_per_s"] > 0
    for target in results["targets"].values():
        assert isinstance(target["ratio_met"], bool) and target["ratio"] > 0
    assert results["matmul"]["peak_matmul_1024_gflops_per_s"] > 0
    print(sweep.tables(results))
    assert "compile_growth" in capsys.readouterr().out


def test_compile_quick(tmp_path, capsys):
    bench = load_benchmark("compile")
    results = _check_json(tmp_path, timing, bench.run(quick=True, repeats=1))
    assert set(results["sharpness"]) == {"full", f"p{bench.SUBSPACE_DIM}"}
    for by_solver in results["sharpness"].values():
        assert set(by_solver) == set(bench.QUICK_SOLVERS) == set(results["config"]["solvers"])
        for entry in by_solver.values():
            assert [int(m) for m in entry["maxiter"]] == list(bench.MAXITERS)
            assert [int(s) for s in entry["seeds"]] == list(bench.SOLVE_SEEDS)
            assert entry["compile_ratio"] > 0 and entry["lower_ratio"] > 0
            assert entry["seeds_compile_ratio"] > 0
            for times in entry["maxiter"].values():
                assert times["lower_s"] > 0 and times["compile_s"] > 0
                assert len(times["compile_repeats_s"]) == 1
    assert set(results["epoch"]) == set(bench.REGIMES)
    for by_s in results["epoch"].values():
        assert [int(s) for s in by_s] == list(bench.QUICK_EPOCH_SEEDS)
        assert all(e["compile_s"] > 0 for e in by_s.values())
    # One CPU device under the tests: the sharded sweep is skipped, and says so.
    assert results["sharded"] == dict.fromkeys(bench.REGIMES, "skipped: 1 device")
    print(bench.tables(results))
    assert "compile_ratio" in capsys.readouterr().out


def test_solver_cost_quick(tmp_path, capsys):
    bench = load_benchmark("solver_cost")
    results = _check_json(tmp_path, timing, bench.run(quick=True, repeats=1))
    (entry,) = results["sizes"].values()
    assert entry["n"] == bench.QUICK_SIZES[0] and entry["lanes"] == bench.QUICK_LANES
    for objective in bench.CURVATURE:
        for solver in bench.SOLVERS:
            e = entry[f"{objective}/{solver}"]
            for key in ("single", "vmapped"):
                assert TIMING_KEYS <= set(e[key]) and e[key]["median_s"] > 0
            assert e["vmapped_over_sequential"] > 0 and e["single"]["per_iteration_s"] > 0
    # Which objective exercises which Cauchy point: no pairs on the concave start, pairs kept
    # (the exact Cauchy point) on the other.
    assert entry["concave_start/lbfgsb"]["pairs_at_end"] == 0
    assert entry["with_pairs/lbfgsb"]["pairs_at_end"] > 0
    print(bench.tables(results))
    assert "s/iter" in capsys.readouterr().out


@pytest.mark.slow
def test_compile_quick_sharded_over_forced_devices(tmp_path):
    """With 4 forced CPU devices the sharded epoch is compiled and timed, on all 4."""
    root = Path(__file__).resolve().parents[1]
    out = tmp_path / "compile.json"
    done = subprocess.run(
        [sys.executable, str(root / "benchmarks" / "compile.py"), "--quick", "--repeats", "1",
         "--json", str(out)],
        capture_output=True, text=True, timeout=900, check=False,
        env=os.environ | {"JAX_PLATFORMS": "cpu", "PYTHONPATH": str(root),
                          "XLA_FLAGS": "--xla_force_host_platform_device_count=4"},
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads(out.read_text())
    assert results["environment"]["device_count"] == 4
    bench = load_benchmark("compile")
    for regime in bench.REGIMES:
        entry = results["sharded"][regime]
        assert isinstance(entry, dict), entry
        assert entry["devices"] == 4 and entry["seeds"] % 4 == 0
        assert entry["lower_s"] > 0 and entry["compile_s"] > 0
