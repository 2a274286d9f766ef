"""Checkpoint and resume: orbax training checkpoints, finished stages, interrupted runs (SIGKILL
included), runs continued with more epochs, and the directories a run must refuse: corrupted
(a flipped bit included), another run's (naming what differs), foreign, not writable."""

import hashlib
import json
import os
import re
import select
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import flax.linen as nn
import jax
import numpy as np
import optax
import pytest

import flatmin
import flatmin.paper.protocol
import flatmin.runtime.checkpoint
import flatmin.training.train
from experiments import sharpness_table  # the script, imported as a module
from flatmin.runtime.checkpoint import CheckpointError, Checkpoints, RunDirectory
from flatmin.training.data import Dataset, load_dataset

ROOT = Path(__file__).resolve().parents[2]
CHILD = str(ROOT / "tests" / "harnesses" / "interrupted_run.py")

# No warning is ignored here. The one test whose orbax restore fails part-way (a truncated
# checkpoint) runs that restore in a child process: tensorstore's reads that the failed restore
# abandons later call back into the event loop orbax has closed, and Python reports those
# callbacks as unraisable exceptions at an unpredictable moment, which in this process could
# be during any later test.

MODEL = flatmin.build_model("mlp", 10, hidden=(16,))
SCHEDULE = {"batch_size": 64, "epochs": 4}


def _train(keys, data, optimizer=None, **kwargs) -> flatmin.TrainResult:
    """train_seeds of a small MLP with Adam 1e-3 (interrupted_run.py trains the same)."""
    optimizer = optax.adam(1e-3) if optimizer is None else optimizer
    return flatmin.train_seeds(MODEL, optimizer, data, keys, **(SCHEDULE | kwargs))


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits")


def _same(a: flatmin.TrainResult, b: flatmin.TrainResult) -> None:
    for u, v in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_array_equal(np.asarray(u), np.asarray(v))


def _snapshot(directory: Path) -> dict:
    """Every file and folder under `directory` with its size and contents' sha256: to show
    nothing changed."""
    return {
        str(p.relative_to(directory)): (
            (p.stat().st_size, hashlib.sha256(p.read_bytes()).hexdigest()) if p.is_file() else "/"
        )
        for p in sorted(directory.rglob("*"))
    }


KEYS = jax.random.split(jax.random.key(3), 2)


@pytest.fixture(scope="module")
def two_epochs(digits, tmp_path_factory) -> tuple[Path, flatmin.TrainResult]:
    """A finished checkpoint of the small run with epochs=2, and its result; tests copy it."""
    directory = tmp_path_factory.mktemp("two_epochs") / "run"
    return directory, _train(KEYS, digits, epochs=2, checkpoint_dir=directory)


@pytest.fixture(scope="module")
def four_epochs(digits) -> flatmin.TrainResult:
    """The small run with epochs=4, uninterrupted and without checkpoints."""
    return _train(KEYS, digits)


def _copy(directory: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(directory, tmp_path / "run"))


def _with(array: np.ndarray, index, value) -> np.ndarray:
    array = np.array(array)
    array[index] = value
    return array


def test_interrupted_training_resumes_to_the_uninterrupted_result(
    digits, four_epochs, tmp_path, monkeypatch
):
    keys, whole = KEYS, four_epochs

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


def _pixel(d: Dataset) -> Dataset:
    return d._replace(x_train=_with(d.x_train, (5, 3, 3, 0), 0.5))


def _test_labels(d: Dataset) -> Dataset:
    return d._replace(y_test=np.roll(d.y_test, 1))


