"""A change stream's own stages: the user's pipeline over each event, and large-event splits."""

from __future__ import annotations

from typing import Any

import bson
from mongomock import filtering

from changestream_worker.testing.emulator import pipeline
from changestream_worker.testing.emulator.errors import CommandError

SPLIT = "$changeStreamSplitLargeEvent"
MAX_EVENT = 16 * 1024 * 1024
# A fragment's token kind is FRAGMENT + its number (1-based): after the event's own kind.
FRAGMENT = 0x10
Pos = tuple[int, int, int, int]
_ID_CHANGED = (
    "Encountered an event whose _id field, which contains the resume token, was modified by "
    "the pipeline. Modifying the _id field of an event makes it impossible to resume the "
    "stream from that point. Only transformations that retain the unmodified _id field are "
    "allowed."
)


USER_STAGES = {
    "$match",
    "$project",
    "$addFields",
    "$set",
    "$unset",
    "$replaceRoot",
    "$replaceWith",
    "$redact",
    SPLIT,
}
KNOWN_STAGES = {
    "$addFields",
    "$bucket",
    "$bucketAuto",
    "$collStats",
    "$count",
    "$densify",
    "$facet",
    "$fill",
    "$geoNear",
    "$graphLookup",
    "$group",
    "$indexStats",
    "$limit",
    "$lookup",
    "$match",
    "$merge",
    "$out",
    "$project",
    "$redact",
    "$replaceRoot",
    "$replaceWith",
    "$sample",
    "$set",
    "$setWindowFields",
    "$skip",
    "$sort",
    "$sortByCount",
    "$unionWith",
    "$unset",
    "$unwind",
    "$documents",
    "$changeStreamSplitLargeEvent",
}


def check_user_stages(stages: list[dict[str, Any]]) -> None:
    """Refuse stages a change stream may not hold, with the server's codes."""
    for stage in stages:
        name = next(iter(stage), "")
        if name == "$changeStream":
            raise CommandError(
                40602, "$changeStream is only valid as the first stage in a pipeline"
            )
        if name not in USER_STAGES:
            raise CommandError(
                20 if name in KNOWN_STAGES else 40324,
                f"{name} is not permitted in a $changeStream pipeline",
            )


def encode_token(pos: Pos) -> dict[str, str]:
    """An opaque, totally ordered token: fixed-width upper-case hex of the position."""
    t, inc, idx, kind = pos
    return {"_data": f"82{t:08X}{inc:08X}{idx:08X}{kind:02X}"}


def decode_token(token: Any) -> Pos:
    data = token.get("_data") if isinstance(token, dict) else None
    if not isinstance(data, str) or len(data) != 28 or not data.startswith("82"):
        raise CommandError(260, "Invalid resume token: unrecognised format")
    try:
        return (int(data[2:10], 16), int(data[10:18], 16), int(data[18:26], 16), int(data[26:], 16))
    except ValueError as exc:
        raise CommandError(260, "Invalid resume token: not hex") from exc


def take_split(stages: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], bool]:
    """The user stages without a final split stage, and whether it was there."""
    for i, stage in enumerate(stages):
        if SPLIT in stage:
            if i != len(stages) - 1:
                raise CommandError(7182802, f"{SPLIT} must be the last stage in the pipeline")
            return stages[:-1], True
    return stages, False


def apply_user_stages(doc: dict[str, Any], stages: list[dict[str, Any]]) -> dict[str, Any] | None:
    """One event through the user's stages; None when a $match drops it."""
    if not stages:
        return doc
    token = doc["_id"]
    if len(stages) == 1 and "$match" in stages[0] and "$expr" not in stages[0]["$match"]:
        return doc if filtering.filter_applies(stages[0]["$match"], doc) else None
    result = pipeline.run_stages([dict(doc)], stages)
    if not result:
        return None
    out = result[0]
    if out.get("_id") != token:
        raise CommandError(280, _ID_CHANGED, ["NonResumableChangeStreamError"])
    return out


def split(doc: dict[str, Any], pos: Pos) -> list[tuple[int, dict[str, Any]]]:
    """Fragments of an event over 16 MiB (with their numbers); a smaller one stays whole (0)."""
    if len(bson.encode(doc)) <= MAX_EVENT:
        return [(0, doc)]

    def token(n: int) -> dict[str, str]:
        return encode_token((pos[0], pos[1], pos[2], FRAGMENT + n))

    fields = [(k, v) for k, v in doc.items() if k != "_id"]
    overhead = len(bson.encode({"_id": token(1), "splitEvent": {"fragment": 1, "of": 1}}))
    groups: list[list[tuple[str, Any]]] = [[]]
    size = overhead
    for key, value in fields:
        field_size = len(bson.encode({key: value})) - 5
        if groups[-1] and size + field_size > MAX_EVENT:
            groups.append([])
            size = overhead
        groups[-1].append((key, value))
        size += field_size
    if any(len(bson.encode(dict(g))) + overhead > MAX_EVENT + 5 for g in groups if len(g) == 1):
        raise CommandError(
            10334, "BSONObj size is invalid: one field of the event is over 16 MiB on its own"
        )
    total = len(groups)
    return [
        (n, {"_id": token(n), "splitEvent": {"fragment": n, "of": total}, **dict(group)})
        for n, group in enumerate(groups, start=1)
    ]
