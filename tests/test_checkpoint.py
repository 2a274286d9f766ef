"""Checkpoint and resume: orbax training checkpoints, finished stages, interrupted runs (SIGKILL
included), and the directories a run must refuse: corrupted, foreign, not writable."""

import json
import os
import re
import select
import signal
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import optax
import pytest

import flatmin
import flatmin.paper.protocol
import flatmin.training.train
from experiments import sharpness_table  # the script, imported as a module
from flatmin.runtime.checkpoint import CheckpointError, Checkpoints, RunDirectory
from flatmin.training.data import load_dataset

ROOT = Path(__file__).resolve().parents[1]
CHILD = str(ROOT / "tests" / "interrupted_run.py")

# No warning is ignored here. The one test whose orbax restore fails part-way (a truncated
# checkpoint) runs that restore in a child process: tensorstore's reads that the failed restore
# abandons later call back into the event loop orbax has closed, and Python reports those
# callbacks as unraisable exceptions at an unpredictable moment, which in this process could
# be during any later test.

MODEL = flatmin.build_model("mlp", 10, hidden=(16,))
SCHEDULE = {"batch_size": 64, "epochs": 4}


def _train(keys, data, **kwargs) -> flatmin.TrainResult:
    """train_seeds of a small MLP with Adam 1e-3 (interrupted_run.py trains the same)."""
    return flatmin.train_seeds(MODEL, optax.adam(1e-3), data, keys, **SCHEDULE, **kwargs)


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits")


def _same(a: flatmin.TrainResult, b: flatmin.TrainResult) -> None:
    for u, v in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_array_equal(np.asarray(u), np.asarray(v))


def _snapshot(directory: Path) -> dict:
    """Every file under `directory` with its size and contents' hash: to show nothing changed."""
    return {
        str(p.relative_to(directory)): (p.stat().st_size, hash(p.read_bytes()))
        for p in sorted(directory.rglob("*"))
        if p.is_file()
    }


def test_interrupted_training_resumes_to_the_uninterrupted_result(digits, tmp_path, monkeypatch):
    keys = jax.random.split(jax.random.key(3), 2)
    whole = _train(keys, digits)

    saves = []
    save = Checkpoints.save

    def save_then_interrupt(self, step, tree, meta):
        save(self, step, tree, meta)
        saves.append(step)
        raise KeyboardInterrupt  # as if SIGINT arrived right after the first checkpoint

    monkeypatch.setattr(Checkpoints, "save", save_then_interrupt)
    with pytest.raises(KeyboardInterrupt):
        _train(keys, digits, checkpoint_dir=tmp_path, checkpoint_every=2)
    assert saves == [2]
    monkeypatch.setattr(Checkpoints, "save", save)

    resumed = _train(keys, digits, checkpoint_dir=tmp_path, checkpoint_every=2)
    _same(resumed, whole)
    assert resumed.history.train_loss.shape == (2, 4)

    # A finished run's checkpoint is its result: rerunning returns it without training.
    def no_training(*args):
        def epoch(carry, inputs):
            raise AssertionError("a finished run trained again")

        return epoch

    monkeypatch.setattr(flatmin.training.train, "_make_epoch", no_training)
    _same(_train(keys, digits, checkpoint_dir=tmp_path), whole)


def test_a_checkpoint_of_other_keys_is_refused(digits, tmp_path):
    keys = jax.random.split(jax.random.key(3), 2)
    _train(keys, digits, checkpoint_dir=tmp_path)
    other = jax.random.split(jax.random.key(4), 2)
    with pytest.raises(CheckpointError, match="written by a different run"):
        _train(other, digits, checkpoint_dir=tmp_path)


