"""An in-process MongoDB replica-set emulator for tests: real PyMongo talks to it over TCP."""

from __future__ import annotations

import asyncio
import signal
import sys

from changestream_worker.testing.emulator.server import ReplicaSetEmulator

__all__ = ["ReplicaSetEmulator", "serve"]


async def serve(host: str = "127.0.0.1", port: int = 27017, secondaries: int = 0) -> int:
    """Run an emulator until SIGINT/SIGTERM; print its URI as the first line of stdout."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    async with ReplicaSetEmulator(host=host, port=port, secondaries=secondaries) as rs:
        print(rs.uri, flush=True)
        await stop.wait()
    print("emulator stopped", file=sys.stderr)
    return 0
