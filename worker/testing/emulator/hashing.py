"""``$toHashedIndexKey``: MongoDB's 64-bit hash of a BSON value, added to mongomock's parser.

The hash is the first 8 bytes (little-endian) of an MD5 over a seed, the value's canonical
type and its bytes (numbers squashed to a 64-bit integer), as the server computes hashed
index keys — so partition filters place a key where real MongoDB would.
"""

from __future__ import annotations

import datetime
import hashlib
import math
import struct
from typing import Any

import bson
from bson import Binary, Int64, ObjectId, Timestamp
from mongomock import aggregate as mm_aggregate

_CANONICAL = {
    type(None): 5,
    int: 10,
    float: 10,
    Int64: 10,
    str: 15,
    dict: 20,
    list: 25,
    bytes: 30,
    Binary: 30,
    ObjectId: 35,
    bool: 40,
    datetime.datetime: 45,
    Timestamp: 47,
}


def _canonical(value: Any) -> int:
    for kind in type(value).__mro__:
        if kind in _CANONICAL:
            return _CANONICAL[kind]
    raise ValueError(f"$toHashedIndexKey: unsupported value type {type(value).__name__}")


def _number_as_long(value: float | int) -> int:
    if isinstance(value, float):
        if math.isnan(value):
            return -(2**63)
        if value >= 2**63:
            return 2**63 - 1
        if value < -(2**63):
            return -(2**63)
        return int(value)
    return int(value)


def _hash_into(md5: Any, value: Any, name: str | None) -> None:
    md5.update(struct.pack("<i", _canonical(value) if name != "\x00eoo" else -1))
    if name is not None and name != "\x00eoo":
        md5.update(name.encode() + b"\x00")
    if name == "\x00eoo":
        md5.update(b"\x00")
        return
    if isinstance(value, bool):
        md5.update(b"\x01" if value else b"\x00")
    elif isinstance(value, int | float):
        md5.update(struct.pack("<q", _number_as_long(value)))
    elif isinstance(value, dict | list):
        items = (
            value.items() if isinstance(value, dict) else ((str(i), v) for i, v in enumerate(value))
        )
        for key, sub in items:
            _hash_into(md5, sub, key)
        _hash_into(md5, None, "\x00eoo")
    elif value is not None:
        # the element's value bytes exactly as BSON encodes them
        encoded = bson.encode({"": value})
        md5.update(encoded[4 + 1 + 1 : -1])


def hash64(value: Any, seed: int = 0) -> int:
    """The signed 64-bit hash MongoDB gives ``value`` in a hashed index."""
    md5 = hashlib.md5(usedforsecurity=False)
    md5.update(struct.pack("<i", seed))
    _hash_into(md5, value, None)
    return struct.unpack("<q", md5.digest()[:8])[0]


def _mod(dividend: Any, divisor: Any) -> Any:
    # mongomock computes $mod in floating point, which is wrong for 64-bit hashes:
    # integers stay exact, and the result takes the dividend's sign as in MongoDB
    if isinstance(dividend, int) and isinstance(divisor, int) and not isinstance(dividend, bool):
        if divisor == 0:
            raise ValueError("$mod by zero")
        result = abs(dividend) % abs(divisor)
        return type(dividend)(-result if dividend < 0 else result)
    return math.fmod(dividend, divisor)


def install() -> None:
    """Teach mongomock's parser ``$toHashedIndexKey`` and exact integer ``$mod`` (idempotent)."""
    parser = mm_aggregate._Parser
    if getattr(parser, "_hashed_key_installed", False):
        return
    original = parser.parse

    def parse(self: Any, expression: Any) -> Any:
        if isinstance(expression, dict) and len(expression) == 1:
            if "$toHashedIndexKey" in expression:
                return Int64(hash64(original(self, expression["$toHashedIndexKey"])))
            if "$mod" in expression:
                return _mod(*(original(self, arg) for arg in expression["$mod"]))
        return original(self, expression)

    parser.parse = parse  # type: ignore[method-assign]  # the patch is the point
    parser._hashed_key_installed = True  # type: ignore[attr-defined]
