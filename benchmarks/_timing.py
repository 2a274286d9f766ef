"""Shared helpers for the benchmark scripts: timers, compile timing, environment, JSON, tables.

Every timed call is wrapped in `jax.block_until_ready`, so asynchronous dispatch never hides
work; timings are reported as the median over the repeats (after warm-up calls), with the
minimum and every repeat alongside, because the machines these run on are shared and noisy.
"""

import argparse
import hashlib
import importlib.metadata
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import jax
import numpy as np
import threadpoolctl

RESULTS_DIR = Path(__file__).resolve().parent / "results"
PACKAGES = ("jax", "jaxlib", "jaxopt", "flax", "optax", "numpy", "scipy")


def timed(fn: Callable[..., Any], *args: Any, repeats: int = 5, warmup: int = 1) -> dict:
    """Times `fn(*args)`: `warmup` untimed calls, then `repeats` timed ones.

    Returns {"median_s", "min_s", "max_s", "repeats_s": [...], "warmup": warmup}; each call is
    timed up to `jax.block_until_ready` on its output.
    """
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    for _ in range(warmup):
        jax.block_until_ready(fn(*args))
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - start)
    return _summary(times, warmup)


def timed_together(
    calls: Mapping[str, tuple[Callable[..., Any], tuple]], *, repeats: int = 5, warmup: int = 1
) -> dict[str, dict]:
    """Times several calls interleaved: each repeat runs every call once, in order.

    On a shared machine the load drifts over minutes; interleaving exposes all calls to the same
    drift, so ratios of their repeat-by-repeat times (see `paired`) stay meaningful. `calls` maps
    a name to (fn, args); returns a `timed`-shaped dict per name.
    """
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    for _ in range(warmup):
        for fn, args in calls.values():
            jax.block_until_ready(fn(*args))
    times: dict[str, list[float]] = {name: [] for name in calls}
    for _ in range(repeats):
        for name, (fn, args) in calls.items():
            start = time.perf_counter()
            jax.block_until_ready(fn(*args))
            times[name].append(time.perf_counter() - start)
    return {name: _summary(ts, warmup) for name, ts in times.items()}


def paired(fn: Callable[..., float], *timings: dict) -> dict:
    """Median, min and max over repeats of fn(t_1, t_2, ...), the t_i being the i-th timing's
    seconds in the same repeat (from `timed_together`)."""
    values = [fn(*ts) for ts in zip(*(t["repeats_s"] for t in timings), strict=True)]
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def _summary(times: list[float], warmup: int) -> dict:
    return {
        "median_s": statistics.median(times),
        "min_s": min(times),
        "max_s": max(times),
        "repeats_s": times,
        "warmup": warmup,
    }


def compiled(fn: Callable[..., Any], *args: Any, **jit_kwargs: Any) -> tuple[Any, dict]:
    """`jax.jit(fn, **jit_kwargs).lower(*args).compile()`, with both phases timed.

    Returns (the compiled executable, {"lower_s", "compile_s"}). Call the executable with the
    same (non-static) arguments to time the run alone.
    """
    start = time.perf_counter()
    lowered = jax.jit(fn, **jit_kwargs).lower(*args)
    lower_s = time.perf_counter() - start
    start = time.perf_counter()
    executable = lowered.compile()
    compile_s = time.perf_counter() - start
    return executable, {"lower_s": lower_s, "compile_s": compile_s}


def device_slug() -> str:
    """A file-name-safe name for the default device: "cpu", or e.g. "nvidia-h100-80gb-hbm3"."""
    device = jax.devices()[0]
    name = device.platform if device.platform == "cpu" else device.device_kind
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")


