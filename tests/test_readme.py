"""The README's examples run as written and agree with independent computations; every table row
in the README and docs/ is a row of a table regenerated from a committed results file."""

import json
import re
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.flatten_util import ravel_pytree

import flatmin
from flatmin.paper.tables import format_tables
from flatmin.reference import scipy_sharpness

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
PAGES = [README, *sorted((ROOT / "docs").glob("*.md"))]


def _code_blocks(path: Path) -> list[str]:
    return re.findall(r"```python\n(.*?)```", path.read_text(), re.S)


def _run(code: str) -> dict:
    namespace: dict = {}
    exec(compile(code, str(README), "exec"), namespace)
    return namespace


@pytest.mark.slow
def test_ten_line_example_gives_what_independent_solves_give():
    """The example's figures: `paper` is scipy's fmin_l_bfgs_b route (the oracle, on the host);
    `full` and `sub` are solves whose maximiser, recomputed by hand, gives the figure."""
    ns = _run(_code_blocks(README)[0])
    loss_fn, params, A, args = ns["loss_fn"], ns["params"], ns["A"], ns["args"]
    oracle = scipy_sharpness(loss_fn, params, eps=1e-3, args=args)
    np.testing.assert_allclose(float(ns["paper"]), oracle.value, rtol=1e-3, atol=1e-4)
    for name, space in (("full", None), ("sub", A)):
        result = flatmin.solve_sharpness(loss_fn, params, space, eps=1e-3, args=args)
        assert float(ns[name]) == float(result.value), name
        assert int(result.status) == flatmin.Status.FINISHED, name
        x, unravel = ravel_pytree(params)
        shift = ravel_pytree(result.y)[0] if space is None else space @ result.y
        f0, f1 = float(loss_fn(params, *args)), float(loss_fn(unravel(x + shift), *args))
        np.testing.assert_allclose(float(result.value), (f1 - f0) / (1 + f0) * 100, rtol=1e-3)
        radius = flatmin.box_radius(params, space, 1e-3)
        y = ravel_pytree(result.y)[0] if space is None else result.y
        assert bool(jnp.all(jnp.abs(y) <= radius * (1 + 1e-6))), name
        assert float(result.value) > 0, name  # a solver that does nothing gives 0 here


@pytest.mark.slow
def test_own_model_example_trains_four_seeds_and_measures_each():
    """A user's flax CNN and optax.sgd: 4 seeds trained in one program, each seed's figure that
    of its own parameters measured alone, and training that lowered every seed's loss."""
    ns = _run(_code_blocks(README)[1])
    run, phi, data, model = ns["run"], ns["phi"], ns["data"], ns["model"]
    assert phi.value.shape == (4,)
    losses = np.asarray(run.history.train_loss)
    assert np.all(losses[:, -1] < 0.5 * losses[:, 0])
    for k in (0, 3):
        variables = jax.tree.map(lambda a, k=k: a[k], run.variables)
        args = ({}, data.x_train, data.y_train)  # a model without batch norm: no statistics
        alone = flatmin.sharpness(
            flatmin.Objective(model), variables["params"], eps=1e-3, args=args, key=ns["key"]
        )
        np.testing.assert_allclose(phi.value[k], float(alone), rtol=2e-3)


def test_readme_figures_are_committed_plots_of_committed_results():
    """Each figure is a PNG in docs/ beside the JSON it was drawn from."""
    figures = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", README.read_text())
    assert figures, "the README shows no figures"
    for figure in figures:
        path = README.parent / figure
        assert path.is_file() and path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", figure
        assert list(path.parent.glob("*.json")), f"{figure}: no results JSON beside it"


# --- every table row comes from a committed file ----------------------------------------------


def _experiment_tables() -> dict[Path, str]:
    """Each committed experiment's Markdown, regenerated from its committed JSON."""
    from experiments.measures import format_table as measures_table
    from experiments.metric_ablation import format_table as ablation_table

    tables = {}
    for path in sorted((ROOT / "docs" / "results").rglob("*.json")):
        results = json.loads(path.read_text())
        if path.name == "results.json":
            tables[path] = format_tables(results)
        elif path.name == "ablation.json":
            tables[path] = ablation_table(
                results["summary"], results["config"], results["batch_sizes"]
            )
        elif path.name == "measures.json":
            tables[path] = measures_table(results)
    return tables


def _benchmark_tables() -> dict[Path, str]:
    from .support.benchmark_support import load_benchmark

    tables = {}
    for path in sorted((ROOT / "benchmarks" / "results").glob("*.json")):
        name = path.stem.split("-")[0]
        tables[path] = load_benchmark(name).tables(json.loads(path.read_text()))
    return tables


def _rows(text: str) -> list[str]:
    """A Markdown text's table data rows (no header, no separator), whitespace normalised."""
    lines = [line.strip() for line in text.splitlines()]
    rows = []
    for i, line in enumerate(lines):
        if not line.startswith("|") or set(line) <= set("|-: "):
            continue
        following = lines[i + 1] if i + 1 < len(lines) else ""
        if following.startswith("|") and set(following) <= set("|-: "):
            continue  # a header
        rows.append(re.sub(r"\s+", " ", line))
    return rows


def test_committed_markdown_tables_are_regenerated_from_their_json():
    """The .md beside each results JSON is what the script's formatter makes of that JSON now."""
    tables = _experiment_tables()
    assert tables, "no committed results under docs/results"
    for path, text in tables.items():
        md = path.with_suffix(".md") if path.name != "results.json" else path.parent / "tables.md"
        assert md.is_file(), f"{md} missing beside {path}"
        assert md.read_text().strip() == text.strip(), f"{md} is not {path} formatted"


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_every_table_row_of_the_docs_is_in_a_committed_table(page):
    """A table row in the README or docs/ must appear verbatim in a table regenerated from a
    committed results or benchmark JSON (the docs may show a subset of rows, never a number of
    their own). Tables that hold no measurement (argument lists, layouts) are marked with an
    HTML comment `<!-- not a result -->` on the line before."""
    known = set()
    for text in (*_experiment_tables().values(), *_benchmark_tables().values()):
        known.update(_rows(text))
    exempt, marked, inside = set(), False, False
    for line in page.read_text().splitlines():
        line = line.strip()
        if line == "<!-- not a result -->":
            marked = True
        elif line.startswith("|"):
            inside = True
            if marked:
                exempt.add(re.sub(r"\s+", " ", line))
        elif inside:
            marked = inside = False
    missing = [row for row in _rows(page.read_text()) if row not in known and row not in exempt]
    assert not missing, f"{page.name}: rows in no committed table:\n" + "\n".join(missing)


def test_benchmark_output_shown_in_the_docs_is_regenerated_from_committed_json():
    """Every ```text block of docs/benchmarks.md is a run of lines of a table that a benchmark's
    own `tables()` makes of a committed benchmarks/results JSON (trailing spaces aside)."""
    page = ROOT / "docs" / "benchmarks.md"
    blocks = re.findall(r"```text\n(.*?)```", page.read_text(), re.S)
    assert blocks, "docs/benchmarks.md shows no benchmark output"
    tables = [
        "\n".join(line.rstrip() for line in t.splitlines()) for t in _benchmark_tables().values()
    ]
    for block in blocks:
        lines = "\n".join(line.rstrip() for line in block.strip("\n").splitlines())
        assert any(lines in table for table in tables), f"not from a committed JSON:\n{lines}"
