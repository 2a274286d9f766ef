"""Surviving interruption: orbax checkpoints of training, and a run directory of finished stages.

Two layers, both under an experiment's output directory:

* `Checkpoints`: numbered orbax checkpoints of one pytree (a `train_seeds` run's state). orbax
  writes each to a temporary directory and renames it when complete, and keeps the previous
  one until then, so a process killed at any moment (SIGKILL included) leaves a checkpoint
  that restores.
* `RunDirectory`: the output directory of one experiment run. It refuses a directory that
  holds another config's results, and memoises each finished stage (a sharpness solve, a
  curve) as JSON, written by temporary file and rename: rerunning the same command skips
  every finished stage and resumes training from its last checkpoint.

In a multi-process run every process calls these (orbax coordinates the processes); only
process 0 writes JSON.
"""

import json
import os
import re
import uuid
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp

from flatmin._checks import check_int
from flatmin.runtime.sharding import is_writer

PyTree = Any
CHECKPOINTS = "checkpoints"


class CheckpointError(RuntimeError):
    """A checkpoint or output directory that cannot be used; nothing in it was changed."""


def json_ready(value: Any) -> Any:
    """numpy/jax scalars and arrays -> Python numbers and lists; NaN/inf -> None (valid JSON)."""
    if isinstance(value, Mapping):
        return {str(k): json_ready(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_ready(v) for v in value]
    if isinstance(value, np.ndarray | jax.Array) and np.ndim(value) > 0:
        return [json_ready(v) for v in np.asarray(value).tolist()]
    if isinstance(value, np.generic | jax.Array):
        value = np.asarray(value).item()
    if isinstance(value, float) and not np.isfinite(value):
        return None
    return value


def write_text(path: Path, text: str) -> None:
    """Writes via a temporary file and a rename: a reader (or a resumed run) never sees half a
    file. Only process 0 of a multi-process run writes."""
    if not is_writer():
        return
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    tmp.write_text(text)
    tmp.replace(path)


def write_json(path: Path, value: Any) -> None:
    """`value` as strict JSON (NaN/inf -> null), atomically."""
    write_text(path, json.dumps(json_ready(value), indent=1, allow_nan=False))


class Checkpoints:
    """The latest orbax checkpoint of one pytree in `directory`, tied to a fingerprint.

    Args:
      directory: where the numbered checkpoints live (created).
      fingerprint: JSON-able description of the run; restoring a checkpoint written under a
        different fingerprint raises `CheckpointError` instead of resuming the wrong run.
    """

    def __init__(self, directory: Path, fingerprint: Mapping[str, Any]):
        self.directory = Path(directory).absolute()
        self.fingerprint = json_ready(fingerprint)
        options = ocp.CheckpointManagerOptions(
            max_to_keep=1, create=True, enable_async_checkpointing=False
        )
        try:
            self._manager = ocp.CheckpointManager(self.directory, options=options)
        except OSError as error:
            raise CheckpointError(
                f"cannot use checkpoint directory {self.directory}: {error}"
            ) from error

    def close(self) -> None:
        """Stops orbax's background machinery (its threads and event loop)."""
        self._manager.close()

    def __enter__(self) -> "Checkpoints":
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def latest_step(self) -> int | None:
        """The step of the latest complete checkpoint, or None."""
        return self._manager.latest_step()

    def save(self, step: int, tree: PyTree, meta: Mapping[str, Any]) -> None:
        """Saves `tree` (arrays) and `meta` (JSON) as checkpoint `step`, replacing the last."""
        step = check_int("step", step, minimum=0)
        meta = {"fingerprint": self.fingerprint, **json_ready(meta)}
        self._manager.save(
            step,
            args=ocp.args.Composite(
                state=ocp.args.StandardSave(tree), meta=ocp.args.JsonSave(meta)
            ),
        )
        self._manager.wait_until_finished()

    def restore(self, abstract: PyTree) -> tuple[PyTree, dict] | None:
        """(tree, meta) of the latest checkpoint, shaped like `abstract`; None if there is none.

        Raises:
          CheckpointError: naming the checkpoint, if it does not read back (corrupted or
            truncated) or was written by a run with another fingerprint.
        """
        step = self.latest_step()
        if step is None:
            return None
        path = self.directory / str(step)
        try:
            restored = self._manager.restore(
                step,
                args=ocp.args.Composite(
                    state=ocp.args.StandardRestore(abstract), meta=ocp.args.JsonRestore()
                ),
            )
        except Exception as error:  # orbax raises many kinds; all mean "unusable"
            raise CheckpointError(
                f"checkpoint {path} is corrupted or truncated and cannot be restored "
                f"({type(error).__name__}: {error}). Nothing was changed; delete {self.directory} "
                "to redo this stage from its start."
            ) from error
        meta = dict(restored["meta"])
        if meta.pop("fingerprint", None) != self.fingerprint:
            raise CheckpointError(
                f"checkpoint {path} was written by a different run (another config, seeds or "
                f"keys); use another output directory or delete {self.directory}."
            )
        return restored["state"], meta


class RunDirectory:
    """One experiment run's output directory: results, finished stages, training checkpoints.

    Args:
      out: the directory (created). Must be writable.
      experiment: the experiment's name (e.g. "sharpness_table").
      config: JSON-able description of everything that determines the results (config,
        flags, master seed). A directory whose results or checkpoints were written under
        another description is refused.
      results: file names in `out` whose JSON carries a "config" entry to check against.
      checkpoint_every: epochs between the training checkpoints of runs in this directory.

    Raises:
      CheckpointError: naming the file or directory, before anything is written.
      ValueError: checkpoint_every not an integer >= 1 (a bool included).
    """

    def __init__(
        self,
        out: Path,
        experiment: str,
        config: Mapping[str, Any],
        results: tuple[str, ...] = ("results.json",),
        checkpoint_every: int = 5,
    ):
        self.out = Path(out)
        self.checkpoint_every = check_int("checkpoint_every", checkpoint_every, minimum=1)
        self.experiment = experiment
        self.config = json_ready(config)
        self._check_writable()
        for name in results:
            self._check_foreign(self.out / name, self.config)
        self.checkpoints = self.out / CHECKPOINTS / experiment
        run_file = self.checkpoints / "run.json"
        self._check_foreign(run_file, self.config)
        if is_writer():
            self.checkpoints.mkdir(parents=True, exist_ok=True)
        write_json(run_file, {"experiment": experiment, "config": self.config})

    def train_dir(self, name: str) -> Path:
        """Where the training run `name` keeps its orbax checkpoints."""
        return self.checkpoints / "train" / _safe(name)

    def stage(self, name: str, compute: Callable[[], Any]) -> Any:
        """`compute()`'s value, computed once: saved as JSON when done, read back on a rerun.

        The value returned is always the JSON round trip (NaN/inf as None), so a resumed
        run sees exactly what an uninterrupted one sees.
        """
        path = self.checkpoints / "stages" / f"{_safe(name)}.json"
        if path.exists():
            try:
                return json.loads(path.read_text())["value"]
            except (ValueError, KeyError) as error:
                raise CheckpointError(
                    f"stage file {path} is corrupted or truncated ({error}); nothing was changed. "
                    "Delete it to recompute that stage."
                ) from error
        value = json_ready(compute())
        if is_writer():
            path.parent.mkdir(parents=True, exist_ok=True)
        write_json(path, {"value": value})
        return value

    def _check_writable(self) -> None:
        try:
            self.out.mkdir(parents=True, exist_ok=True)
            probe = self.out / f".flatmin-write-test-{uuid.uuid4().hex}"
            probe.write_text("")
            probe.unlink()
        except OSError as error:
            raise CheckpointError(
                f"output directory {self.out} is not writable ({error}); choose another --out"
            ) from error
        if not os.access(self.out, os.W_OK):
            raise CheckpointError(f"output directory {self.out} is not writable")

    @staticmethod
    def _check_foreign(path: Path, config: Any) -> None:
        if not path.exists():
            return
        try:
            theirs = json.loads(path.read_text())["config"]
        except (ValueError, KeyError, TypeError) as error:
            raise CheckpointError(
                f"{path} is not a results file of this experiment ({error}); nothing was "
                "changed. Choose another --out or move it away."
            ) from error
        if theirs != config:
            differ = sorted(
                k for k in set(theirs) | set(config) if theirs.get(k) != config.get(k)
            ) if isinstance(theirs, dict) else ["config"]  # fmt: skip
            raise CheckpointError(
                f"{path} was written by a different config (differs in: {', '.join(differ)}); "
                "nothing was changed. Choose another --out or delete it."
            )


def _safe(name: str) -> str:
    """A stage name as a file name."""
    return re.sub(r"[^A-Za-z0-9_.=-]+", "_", name)