def test_a_corrupted_checkpoint_is_named_and_left_alone(digits, tmp_path):
    keys = jax.random.split(jax.random.key(3), 2)
    _train(keys, digits, checkpoint_dir=tmp_path)
    biggest = max((p for p in tmp_path.rglob("*") if p.is_file()), key=lambda p: p.stat().st_size)
    biggest.write_bytes(biggest.read_bytes()[: biggest.stat().st_size // 2])  # truncated
    before = _snapshot(tmp_path)
    # The same train_seeds call (keys 3, digits) in a child process; see the top.
    done = subprocess.run(
        [sys.executable, CHILD, "corrupted", str(tmp_path), "3"],
        env=os.environ | {"JAX_PLATFORMS": "cpu"},
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert re.match(rf"checkpoint {tmp_path.absolute()}/\d+ is corrupted", done.stdout), done.stdout
    assert _snapshot(tmp_path) == before


def test_stages_are_computed_once_and_read_back(tmp_path):
    run = RunDirectory(tmp_path, "demo", {"name": "x"})
    calls = []

    def compute():
        calls.append(1)
        return np.array([1.5, np.nan])

    assert run.stage("a/b", compute) == [1.5, None]
    rerun = RunDirectory(tmp_path, "demo", {"name": "x"})
    assert rerun.stage("a/b", compute) == [1.5, None] and len(calls) == 1
    stage_file = next((tmp_path / "checkpoints" / "demo" / "stages").iterdir())
    stage_file.write_text('{"value": [1.')  # truncated
    with pytest.raises(CheckpointError, match=f"stage file {stage_file} is corrupted"):
        rerun.stage("a/b", compute)


def test_a_foreign_results_file_is_refused_and_kept(tmp_path):
    results = tmp_path / "results.json"
    results.write_text(json.dumps({"config": {"name": "c1", "seeds": 5}, "results": []}))
    before = results.read_text()
    with pytest.raises(CheckpointError, match=f"{results} was written by a different config"):
        RunDirectory(tmp_path, "sharpness_table", {"name": "digits", "seeds": 5})
    results.write_text("not json")
    with pytest.raises(CheckpointError, match=f"{results} is not a results file"):
        RunDirectory(tmp_path, "sharpness_table", {"name": "digits"})
    results.write_text(before)
    with pytest.raises(SystemExit, match=f"{results} was written by a different config"):
        sharpness_table.main(["--seeds", "2", "--epochs", "1", "--out", str(tmp_path)])
    assert results.read_text() == before
    assert not (tmp_path / "checkpoints").exists()


def test_an_unwritable_out_is_refused_before_any_work(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(SystemExit, match=f"output directory {blocker / 'out'} is not writable"):
        sharpness_table.main(["--seeds", "2", "--epochs", "1", "--out", str(blocker / "out")])


def test_a_diverged_seed_is_marked_and_excluded_from_means(digits, monkeypatch, tmp_path, capsys):
    """Seeds whose initialisation is poisoned diverge at epoch 1; the others finish."""
    train_seeds = flatmin.paper.protocol.train_seeds

    def poisoned(model, optimizer, data, keys, **kwargs):
        def init(key):
            variables = flatmin.init_variables(model, jax.random.split(key)[0], (8, 8, 1))
            # Of master seed 0's four initialisation keys only seed 3's draws above 0.3.
            poison = jax.numpy.where(jax.random.uniform(key) > 0.3, jax.numpy.nan, 1.0)
            return jax.tree.map(lambda leaf: leaf * poison, variables)

        kwargs["variables"] = jax.vmap(init)(keys)
        return train_seeds(model, optimizer, data, keys, **kwargs)

    monkeypatch.setattr(flatmin.paper.protocol, "train_seeds", poisoned)
    sharpness_table.main(
        ["--seeds", "4", "--epochs", "1", "--hidden", "16", "--out", str(tmp_path)]
    )
    results = json.loads((tmp_path / "results.json").read_text())
    diverged = [r for r in results["results"] if r["diverged"]]
    finished = [r for r in results["results"] if not r["diverged"]]
    assert [(r["regime"], r["seed"]) for r in diverged] == [("SB", 3), ("LB", 3)]
    assert len(finished) == 6
    assert all(
        r["diverged_epoch"] == 1
        and all(r["sharpness"][route]["full"]["0.001"] is None for route in r["sharpness"])
        for r in diverged
    )
    assert all(
        r["diverged_epoch"] is None and r["sharpness"]["maximiser"]["full"]["0.001"] > 0
        for r in finished
    )
    assert "(1 diverged, excluded)" in capsys.readouterr().out


def _run_script(out: Path, ready_fd: int | None = None) -> tuple[subprocess.Popen, Path]:
    """Starts a small sharpness_table run into `out`; its stderr goes to a file beside `out`.

    With `ready_fd` (a pipe's write end) the run goes through tests/interrupted_run.py, which
    writes a line to it once the first checkpoint is on disk and then waits to be killed."""
    args = ["--seeds", "2", "--epochs", "6", "--hidden", "16", "--checkpoint-every", "1"]
    script = str(ROOT / "experiments" / "sharpness_table.py")
    command = [script] if ready_fd is None else [CHILD, str(ready_fd)]
    log = out.with_suffix(".log")
    with log.open("a") as stderr:
        proc = subprocess.Popen(
            [sys.executable, *command, *args, "--out", str(out)],
            env=os.environ | {"JAX_PLATFORMS": "cpu", "PYTHONPATH": str(ROOT)},
            stdout=subprocess.DEVNULL,
            stderr=stderr,
            pass_fds=() if ready_fd is None else (ready_fd,),
        )
    return proc, log


def _results(out: Path) -> dict:
    results = json.loads((out / "results.json").read_text())
    results.pop("seconds")
    return results


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory) -> dict:
    """results.json of the run that the interrupted runs must reproduce."""
    out = tmp_path_factory.mktemp("checkpoint") / "whole"
    proc, log = _run_script(out)
    assert proc.wait(timeout=600) == 0, log.read_text()[-3000:]
    return _results(out)


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM], ids=["SIGKILL", "SIGTERM"])
def test_a_signal_after_the_first_checkpoint_then_rerun_gives_the_same_results(
    tmp_path, uninterrupted, sig
):
    """The child stops itself right after its first checkpoint is complete and says so through
    a pipe; the parent blocks on that pipe (no polling, no sleeping), then kills it. SIGTERM's
    default action ends the process as abruptly as SIGKILL: neither may leave anything that
    stops a rerun from resuming to the uninterrupted result."""
    killed = tmp_path / "killed"
    read_fd, write_fd = os.pipe()
    proc, log = _run_script(killed, ready_fd=write_fd)
    os.close(write_fd)  # the child holds the only write end: EOF if it dies first
    with os.fdopen(read_fd) as ready:
        # A guard against a hung child, not a timing assumption: this normally returns as soon
        # as the child has written its first checkpoint.
        if not select.select([ready], [], [], 600)[0]:
            proc.kill()
            pytest.fail(f"no checkpoint within 600 s: {log.read_text()[-3000:]}")
        line = ready.readline()
    assert line, f"the run ended before its first checkpoint: {log.read_text()[-3000:]}"
    directory, step = line.split()
    assert (Path(directory).parent.name, int(step)) == ("train", 1)  # SB's first epoch
    proc.send_signal(sig)
    assert proc.wait(timeout=600) == -sig
    assert (Path(directory) / "1").is_dir()
    assert not (killed / "results.json").exists()

    proc, log = _run_script(killed)
    assert proc.wait(timeout=600) == 0, log.read_text()[-3000:]
    assert _results(killed) == uninterrupted


@pytest.mark.parametrize("every", [True, 0, 1.5, None])
def test_a_bad_checkpoint_every_is_refused_before_anything_is_written(tmp_path, every):
    with pytest.raises(ValueError, match=r"^checkpoint_every must be an integer >= 1"):
        RunDirectory(tmp_path / "out", "demo", {"name": "x"}, checkpoint_every=every)
    assert not (tmp_path / "out").exists()
