"""Surviving interruption: orbax checkpoints of training, and a run directory of finished stages.

Two layers, both under an experiment's output directory:

* `Checkpoints`: numbered orbax checkpoints of one pytree (a `train_seeds` run's state). orbax
  writes each to a temporary directory and renames it when complete, and keeps the previous
  one until then, so a process killed at any moment (SIGKILL included) leaves a checkpoint
  that restores. Each checkpoint records the identity of the run that wrote it (checked,
  part by part, before any array is read) and a sha256 of every array and of its own
  metadata (checked after reading): orbax checksums only its shard indices, not the data, so
  without this a flipped bit would restore silently.
* `RunDirectory`: the output directory of one experiment run. It refuses a directory that
  holds another config's results, and memoises each finished stage (a sharpness solve, a
  curve) as JSON, written by temporary file and rename: rerunning the same command skips
  every finished stage and resumes training from its last checkpoint.

In a multi-process run every process calls these (orbax coordinates the processes); only
process 0 writes JSON.
"""

import hashlib
import importlib.metadata
import json
import os
import platform
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
# The layout of a training checkpoint's metadata; checkpoints without it (older flatmin) are
# refused rather than trusted, since their identity did not cover what changes results.
FORMAT = 2
# Recorded with each checkpoint, to explain an identity that differs only in a digest of
# computed numbers or traced code (see `Checkpoints.restore`).
_VERSIONED = ("jax", "jaxlib", "flax", "optax")


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


def check_checkpoint_dir(name: str, path: Any) -> Path:
    """`path` as an absolute Path that is, or can become, a directory: not an existing file and
    not under one. Nothing is created.

    Raises:
      ValueError: naming `name`: not a str or os.PathLike, an existing file, or a path under one.
    """
    if not isinstance(path, str | os.PathLike):
        raise ValueError(f"{name} must be a path (str or os.PathLike) or None, got {path!r}")
    path = Path(path).absolute()
    for existing in (path, *path.parents):
        if not existing.exists():
            continue
        if not existing.is_dir():
            where = "is an existing file" if existing == path else f"lies under the file {existing}"
            raise ValueError(
                f"{name} must be a directory or a path where one can be made; {path} {where}"
            )
        break
    return path


