"""Helpers shared by the benchmark smoke tests: load a benchmark script, walk its JSON."""

import importlib
from types import ModuleType
from typing import Any

TIMING_KEYS = {"median_s", "min_s", "max_s", "repeats_s", "warmup"}


def load_benchmark(name: str) -> ModuleType:
    """benchmarks/<name>.py, imported as the module `benchmarks.<name>`."""
    return importlib.import_module(f"benchmarks.{name}")


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
