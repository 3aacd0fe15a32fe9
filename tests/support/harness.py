"""Helpers for tests that run the worker: config builders, in-process runs, worker processes."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import yaml

from changestream_worker.config.models import Settings
from changestream_worker.service.supervisor import Supervisor

REPO = Path(__file__).resolve().parents[2]
RECORDER = "tests.support.recorder:Recorder"


def unique(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex[:8]}"


def config_dict(
    uri: str,
    db: str,
    state_db: str,
    watchers: list[dict[str, Any]],
    handlers: dict[str, Any] | None = None,
    **over: Any,
) -> dict[str, Any]:
    """A complete config as a dict; `over` replaces top-level sections."""
    cfg: dict[str, Any] = {
        "mongodb": {"uri": uri, "database": db},
        "state": {"database": state_db},
        "checkpoint": {"interval": "200ms", "max_events": 100},
        "http": {"enabled": False},
        "logging": {"format": "json", "level": "info"},
        "shutdown_timeout": "10s",
        "leases": {"enabled": False},
        "handlers": handlers or {"recorder": {"type": RECORDER, "options": {}}},
        "watchers": watchers,
    }
    cfg.update(over)
    return cfg


def watcher(name: str = "items", collection: str = "items", **kw: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "name": name,
        "collection": collection,
        "handlers": ["recorder"],
        "max_await_time": "100ms",
        "concurrency": 16,
        "retry": {"attempts": 3, "initial_delay": "10ms", "max_delay": "50ms"},
    }
    base.update(kw)
    return base


def settings_of(cfg: dict[str, Any]) -> Settings:
    return Settings.model_validate(cfg)


@contextlib.asynccontextmanager
async def running(settings: Settings) -> AsyncIterator[Supervisor]:
    """Run a supervisor in this loop; stop it (drain, final checkpoint) on exit."""
    sup = Supervisor(settings)
    await sup.start()
    try:
        yield sup
    finally:
        await sup.shutdown()


async def eventually(
    check: Callable[[], Awaitable[bool]], timeout: float = 15.0, what: str = "condition"
) -> None:
    """Poll an async predicate until it holds; fail with `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if await check():
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


class WorkerProcess:
    """`changestream-worker run` in a child process, logs in a file."""

    def __init__(
        self, cfg: dict[str, Any], tmp: Path, name: str = "w", env: dict[str, str] | None = None
    ) -> None:
        self.path = tmp / f"{name}.yaml"
        self.path.write_text(yaml.safe_dump(cfg))
        self.log_path = tmp / f"{name}.log"
        self.name = name
        self.env = {**os.environ, "PYTHONPATH": str(REPO), **(env or {})}
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> WorkerProcess:
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "changestream_worker", "run", "-c", str(self.path)],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=self.env,
            cwd=REPO,
        )
        log.close()
        return self

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def signal(self, sig: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    def kill(self) -> None:
        self.signal(signal.SIGKILL)
        self.wait(10)

    def wait(self, timeout: float) -> int:
        assert self.proc is not None
        return self.proc.wait(timeout)

    def stop(self) -> int | None:
        if self.proc is None or self.proc.poll() is not None:
            return None if self.proc is None else self.proc.returncode
        self.signal(signal.SIGCONT)
        self.signal(signal.SIGTERM)
        try:
            return self.wait(30)
        except subprocess.TimeoutExpired:
            self.kill()
            return None

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")
