"""The update operators themselves, each applied at one (parent, key) target of a path."""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from bson import Decimal128, Int64, Timestamp
from mongomock import filtering

from changestream_worker.testing.emulator.engine import WriteFailure
from changestream_worker.testing.emulator.keys import NOTHING

NUMERIC = (int, float, Int64, Decimal128)


def copy_value(v: Any) -> Any:
    if isinstance(v, dict):
        return {k: copy_value(x) for k, x in v.items()}
    if isinstance(v, list):
        return [copy_value(x) for x in v]
    return v


def type_name(v: Any) -> str:
    if isinstance(v, bool):
        return "bool"
    if isinstance(v, dict):
        return "object"
    if isinstance(v, list):
        return "array"
    if isinstance(v, str):
        return "string"
    if v is None:
        return "null"
    if isinstance(v, int):
        return "int" if -(2**31) <= v < 2**31 else "long"
    return "double" if isinstance(v, float) else type(v).__name__


def has_at(node: Any, key: Any) -> bool:
    return key in node if isinstance(node, dict) else 0 <= key < len(node)


def get_at(node: Any, key: Any) -> Any:
    if isinstance(node, dict):
        return node.get(key, NOTHING)
    if isinstance(node, list) and isinstance(key, int) and 0 <= key < len(node):
        return node[key]
    return NOTHING


def put_at(node: Any, key: Any, value: Any) -> None:
    if isinstance(node, dict):
        node[key] = value
        return
    while len(node) <= key:
        node.append(None)
    node[key] = value


def _set(u: Any, parent: Any, key: Any, arg: Any, path: str) -> None:
    put_at(parent, key, copy_value(arg))


def _unset(u: Any, parent: Any, key: Any, arg: Any, path: str) -> None:
    if isinstance(parent, dict):
        parent.pop(key, None)
    elif has_at(parent, key):
        parent[key] = None


def _arith(name: str, fn: Callable[[Any, Any], Any], empty: Callable[[Any], Any]) -> Any:
    def op(u: Any, parent: Any, key: Any, arg: Any, path: str) -> None:
        if not isinstance(arg, NUMERIC) or isinstance(arg, bool):
            raise WriteFailure(
                14, f"Cannot {name[1:]} with non-numeric argument: {{{path}: {arg!r}}}"
            )
        cur = get_at(parent, key)
        if cur is NOTHING:
            put_at(parent, key, empty(arg))
            return
        if not isinstance(cur, NUMERIC) or isinstance(cur, bool):
            raise WriteFailure(
                14,
                f"Cannot apply {name} to a value of non-numeric type. "
                f"{{_id: {u.doc.get('_id')!r}}} has the field '{key}' of non-numeric type "
                f"{type_name(cur)}",
            )
        result = fn(cur, arg)
        if isinstance(cur, Int64) or isinstance(arg, Int64):
            result = Int64(result) if isinstance(result, int) else result
        put_at(parent, key, result)

    return op


def _compare(keep_new: Callable[[int], bool]) -> Any:
    def op(u: Any, parent: Any, key: Any, arg: Any, path: str) -> None:
        cur = get_at(parent, key)
        if cur is NOTHING:
            put_at(parent, key, copy_value(arg))
            return
        lt = filtering.bson_compare(lambda a, b: a < b, arg, cur)
        gt = filtering.bson_compare(lambda a, b: a > b, arg, cur)
        if keep_new(-1 if lt else 1 if gt else 0):
            put_at(parent, key, copy_value(arg))

    return op


