"""Gaps of mongomock, filled where the emulator relies on it (BSON Timestamp ordering)."""

from __future__ import annotations

from typing import Any

from bson import Timestamp
from bson.max_key import MaxKey
from bson.min_key import MinKey
from mongomock import filtering

from changestream_worker.testing.emulator import hashing


def install() -> None:
    """Patch mongomock once: compare Timestamps, MinKey and MaxKey in BSON order."""
    if getattr(filtering, "_emulator_patched", False):
        return
    original = filtering._get_compare_type

    def compare_type(val: Any) -> Any:
        if isinstance(val, Timestamp):
            return 47  # after dates, before regular expressions
        if isinstance(val, MinKey):
            return -1
        if isinstance(val, MaxKey):
            return 127
        return original(val)

    filtering._get_compare_type = compare_type
    filtering._emulator_patched = True  # type: ignore[attr-defined]
    hashing.install()
