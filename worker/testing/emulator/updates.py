"""Update operators on one document: ``$set`` and friends, positional paths, ``arrayFilters``."""

from __future__ import annotations

from typing import Any

from mongomock import filtering

from changestream_worker.testing.emulator.engine import WriteFailure
from changestream_worker.testing.emulator.keys import NOTHING
from changestream_worker.testing.emulator.update_ops import (
    OPS,
    copy_value,
    get_at,
    put_at,
    type_name,
)

Target = tuple[Any, Any]  # (parent dict or list, key or index)


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
            child = get_at(node, key)
            if child is NOTHING or child is None:
                if not create:
                    continue
                if child is None:
                    raise WriteFailure(
                        28, f"Cannot create field '{rest[0]}' in element {{{head}: null}}"
                    )
                child = {}
                put_at(node, key, child)
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
            arr = get_at(arr, int(p) if isinstance(arr, list) else p)
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
                    9, f"Modifiers operate on fields but we found type {type_name(fields)} instead"
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
            if not found or get_at(*found[0]) is NOTHING:
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
