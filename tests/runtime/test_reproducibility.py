"""What "the same result" means (docs/runtime.md): the same command on the same machine and
device count writes a bitwise-identical results.json; across device counts results agree to
float tolerance over the first steps (test_sharding.py) and in distribution after training."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[2]
COMMAND = [
    sys.executable, str(ROOT / "experiments" / "sharpness_table.py"), "--config", "digits",
    "--hidden", "16", "--seeds", "2", "--epochs", "2", "--maxiter", "3",
]  # fmt: skip


def _without_wall_time(results: dict) -> dict:
    return {k: v for k, v in results.items() if k != "seconds"}


@pytest.mark.slow
def test_the_same_command_twice_writes_bitwise_identical_results(tmp_path):
    """Two processes, the same command: every field but the wall time is equal, floats compared
    exactly (JSON keeps all 17 significant digits of a float64, so equal text is equal bits)."""
    texts = []
    for run in ("a", "b"):
        out = tmp_path / run
        done = subprocess.run(
            [*COMMAND, "--out", str(out)],
            capture_output=True, text=True, timeout=600, check=False,
            env=os.environ | {"PYTHONPATH": str(ROOT)},
        )  # fmt: skip
        assert done.returncode == 0, done.stderr[-3000:]
        texts.append(_without_wall_time(json.loads((out / "results.json").read_text())))
    assert texts[0]["results"], "nothing was measured"
    assert json.dumps(texts[0], sort_keys=True) == json.dumps(texts[1], sort_keys=True)
    assert (tmp_path / "a" / "tables.md").read_text() == (tmp_path / "b" / "tables.md").read_text()


@pytest.mark.slow
def test_one_and_four_devices_agree_in_distribution_after_training():
    """8 seeds trained for 12 epochs (1080 Adam steps) on one device and sharded over four: each
    quantity's mean over seeds differs by less than three standard errors of the difference."""
    done = subprocess.run(
        [sys.executable, str(ROOT / "tests" / "harnesses" / "device_equivalence.py")],
        capture_output=True, text=True, timeout=900, check=False,
        env=os.environ | {"PYTHONPATH": str(ROOT)},
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    out = json.loads(done.stdout.strip().splitlines()[-1])
    assert out["device_count"] == 4
    for quantity in ("train_loss", "test_accuracy", "sharpness"):
        one, four = (np.asarray(out[run][quantity]) for run in ("one", "four"))
        assert one.shape == four.shape == (8,) and np.all(np.isfinite(one + four)), quantity
        stderr = np.sqrt(one.var(ddof=1) / 8 + four.var(ddof=1) / 8)
        assert abs(one.mean() - four.mean()) <= 3 * stderr + 1e-7 * abs(one.mean()), (
            quantity, one, four,
        )  # fmt: skip
