"""Gaps of mongomock, filled where the emulator relies on it (BSON Timestamp ordering)."""

from __future__ import annotations

import random
import re
from typing import Any

from bson import Binary, Int64, Regex, Timestamp
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
    filtering.TYPE_MAP.update(
        {
            "null": lambda v: v is None,
            "timestamp": lambda v: isinstance(v, Timestamp),
            "regex": lambda v: isinstance(v, Regex | re.Pattern),
            "binData": lambda v: isinstance(v, bytes | Binary),
            "minKey": lambda v: isinstance(v, MinKey),
            "maxKey": lambda v: isinstance(v, MaxKey),
            "long": lambda v: (
                isinstance(v, Int64)
                or (isinstance(v, int) and not isinstance(v, bool) and v.bit_length() > 31)
            ),
            "int": lambda v: (
                isinstance(v, int) and not isinstance(v, bool | Int64) and v.bit_length() <= 31
            ),
        }
    )
    filtering._emulator_patched = True  # type: ignore[attr-defined]
    hashing.install()
    _install_merge_objects()
    _install_missing_comparisons()
    _install_field_operators()


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


_ABSENT = object()


def _install_missing_comparisons() -> None:
    """Comparison expressions on a missing field compare it as missing (below null), as the
    server does, instead of mongomock's KeyError."""
    parser = mm_aggregate._Parser
    original = parser._handle_comparison_operator

    def compare(self: Any, operator: str, values: Any) -> Any:
        try:
            return original(self, operator, values)
        except KeyError:
            pass
        ops = []
        for value in values:
            try:
                ops.append(self.parse(value))
            except KeyError:
                ops.append(_ABSENT)
        a, b = ops
        if a is _ABSENT or b is _ABSENT:
            order = 0 if a is b else (-1 if a is _ABSENT else 1)
        else:
            lt = filtering.bson_compare(lambda x, y: x < y, a, b)
            order = -1 if lt else (0 if a == b else 1)
        return {
            "$eq": order == 0,
            "$ne": order != 0,
            "$lt": order < 0,
            "$lte": order <= 0,
            "$gt": order > 0,
            "$gte": order >= 0,
            "$cmp": order,
        }[operator]

    parser._handle_comparison_operator = compare  # type: ignore[method-assign]  # the patch is the point


def _install_field_operators() -> None:
    """``$getField`` and ``$setField``/``$unsetField``: the 5.0 helpers for odd field names."""
    parser = mm_aggregate._Parser
    original = parser.parse

    def parse(self: Any, expression: Any) -> Any:
        if isinstance(expression, dict) and len(expression) == 1:
            ((op, arg),) = expression.items()
            if op == "$rand":
                return random.random()
            if op == "$getField":
                spec = arg if isinstance(arg, dict) else {"field": arg}
                field = original(self, spec["field"])
                source = original(self, spec.get("input", "$$CURRENT"))
                if not isinstance(source, dict) or field not in source:
                    raise KeyError(field)
                return source[field]
            if op in ("$setField", "$unsetField"):
                field = original(self, arg["field"])
                source = original(self, arg["input"])
                out = dict(source) if isinstance(source, dict) else {}
                value = arg.get("value", "$$REMOVE") if op == "$setField" else "$$REMOVE"
                if value == "$$REMOVE":
                    out.pop(field, None)
                else:
                    out[field] = original(self, value)
                return out
        return original(self, expression)

    parser.parse = parse  # type: ignore[method-assign]  # the patch is the point
