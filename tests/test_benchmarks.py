"""Smoke tests of the benchmark scripts: they run with tiny sizes and write well-formed JSON.

Timings are never asserted (shared, noisy machines); only structure, finiteness, positivity
and the evaluation counter's counts, which are exact.
"""

import json
import math

import jax
import jax.numpy as jnp
import pytest
from benchmark_support import TIMING_KEYS, json_numbers, load_benchmark

# Differences of medians: noise can make them negative (or their quotients non-finite, None).
DIFFERENCES = {"overhead_excluding_box", "overhead_vs_floor_in_y", "speedup_vs_scipy_excluding_box"}


def test_timing_helpers(monkeypatch, tmp_path):
    timing = load_benchmark(monkeypatch, "_timing")
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


def test_sharpness_benchmark_quick(monkeypatch, tmp_path, capsys):
    bench = load_benchmark(monkeypatch, "sharpness")
    out = tmp_path / "sharpness.json"
    bench.main(["--quick", "--repeats", "1", "--blas-threads", "1", "--json", str(out)])
    assert "projected_gradient" in capsys.readouterr().out
    results = json.loads(out.read_text())

    env = results["environment"]
    assert {"device_kind", "device_platform", "versions", "cpu_count"} <= set(env)
    config = results["config"]
    assert config["quick"] and config["repeats"] == 1 and config["maxiter"] == bench.MAXITER
    maxiter = config["maxiter"]

    for path, value in json_numbers(results):
        assert math.isfinite(value), path
        if not DIFFERENCES & set(path.split("/")):
            assert value >= 0, path

    (problem,) = results["problems"].values()
    assert problem["sizes"]["n_params"] > bench.SUBSPACE_DIM
    floor = problem["floor"]
    assert TIMING_KEYS | {"lower_s", "compile_s"} <= set(floor["value_and_grad"])
    assert floor["floor_s"] > 0 and all(t > 0 for t in floor["value_and_grad"]["repeats_s"])

    # The counter is exact: under jit one value_and_grad is one forward and one backward;
    # vmapped over 3 points it is one call each, three points each.
    check = problem["counter_check"]
    assert check["jit_value_and_grad"] == dict.fromkeys(bench.EvalCounter.KEYS, 1)
    assert check["jit_loss"] == {
        "forward_calls": 1,
        "forward_evals": 1,
        "grad_calls": 0,
        "grad_evals": 0,
    }
    assert check["jit_vmap3_value_and_grad"] == {
        "forward_calls": 1,
        "forward_evals": 3,
        "grad_calls": 1,
        "grad_evals": 3,
    }

    assert set(problem["spaces"]) == {"full", f"p{bench.SUBSPACE_DIM}"}
    for space in problem["spaces"].values():
        for timing in ("floor", "floor_in_y", "box_radius"):
            assert TIMING_KEYS <= set(space[timing]) and space[timing]["median_s"] > 0
        scipy = space["scipy"]
        assert scipy["run"]["median_s"] > 0 and scipy["value"] >= 0
        assert scipy["evaluations"]["grad_evals"] == scipy["funcalls"] >= 1
        assert scipy["evaluations"]["forward_evals"] == scipy["funcalls"] + 1  # and f(x)
        assert set(space["solvers"]) == set(problem["solvers"])
        for entry in space["solvers"].values():
            assert entry["run"]["median_s"] > 0 and entry["compile_s"] > 0
            assert entry["overhead"]["median"] > 0 and entry["speedup_vs_scipy"]["median"] > 0
            assert entry["value_init_zero"] >= 0 and entry["value_init_random"] >= 0
            assert entry["value_ratio_vs_scipy"] is None or entry["value_ratio_vs_scipy"] > 0
            counts = entry["evaluations"]
            # Every iteration needs a gradient, and every gradient a forward pass.
            assert counts["forward_evals"] >= counts["grad_evals"] >= maxiter + 1
        for solver, per_r in space["restarts"].items():
            assert solver in problem["solvers"]
            assert [int(r) for r in per_r] == config["restarts"]
            for r, entry in per_r.items():
                assert entry["per_restart_s"] > 0 and entry["value"] >= 0
                counts = entry["evaluations"]
                assert counts["grad_evals"] == int(r) * counts["grad_calls"]
    assert any(space["restarts"] for space in problem["spaces"].values())


def test_eval_counter_counts_under_jit_and_vmap(monkeypatch):
    bench = load_benchmark(monkeypatch, "sharpness")
    counter = bench.EvalCounter()

    def loss(w):
        return jnp.sum(w**2)

    f = counter.wrap(loss)
    w = jnp.arange(4.0)
    assert counter.count(jax.jit(f), w)["forward_evals"] == 1
    grads = jax.jit(jax.vmap(jax.grad(f)))(jnp.stack([w, 2 * w]))
    assert jnp.allclose(grads, jnp.stack([2 * w, 4 * w]))  # the wrapper keeps the gradient
    counts = counter.count(jax.jit(jax.vmap(jax.value_and_grad(f))), jnp.stack([w, w]))
    assert counts == {"forward_calls": 1, "forward_evals": 2, "grad_calls": 1, "grad_evals": 2}
