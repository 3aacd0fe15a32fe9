"""Gaps of mongomock, filled where the emulator relies on it (BSON Timestamp ordering)."""

from __future__ import annotations

from typing import Any

from bson import Timestamp
from bson.max_key import MaxKey
from bson.min_key import MinKey
from mongomock import aggregate as mm_aggregate
from mongomock import filtering

from changestream_worker.testing.emulator import hashing


def install() -> None:
    """Patch mongomock once: BSON order for Timestamps, MinKey and MaxKey; more operators."""
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
    _install_merge_objects()


def _install_merge_objects() -> None:
    """Teach mongomock's expression parser ``$mergeObjects`` (later documents win)."""
    parser = mm_aggregate._Parser
    original = parser.parse

    def parse(self: Any, expression: Any) -> Any:
        if isinstance(expression, dict) and len(expression) == 1 and "$mergeObjects" in expression:
            args = expression["$mergeObjects"]
            merged: dict[str, Any] = {}
            for arg in args if isinstance(args, list) else [args]:
                try:
                    value = original(self, arg)
                except KeyError:
                    continue  # a missing field merges as nothing
                if isinstance(value, dict):
                    merged.update(value)
                elif value is not None:
                    raise TypeError("$mergeObjects requires object inputs")
            return merged
        return original(self, expression)

    parser.parse = parse  # type: ignore[method-assign]  # the patch is the point
