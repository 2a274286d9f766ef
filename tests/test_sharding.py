"""The seed axis sharded over devices (forced CPU devices in a subprocess) and over processes."""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest

import flatmin
from flatmin.sharding import gather, pad_seeds, padded_size, place, replicated, seed_sharding

ROOT = Path(__file__).resolve().parents[1]


def _env(devices: int) -> dict:
    return os.environ | {
        "JAX_PLATFORMS": "cpu",
        "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}",
        "PYTHONPATH": str(ROOT),
    }


def test_padding_and_placement_round_trip():
    mesh = flatmin.seed_mesh()
    size = padded_size(3, mesh)
    assert size % mesh.size == 0 and 3 <= size < 3 + mesh.size
    tree = {"a": np.arange(6.0).reshape(3, 2), "k": jax.random.split(jax.random.key(0), 3)}
    padded = pad_seeds(tree, 5)
    assert padded["a"].shape == (5, 2)
    np.testing.assert_array_equal(padded["a"][3:], [[4.0, 5.0], [4.0, 5.0]])
    placed = place(padded, seed_sharding(mesh))
    back = gather(placed, 3)
    np.testing.assert_array_equal(back["a"], tree["a"])
    np.testing.assert_array_equal(jax.random.key_data(back["k"]), jax.random.key_data(tree["k"]))
    assert place(np.ones(2), replicated(mesh)).sharding == replicated(mesh)


def test_bad_mesh_is_rejected_by_name():
    mesh = jax.sharding.Mesh(np.asarray(jax.devices()), ("batch",))
    with pytest.raises(ValueError, match=r"mesh must be a jax\.sharding\.Mesh with one axis"):
        flatmin.train_seeds(
            flatmin.TrainConfig(epochs=1), jax.random.split(jax.random.key(0), 2), mesh=mesh
        )
    with pytest.raises(ValueError, match="devices must list at least one device"):
        flatmin.seed_mesh([])


@pytest.mark.parametrize(
    ("num_processes", "process_id", "match"),
    [(0, 0, "num_processes must be an integer >= 1"), (2, 2, r"process_id must be .* \[0, 2\)")],
)
def test_bad_distributed_arguments(num_processes, process_id, match):
    with pytest.raises(ValueError, match=match):
        flatmin.initialize_distributed("localhost:1", num_processes, process_id)


def test_sharded_sweep_equals_single_device():
    """3 seeds over 4 devices (padded to 4) against the same 3 seeds on one device."""
    done = subprocess.run(
        [sys.executable, str(ROOT / "tests" / "sharded_sweep.py")],
        env=_env(4),
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    out = json.loads(done.stdout.strip().splitlines()[-1])
    assert out["device_count"] == 4 and out["seeds_per_device"] == [1, 1, 1, 1]
    assert all(shape[0] == 3 for shape in out["shapes"])  # padding dropped
    assert out["params_max_abs_diff"] < 1e-5 and out["history_max_abs_diff"] < 1e-5
    assert out["epochs"][0] == out["epochs"][1] == [2, 2, 2]
    for single, sharded in zip(out["sharpness"]["one"], out["sharpness"]["four"], strict=True):
        assert len(sharded) == 3 and np.all(np.isfinite(sharded))
        np.testing.assert_allclose(sharded, single, rtol=1e-3)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _process_flags(port: int, process_id: int) -> list[str]:
    return [
        *("--coordinator", f"127.0.0.1:{port}"),
        *("--num-processes", "2", "--process-id", str(process_id)),
    ]


def _process_flags(port: int, process_id: int) -> list[str]:
    return [
        *("--coordinator", f"127.0.0.1:{port}"),
        *("--num-processes", "2", "--process-id", str(process_id)),
    ]


SWEEP = ["--config", "digits", "--seeds", "3", "--epochs", "2", "--hidden", "16"]


@pytest.mark.slow
def test_two_processes_run_one_sweep_and_agree_with_one_process(tmp_path):
    """Two processes with 2 CPU devices each form one 4-device mesh (gloo collectives) and
    write, from process 0 only, the results.json that a single process writes."""
    script = str(ROOT / "experiments" / "sharpness_table.py")
    single = tmp_path / "single"
    subprocess.run(
        [sys.executable, script, *SWEEP, "--out", str(single)],
        env=_env(1),
        capture_output=True,
        check=True,
        timeout=600,
    )
    multi, port = tmp_path / "multi", _free_port()
    procs = [
        subprocess.Popen(
            [sys.executable, script, *SWEEP, "--out", str(multi), *_process_flags(port, i)],
            env=_env(2),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(2)
    ]
    outputs = [p.communicate(timeout=900) for p in procs]
    for p, (_, err) in zip(procs, outputs, strict=True):
        assert p.returncode == 0, err[-3000:]
    assert "wrote" in outputs[0][0] and "wrote" not in outputs[1][0]  # process 0 reports
    ours = json.loads((multi / "results.json").read_text())
    theirs = json.loads((single / "results.json").read_text())
    assert ours["devices"].startswith("4 x") and theirs["devices"].startswith("1 x")
    assert ours["config"] == theirs["config"]
    for a, b in zip(ours["results"], theirs["results"], strict=True):
        assert (a["regime"], a["seed"], a["epochs"]) == (b["regime"], b["seed"], b["epochs"])
        np.testing.assert_allclose(a["final_train_loss"], b["final_train_loss"], rtol=1e-4)
        for space in ("full", "subspace"):
            for eps, value in a["sharpness"][space].items():
                np.testing.assert_allclose(value, b["sharpness"][space][eps], rtol=1e-3)
