"""The test kit for handler authors: an emulator, event factories, a worker to run in tests.

Never imported by the worker's production modules. Its pytest fixtures (``mongo_emulator``,
``run_worker``) are registered through the ``pytest11`` entry point.
"""

from __future__ import annotations

from changestream_worker.state.checkpoints import MemoryCheckpointStore
from changestream_worker.testing.emulator import ReplicaSetEmulator
from changestream_worker.testing.factories import cluster_time_of, make_event, make_raw, token_of
from changestream_worker.testing.runner import RunningWorker, running_worker

__all__ = [
    "MemoryCheckpointStore",
    "ReplicaSetEmulator",
    "RunningWorker",
    "cluster_time_of",
    "make_event",
    "make_raw",
    "running_worker",
    "token_of",
]
