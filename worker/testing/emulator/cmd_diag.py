"""Diagnostic commands: explain (of the plan the engine really uses), validate, profile."""

from __future__ import annotations

from typing import Any

from changestream_worker.testing.emulator import query
from changestream_worker.testing.emulator.context import Ctx, check_fields
from changestream_worker.testing.emulator.engine import Collection
from changestream_worker.testing.emulator.errors import CommandError, unsupported
from changestream_worker.testing.emulator.keys import equalities
from changestream_worker.testing.emulator.registry import command

VERBOSITIES = ("queryPlanner", "executionStats", "allPlansExecution")
# what each explainable command calls its filter
FILTER_FIELD = {
    "find": "filter",
    "count": "query",
    "distinct": "query",
    "findAndModify": "query",
    "findandmodify": "query",
    "aggregate": None,
    "update": None,
    "delete": None,
}


def plan(coll: Collection, q: dict[str, Any]) -> dict[str, Any]:
    """The access path the engine takes for ``q``: by _id, through an index, or a scan."""
    eq = equalities(q)
    if "_id" in eq:
        return {"stage": "IDHACK"}
    for idx in coll.indexes.values():
        if idx.usable_for_equality() and all(f in eq for f in idx.fields):
            if idx.sparse and any(v is None for f in idx.fields for v in eq[f]):
                continue
            scan = {
                "stage": "IXSCAN",
                "keyPattern": dict(idx.key),
                "indexName": idx.name,
                "isUnique": idx.unique,
                "isSparse": idx.sparse,
                "direction": "forward",
            }
            return {"stage": "FETCH", "filter": q, "inputStage": scan}
    return {"stage": "COLLSCAN", "filter": q, "direction": "forward"}


def _filter_of(name: str, inner: dict[str, Any]) -> dict[str, Any]:
    field = FILTER_FIELD[name]
    if field is not None:
        return query.check_filter(inner.get(field))
    if name == "aggregate":
        first = (inner.get("pipeline") or [{}])[0]
        return dict(first.get("$match") or {}) if isinstance(first, dict) else {}
    statements = inner.get("updates" if name == "update" else "deletes") or [{}]
    return query.check_filter(statements[0].get("q"))


@command("explain")
async def explain(ctx: Ctx, cmd: dict[str, Any]) -> dict[str, Any]:
    check_fields(cmd, {"verbosity"})
    inner = cmd["explain"]
    if not isinstance(inner, dict) or not inner:
        raise CommandError(9, "explain command requires a nested object")
    name = next(iter(inner))
    if name not in FILTER_FIELD:
        raise unsupported(f"explain of '{name}'")
    verbosity = cmd.get("verbosity", "allPlansExecution")
    if verbosity not in VERBOSITIES:
        raise CommandError(2, f"unrecognized verbosity '{verbosity}'")
    coll_name = inner[name]
    if not isinstance(coll_name, str):
        raise unsupported(f"explain of a database-level {name}")
    coll = ctx.ws.coll(ctx.db, coll_name)
    q = _filter_of(name, inner)
    winning = plan(coll, q)
    if name in ("update", "delete", "findAndModify", "findandmodify"):
        kind = "DELETE" if name == "delete" or inner.get("remove") else "UPDATE"
        winning = {"stage": kind, "inputStage": winning}
    reply: dict[str, Any] = {
        "explainVersion": "1",
        "queryPlanner": {
            "namespace": f"{ctx.db}.{coll_name}",
            "indexFilterSet": False,
            "parsedQuery": q,
            "winningPlan": winning,
            "rejectedPlans": [],
        },
        "command": {**inner, "$db": ctx.db},
        "serverInfo": {"host": "emulator", "port": 0, "version": "7.0.0"},
        "ok": 1.0,
    }
    if verbosity != "queryPlanner":
        pool = coll.candidates(q)
        examined = len(coll) if pool is None else len(pool)
        matched = await query.scan(coll, q)
        reply["executionStats"] = {
            "executionSuccess": True,
            "nReturned": len(matched),
            "executionTimeMillis": 0,
            "totalKeysExamined": 0 if pool is None else examined,
            "totalDocsExamined": examined,
        }
    return reply


@command("validate")
async def validate(ctx: Ctx, cmd: dict[str, Any]) -> dict[str, Any]:
    check_fields(cmd, {"full", "repair", "background", "metadata", "checkBSONConformance"})
    name = cmd["validate"]
    if not ctx.store.exists(ctx.db, name):
        raise CommandError(26, f"Collection '{ctx.db}.{name}' does not exist to validate.")
    coll = ctx.store.collection(ctx.db, name)
    errors: list[str] = []
    keys: dict[str, int] = {"_id_": len(coll)}
    for idx in coll.indexes.values():
        expected: dict[Any, set[Any]] = {}
        for k, doc in coll.docs.items():
            for ik in idx.keys_of(doc):
                expected.setdefault(ik, set()).add(k)
        actual = {ik: set(bucket) for ik, bucket in idx.entries.items()}
        if expected != actual:
            errors.append(f"index {idx.name} does not match the collection's documents")
        keys[idx.name] = sum(len(b) for b in actual.values())
    return {
        "ns": f"{ctx.db}.{name}",
        "uuid": ctx.store.meta[(ctx.db, name)]["uuid"],
        "nInvalidDocuments": 0,
        "nNonCompliantDocuments": 0,
        "nrecords": len(coll),
        "nIndexes": len(keys),
        "keysPerIndex": keys,
        "indexDetails": {n: {"valid": not errors} for n in keys},
        "valid": not errors,
        "repaired": False,
        "warnings": [],
        "errors": errors,
        "extraIndexEntries": [],
        "missingIndexEntries": [],
        "corruptRecords": [],
        "ok": 1.0,
    }


@command("profile")
async def profile(ctx: Ctx, cmd: dict[str, Any]) -> dict[str, Any]:
    check_fields(cmd, {"slowms", "sampleRate", "filter"})
    level = cmd["profile"]
    if level not in (-1, 0, 1, 2):
        raise CommandError(2, f"invalid profiling level: {level}")
    settings = ctx.store.profiling.setdefault(ctx.db, {"was": 0, "slowms": 100, "sampleRate": 1.0})
    reply = {**settings, "ok": 1.0}
    if level in (1, 2):
        raise unsupported("profiling levels 1 and 2 (no system.profile collection is kept)")
    if level == 0:
        for key in ("slowms", "sampleRate"):
            if key in cmd:
                settings[key] = cmd[key]
    return reply
