"""Aggregation pipelines over the engine: mongomock's stages plus the ones it lacks."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from mongomock import aggregate as mm_aggregate
from mongomock import filtering

from changestream_worker.testing.emulator import query as q
from changestream_worker.testing.emulator.engine import Collection
from changestream_worker.testing.emulator.errors import CommandError, unsupported
from changestream_worker.testing.emulator.update_ops import copy_value

# Stages an update pipeline may hold (the manual's list for updates with aggregation pipelines).
UPDATE_STAGES = {"$addFields", "$set", "$project", "$unset", "$replaceRoot", "$replaceWith"}
OWN_STAGES = {
    "$unset",
    "$replaceWith",
    "$documents",
    "$listLocalSessions",
    "$out",
    "$merge",
    "$match",
    "$sort",
}


class _Foreign:
    """What mongomock's ``$lookup``/``$graphLookup`` ask of a database: find in a collection."""

    def __init__(self, resolve: Callable[[str], Collection]) -> None:
        self._resolve = resolve

    def get_collection(self, name: str) -> Any:
        coll = self._resolve(name)

        class _Finder:
            def find(self, query: dict[str, Any] | None = None) -> list[dict[str, Any]]:
                return [copy_value(d) for d in coll.find(query or {})]

        return _Finder()


def stage_name(stage: Any) -> str:
    if not isinstance(stage, dict) or len(stage) != 1:
        raise CommandError(
            40323, "A pipeline stage specification object must contain exactly one field."
        )
    return next(iter(stage))


def check_stages(pipeline: list[Any]) -> None:
    """Refuse unknown stages and misplaced ``$out``/``$merge``/``$changeStream`` up front."""
    for i, stage in enumerate(pipeline):
        name = stage_name(stage)
        if name in ("$out", "$merge") and i != len(pipeline) - 1:
            raise CommandError(40601, f"{name} can only be the final stage in the pipeline")
        if name == "$changeStream":
            raise CommandError(
                40602, "$changeStream is only valid as the first stage in a pipeline"
            )
        if name in ("$documents", "$listLocalSessions") and i != 0:
            raise CommandError(40602, f"{name} is only valid as the first stage in a pipeline")
        if name not in mm_aggregate._PIPELINE_HANDLERS and name not in OWN_STAGES:
            raise CommandError(40324, f"Unrecognized pipeline stage name: '{name}'")


def _unset(docs: list[dict[str, Any]], spec: Any) -> list[dict[str, Any]]:
    fields = [spec] if isinstance(spec, str) else spec
    if not isinstance(fields, list) or not all(isinstance(f, str) for f in fields):
        raise CommandError(31120, "$unset specification must be a string or an array of strings")
    return mm_aggregate._handle_project_stage(docs, None, {f: 0 for f in fields})


def _nest(spec: dict[str, Any], keep_flags: bool) -> dict[str, Any]:
    """Dotted keys as nested documents (``{"a.b": x}`` → ``{"a": {"b": x}}``); with
    ``keep_flags`` a dotted inclusion/exclusion flag stays dotted, as mongomock reads those."""
    out: dict[str, Any] = {}
    for key, value in spec.items():
        flag = isinstance(value, bool | int | float) and not isinstance(value, str)
        if "." not in key or (keep_flags and flag):
            out[key] = value
            continue
        head, rest = key.split(".", 1)
        node = out.setdefault(head, {})
        if not isinstance(node, dict):
            raise CommandError(31250, f"Path collision at {key}")
        node.update(_nest({rest: value}, keep_flags))
    return out


def _is_expression(value: Any) -> bool:
    return not isinstance(value, dict) or any(str(k).startswith("$") for k in value) or not value


def _add_fields(docs: list[dict[str, Any]], spec: Any) -> list[dict[str, Any]]:
    """``$addFields``/``$set``: computed fields merged into (nested) documents."""
    if not isinstance(spec, dict):
        raise CommandError(40272, "$addFields specification stage must be an object")
    nested = _nest(spec, keep_flags=False)
    out = []
    for doc in docs:
        parser = mm_aggregate._Parser(doc, ignore_missing_keys=True)
        out.append(_merge_fields(doc, nested, parser))
    return out


def _merge_fields(target: dict[str, Any], spec: dict[str, Any], parser: Any) -> dict[str, Any]:
    result = dict(target)
    for key, value in spec.items():
        if _is_expression(value):
            if value == "$$REMOVE":
                result.pop(key, None)
                continue
            try:
                result[key] = parser.parse(value)
            except KeyError:
                result.pop(key, None)
        else:
            base = result.get(key)
            result[key] = _merge_fields(base if isinstance(base, dict) else {}, value, parser)
    return result


def run_stages(
    docs: list[dict[str, Any]],
    pipeline: list[dict[str, Any]],
    *,
    foreign: Callable[[str], Collection] | None = None,
    strength: int | None = None,
) -> list[dict[str, Any]]:
    """Run stages (``let`` already bound) over documents the caller lets us change."""
    database = _Foreign(foreign) if foreign is not None else None
    for stage in pipeline:
        name = stage_name(stage)
        spec = stage[name]
        if name == "$match":
            keyed = q.collate(spec, strength, in_filter=True)
            docs = [d for d in docs if filtering.filter_applies(keyed, q.collate(d, strength))]
        elif name == "$sort":
            docs = q.sort_docs(docs, q.sort_spec(spec), strength)
        elif name == "$unset":
            docs = _unset(docs, spec)
        elif name in ("$addFields", "$set"):
            docs = _add_fields(docs, spec)
        elif name == "$project" and isinstance(spec, dict):
            docs = list(mm_aggregate._handle_project_stage(docs, database, _nest(spec, True)))
        elif name == "$replaceWith":
            docs = mm_aggregate._handle_replace_root_stage(docs, database, {"newRoot": spec})
        elif name in ("$documents", "$out", "$merge"):
            raise unsupported(f"the {name} stage here")
        else:
            handler = mm_aggregate._PIPELINE_HANDLERS.get(name)
            if handler is None:
                raise unsupported(f"the {name} stage")
            try:
                docs = list(handler(docs, database, spec))
            except NotImplementedError as exc:
                raise unsupported(str(exc).split(".")[0]) from exc
    return docs


def update_with_pipeline(
    doc: dict[str, Any], pipeline: list[Any], values: dict[str, Any]
) -> dict[str, Any]:
    """A document after a pipeline-style update: one document through the allowed stages."""
    for stage in pipeline:
        name = stage_name(stage)
        if name not in UPDATE_STAGES:
            raise CommandError(72, f"{name} is not allowed to be used within an update")
    bound = q.bind(pipeline, values)
    out = run_stages([copy_value(doc)], bound)
    if len(out) != 1 or not isinstance(out[0], dict):
        raise CommandError(2, "an update pipeline must produce exactly one document")
    return out[0]


def documents_stage(spec: Any, values: dict[str, Any]) -> list[dict[str, Any]]:
    """``$documents``: literal documents (or an expression of them) as the pipeline's input."""
    value = (
        mm_aggregate._Parser({}).parse(q.bind(spec, values))
        if not isinstance(spec, list)
        else [mm_aggregate._Parser({}).parse(q.bind(d, values)) for d in spec]
    )
    if not isinstance(value, list) or not all(isinstance(d, dict) for d in value):
        raise CommandError(5858203, "an array of documents must be given to $documents")
    return [copy_value(d) for d in value]
