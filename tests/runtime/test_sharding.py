"""The seed axis sharded over devices (forced CPU devices in a subprocess) and over processes."""

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import jax
import numpy as np
import optax
import pytest

import flatmin
from flatmin.runtime.sharding import (
    gather,
    pad_seeds,
    padded_size,
    place,
    replicated,
    seed_sharding,
)

ROOT = Path(__file__).resolve().parents[2]


def _env(devices: int) -> dict:
    return os.environ | {
        "JAX_PLATFORMS": "cpu",
        "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}",
        "PYTHONPATH": str(ROOT),
    }


def test_padding_and_placement_round_trip():
    mesh = flatmin.runtime.seed_mesh()
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
            flatmin.build_model("mlp", 10, hidden=(8,)), optax.adam(1e-3),
            flatmin.load_dataset("digits"), jax.random.split(jax.random.key(0), 2),
            batch_size=64, epochs=1, mesh=mesh,
        )  # fmt: skip
    with pytest.raises(ValueError, match="devices must list at least one device"):
        flatmin.runtime.seed_mesh([])


@pytest.mark.parametrize(
    ("coordinator", "num_processes", "process_id", "match"),
    [
        ("localhost:1", 0, 0, r"^num_processes must be an integer >= 1"),
        ("localhost:1", 2, 2, r"^process_id must be an integer in \[0, 1\] \(num_processes = 2\)"),
        ("localhost:1", True, 0, r"^num_processes must be .* got True \(a bool\)"),
        ("localhost:1", 2, False, r"^process_id must be .* got False \(a bool\)"),
        ("localhost:1", 2, 1.0, r"^process_id\b"),
        ("localhost", 2, 0, r"^coordinator must be a 'host:port' or 'unix:/path' string"),
        (("localhost", 1), 2, 0, r"^coordinator\b"),
    ],
)
def test_bad_distributed_arguments(coordinator, num_processes, process_id, match):
    # Refused before jax.distributed is touched (it may be initialised once per process).
    with pytest.raises(ValueError, match=match):
        flatmin.runtime.initialize_distributed(coordinator, num_processes, process_id)


def test_sharded_sweep_equals_single_device():
    """3 seeds over 4 devices (padded to 4) against the same 3 seeds on one device."""
    done = subprocess.run(
        [sys.executable, str(ROOT / "tests" / "harnesses" / "sharded_sweep.py")],
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


SWEEP = ["--config", "digits", "--seeds", "3", "--epochs", "2", "--hidden", "16"]


def _written(log: Path) -> set[tuple[str, str]]:
    """(event, path relative to --out) of every file-system change audited_run.py saw."""
    return {tuple(json.loads(line)) for line in log.read_text().splitlines()}


def _files(directory: Path) -> set[str]:
    return {str(p.relative_to(directory)) for p in directory.rglob("*") if p.is_file()}


@pytest.mark.slow
def test_two_processes_run_one_sweep_and_agree_with_one_process(tmp_path):
    """Two processes with 2 CPU devices each form one 4-device mesh (gloo collectives) and
    write, from process 0 only, the results.json that a single process writes.

    The coordinator listens on a Unix socket in tmp_path, a name no other program can hold:
    a TCP port picked free beforehand could be taken by another program before process 0
    binds it."""
    script = str(ROOT / "experiments" / "sharpness_table.py")
    single = tmp_path / "single"
    subprocess.run(
        [sys.executable, script, *SWEEP, "--out", str(single)],
        env=_env(1),
        capture_output=True,
        check=True,
        timeout=600,
    )
    multi = tmp_path / "multi"
    socket_path = tmp_path / "coordinator.sock"
    if len(str(socket_path)) > 100:  # sun_path holds 108 bytes
        socket_path = Path(tempfile.mkdtemp(prefix="flatmin-")) / "c.sock"
    procs = [
        subprocess.Popen(
            [
                sys.executable, str(ROOT / "tests" / "harnesses" / "audited_run.py"),
                str(tmp_path / f"writes-{i}.jsonl"), str(multi), script,
                *SWEEP, "--out", str(multi),
                *("--coordinator", f"unix:{socket_path}"),
                *("--num-processes", "2", "--process-id", str(i)),
            ],
            env=_env(2),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(2)
    ]  # fmt: skip
    outputs = [p.communicate(timeout=900) for p in procs]
    for p, (_, err) in zip(procs, outputs, strict=True):
        assert p.returncode == 0, err[-3000:]

    # Process 0 wrote every result and stage file, process 1 none: all process 1 did under
    # --out is what every process does, create the shared directory if it is first there
    # (mkdir "."), and write and delete a writability probe. Files orbax writes through
    # tensorstore (native code) are not audited; its directories are compared below.
    writes = [_written(tmp_path / f"writes-{i}.jsonl") for i in range(2)]
    ours_written = {path for event, path in writes[0] if event in ("open", "os.rename")}
    assert {"results.json", "tables.md"} <= ours_written
    assert any(path.startswith("checkpoints/sharpness_table/stages/") for path in ours_written)
    (probe,) = {path for _, path in writes[1] if path.startswith(".flatmin-write-test-")}
    assert writes[1] - {("os.mkdir", ".")} == {("open", probe), ("os.remove", probe)}, writes[1]
    # Every file a single process leaves is there, and nothing else but orbax's own.
    orbax = "checkpoints/sharpness_table/train/"
    assert {f for f in _files(multi) if not f.startswith(orbax)} == {
        f for f in _files(single) if not f.startswith(orbax)
    }
    assert not any(f.endswith(".tmp") for f in _files(multi))

    ours = json.loads((multi / "results.json").read_text())
    theirs = json.loads((single / "results.json").read_text())
    assert ours["devices"].startswith("4 x") and theirs["devices"].startswith("1 x")
    assert ours["config"] == theirs["config"]
    for a, b in zip(ours["results"], theirs["results"], strict=True):
        assert (a["regime"], a["seed"], a["epochs"]) == (b["regime"], b["seed"], b["epochs"])
        np.testing.assert_allclose(a["final_train_loss"], b["final_train_loss"], rtol=1e-4)
        for route, by_space in a["sharpness"].items():
            for space, by_eps in by_space.items():
                for eps, value in by_eps.items():
                    other = b["sharpness"][route][space][eps]
                    np.testing.assert_allclose(value, other, rtol=1e-3)
