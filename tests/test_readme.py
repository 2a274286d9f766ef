"""The README's example runs as written and gives finite, non-negative sharpness."""

import math
import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_example_runs():
    code = re.search(r"```python\n(.*?)```", README.read_text(), re.S).group(1)
    namespace: dict = {}
    exec(compile(code, str(README), "exec"), namespace)
    for name in ("full", "sub"):
        value = float(namespace[name])
        assert math.isfinite(value) and value >= 0, (name, value)


def test_readme_figures_exist():
    figures = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", README.read_text())
    assert figures, "the README shows no figures"
    for figure in figures:
        path = README.parent / figure
        assert path.is_file() and path.read_bytes()[:4] == b"\x89PNG", figure