def environment() -> dict:
    """Device, library versions, CPU count and load, BLAS threads and the source measured."""
    device = jax.devices()[0]
    try:
        usable_cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        usable_cpus = os.cpu_count()
    return {
        "device_platform": device.platform,
        "device_kind": device.device_kind,
        "device_count": jax.device_count(),
        "versions": {name: importlib.metadata.version(name) for name in PACKAGES},
        "python": platform.python_version(),
        "machine": platform.machine(),
        "cpu_count": os.cpu_count(),
        "usable_cpus": usable_cpus,
        "load_average": list(os.getloadavg()),
        "jax_enable_x64": bool(jax.config.jax_enable_x64),
        "blas": [
            {key: pool[key] for key in ("internal_api", "prefix", "version", "num_threads")}
            for pool in threadpoolctl.threadpool_info()
        ],
        "time_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "source": source_fingerprint(),
    }


def source_fingerprint(package: str = "flatmin") -> dict:
    """The code measured: git commit, uncommitted changes, and a sha256 of each source file of
    `package` (the working tree can differ from the commit while it is being worked on)."""
    root = Path(__file__).resolve().parent.parent

    def git(*args: str) -> str | None:
        try:
            out = subprocess.run(
                ["git", *args], cwd=root, capture_output=True, text=True, check=True, timeout=30
            )
        except (OSError, subprocess.SubprocessError):
            return None
        return out.stdout.strip()

    status = git("status", "--porcelain", "--untracked-files=all", "--", package)
    return {
        "git_commit": git("rev-parse", "HEAD"),
        "uncommitted": None if status is None else status.splitlines(),
        "sha256": {
            str(path.relative_to(root)): hashlib.sha256(path.read_bytes()).hexdigest()[:16]
            for path in sorted((root / package).glob("*.py"))
        },
    }


def default_json_path(benchmark: str) -> Path:
    """benchmarks/results/<benchmark>-<device slug>.json."""
    return RESULTS_DIR / f"{benchmark}-{device_slug()}.json"


def _plain(value: Any) -> Any:
    """numpy/JAX scalars and arrays -> Python numbers and lists, for `json.dump`."""
    if isinstance(value, np.ndarray | jax.Array):
        return np.asarray(value).tolist()
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def write_json(path: str | os.PathLike[str], data: dict) -> Path:
    """Writes `data` as indented JSON (NaN and infinities refused), creating parent folders."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2, default=_plain, allow_nan=False) + "\n")
    return path


def log(message: str) -> None:
    """A progress line on stderr, stamped with the local time."""
    print(f"{time.strftime('%H:%M:%S')} {message}", file=sys.stderr, flush=True)


def format_table(columns: Sequence[str], rows: Sequence[Mapping[str, Any]]) -> str:
    """A plain-text table of `rows` (dicts keyed by column); floats get 4 significant digits,
    missing entries and None show as "-"."""

    def cell(value: Any) -> str:
        if value is None:
            return "-"
        return f"{value:.4g}" if isinstance(value, float) else str(value)

    cells = [list(columns), *([cell(row.get(c)) for c in columns] for row in rows)]
    widths = [max(len(row[i]) for row in cells) for i in range(len(columns))]
    lines = ["  ".join(c.rjust(w) for c, w in zip(row, widths, strict=True)) for row in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def benchmark_parser(doc: str, default_repeats: int = 5) -> argparse.ArgumentParser:
    """The flags every benchmark takes: --json PATH, --repeats N, --quick (tiny sizes)."""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("--json", type=Path, default=None, help="output path")
    parser.add_argument(
        "--repeats", type=int, default=None, help=f"timed repeats (default {default_repeats})"
    )
    parser.add_argument("--quick", action="store_true", help="tiny sizes (smoke test)")
    parser.set_defaults(default_repeats=default_repeats)
    return parser


def parse_benchmark_args(parser: argparse.ArgumentParser, argv: Sequence[str] | None):
    """Parsed flags; --repeats defaults to 1 with --quick, else to the benchmark's default."""
    args = parser.parse_args(argv)
    if args.repeats is None:
        args.repeats = 1 if args.quick else args.default_repeats
    return args


def report(name: str, args: argparse.Namespace, results: dict, tables: str) -> None:
    """Prints the tables and writes the JSON (--json, or the default path for this device)."""
    print(tables)
    default = default_json_path(f"{name}-quick" if args.quick else name)
    print(f"\nwrote {write_json(args.json or default, results)}")