# (changes to the two-epoch run, what the message must say differs). The first five returned
# the old run, or called a valid checkpoint corrupted, before a checkpoint recorded the
# optimizer's behaviour and the data's values.
OTHER_RUNS = [
    ("learning rate", {"optimizer": optax.adam(2e-3)}, "the optimizer differs", "updates"),
    ("sgd for adam", {"optimizer": optax.sgd(1e-3)}, "the optimizer differs", "state, updates"),
    ("adam's b1", {"optimizer": optax.adam(1e-3, b1=0.8)}, "the optimizer differs", "updates"),
    ("a training pixel", {"data": _pixel}, "the data differs", "values"),
    ("test labels", {"data": _test_labels}, "the data differs", "values"),
    ("batch size", {"batch_size": 32}, "the schedule differs", "batch_size"),
    ("keys", {"keys": jax.random.split(jax.random.key(4), 2)}, "the keys differ", None),
    ("fingerprint", {"fingerprint": {"note": "v2"}}, "the fingerprint differs", "note"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("changes", "differs", "within"), [c[1:] for c in OTHER_RUNS], ids=[c[0] for c in OTHER_RUNS]
)
def test_a_checkpoint_of_another_run_is_refused_naming_what_differs(
    digits, two_epochs, tmp_path, changes, differs, within
):
    directory = _copy(two_epochs[0], tmp_path)
    before = _snapshot(directory)
    changes = dict(changes)
    keys = changes.pop("keys", KEYS)
    data = changes.pop("data", lambda d: d)(digits)
    with pytest.raises(CheckpointError) as refused:
        _train(keys, data, epochs=2, checkpoint_dir=directory, **changes)
    message = str(refused.value)
    within = "" if within is None else f" (in its {within})"
    assert message.startswith(
        f"checkpoint {directory}/2 was written by a different run: {differs} from the "
        f"checkpoint's{within}. Nothing was changed; use another checkpoint directory, or "
        f"delete {directory} if you mean to start over."
    ), message
    assert _snapshot(directory) == before


def test_a_fixed_bug_in_the_models_code_is_refused_naming_the_model(tmp_path):
    """Two models of the same class name and fields (the same repr) whose code differs."""

    def model(activation):
        class Net(nn.Module):
            @nn.compact
            def __call__(self, x, train=False):
                return nn.Dense(3)(activation(nn.Dense(4)(x)))

        return Net()

    rng = np.random.default_rng(0)
    x, y = rng.uniform(size=(32, 4)).astype(np.float32), rng.integers(0, 3, 32).astype(np.int32)
    data = Dataset(x, y, x[:8], y[:8], 3, "tiny")
    run = {"batch_size": 16, "epochs": 1, "checkpoint_dir": tmp_path}
    flatmin.train_seeds(model(nn.relu), optax.sgd(0.1), data, KEYS, **run)
    assert repr(model(nn.relu)) == repr(model(nn.tanh))
    before = _snapshot(tmp_path)
    with pytest.raises(
        CheckpointError, match=r"the model differs from the checkpoint's \(in its computation\)\."
    ):
        flatmin.train_seeds(model(nn.tanh), optax.sgd(0.1), data, KEYS, **run)
    assert _snapshot(tmp_path) == before


def test_a_finished_run_asked_for_more_epochs_trains_on_to_the_longer_runs_result(
    digits, two_epochs, four_epochs, tmp_path
):
    directory = _copy(two_epochs[0], tmp_path)
    seen = []
    longer = _train(KEYS, digits, checkpoint_dir=directory, on_epoch=lambda e, m: seen.append(e))
    assert seen == [3, 4]  # epochs 1 and 2 came from the checkpoint
    _same(longer, four_epochs)
    _same(_train(KEYS, digits, checkpoint_dir=directory, on_epoch=_no_epochs), longer)


def _no_epochs(epoch, metrics):
    raise AssertionError(f"epoch {epoch} was trained again")


def test_more_epochs_leave_stopped_seeds_stopped(digits, tmp_path, monkeypatch):
    """target_loss 1.87: seed 0 reaches it at epoch 2 (1.84), seed 1 at epoch 3 (1.91 at 2)."""
    rule = {"target_loss": 1.87}
    _train(KEYS, digits, epochs=2, checkpoint_dir=tmp_path / "a", **rule)
    continued = _train(KEYS, digits, checkpoint_dir=tmp_path / "a", **rule)
    np.testing.assert_array_equal(continued.epochs, [2, 3])
    _same(continued, _train(KEYS, digits, **rule))
    # Every seed stopped: more epochs give back the run as it is, without training.
    stopped = _train(KEYS, digits, epochs=2, checkpoint_dir=tmp_path / "b", target_loss=10.0)
    np.testing.assert_array_equal(stopped.epochs, [1, 1])
    monkeypatch.setattr(flatmin.training.train, "_make_epoch", _no_epoch_program)
    _same(_train(KEYS, digits, checkpoint_dir=tmp_path / "b", target_loss=10.0), stopped)


def _no_epoch_program(*args):
    def epoch(carry, inputs):
        raise AssertionError("a finished run trained again")

    return epoch


def test_fewer_epochs_than_a_checkpoint_has_trained_are_refused(digits, two_epochs, tmp_path):
    directory = _copy(two_epochs[0], tmp_path)
    before = _snapshot(directory)
    with pytest.raises(
        CheckpointError,
        match=rf"^checkpoint {directory} holds a run that has trained 2 epochs, more than "
        r"epochs=1, and its state at epoch 1 was not kept\. Nothing was changed; ask for "
        r"epochs >= 2",
    ):
        _train(KEYS, digits, epochs=1, checkpoint_dir=directory)
    assert _snapshot(directory) == before


def _flip_a_bit_inside(directory: Path, needle: bytes) -> Path:
    """Flips one bit in the middle of `needle` (bytes of a saved array) where a file under
    `directory` holds it verbatim; returns that file."""
    for path in directory.rglob("*"):
        content = bytearray(path.read_bytes()) if path.is_file() else bytearray()
        at = content.find(needle)
        if at >= 0:
            content[at + len(needle) // 2] ^= 0x10
            path.write_bytes(bytes(content))
            return path
    raise AssertionError("no file holds the array's bytes verbatim")


def test_a_flipped_bit_in_a_saved_array_is_refused(tmp_path):
    """Random bits do not compress: zstd keeps them verbatim, so the bit flipped is the
    array's (orbax checks only its index, and would restore the flipped value)."""
    array = np.random.default_rng(0).integers(0, 2**32, size=(64, 64), dtype=np.uint32)
    with Checkpoints(tmp_path, {"run": "a"}) as checkpoints:
        checkpoints.save(3, {"w": array, "b": np.arange(4.0)}, {"epoch": 3})
    _flip_a_bit_inside(tmp_path / "3", array.tobytes()[4096:4160])
    before = _snapshot(tmp_path)
    abstract = {"w": jax.ShapeDtypeStruct((64, 64), np.uint32), "b": np.zeros(4)}
    with Checkpoints(tmp_path, {"run": "a"}) as checkpoints:
        with pytest.raises(
            CheckpointError,
            match=rf"^checkpoint {tmp_path}/3 \(step 3\) is corrupted: its array \['w'\] does not "
            "match the checksum saved with it",
        ):
            checkpoints.restore(abstract)
    assert _snapshot(tmp_path) == before


def test_a_checkpoint_of_an_older_format_is_refused(tmp_path, monkeypatch):
    monkeypatch.setattr(flatmin.runtime.checkpoint, "FORMAT", 1)
    with Checkpoints(tmp_path, {"run": "a"}) as checkpoints:
        checkpoints.save(1, {"w": np.ones(3)}, {"epoch": 1})
    monkeypatch.undo()
    with Checkpoints(tmp_path, {"run": "a"}) as checkpoints:
        with pytest.raises(CheckpointError, match=r"written by an older flatmin"):
            checkpoints.restore({"w": np.ones(3)})


@pytest.fixture(scope="module")
def four_epoch_checkpoint(digits, tmp_path_factory) -> Path:
    """A finished checkpoint of the small run with epochs=4; tests damage copies of it."""
    directory = tmp_path_factory.mktemp("four_epochs") / "run"
    _train(KEYS, digits, checkpoint_dir=directory)
    return directory


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _flip_a_bit(path: Path) -> None:
    """One bit in the middle of the file: the issue's bit flip, which orbax restored silently
    (its own checksums cover only the shard index, not the zstd-compressed data). Where the
    bit lands in zstd's own structure, orbax's read fails instead: corrupted either way."""
    content = bytearray(path.read_bytes())
    content[len(content) // 2] ^= 0x01
    path.write_bytes(bytes(content))


@pytest.mark.parametrize("damage", [_truncate, _flip_a_bit], ids=["truncated", "a flipped bit"])
def test_a_corrupted_checkpoint_is_named_and_left_alone(four_epoch_checkpoint, tmp_path, damage):
    directory = _copy(four_epoch_checkpoint, tmp_path)
    damage(max((p for p in directory.rglob("*") if p.is_file()), key=lambda p: p.stat().st_size))
    before = _snapshot(directory)
    # The same train_seeds call (keys 3, digits) in a child process; see the top.
    done = subprocess.run(
        [sys.executable, CHILD, "corrupted", str(directory), "3"],
        env=os.environ | {"JAX_PLATFORMS": "cpu", "PYTHONPATH": str(ROOT)},  # this flatmin
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert re.match(rf"checkpoint {directory}/4 (\(step 4\) )?is corrupted", done.stdout), (
        done.stdout
    )
    assert _snapshot(directory) == before


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

    With `ready_fd` (a pipe's write end) the run goes through
    tests/harnesses/interrupted_run.py, which writes a line to it once the first checkpoint is
    on disk and then waits to be killed."""
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
