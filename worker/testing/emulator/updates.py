"""Update operators on one document: ``$set`` and friends, positional paths, ``arrayFilters``."""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from bson import Decimal128, Int64, Timestamp
from mongomock import filtering

from changestream_worker.testing.emulator.engine import NOTHING, WriteFailure

Target = tuple[Any, Any]  # (parent dict or list, key or index)
NUMERIC = (int, float, Int64, Decimal128)


def copy_value(v: Any) -> Any:
    if isinstance(v, dict):
        return {k: copy_value(x) for k, x in v.items()}
    if isinstance(v, list):
        return [copy_value(x) for x in v]
    return v


def _type_name(v: Any) -> str:
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


class _Update:
    """One update document applied to one (copied, mutable) document."""

    def __init__(
        self,
        doc: dict[str, Any],
        array_filters: list[dict[str, Any]] | None,
        query: dict[str, Any],
        inserting: bool,
    ) -> None:
        self.doc, self.query, self.inserting = doc, query, inserting
        self.filters: dict[str, dict[str, Any]] = {}
        self.used: set[str] = set()
        for f in array_filters or []:
            if not isinstance(f, dict) or not f:
                raise WriteFailure(9, "Cannot use an expression without a top-level field name")
            idents = {k.split(".", 1)[0] for k in f}
            if len(idents) != 1:
                raise WriteFailure(
                    9, "Error parsing array filter: expected a single top-level field name"
                )
            ident = idents.pop()
            if ident in self.filters:
                raise WriteFailure(
                    9, f"Found multiple array filters with the same top-level field name {ident}"
                )
            self.filters[ident] = {"v" + k[len(ident) :]: v for k, v in f.items()}

    # ---- paths ------------------------------------------------------------------
    def targets(self, path: str, create: bool) -> list[Target]:
        parts = path.split(".")
        if any(p == "" for p in parts):
            raise WriteFailure(56, f"An empty update path is not valid: '{path}'")
        return self._walk(self.doc, parts, create, [])

    def _keys(self, node: Any, head: str, seen: list[str]) -> list[Any]:
        if head == "$[]" or (head.startswith("$[") and head.endswith("]")):
            if not isinstance(node, list):
                raise WriteFailure(2, f"Cannot apply array updates to non-array element {head}")
            if head == "$[]":
                return list(range(len(node)))
            ident = head[2:-1]
            if ident not in self.filters:
                raise WriteFailure(
                    2, f"No array filter found for identifier '{ident}' in path '{'.'.join(seen)}'"
                )
            self.used.add(ident)
            cond = self.filters[ident]
            return [i for i, e in enumerate(node) if filtering.filter_applies(cond, {"v": e})]
        if head == "$":
            index = self._positional(seen)
            return [index]
        if isinstance(node, list):
            if not head.isdigit():
                raise WriteFailure(
                    28,
                    f"Cannot create field '{head}' in element "
                    f"{{{seen[-1] if seen else ''}: [...]}}",
                )
            return [int(head)]
        return [head]

    def _walk(self, node: Any, parts: list[str], create: bool, seen: list[str]) -> list[Target]:
        head, rest = parts[0], parts[1:]
        out: list[Target] = []
        for key in self._keys(node, head, seen):
            if not rest:
                out.append((node, key))
                continue
            child = _get(node, key)
            if child is NOTHING or child is None:
                if not create:
                    continue
                if child is None:
                    raise WriteFailure(
                        28, f"Cannot create field '{rest[0]}' in element {{{head}: null}}"
                    )
                child = {}
                _put(node, key, child)
            elif not isinstance(child, dict | list):
                if not create:
                    continue
                raise WriteFailure(
                    28, f"Cannot create field '{rest[0]}' in element {{{head}: {child!r}}}"
                )
            out.extend(self._walk(child, rest, create, [*seen, str(key)]))
        return out

    def _positional(self, seen: list[str]) -> int:
        array_path = ".".join(seen)
        arr = self.doc
        for p in seen:
            arr = _get(arr, int(p) if isinstance(arr, list) else p)
        relevant = {
            k: v for k, v in self.query.items() if k == array_path or k.startswith(array_path + ".")
        }
        if isinstance(arr, list) and relevant:
            for i, elem in enumerate(arr):
                probe: dict[str, Any] = {}
                cur = probe
                for p in seen[:-1]:
                    cur = cur.setdefault(p, {})
                cur[seen[-1]] = [elem]
                if filtering.filter_applies(relevant, probe):
                    return i
        raise WriteFailure(
            2, "The positional operator did not find the match needed from the query."
        )

    # ---- operators --------------------------------------------------------------
    def run(self, update: dict[str, Any]) -> None:
        paths: list[str] = []
        for op, fields in update.items():
            if not isinstance(fields, dict):
                raise WriteFailure(
                    9, f"Modifiers operate on fields but we found type {_type_name(fields)} instead"
                )
            for path in fields:
                paths.append(path)
                if op == "$rename":
                    paths.append(str(fields[path]))
        _check_conflicts(paths)
        for op, fields in update.items():
            handler = OPS[op]
            if op == "$setOnInsert" and not self.inserting:
                continue
            if op == "$rename":
                self._rename(fields)
                continue
            for path, arg in fields.items():
                create = op not in ("$unset", "$pull", "$pullAll", "$pop")
                for parent, key in self.targets(path, create):
                    handler(self, parent, key, arg, path)
        unused = set(self.filters) - self.used
        if unused:
            raise WriteFailure(
                9,
                f"The array filter for identifier '{sorted(unused)[0]}' was not used in the update",
            )

    def _rename(self, fields: dict[str, Any]) -> None:
        for src, dst in fields.items():
            if not isinstance(dst, str) or src == dst or dst.startswith(src + "."):
                raise WriteFailure(2, f"The source and target field for $rename must differ: {src}")
            if any(p.startswith("$") for p in (src + "." + dst).split(".")):
                raise WriteFailure(2, "The source and target field for $rename must not contain $")
            found = self.targets(src, create=False)
            if not found or _get(*found[0]) is NOTHING:
                continue
            parent, key = found[0]
            if isinstance(parent, list):
                raise WriteFailure(2, "The source field cannot be an array element")
            value = parent.pop(key)
            for tparent, tkey in self.targets(dst, create=True):
                if isinstance(tparent, list):
                    raise WriteFailure(2, "The destination field cannot be an array element")
                tparent[tkey] = value