def _current_date(u: Any, parent: Any, key: Any, arg: Any, path: str) -> None:
    if isinstance(arg, dict) and arg.get("$type") == "timestamp":
        put_at(parent, key, Timestamp(int(time.time()), 1))
        return
    if not (arg is True or (isinstance(arg, dict) and arg.get("$type") == "date")):
        raise WriteFailure(
            2,
            f"{path} is not valid type for $currentDate. Please use a boolean ('true') "
            "or a $type expression ({$type: 'timestamp/date'}).",
        )
    now = datetime.now(UTC).replace(tzinfo=None)
    put_at(parent, key, now.replace(microsecond=now.microsecond // 1000 * 1000))


def _array_at(u: Any, parent: Any, key: Any, op: str, create: bool) -> list[Any] | None:
    cur = get_at(parent, key)
    if cur is NOTHING:
        if not create:
            return None
        cur = []
        put_at(parent, key, cur)
    if not isinstance(cur, list):
        raise WriteFailure(
            2 if op != "$pop" else 14,
            f"The field '{key}' must be an array but is of type {type_name(cur)} in document "
            f"{{_id: {u.doc.get('_id')!r}}}",
        )
    return cur


def _add_to_set(u: Any, parent: Any, key: Any, arg: Any, path: str) -> None:
    arr = _array_at(u, parent, key, "$addToSet", True)
    assert arr is not None
    items = arg["$each"] if isinstance(arg, dict) and "$each" in arg else [arg]
    for item in items:
        if not any(filtering.operator_eq(e, item) and filtering.operator_eq(item, e) for e in arr):
            arr.append(copy_value(item))


def _push(u: Any, parent: Any, key: Any, arg: Any, path: str) -> None:
    arr = _array_at(u, parent, key, "$push", True)
    assert arr is not None
    if isinstance(arg, dict) and "$each" in arg:
        each = [copy_value(v) for v in arg["$each"]]
        pos = arg.get("$position")
        if pos is None:
            arr.extend(each)
        else:
            pos = int(pos) if int(pos) >= 0 else max(0, len(arr) + int(pos))
            arr[pos:pos] = each
        if "$sort" in arg:
            spec = arg["$sort"]
            if isinstance(spec, dict):
                from changestream_worker.testing.emulator.query import sort_docs

                arr[:] = sort_docs(list(arr), list(spec.items()), None)
            else:
                arr[:] = sorted(arr, key=filtering.BsonComparable, reverse=spec < 0)
        if "$slice" in arg:
            n = int(arg["$slice"])
            arr[:] = arr[:n] if n >= 0 else arr[n:]
    else:
        arr.append(copy_value(arg))


def _pop(u: Any, parent: Any, key: Any, arg: Any, path: str) -> None:
    arr = _array_at(u, parent, key, "$pop", False)
    if arr:
        arr.pop(0 if arg == -1 else -1)


def _matches_pull(cond: Any, elem: Any) -> bool:
    if isinstance(cond, dict) and cond:
        if all(k.startswith("$") for k in cond):
            return filtering.filter_applies({"v": cond}, {"v": elem})
        return isinstance(elem, dict) and filtering.filter_applies(cond, elem)
    return filtering.filter_applies({"v": cond}, {"v": elem}) and not isinstance(elem, list)


def _pull(u: Any, parent: Any, key: Any, arg: Any, path: str) -> None:
    cur = get_at(parent, key)
    if cur is NOTHING:
        return
    if not isinstance(cur, list):
        raise WriteFailure(2, "Cannot apply $pull to a non-array value")
    cur[:] = [e for e in cur if not _matches_pull(arg, e)]


def _pull_all(u: Any, parent: Any, key: Any, arg: Any, path: str) -> None:
    if not isinstance(arg, list):
        raise WriteFailure(
            2, f"$pullAll requires an array argument but was given a {type_name(arg)}"
        )
    cur = get_at(parent, key)
    if cur is NOTHING:
        return
    if not isinstance(cur, list):
        raise WriteFailure(2, "Cannot apply $pullAll to a non-array value")
    cur[:] = [e for e in cur if not any(filtering.operator_eq(e, v) for v in arg)]


def _bit(u: Any, parent: Any, key: Any, arg: Any, path: str) -> None:
    cur = get_at(parent, key)
    value = 0 if cur is NOTHING else cur
    if not isinstance(value, int):
        raise WriteFailure(14, f"Cannot apply $bit to a value of non-integral type. {path}")
    for how, n in (arg or {}).items():
        value = {"and": value & n, "or": value | n, "xor": value ^ n}[how]
    put_at(parent, key, value)


OPS: dict[str, Any] = {
    "$set": _set,
    "$setOnInsert": _set,
    "$unset": _unset,
    "$inc": _arith("$inc", lambda a, b: a + b, lambda b: b),
    "$mul": _arith("$mul", lambda a, b: a * b, lambda b: 0 * b),
    "$min": _compare(lambda c: c < 0),
    "$max": _compare(lambda c: c > 0),
    "$currentDate": _current_date,
    "$addToSet": _add_to_set,
    "$push": _push,
    "$pop": _pop,
    "$pull": _pull,
    "$pullAll": _pull_all,
    "$bit": _bit,
    "$rename": None,
}
