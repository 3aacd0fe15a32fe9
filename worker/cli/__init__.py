"""The command line: run, check-config, status, dlq, checkpoint, emulator, demo."""

from __future__ import annotations

from changestream_worker.cli.main import main

__all__ = ["main"]
