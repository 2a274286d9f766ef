"""Helpers shared by the benchmark smoke tests: load a benchmark script, walk its JSON."""

import importlib.util
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
TIMING_KEYS = {"median_s", "min_s", "max_s", "repeats_s", "warmup"}


def load_benchmark(monkeypatch: pytest.MonkeyPatch, name: str) -> ModuleType:
    """benchmarks/<name>.py as a module (benchmarks/ on sys.path for `_timing` and `sweep`)."""
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    for module in ("_timing", "sweep"):  # fresh imports of the benchmark helpers
        monkeypatch.delitem(sys.modules, module, raising=False)
    spec = importlib.util.spec_from_file_location(f"benchmarks_{name}", BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def json_numbers(tree: Any, path: str = ""):
    """(path, number) for every int or float leaf of a JSON tree."""
    if isinstance(tree, dict):
        for key, value in tree.items():
            yield from json_numbers(value, f"{path}/{key}")
    elif isinstance(tree, list):
        for i, value in enumerate(tree):
            yield from json_numbers(value, f"{path}/{i}")
    elif isinstance(tree, int | float) and not isinstance(tree, bool):
        yield path, tree
