"""Run by test_sharding.py: an experiment script with every file-system change it makes from
Python under a directory recorded, so the test can tell which process wrote what.

    python tests/harnesses/audited_run.py LOG WATCHED SCRIPT [flags ...]

runs SCRIPT as __main__ with the flags, after installing a `sys.addaudithook` hook that
appends one JSON line to LOG, [event, path], for every file under WATCHED that the process
opens for writing ("open"), creates as a directory ("os.mkdir"), renames or replaces
("os.rename", recorded with its destination), or removes ("os.remove", "os.rmdir"). Writes by
native code (tensorstore, under orbax) bypass Python and are not seen; flatmin's own files
(JSON, Markdown, PNG) are all written from Python.
"""

import json
import os
import runpy
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND


def _install(log: str, watched: str) -> None:
    watched = os.path.realpath(watched)
    fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)  # before the hook

    def under(path) -> str | None:
        if isinstance(path, int) or path is None:
            return None
        full = os.path.realpath(os.fsdecode(path))
        return full if full == watched or full.startswith(watched + os.sep) else None

    def hook(event: str, args: tuple) -> None:
        if event == "open":
            path, mode, flags = args
            writing = any(c in mode for c in "wax+") if isinstance(mode, str) else False
            writing |= isinstance(flags, int) and bool(flags & WRITE_FLAGS)
            path = under(path) if writing else None
        elif event == "os.rename":
            path = under(args[1])
        elif event in ("os.mkdir", "os.remove", "os.rmdir"):
            path = under(args[0])
        else:
            return
        if path is not None:
            os.write(fd, (json.dumps([event, os.path.relpath(path, watched)]) + "\n").encode())

    sys.addaudithook(hook)


if __name__ == "__main__":
    log, watched, script, *flags = sys.argv[1:]
    _install(log, watched)
    sys.argv = [script, *flags]
    runpy.run_path(script, run_name="__main__")
