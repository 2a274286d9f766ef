"""Run by test_checkpoint.py in a child process: experiments/sharpness_table.py, stopped at a
known point so that the parent can kill it there without timing assumptions.

    python tests/interrupted_run.py READY_FD [sharpness_table flags ...]

`flatmin.checkpoint.Checkpoints.save` is wrapped: after the first checkpoint is completely
written (orbax has renamed it into place), the child writes "<directory> <step>" and a newline
to the file descriptor READY_FD (the write end of a pipe the parent holds), closes it, and
waits for a signal for ever. The parent reads the line, sends SIGKILL or SIGTERM, and finds on
disk exactly the state of a run interrupted right after its first checkpoint.

The corrupted-checkpoint test also uses this file, as ``interrupted_run.py corrupted DIRECTORY
CONFIG_JSON SEED``: it resumes a train_seeds run from a truncated checkpoint and prints the
CheckpointError's message. orbax's abandoned reads of the
truncated file then call back into an event loop that orbax has closed; Python reports those
callbacks as unraisable exceptions, here in a process of their own and not in pytest's.
"""

import json
import os
import signal
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "experiments"))

from flatmin.checkpoint import CheckpointError, Checkpoints  # noqa: E402


def _stop_after_the_first_save(ready_fd: int) -> None:
    save = Checkpoints.save

    def save_then_wait(self, step, tree, meta):
        save(self, step, tree, meta)
        os.write(ready_fd, f"{self.directory} {step}\n".encode())
        os.close(ready_fd)
        while True:  # the parent's SIGKILL or SIGTERM ends the process (default disposition)
            signal.pause()

    Checkpoints.save = save_then_wait


def _resume_corrupted(directory: str, config_json: str, seed: str) -> None:
    """train_seeds(TrainConfig(**config), split(key(seed), 2), digits) resumed from directory."""
    import jax

    import flatmin

    config = flatmin.TrainConfig(**json.loads(config_json))
    keys = jax.random.split(jax.random.key(int(seed)), 2)
    try:
        flatmin.train_seeds(config, keys, flatmin.load_dataset("digits"), checkpoint_dir=directory)
    except CheckpointError as error:
        print(error, flush=True)
    else:
        sys.exit("no CheckpointError")


if __name__ == "__main__":
    if sys.argv[1] == "corrupted":
        _resume_corrupted(*sys.argv[2:])
    else:
        _stop_after_the_first_save(int(sys.argv[1]))
        import sharpness_table

        sharpness_table.main(sys.argv[2:])
