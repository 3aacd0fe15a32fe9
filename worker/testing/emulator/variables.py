"""``let`` variables: a command's ``let`` evaluated, and ``$$name`` bound into expressions."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from mongomock.aggregate import _Parser

from changestream_worker.testing.emulator.errors import CommandError


def variables(let: Any, cluster_time: Any = None) -> dict[str, Any]:
    """Evaluate a command's ``let`` document into values (plus the system variables)."""
    if let is not None and not isinstance(let, dict):
        raise CommandError(14, "BSON field 'let' is the wrong type, expected type 'object'")
    out: dict[str, Any] = {"NOW": datetime.now(UTC).replace(tzinfo=None)}
    if cluster_time is not None:
        out["CLUSTER_TIME"] = cluster_time
    for name, expr in (let or {}).items():
        if not name or not (name[0].islower() or not name[0].isascii()):
            raise CommandError(
                16867, f"'{name}' starts with an invalid character for a user variable name"
            )
        try:
            out[name] = (
                _Parser({}).parse(bind(expr, out)) if isinstance(expr, dict | list) else expr
            )
        except (KeyError, TypeError) as exc:
            raise CommandError(17276, f"Use of undefined variable in let: {exc}") from exc
    return out


_SYSTEM = {"ROOT", "CURRENT", "REMOVE", "DESCEND", "PRUNE", "KEEP", "SEARCH_META", "USER_ROLES"}


def bind(expr: Any, values: dict[str, Any]) -> Any:
    """Replace ``$$name`` references with literal values (system variables stay)."""
    if isinstance(expr, str) and expr.startswith("$$"):
        name, _, path = expr[2:].partition(".")
        if name in _SYSTEM:
            return expr
        if name not in values:
            raise CommandError(17276, f"Use of undefined variable: {name}")
        value = values[name]
        for part in path.split(".") if path else ():
            value = value.get(part) if isinstance(value, dict) else None
        return {"$literal": value}
    if isinstance(expr, dict):
        if "$literal" in expr:
            return expr
        if "$let" in expr or "$map" in expr or "$filter" in expr or "$reduce" in expr:
            return expr  # their own variables shadow; mongomock binds those itself
        return {k: bind(v, values) for k, v in expr.items()}
    if isinstance(expr, list):
        return [bind(v, values) for v in expr]
    return expr


def bind_filter(query: Any, values: dict[str, Any] | None) -> Any:
    """A filter's ``$expr`` parts with ``let`` variables bound (elsewhere ``$$`` is text)."""
    if not values or not isinstance(query, dict):
        return query
    out: dict[str, Any] = {}
    for k, v in query.items():
        if k == "$expr":
            out[k] = bind(v, values)
        elif k in ("$and", "$or", "$nor") and isinstance(v, list):
            out[k] = [bind_filter(sub, values) for sub in v]
        else:
            out[k] = v
    return out
