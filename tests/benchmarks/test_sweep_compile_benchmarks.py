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

import jax
import jax.numpy as jnp
import pytest

import flatmin
import flatmin.measures._lbfgsb
from benchmarks import _timing as timing

from ..support.benchmark_support import TIMING_KEYS, json_numbers, load_benchmark


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
    # Data as arguments against closed over, on both problems (fewer examples when quick).
    data = results["data_as_arguments"]
    assert set(data) == set(bench.DATA_PROBLEMS)
    for name, entry in data.items():
        expected = bench.DATA_PROBLEMS[name][0]
        assert entry["examples"] == (bench.QUICK_DATA_EXAMPLES if expected else 1437)
        for form in ("arguments", "closure"):
            for key in ("lower_s", "compile_s", "second_data_set_s", "program_chars"):
                assert entry[form][key] > 0, (name, form, key)
        # The closure compiles the data into the program as constants; the arguments do not.
        assert entry["arguments"]["program_chars"] < entry["closure"]["program_chars"]
    print(bench.tables(results))
    out = capsys.readouterr().out
    assert "compile_ratio" in out and "program_chars" in out


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
    print(bench.tables(results))
    assert "s/iter" in capsys.readouterr().out


def test_solver_cost_objectives_exercise_both_cauchy_points(monkeypatch):
    """Which objective exercises which Cauchy point: no curvature pairs on the concave start,
    pairs kept (the exact Cauchy point) on the other. The benchmark's own `LBFGSB.maximize`,
    on its objectives at the quick size, with L-BFGS-B's driver result (which holds the pairs
    count; `Maximum` does not) caught on its way out."""
    bench = load_benchmark("solver_cost")
    minimize = flatmin.measures._lbfgsb.minimize
    found = []

    def recording(*args, **kwargs):
        found.append(minimize(*args, **kwargs))
        return found[-1]

    monkeypatch.setattr(flatmin.measures._lbfgsb, "minimize", recording)
    (n,) = bench.QUICK_SIZES
    c = jax.random.normal(jax.random.key(0), (bench.QUICK_LANES, n))[0]
    pairs = {}
    for objective, sign in bench.CURVATURE.items():
        fun = lambda z, sign=sign: c @ z + sign * 0.5 * z @ z
        bench.SOLVERS["lbfgsb"].maximize(fun, jnp.zeros(n), flatmin.Box(jnp.ones(n)))
        pairs[objective] = int(found[-1].num_pairs)
    assert len(found) == 2
    assert pairs["concave_start"] == 0 and pairs["with_pairs"] > 0


@pytest.mark.slow
def test_compile_quick_sharded_over_forced_devices(tmp_path):
    """With 4 forced CPU devices the sharded epoch is compiled and timed, on all 4."""
    root = Path(__file__).resolve().parents[2]
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
