"""Training many seeds at once: any flax model and optax optimizer, one `lax.scan` per epoch,
`jax.vmap` over seeds.

`train_seeds` compiles one epoch program for all seeds together and runs it once per epoch. A
seed that meets its stopping rule (a target training loss, a plateau, or divergence) is frozen
inside that program while the others go on, so seeds never wait on a recompile and a stopped
seed's result is exactly its state at the epoch it stopped.

With a `checkpoint_dir`, a run is identified by what determines its results (`run_identity`):
a checkpoint of another run is refused naming what differs, and a finished run asked for more
epochs trains on from its checkpoint.
"""

import dataclasses
import hashlib
import os
import re
from collections.abc import Callable, Mapping
from functools import partial
from pathlib import Path
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from flatmin._checks import (
    check_callable,
    check_float,
    check_int,
    check_optional_float,
    check_optional_int,
)
from flatmin.runtime.checkpoint import (
    CheckpointError,
    Checkpoints,
    check_checkpoint_dir,
    hash_array,
    json_ready,
)
from flatmin.runtime.sharding import (
    check_mesh,
    gather,
    pad_seeds,
    padded_size,
    place,
    replicated,
    seed_sharding,
)
from flatmin.training.data import Dataset
from flatmin.training.models import init_variables
from flatmin.training.objective import check_examples, evaluate

PyTree = Any

# Optimizer steps of the probe that identifies an optimizer by what it does (`run_identity`).
PROBE_STEPS = 3


@dataclasses.dataclass(frozen=True)
class Schedule:
    """How every seed trains: the minibatches, and when it stops.

    Attributes:
      batch_size: examples per optimizer step; an epoch is floor(N / batch_size) steps over a
        fresh permutation (the remainder is dropped, differently each epoch).
      epochs: the most epochs any seed trains.
      target_loss: stop a seed once its evaluation-mode training loss is <= this (minimisers
        compared at equal loss), a finite number >= 0; None to not use this rule.
      patience: stop a seed after this many epochs without a relative improvement of
        `min_improvement` in its best training loss (the paper's "until the loss ceased to
        improve"); None to not use this rule.
      min_improvement: relative decrease of the training loss that counts as improving, in
        [0, 1).
      eval_chunk: examples per forward pass when evaluating on whole data sets.

    Every field is checked when the schedule is made (ValueError naming it).
    """

    batch_size: int
    epochs: int
    target_loss: float | None = None
    patience: int | None = None
    min_improvement: float = 1e-2
    eval_chunk: int = 2048

    def __post_init__(self):
        """Validates every field (ValueError naming it) and stores numbers as int / float."""
        checked = {
            "batch_size": check_int("batch_size", self.batch_size, minimum=1),
            "epochs": check_int("epochs", self.epochs, minimum=1),
            "eval_chunk": check_int("eval_chunk", self.eval_chunk, minimum=1),
            "target_loss": check_optional_float("target_loss", self.target_loss, minimum=0),
            "patience": check_optional_int("patience", self.patience, minimum=1),
            "min_improvement": check_float(
                "min_improvement", self.min_improvement, minimum=0, below=1
            ),
        }
        for name, value in checked.items():
            object.__setattr__(self, name, value)  # frozen: np.int64(32) -> 32, and so on


class TrainState(NamedTuple):
    """One seed's training state (every leaf gains a leading seed axis under `train_seeds`)."""

    params: PyTree
    batch_stats: PyTree
    opt_state: optax.OptState
    key: jax.Array  # dropout randomness; folded with `step`
    step: jax.Array


class StopState(NamedTuple):
    """Per-seed bookkeeping of the stopping rules."""

    done: jax.Array  # bool: frozen from now on
    epochs: jax.Array  # int: epochs trained
    best_loss: jax.Array  # best evaluation-mode training loss so far
    stale: jax.Array  # int: epochs since best_loss last improved by min_improvement
    diverged_epoch: jax.Array  # int: epoch (1-based) at which the loss went non-finite, or 0


