"""Smoke tests of the benchmark scripts: they run with tiny sizes and write well-formed JSON.

Timings are never asserted (shared, noisy machines); only structure, finiteness, positivity
and the solvers' evaluation counts, which are exact.
"""

import json
import math

import jax.numpy as jnp
import pytest

from ..support.benchmark_support import TIMING_KEYS, json_numbers, load_benchmark

# Differences of medians: noise can make them negative (or their quotients non-finite, None).
DIFFERENCES = {"overhead_vs_floor_in_y"}


def test_timing_helpers(tmp_path):
    timing = load_benchmark("_timing")
    fn, phases = timing.compiled(lambda x: x * 2, jnp.ones(3))
    assert set(phases) == {"lower_s", "compile_s"} and min(phases.values()) > 0
    result = timing.timed(fn, jnp.ones(3), repeats=3)
    assert set(result) == TIMING_KEYS and len(result["repeats_s"]) == 3
    assert result["min_s"] <= result["median_s"] <= result["max_s"]
    together = timing.timed_together(
        {"a": (fn, (jnp.ones(3),)), "b": (lambda: None, ())}, repeats=4
    )
    assert set(together) == {"a", "b"} and all(set(t) == TIMING_KEYS for t in together.values())
    ratio = timing.paired(lambda a, b: a / b, together["a"], together["a"])
    assert ratio == {"median": 1.0, "min": 1.0, "max": 1.0}
    env = timing.environment()
    assert env["device_platform"] == "cpu" and env["cpu_count"] >= 1
    assert {"jax", "jaxlib", "jaxopt"} <= set(env["versions"])
    assert timing.default_json_path("x").name == "x-cpu.json"
    path = timing.write_json(tmp_path / "a" / "b.json", {"v": jnp.float32(1.5), "env": env})
    assert json.loads(path.read_text())["v"] == 1.5
    with pytest.raises(ValueError):
        timing.write_json(tmp_path / "nan.json", {"v": math.nan})
    table = timing.format_table(["a", "b"], [{"a": 1.23456, "b": None}, {"a": "x"}])
    assert table.splitlines()[2].split() == ["1.235", "-"]


def test_sharpness_benchmark_quick(tmp_path, capsys):
    bench = load_benchmark("sharpness")
    out = tmp_path / "sharpness.json"
    bench.main(["--quick", "--repeats", "1", "--json", str(out)])
    assert "projected_gradient" in capsys.readouterr().out
    results = json.loads(out.read_text())

    env = results["environment"]
    assert {"device_kind", "device_platform", "versions", "cpu_count"} <= set(env)
    config = results["config"]
    assert config["quick"] and config["repeats"] == 1 and config["maxiter"] == bench.MAXITER
    assert set(config["solvers"]) == set(bench.SOLVERS)

    for path, value in json_numbers(results):
        assert math.isfinite(value), path
        if not DIFFERENCES & set(path.split("/")):
            assert value >= 0, path

    (problem,) = results["problems"].values()
    assert problem["sizes"]["n_params"] > bench.SUBSPACE_DIM
    assert set(problem["spaces"]) == {"full", f"p{bench.SUBSPACE_DIM}"}
    for space in problem["spaces"].values():
        for timing in ("floor", "floor_in_y", "box_radius"):
            assert TIMING_KEYS <= set(space[timing]) and space[timing]["median_s"] > 0
        scipy = space["scipy"]
        assert scipy["run"]["median_s"] > 0 and scipy["value"] >= 0
        assert scipy["num_evaluations"] >= 1 and 0 <= scipy["num_steps"] <= bench.MAXITER
        assert set(space["solvers"]) == set(bench.SOLVERS)
        for name, entry in space["solvers"].items():
            assert entry["run"]["median_s"] > 0 and entry["compile_s"] > 0
            assert entry["overhead"]["median"] > 0 and entry["speedup_vs_scipy"]["median"] > 0
            assert entry["value"] >= 0
            # The counts tests/measures/test_solvers.py pins: the floor (maxiter + 1) for flatmin's
            # L-BFGS-B, one more for projected gradient, scipy's own for the paper's route.
            expected = {"lbfgsb": bench.MAXITER + 1, "projected_gradient": bench.MAXITER + 2}
            if name in expected:
                assert entry["num_evaluations"] == expected[name]
    seeds = problem["seeds"]
    assert seeds["seeds"] == config["seeds"] and seeds["vmapped_over_sequential"]["median"] > 0
    # All seeds in one solve and one after another give the same values (float32 rounding).
    assert seeds["max_relative_difference"] < 1e-3
    for per_r in problem["restarts"].values():
        assert [int(r) for r in per_r] == config["restarts"]
        assert all(entry["value"] >= 0 for entry in per_r.values())
