"""Runtime plumbing: the seed axis over devices and processes, orbax checkpoints, resumable
run directories and atomic JSON writes."""

from flatmin.runtime.checkpoint import (
    CheckpointError,
    Checkpoints,
    RunDirectory,
    json_ready,
    write_json,
    write_text,
)
from flatmin.runtime.sharding import gather, initialize_distributed, seed_mesh

__all__ = [
    "CheckpointError",
    "Checkpoints",
    "RunDirectory",
    "gather",
    "initialize_distributed",
    "json_ready",
    "seed_mesh",
    "write_json",
    "write_text",
]
