"""Read-only views: a collection name standing for a pipeline over another collection."""

from __future__ import annotations

from typing import Any

from changestream_worker.testing.emulator import (
    codes,  # noqa: F401  (names 166 and 182)
    pipeline,
)
from changestream_worker.testing.emulator.errors import CommandError
from changestream_worker.testing.emulator.update_ops import copy_value

MAX_DEPTH = 20


def is_view(store: Any, db: str, name: str) -> bool:
    return "viewOn" in store.meta.get((db, name), {}).get("options", {})


def resolve(store: Any, db: str, name: str) -> tuple[str, list[dict[str, Any]]] | None:
    """The collection a view reads and the whole pipeline (views on views unrolled)."""
    if not is_view(store, db, name):
        return None
    stages: list[dict[str, Any]] = []
    depth = 0
    while is_view(store, db, name):
        opts = store.meta[(db, name)]["options"]
        stages = list(opts.get("pipeline") or []) + stages
        name = opts["viewOn"]
        depth += 1
        if depth > MAX_DEPTH:
            raise CommandError(
                165, f"View depth too deep or view cycle detected; maximum depth is {MAX_DEPTH}"
            )
    return name, stages


def check_definition(view_on: Any, stages: Any) -> None:
    if not isinstance(view_on, str) or not view_on:
        raise CommandError(182, "'viewOn' must be a non-empty string")
    if not isinstance(stages, list):
        raise CommandError(182, "'pipeline' must be an array")
    for stage in stages:
        if pipeline.stage_name(stage) in ("$out", "$merge", "$changeStream"):
            raise CommandError(
                182, f"{pipeline.stage_name(stage)} cannot be used in a view definition"
            )


def refuse_write(store: Any, db: str, name: str) -> None:
    if is_view(store, db, name):
        raise CommandError(166, f"Namespace {db}.{name} is a view, not a collection")


def documents(
    ws: Any, store: Any, db: str, name: str, extra: list[dict[str, Any]]
) -> list[dict[str, Any]]:
    """A view's documents with further stages applied (copies)."""
    found = resolve(store, db, name)
    assert found is not None
    source, stages = found
    docs = [copy_value(d) for d in ws.coll(db, source).all()]
    return pipeline.run_stages(docs, stages + extra, foreign=lambda n: ws.coll(db, n))
