"""The pytest plugin (entry point ``pytest11``): fixtures for testing handlers, no Docker.

Loaded into every pytest run of a project that installs changestream-worker, so it
imports nothing heavy until a fixture is used.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Mapping
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from changestream_worker.testing.runner import RunningWorker

RunWorker = Callable[[Mapping[str, Any]], contextlib.AbstractAsyncContextManager["RunningWorker"]]


@pytest.fixture
def mongo_emulator() -> Iterator[str]:
    """The URI of a fresh MongoDB replica-set emulator, served for this test only."""
    from changestream_worker.testing.emulator import ReplicaSetEmulator

    rs = ReplicaSetEmulator(port=0).start_in_thread()
    try:
        yield rs.uri
    finally:
        rs.stop_thread()


@pytest.fixture
def run_worker(mongo_emulator: str) -> RunWorker:
    """``async with run_worker(config) as worker:`` runs a worker on the emulator.

    ``config`` is shaped like the YAML file (``mongodb.uri`` may be left out); the worker
    has waited for every watcher's starting point when the block begins.
    """
    from changestream_worker.testing.runner import running_worker

    def start(config: Mapping[str, Any]) -> contextlib.AbstractAsyncContextManager[RunningWorker]:
        return running_worker(config, uri=mongo_emulator)

    return start


__all__ = ["RunWorker", "mongo_emulator", "run_worker"]