def hash_array(digest: "hashlib._Hash", array: Any, chunk_bytes: int = 1 << 24) -> None:
    """Feeds `array`'s dtype, shape and bytes (C order) to `digest`, streamed in slices of the
    leading axis of about `chunk_bytes`: a NumPy array is not copied (unless not contiguous), a
    device array comes to the host one slice at a time."""
    shape, dtype = np.shape(array), np.dtype(array.dtype)
    digest.update(f"{dtype.str}{shape}".encode())
    if not shape:
        digest.update(np.asarray(array).reshape(1).view(np.uint8))
        return
    rows = max(1, chunk_bytes // max(1, dtype.itemsize * int(np.prod(shape[1:]))))
    for start in range(0, shape[0], rows):
        chunk = np.ascontiguousarray(np.asarray(array[start : start + rows]))
        digest.update(chunk.reshape(-1).view(np.uint8))


def tree_checksums(tree: PyTree) -> dict[str, str]:
    """{leaf path: sha256 of its dtype, shape and bytes} for every array of `tree`."""
    sums = {}
    for path, leaf in jax.tree_util.tree_leaves_with_path(tree):
        digest = hashlib.sha256()
        hash_array(digest, leaf)
        sums[jax.tree_util.keystr(path)] = digest.hexdigest()
    return sums


class Checkpoints:
    """The latest orbax checkpoint of one pytree in `directory`, tied to the run's identity.

    Args:
      directory: where the numbered checkpoints live (created).
      identity: {part: JSON-able description} of everything that determines the run's results
        (for `train_seeds`: model, optimizer, data, schedule, keys, ...). Restoring a checkpoint
        written under another identity raises `CheckpointError` naming the parts that differ.
    """

    def __init__(self, directory: Path, identity: Mapping[str, Any]):
        self.directory = Path(directory).absolute()
        self.identity = json_ready(identity)
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
        """Saves `tree` (arrays) and `meta` (JSON) as checkpoint `step`, replacing the last.

        The metadata also records the identity, the checksums of tree's arrays, the versions
        of jax, jaxlib, flax and optax, and a checksum of all of that."""
        step = check_int("step", step, minimum=0)
        record = {
            **json_ready(meta),
            "format": FORMAT,
            "identity": self.identity,
            "checksums": tree_checksums(tree),
            "versions": _versions(),
        }
        record["sha256"] = _json_digest(record)
        self._manager.save(
            step,
            args=ocp.args.Composite(
                state=ocp.args.StandardSave(tree), meta=ocp.args.JsonSave(record)
            ),
        )
        self._manager.wait_until_finished()

    def restore(self, abstract: PyTree | Callable[[dict], PyTree]) -> tuple[PyTree, dict] | None:
        """(tree, meta) of the latest checkpoint, shaped like `abstract`; None if there is none.

        The metadata is read and checked first (its checksum, then the identity), so a
        checkpoint of another run is refused before any of its arrays is read; then the arrays,
        each against the checksum saved with it.

        Args:
          abstract: the tree to restore into (arrays or jax.ShapeDtypeStruct), or a function
            of the checkpoint's meta (as given to `save`) that returns it.

        Raises:
          CheckpointError: naming the checkpoint, if it does not read back (corrupted or
            truncated), an array or the metadata does not match its checksum, or it was
            written by another run (naming the parts of the identity that differ).
        """
        step = self.latest_step()
        if step is None:
            return None
        path = self.directory / str(step)
        record = self._read(step, ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]
        meta = self._check_record(path, record)
        if callable(abstract):
            abstract = abstract(meta)
        tree = self._read(step, ocp.args.Composite(state=ocp.args.StandardRestore(abstract)))
        tree = tree["state"]
        sums = tree_checksums(tree)
        for name, expected in record["checksums"].items():
            if sums.get(name) != expected:
                raise CheckpointError(
                    f"checkpoint {path} (step {step}) is corrupted: its array {name} does not "
                    "match the checksum saved with it. Nothing was changed; delete "
                    f"{self.directory} to start over."
                )
        return tree, meta

    def _read(self, step: int, args: ocp.args.Composite) -> dict:
        try:
            return self._manager.restore(step, args=args)
        except Exception as error:  # orbax raises many kinds; all mean "unusable"
            raise CheckpointError(
                f"checkpoint {self.directory / str(step)} is corrupted or truncated and cannot be "
                f"restored ({type(error).__name__}: {error}). Nothing was changed; delete "
                f"{self.directory} to start over."
            ) from error

    def _check_record(self, path: Path, record: Any) -> dict:
        """The caller's meta from a checkpoint's metadata, after checking its checksum, format
        and identity."""
        delete = (
            f"Nothing was changed; use another checkpoint directory, or delete {self.directory}"
        )
        if not isinstance(record, dict) or record.get("format") != FORMAT:
            raise CheckpointError(
                f"checkpoint {path} was written by an older flatmin, whose checkpoints did not "
                f"record what identifies a run (the optimizer, the data's values) or checksums; "
                f"it cannot be trusted to continue. {delete} to start over."
            )
        record = dict(record)
        if record.pop("sha256", None) != _json_digest(record):
            raise CheckpointError(
                f"checkpoint {path} is corrupted: its metadata does not match the checksum saved "
                f"with it. {delete} to start over."
            )
        theirs, ours = record.pop("identity"), self.identity
        differ = sorted(
            part for part in set(theirs) | set(ours) if theirs.get(part) != ours.get(part)
        )
        if differ:
            parts = "; ".join(
                _difference(part, theirs.get(part), ours.get(part)) for part in differ
            )
            raise CheckpointError(
                f"checkpoint {path} was written by a different run: {parts}."
                f"{_version_note(record['versions'])} {delete} if you mean to start over."
            )
        for name in ("format", "checksums", "versions"):
            record.pop(name)
        return record


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


def _json_digest(value: Any) -> str:
    """sha256 of a JSON value, independent of its keys' order."""
    return hashlib.sha256(json.dumps(value, sort_keys=True).encode()).hexdigest()


def _versions() -> dict[str, str]:
    """The versions of the libraries whose tracing and arithmetic a run's identity records."""
    versions = {"machine": platform.machine()}
    for name in _VERSIONED:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = "none"
    return versions


def _difference(part: str, theirs: Any, ours: Any) -> str:
    """'the optimizer differs from the checkpoint's (in its updates)', and the like."""
    if theirs is None:
        return f"the checkpoint has no {part} (this run has)"
    if ours is None:
        return f"this run has no {part} (the checkpoint has)"
    within = ""
    if isinstance(theirs, dict) and isinstance(ours, dict):
        names = sorted(k for k in set(theirs) | set(ours) if theirs.get(k) != ours.get(k))
        within = f" (in its {', '.join(names)})"
    verb = "differ" if part.endswith("s") else "differs"
    return f"the {part} {verb} from the checkpoint's{within}"


def _version_note(theirs: Mapping[str, str]) -> str:
    """A sentence when the checkpoint was written under other library versions: those can trace
    or round the digests of an identity differently though nothing else changed."""
    ours = _versions()
    changed = [f"{k} {theirs.get(k)} -> {v}" for k, v in ours.items() if theirs.get(k) != v]
    if not changed:
        return ""
    return (
        f" The checkpoint was written under other versions ({', '.join(changed)}), which can "
        "change a digest of traced code or computed numbers although nothing else did; such a "
        "checkpoint cannot be continued under these versions."
    )
