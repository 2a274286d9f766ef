"""Run by test_checkpoint.py in a child process: experiments/sharpness_table.py, stopped at a
known point so that the parent can kill it there without timing assumptions.

    python tests/harnesses/interrupted_run.py READY_FD [sharpness_table flags ...]

`flatmin.runtime.checkpoint.Checkpoints.save` is wrapped: after the first checkpoint is completely
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

import os
import signal
import sys

from flatmin.runtime.checkpoint import CheckpointError, Checkpoints


def _stop_after_the_first_save(ready_fd: int) -> None:
    save = Checkpoints.save

    def save_then_wait(self, step, tree, meta):
        save(self, step, tree, meta)
        os.write(ready_fd, f"{self.directory} {step}\n".encode())
        os.close(ready_fd)
        while True:  # the parent's SIGKILL or SIGTERM ends the process (default disposition)
            signal.pause()

    Checkpoints.save = save_then_wait


def _resume_corrupted(directory: str, seed: str) -> None:
    """test_checkpoint's small run (split(key(seed), 2), digits) resumed from directory."""
    import jax
    import optax

    import flatmin

    model = flatmin.build_model("mlp", 10, hidden=(16,))
    keys = jax.random.split(jax.random.key(int(seed)), 2)
    data = flatmin.load_dataset("digits")
    try:
        flatmin.train_seeds(
            model, optax.adam(1e-3), data, keys, batch_size=64, epochs=4, checkpoint_dir=directory
        )
    except CheckpointError as error:
        print(error, flush=True)
    else:
        sys.exit("no CheckpointError")


if __name__ == "__main__":
    if sys.argv[1] == "corrupted":
        _resume_corrupted(*sys.argv[2:])
    else:
        _stop_after_the_first_save(int(sys.argv[1]))
        from experiments import sharpness_table

        sharpness_table.main(sys.argv[2:])