def _check_conflicts(paths: list[str]) -> None:
    split = [p.split(".") for p in paths]
    for i, a in enumerate(split):
        for b in split[i + 1 :]:
            n = min(len(a), len(b))
            if a[:n] == b[:n]:
                shorter = ".".join(a if len(a) <= len(b) else b)
                raise WriteFailure(
                    40, f"Updating the path '{'.'.join(b)}' would create a conflict at '{shorter}'"
                )


def _has(node: Any, key: Any) -> bool:
    return key in node if isinstance(node, dict) else 0 <= key < len(node)


def _get(node: Any, key: Any) -> Any:
    if isinstance(node, dict):
        return node.get(key, NOTHING)
    if isinstance(node, list) and isinstance(key, int) and 0 <= key < len(node):
        return node[key]
    return NOTHING


def _put(node: Any, key: Any, value: Any) -> None:
    if isinstance(node, dict):
        node[key] = value
        return
    while len(node) <= key:
        node.append(None)
    node[key] = value


def _set(u: _Update, parent: Any, key: Any, arg: Any, path: str) -> None:
    _put(parent, key, copy_value(arg))


def _unset(u: _Update, parent: Any, key: Any, arg: Any, path: str) -> None:
    if isinstance(parent, dict):
        parent.pop(key, None)
    elif _has(parent, key):
        parent[key] = None


def _arith(name: str, fn: Callable[[Any, Any], Any], empty: Callable[[Any], Any]) -> Any:
    def op(u: _Update, parent: Any, key: Any, arg: Any, path: str) -> None:
        if not isinstance(arg, NUMERIC) or isinstance(arg, bool):
            raise WriteFailure(
                14, f"Cannot {name[1:]} with non-numeric argument: {{{path}: {arg!r}}}"
            )
        cur = _get(parent, key)
        if cur is NOTHING:
            _put(parent, key, empty(arg))
            return
        if not isinstance(cur, NUMERIC) or isinstance(cur, bool):
            raise WriteFailure(
                14,
                f"Cannot apply {name} to a value of non-numeric type. "
                f"{{_id: {u.doc.get('_id')!r}}} has the field '{key}' of non-numeric type "
                f"{_type_name(cur)}",
            )
        result = fn(cur, arg)
        if isinstance(cur, Int64) or isinstance(arg, Int64):
            result = Int64(result) if isinstance(result, int) else result
        _put(parent, key, result)

    return op


