"""Update descriptions of change events: the delta between two versions of a document."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


def update_description(pre: dict[str, Any], post: dict[str, Any]) -> dict[str, Any]:
    """Derive updatedFields/removedFields/truncatedArrays from two versions, as a delta oplog;
    ``disambiguatedPaths`` lists paths whose field names look like indexes or hold dots."""
    updated: dict[str, Any] = {}
    removed: list[str] = []
    truncated: list[dict[str, Any]] = []
    ambiguous: dict[str, list[str | int]] = {}
    _diff(pre, post, [], _Out(updated, removed, truncated, ambiguous))
    out: dict[str, Any] = {
        "updatedFields": updated,
        "removedFields": removed,
        "truncatedArrays": truncated,
    }
    if ambiguous:
        out["disambiguatedPaths"] = ambiguous
    return out


@dataclass(slots=True)
class _Out:
    updated: dict[str, Any]
    removed: list[str]
    truncated: list[dict[str, Any]]
    ambiguous: dict[str, list[str | int]]

    def path(self, parts: list[str | int]) -> str:
        text = ".".join(str(p) for p in parts)
        if any(isinstance(p, str) and (p.isdigit() or "." in p) for p in parts):
            self.ambiguous[text] = list(parts)
        return text


def _same(a: Any, b: Any) -> bool:
    return type(a) is type(b) and a == b


def _diff(pre: dict[str, Any], post: dict[str, Any], prefix: list[str | int], out: _Out) -> None:
    for k, new in post.items():
        parts: list[str | int] = [*prefix, k]
        if k not in pre:
            out.updated[out.path(parts)] = new
            continue
        old = pre[k]
        if _same(old, new):
            continue
        if isinstance(old, dict) and isinstance(new, dict):
            _diff(old, new, parts, out)
        elif isinstance(old, list) and isinstance(new, list):
            _diff_array(old, new, parts, out)
        else:
            out.updated[out.path(parts)] = new
    for k in pre:
        if k not in post:
            out.removed.append(out.path([*prefix, k]))


def _diff_array(old: list[Any], new: list[Any], parts: list[str | int], out: _Out) -> None:
    common = min(len(old), len(new))
    if len(new) < len(old):
        out.truncated.append({"field": ".".join(str(p) for p in parts), "newSize": len(new)})
    for i in range(common):
        if _same(old[i], new[i]):
            continue
        if isinstance(old[i], dict) and isinstance(new[i], dict):
            _diff(old[i], new[i], [*parts, i], out)
        else:
            out.updated[out.path([*parts, i])] = new[i]
    for i in range(common, len(new)):
        out.updated[out.path([*parts, i])] = new[i]