class EpochMetrics(NamedTuple):
    """Evaluation-mode metrics after an epoch, one per seed."""

    train_loss: jax.Array
    train_accuracy: jax.Array
    test_accuracy: jax.Array


class SeedCarry(NamedTuple):
    """Everything one seed carries from epoch to epoch."""

    state: TrainState
    stop: StopState
    metrics: EpochMetrics  # after the last epoch the seed trained


class TrainResult(NamedTuple):
    """What `train_seeds` returns; numpy arrays, leading axis = seed.

    Attributes:
      variables: {"params", "batch_stats"} stacked over seeds (jax arrays, on device).
      history: EpochMetrics of (S, E) arrays, E = epochs the longest seed ran; a stopped seed
        repeats its final values.
      epochs: (S,) epochs each seed trained.
      diverged_epoch: (S,) the epoch at which a seed's loss became NaN/inf, 0 if it never did.
    """

    variables: dict
    history: EpochMetrics
    epochs: np.ndarray
    diverged_epoch: np.ndarray


def make_train_step(
    model: nn.Module, optimizer: optax.GradientTransformation
) -> Callable[[TrainState, tuple[jax.Array, jax.Array]], tuple[TrainState, dict]]:
    """A pure `train_step(state, (x, y)) -> (state, {"loss", "accuracy"})` for one minibatch."""

    def train_step(state: TrainState, batch: tuple[jax.Array, jax.Array]):
        x, y = batch
        dropout_key = jax.random.fold_in(state.key, state.step)

        def loss_fn(params):
            logits, updates = model.apply(
                {"params": params, "batch_stats": state.batch_stats},
                x,
                train=True,
                mutable=["batch_stats"],
                rngs={"dropout": dropout_key},
            )
            loss = optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
            # A model without batch norm has no "batch_stats" to update.
            return loss, (logits, updates.get("batch_stats", {}))

        (loss, (logits, batch_stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
            state.params
        )
        updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
        new_state = TrainState(
            params=optax.apply_updates(state.params, updates),
            batch_stats=batch_stats,
            opt_state=opt_state,
            key=state.key,
            step=state.step + 1,
        )
        accuracy = jnp.mean(jnp.argmax(logits, -1) == y)
        return new_state, {"loss": loss, "accuracy": accuracy}

    return train_step


def train_seeds(
    model: nn.Module,
    optimizer: optax.GradientTransformation,
    data: Dataset,
    keys: jax.Array,
    *,
    batch_size: int,
    epochs: int,
    target_loss: float | None = None,
    patience: int | None = None,
    min_improvement: float = 1e-2,
    eval_chunk: int = 2048,
    variables: dict | None = None,
    on_epoch: Callable[[int, EpochMetrics], None] | None = None,
    mesh: jax.sharding.Mesh | None = None,
    checkpoint_dir: str | os.PathLike | None = None,
    checkpoint_every: int = 5,
    fingerprint: Mapping[str, Any] | None = None,
) -> TrainResult:
    """Trains one copy of `model` per key with `optimizer`, all seeds in one compiled program.

    Args:
      model: a flax module called as ``model.apply(variables, x, train=...)`` with
        ``mutable=["batch_stats"]`` in training and ``rngs={"dropout": key}`` (flatmin's models,
        or your own of that form), mapping (n, ...) inputs to (n, data.num_classes) logits.
      optimizer: any optax GradientTransformation (the paper: `optax.adam(1e-3)`).
      data: the training set (x_train, y_train) and the test set whose accuracy is recorded.
      keys: (S,) PRNG keys, one per seed; seed k's result equals training keys[k] alone.
      batch_size, epochs, target_loss, patience, min_improvement, eval_chunk: the `Schedule`.
      variables: starting variables stacked over seeds ({"params", "batch_stats"}, leading axis
        S), e.g. the iterates of another run to continue from; None: `model.init` from each
        seed's key (`init_variables`).
      on_epoch: called after every epoch with (epoch, EpochMetrics of (S,) arrays): a
        progress bar, a log. flatmin itself prints nothing.
      mesh: the seed axis is sharded over this mesh's "seeds" axis (default: all devices,
        `flatmin.runtime.seed_mesh()`); S is padded to a multiple of its size, the padding
        dropped.
      checkpoint_dir: if given, the run's state is saved there with orbax every
        `checkpoint_every` epochs and when it ends, and a rerun resumes from the latest
        checkpoint: the same result as an uninterrupted run. A finished run returns at once;
        asked for more epochs, it trains on (seeds stopped by target_loss or patience stay
        stopped), to the same result as an uninterrupted run of the longer schedule. A
        checkpoint of another run (see `run_identity`: model, optimizer, data values, schedule
        but epochs, keys, starting variables, `fingerprint`) is refused naming what differs.
      checkpoint_every: epochs between checkpoints.
      fingerprint: JSON-able facts that identify the run beyond what train_seeds can see,
        checked with the checkpoints.

    Returns:
      A `TrainResult` (NumPy arrays, padding dropped).

    Raises:
      ValueError: naming the argument, before anything is compiled: a bad schedule; keys that
        are not a 1-D array of S >= 1 keys (a single unsplit key included); variables without
        a leading axis of S; a bad mesh or checkpoint_every; data that
        `flatmin.training.objective.check_examples` refuses (NaN or infinite inputs, labels
        outside [0, data.num_classes), x and y of different lengths, float labels); a
        batch_size larger than the training set; a checkpoint_dir that is an existing file or
        lies under one.
      CheckpointError: before training, naming the checkpoint, if checkpoint_dir holds a
        checkpoint of another run (naming the parts that differ), one that has trained more
        than `epochs` epochs, or one that is corrupted (an array or the metadata not matching
        its checksum included). Nothing on disk is changed.
    """
    schedule = Schedule(batch_size, epochs, target_loss, patience, min_improvement, eval_chunk)
    if not isinstance(model, nn.Module):
        raise ValueError(f"model must be a flax.linen.Module, got {type(model).__name__}")
    for name in ("init", "update"):
        if not callable(getattr(optimizer, name, None)):
            raise ValueError(
                f"optimizer must be an optax.GradientTransformation, got {type(optimizer).__name__}"
            )
    if not isinstance(data, Dataset):
        raise ValueError(f"data must be a flatmin.Dataset, got {type(data).__name__}")
    keys = _check_keys(keys)
    mesh = check_mesh(mesh)
    checkpoint_every = check_int("checkpoint_every", checkpoint_every, minimum=1)
    if checkpoint_dir is not None:
        checkpoint_dir = check_checkpoint_dir("checkpoint_dir", checkpoint_dir)
    check_callable("on_epoch", on_epoch, optional=True)
    num_classes = check_int("data.num_classes", data.num_classes, minimum=2)
    width = _logit_width(model, data.x_train)
    if width != num_classes:
        raise ValueError(f"model must output data.num_classes = {num_classes} logits, got {width}")
    for split in ("train", "test"):
        check_examples(
            model,
            getattr(data, f"x_{split}"),
            getattr(data, f"y_{split}"),
            schedule.eval_chunk,
            x_name=f"data.x_{split}",
            y_name=f"data.y_{split}",
        )
    n = data.x_train.shape[0]
    if schedule.batch_size > n:
        raise ValueError(
            f"batch_size ({schedule.batch_size}) is larger than the training set ({n} examples)"
        )
    leading = {leaf.shape[:1] for leaf in jax.tree.leaves(variables)}
    if variables is not None and leading != {keys.shape}:
        raise ValueError(
            f"variables must be stacked over the {keys.shape[0]} seeds (leading axis S), got "
            f"leading axes {sorted(leading)}"
        )
    shape = data.x_train.shape[1:]
    init = jax.vmap(lambda key: init_variables(model, jax.random.split(key)[0], shape))
    start, epoch_fn = epoch_program(schedule, model, optimizer)
    run_epoch = jax.jit(jax.vmap(epoch_fn, in_axes=(0, None)), out_shardings=seed_sharding(mesh))

    checkpoints, restored = None, None
    if checkpoint_dir is not None:
        identity = run_identity(model, optimizer, data, keys, schedule, variables, fingerprint)
        checkpoints = Checkpoints(checkpoint_dir, identity)
    try:
        if checkpoints is not None:
            # Read (or refused) before any of the training is compiled.
            starting = jax.eval_shape(init, keys) if variables is None else variables
            carry_shape = jax.eval_shape(jax.vmap(start), keys, starting)
            restored = checkpoints.restore(
                partial(_checkpoint_shape, checkpoints.directory, schedule, carry_shape)
            )
        if restored is None and variables is None:
            variables = init(keys)
        carry, history = _run_epochs(
            schedule, keys, variables, restored, start, run_epoch, data, mesh, checkpoints,
            checkpoint_every, on_epoch,
        )  # fmt: skip
    finally:
        if checkpoints is not None:
            checkpoints.close()
    final = gather(carry, keys.shape[0])
    return TrainResult(
        variables={"params": final.state.params, "batch_stats": final.state.batch_stats},
        history=_stack(history),
        epochs=final.stop.epochs,
        diverged_epoch=final.stop.diverged_epoch,
    )


def _logit_width(model: nn.Module, x: np.ndarray) -> int:
    """The width of `model`'s output on one example of x (shapes only; nothing computed)."""
    example = jax.ShapeDtypeStruct((1, *np.shape(x)[1:]), jnp.result_type(x))
    logits, _ = jax.eval_shape(
        lambda xs: model.init_with_output(jax.random.key(0), xs, train=False), example
    )
    return int(logits.shape[-1])


def run_identity(
    model: nn.Module,
    optimizer: optax.GradientTransformation,
    data: Dataset,
    keys: jax.Array,
    schedule: Schedule,
    variables: PyTree | None,
    fingerprint: Mapping[str, Any] | None,
) -> dict[str, Any]:
    """What a checkpoint of `train_seeds` must match to be continued: {part: JSON-able}.

    Parts (each compared as a whole; a dict part's differing entries are named):
      model: its repr (flax prints its fields; memory addresses dropped), the shapes and dtypes
        of its variables, and a sha256 of the jaxprs of what training runs of it (evaluation
        and training mode apply; `init_variables` when variables is None) with their
        constants: a change of code in the model's methods (a fixed bug) shows there.
      optimizer: the layout of its state (tree, shapes, dtypes) and a sha256 of its updates
        in `PROBE_STEPS` steps from its init state on fixed pseudo-random parameters of the
        model's shapes and fixed gradients, computed on the CPU (`_optimizer_probe`).
      data: the four arrays' shapes and dtypes, num_classes, and a sha256 of their values
        (streamed). The data's name is not part of it: equal arrays are the same data.
      schedule: every field but `epochs` (a run may be continued with more epochs).
      keys: the PRNG implementation and the keys' data.
      starting variables: a sha256 of `variables`, or that they come from `model.init`.
      fingerprint: the caller's own facts.

    Not covered: code outside what is traced (a Python-side change that produces the same
    jaxprs, which then computes the same thing); an optimizer whose difference shows only after
    PROBE_STEPS steps (a schedule's later boundaries, a decay too slow to change a float32 in
    the first steps, gradient accumulation over more steps) or that depends on update
    arguments train_seeds does not pass; the mesh (device count) the run is sharded over. The
    digests of traced code and computed numbers are exact: another jax, flax or optax version,
    or another machine, may trace or round them differently and refuse a checkpoint of an
    unchanged run (the refusal then names those versions).
    """
    shape = data.x_train.shape[1:]
    abstract = jax.eval_shape(lambda key: init_variables(model, key, shape), jax.random.key(0))
    return {
        "model": _model_identity(model, abstract, data.x_train, with_init=variables is None),
        "optimizer": _optimizer_identity(optimizer, abstract["params"]),
        "data": _data_identity(data),
        "schedule": {k: v for k, v in dataclasses.asdict(schedule).items() if k != "epochs"},
        "keys": [str(jax.random.key_impl(keys)), np.asarray(jax.random.key_data(keys))],
        "starting variables": "model.init" if variables is None else _digest(variables),
        "fingerprint": json_ready(fingerprint or {}),
    }


def _model_identity(
    model: nn.Module, variables: PyTree, x: np.ndarray, with_init: bool
) -> dict[str, Any]:
    """The model's repr, its `variables`' layout and a digest of its traced computation on
    inputs like x (see `run_identity`); shapes only, nothing is computed."""
    # Two examples: batch norm in training mode is then traced as it trains.
    xs = jax.ShapeDtypeStruct((2, *np.shape(x)[1:]), jnp.result_type(x))
    key = jax.random.key(0)
    traced = [
        jax.make_jaxpr(lambda v, xs: model.apply(v, xs, train=False))(variables, xs),
        jax.make_jaxpr(
            lambda v, xs, k: model.apply(
                v, xs, train=True, mutable=["batch_stats"], rngs={"dropout": k}
            )
        )(variables, xs, key),
    ]
    if with_init:
        traced.append(jax.make_jaxpr(lambda k: init_variables(model, k, np.shape(x)[1:]))(key))
    digest = hashlib.sha256()
    for jaxpr in traced:
        digest.update(str(jaxpr).encode())
        for const in jaxpr.consts:  # arrays the code closes over are not printed
            hash_array(digest, const)
    return {
        "repr": re.sub(r" at 0x[0-9a-fA-F]+", "", repr(model)),
        "variables": _layout(variables),
        "computation": digest.hexdigest(),
    }


def _optimizer_identity(optimizer: optax.GradientTransformation, params: PyTree) -> dict:
    """The optimizer's state layout and a digest of its probe's updates (see `run_identity`)."""
    state = jax.eval_shape(optimizer.init, params)
    digest = hashlib.sha256()
    for update in jax.tree.leaves(_optimizer_probe(optimizer, params)):
        hash_array(digest, update)
    return {"state": _layout(state), "updates": digest.hexdigest()}


def _optimizer_probe(optimizer: optax.GradientTransformation, params: PyTree) -> list[PyTree]:
    """The optimizer's updates in PROBE_STEPS steps from `optimizer.init`, called as train_step
    calls it, on fixed parameters of params' shapes and dtypes with fixed gradients.

    Computed on the CPU when jax has one, so that the digest does not depend on the
    accelerator: deterministic on one machine and jax version.
    """

    def probe(params, gradients):
        state, updates = optimizer.init(params), []
        for grads in gradients:
            update, state = optimizer.update(grads, state, params)
            params = optax.apply_updates(params, update)
            updates.append(update)
        return updates

    try:
        device = jax.local_devices(backend="cpu")[0]
    except RuntimeError:  # JAX_PLATFORMS without cpu
        device = jax.local_devices()[0]
    gradients = [_fixed_values(step, params) for step in range(1, PROBE_STEPS + 1)]
    with jax.default_device(device):
        return jax.jit(probe)(_fixed_values(0, params), gradients)


def _fixed_values(seed: int, tree: PyTree) -> PyTree:
    """Arrays of tree's shapes (floating dtypes; float32 for others) with values spread over
    [-1, 1): an integer hash of (seed, leaf, index), exact arithmetic, so the same on every
    machine, and cheap (no PRNG program to compile)."""
    mask = np.uint64(0xFFFFFFFF)

    def values(leaf_index, leaf):
        dtype = leaf.dtype if jnp.issubdtype(leaf.dtype, jnp.floating) else np.float32
        x = np.arange(int(np.prod(leaf.shape)), dtype=np.uint64)
        x = (x + np.uint64(((seed * 65537 + leaf_index * 257) << 24) % (1 << 32))) & mask
        for _ in range(2):  # a 32-bit integer mixer ("lowbias32"-like): neighbours decorrelate
            x = (((x >> np.uint64(16)) ^ x) * np.uint64(0x45D9F3B)) & mask
        x = (x >> np.uint64(16)) ^ x
        return (x.astype(np.float64) / 2**31 - 1).astype(dtype).reshape(leaf.shape)

    leaves, treedef = jax.tree.flatten(tree)
    return treedef.unflatten([values(i, leaf) for i, leaf in enumerate(leaves)])


def _data_identity(data: Dataset) -> dict[str, Any]:
    """The data's shapes, dtypes, num_classes and a sha256 of its four arrays."""
    digest = hashlib.sha256()
    for array in data[:4]:
        hash_array(digest, array)
    return {
        "shapes": [list(np.shape(a)) for a in data[:4]],
        "dtypes": [str(np.dtype(a.dtype)) for a in data[:4]],
        "num_classes": data.num_classes,
        "values": digest.hexdigest(),
    }


def _layout(tree: PyTree) -> str:
    """A tree's structure and its leaves' shapes and dtypes, as text."""
    shapes = jax.tree.map(lambda a: f"{np.dtype(a.dtype)}{list(a.shape)}", tree)
    return f"{jax.tree.structure(tree)} {jax.tree.leaves(shapes)}"


def _digest(tree: Any) -> str:
    """sha256 of a pytree's leaves: which starting variables a run began from."""
    digest = hashlib.sha256()
    for leaf in jax.tree.leaves(tree):
        hash_array(digest, leaf)
    return digest.hexdigest()


def _checkpoint_shape(
    directory: Path, schedule: Schedule, carry: SeedCarry, meta: Mapping[str, Any]
) -> dict:
    """The abstract tree of a checkpoint that trained meta["epoch"] epochs; refuses one that
    trained more than schedule.epochs (its state after schedule.epochs is not kept)."""
    trained = int(meta["epoch"])
    if trained > schedule.epochs:
        raise CheckpointError(
            f"checkpoint {directory} holds a run that has trained {trained} epochs, more than "
            f"epochs={schedule.epochs}, and its state at epoch {schedule.epochs} was not kept. "
            f"Nothing was changed; ask for epochs >= {trained} to get it back (or continue it), "
            f"or use another checkpoint_dir, or delete {directory} to start over."
        )
    return _checkpoint_tree(carry, _history_shape(carry.stop.done.shape[0], trained))


def _run_epochs(
    schedule, keys, variables, restored, start, run_epoch, data, mesh, checkpoints, every,
    on_epoch,
):  # fmt: skip
    """The epoch loop of `train_seeds`, from `variables` or from a `restored` checkpoint.

    Returns the final carry (sharded, padded) and the per-epoch metrics (padding dropped)."""
    num_seeds = keys.shape[0]
    size = padded_size(num_seeds, mesh)
    seeds = seed_sharding(mesh)
    if restored is None:
        padded = place(pad_seeds((keys, variables), size), seeds)
        carry = jax.jit(jax.vmap(start), out_shardings=seeds)(*padded)
        history, epoch, stopped = [], 0, False
    else:
        tree, meta = restored
        carry = place(
            pad_seeds(_from_checkpoint(tree["carry"], jax.random.key_impl(keys)), size), seeds
        )
        epoch = int(meta["epoch"])
        # Seeds stopped by their rules stay stopped; a run that only ran out of epochs goes on.
        stopped = bool(np.all(np.asarray(tree["carry"].stop.done)))
        history = [
            EpochMetrics(*(np.asarray(column)[:, e] for column in tree["history"]))
            for e in range(epoch)
        ]

    arrays = place(tuple(data[:4]), replicated(mesh))
    finished = stopped or epoch >= schedule.epochs
    while not finished:
        carry = run_epoch(carry, (np.int32(epoch), *arrays))
        epoch += 1
        metrics, done = gather((carry.metrics, carry.stop.done), num_seeds)
        history.append(EpochMetrics(*metrics))
        if on_epoch is not None:
            on_epoch(epoch, history[-1])
        finished = bool(np.all(done)) or epoch == schedule.epochs
        if checkpoints is not None and (finished or epoch % every == 0):
            checkpoints.save(
                epoch,
                _checkpoint_tree(gather(carry, num_seeds), _stack(history)),
                {"epoch": epoch, "epochs": schedule.epochs, "finished": finished},
            )
    return carry, history


def epoch_program(
    schedule: Schedule,
    model: nn.Module,
    optimizer: optax.GradientTransformation,
) -> tuple[Callable[[jax.Array, dict], SeedCarry], Callable[[SeedCarry, tuple], SeedCarry]]:
    """One seed's (start, epoch) functions, which `train_seeds` vmaps and compiles.

    start(key, variables) -> SeedCarry builds the seed's initial state from its starting
    variables (its dropout randomness from the second half of split(key)); epoch(carry,
    (epoch, x, y, x_test, y_test)) -> carry trains one epoch and applies the stopping rules.
    """

    def start(key: jax.Array, variables: dict) -> SeedCarry:
        dropout_key = jax.random.split(key)[1]
        state = TrainState(
            params=variables["params"],
            batch_stats=variables.get("batch_stats", {}),  # {} without batch norm
            opt_state=optimizer.init(variables["params"]),
            key=dropout_key,
            step=jnp.zeros((), jnp.int32),
        )
        stop = StopState(
            done=jnp.zeros((), bool),
            epochs=jnp.zeros((), jnp.int32),
            best_loss=jnp.full((), jnp.inf, jnp.float32),
            stale=jnp.zeros((), jnp.int32),
            diverged_epoch=jnp.zeros((), jnp.int32),
        )
        nan = jnp.full((), jnp.nan, jnp.float32)
        return SeedCarry(state, stop, EpochMetrics(nan, nan, nan))

    return start, _make_epoch(schedule, model, optimizer)


def _history_shape(num_seeds: int, epochs: int) -> EpochMetrics:
    column = jax.ShapeDtypeStruct((num_seeds, epochs), np.float32)
    return EpochMetrics(column, column, column)


def _stack(history: list[EpochMetrics]) -> EpochMetrics:
    """Per-epoch metrics -> EpochMetrics of (S, E) arrays."""
    columns = [np.stack(column, axis=1).astype(np.float32) for column in zip(*history, strict=True)]
    return EpochMetrics(*columns)


def _checkpoint_tree(carry: SeedCarry, history: EpochMetrics) -> dict:
    """What a training checkpoint holds: typed keys as their raw data (orbax stores arrays)."""
    key = carry.state.key
    if isinstance(key, jax.ShapeDtypeStruct):  # the abstract tree that restoring needs
        key_data = jax.eval_shape(jax.random.key_data, key)
    else:
        key_data = np.asarray(jax.random.key_data(key))
    carry = carry._replace(state=carry.state._replace(key=key_data))
    return {"carry": carry, "history": history}


def _from_checkpoint(carry: SeedCarry, impl: Any) -> SeedCarry:
    """A restored carry with its keys typed again, of the PRNG implementation `impl`."""
    key = jax.random.wrap_key_data(np.asarray(carry.state.key), impl=impl)
    return carry._replace(state=carry.state._replace(key=key))


def _make_epoch(schedule: Schedule, model: nn.Module, optimizer: optax.GradientTransformation):
    """One seed's epoch: (carry, (epoch, x, y, x_test, y_test)) -> carry."""
    train_step = make_train_step(model, optimizer)

    def epoch_fn(carry: SeedCarry, inputs) -> SeedCarry:
        state, stop = carry.state, carry.stop
        epoch, x, y, x_test, y_test = inputs
        n = x.shape[0]
        num_batches = n // schedule.batch_size
        # A fresh permutation each epoch, from the seed's own key: seeds see different orders.
        order = jax.random.permutation(jax.random.fold_in(state.key, -1 - epoch), n)
        size = schedule.batch_size
        batches = order[: num_batches * size].reshape(num_batches, size)
        new_state, _ = jax.lax.scan(lambda s, idx: train_step(s, (x[idx], y[idx])), state, batches)

        chunk = schedule.eval_chunk
        loss, accuracy = evaluate(
            model, new_state.params, new_state.batch_stats, x, y, chunk_size=chunk
        )
        _, test_accuracy = evaluate(
            model, new_state.params, new_state.batch_stats, x_test, y_test, chunk_size=chunk
        )
        new = SeedCarry(
            new_state,
            _update_stop(schedule, stop, loss),
            EpochMetrics(loss, accuracy, test_accuracy),
        )
        # A seed that was already done is frozen: state, stopping record and metrics.
        return jax.tree.map(lambda n, o: jnp.where(stop.done, o, n), new, carry)

    return epoch_fn


def _update_stop(schedule: Schedule, stop: StopState, loss: jax.Array) -> StopState:
    """Applies the stopping rules to one seed after an epoch that ended with training `loss`."""
    epochs = stop.epochs + 1
    diverged = ~jnp.isfinite(loss)
    improved = loss < stop.best_loss * (1 - schedule.min_improvement)
    stale = jnp.where(improved, 0, stop.stale + 1)
    done = diverged
    if schedule.target_loss is not None:
        done |= loss <= schedule.target_loss
    if schedule.patience is not None:
        done |= stale >= schedule.patience
    return StopState(
        done=done,
        epochs=epochs,
        best_loss=jnp.minimum(stop.best_loss, jnp.where(diverged, jnp.inf, loss)),
        stale=stale,
        diverged_epoch=jnp.where(diverged, epochs, 0),
    )


def _check_keys(keys: Any) -> jax.Array:
    """(S,) typed keys from (S,) typed keys or (S, *key_shape) raw uint32 key data; S >= 1."""
    split = "one key per seed, e.g. jax.random.split(jax.random.key(0), S)"
    if not isinstance(keys, jax.Array | np.ndarray):
        raise ValueError(f"keys must be an array of {split}; got {type(keys).__name__}")
    if jnp.issubdtype(keys.dtype, jax.dtypes.prng_key):
        if keys.ndim != 1:
            single = "a single key" if keys.ndim == 0 else f"keys of shape {keys.shape}"
            raise ValueError(f"keys must be a 1-D array (S,) of {split}; got {single}")
    else:
        key_shape = jax.eval_shape(lambda: jax.random.key_data(jax.random.key(0))).shape
        if keys.dtype != np.uint32 or keys.shape[1:] != key_shape:
            single = " (a single raw key)" if keys.shape == key_shape else ""
            raise ValueError(
                f"keys must be typed PRNG keys of shape (S,), or raw uint32 key data of shape "
                f"(S, {', '.join(map(str, key_shape))}) for the default PRNG implementation: "
                f"{split}; got {keys.dtype} data of shape {keys.shape}{single}"
            )
        keys = jax.random.wrap_key_data(keys)
    if keys.shape[0] < 1:
        raise ValueError(f"keys must hold at least one seed's key, shape (S,), got {keys.shape}")
    return keys