def _compare(keep_new: Callable[[int], bool]) -> Any:
    def op(u: _Update, parent: Any, key: Any, arg: Any, path: str) -> None:
        cur = _get(parent, key)
        if cur is NOTHING:
            _put(parent, key, copy_value(arg))
            return
        lt = filtering.bson_compare(lambda a, b: a < b, arg, cur)
        gt = filtering.bson_compare(lambda a, b: a > b, arg, cur)
        if keep_new(-1 if lt else 1 if gt else 0):
            _put(parent, key, copy_value(arg))

    return op


def _current_date(u: _Update, parent: Any, key: Any, arg: Any, path: str) -> None:
    if isinstance(arg, dict) and arg.get("$type") == "timestamp":
        _put(parent, key, Timestamp(int(time.time()), 1))
        return
    if not (arg is True or (isinstance(arg, dict) and arg.get("$type") == "date")):
        raise WriteFailure(
            2,
            f"{path} is not valid type for $currentDate. Please use a boolean ('true') "
            "or a $type expression ({$type: 'timestamp/date'}).",
        )
    now = datetime.now(UTC).replace(tzinfo=None)
    _put(parent, key, now.replace(microsecond=now.microsecond // 1000 * 1000))


def _array_at(u: _Update, parent: Any, key: Any, op: str, create: bool) -> list[Any] | None:
    cur = _get(parent, key)
    if cur is NOTHING:
        if not create:
            return None
        cur = []
        _put(parent, key, cur)
    if not isinstance(cur, list):
        raise WriteFailure(
            2 if op != "$pop" else 14,
            f"The field '{key}' must be an array but is of type {_type_name(cur)} in document "
            f"{{_id: {u.doc.get('_id')!r}}}",
        )
    return cur


def _add_to_set(u: _Update, parent: Any, key: Any, arg: Any, path: str) -> None:
    arr = _array_at(u, parent, key, "$addToSet", True)
    assert arr is not None
    items = arg["$each"] if isinstance(arg, dict) and "$each" in arg else [arg]
    for item in items:
        if not any(filtering.operator_eq(e, item) and filtering.operator_eq(item, e) for e in arr):
            arr.append(copy_value(item))


def _push(u: _Update, parent: Any, key: Any, arg: Any, path: str) -> None:
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


def _pop(u: _Update, parent: Any, key: Any, arg: Any, path: str) -> None:
    arr = _array_at(u, parent, key, "$pop", False)
    if arr:
        arr.pop(0 if arg == -1 else -1)


def _matches_pull(cond: Any, elem: Any) -> bool:
    if isinstance(cond, dict) and cond:
        if all(k.startswith("$") for k in cond):
            return filtering.filter_applies({"v": cond}, {"v": elem})
        return isinstance(elem, dict) and filtering.filter_applies(cond, elem)
    return filtering.filter_applies({"v": cond}, {"v": elem}) and not isinstance(elem, list)


def _pull(u: _Update, parent: Any, key: Any, arg: Any, path: str) -> None:
    cur = _get(parent, key)
    if cur is NOTHING:
        return
    if not isinstance(cur, list):
        raise WriteFailure(2, "Cannot apply $pull to a non-array value")
    cur[:] = [e for e in cur if not _matches_pull(arg, e)]


def _pull_all(u: _Update, parent: Any, key: Any, arg: Any, path: str) -> None:
    if not isinstance(arg, list):
        raise WriteFailure(
            2, f"$pullAll requires an array argument but was given a {_type_name(arg)}"
        )
    cur = _get(parent, key)
    if cur is NOTHING:
        return
    if not isinstance(cur, list):
        raise WriteFailure(2, "Cannot apply $pullAll to a non-array value")
    cur[:] = [e for e in cur if not any(filtering.operator_eq(e, v) for v in arg)]


def _bit(u: _Update, parent: Any, key: Any, arg: Any, path: str) -> None:
    cur = _get(parent, key)
    value = 0 if cur is NOTHING else cur
    if not isinstance(value, int):
        raise WriteFailure(14, f"Cannot apply $bit to a value of non-integral type. {path}")
    for how, n in (arg or {}).items():
        value = {"and": value & n, "or": value | n, "xor": value ^ n}[how]
    _put(parent, key, value)


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


def apply_operators(
    doc: dict[str, Any],
    update: dict[str, Any],
    *,
    array_filters: list[dict[str, Any]] | None = None,
    query: dict[str, Any] | None = None,
    inserting: bool = False,
) -> dict[str, Any]:
    """A new document: ``doc`` with the operators of ``update`` applied."""
    work = copy_value(doc)
    _Update(work, array_filters, query or {}, inserting).run(update)
    return work
