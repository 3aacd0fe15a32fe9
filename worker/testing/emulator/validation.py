"""Document validators: query-operator rules and a ``$jsonSchema`` subset, as 121 errors."""

from __future__ import annotations

import contextvars
import datetime
from typing import Any

from bson import Binary, Decimal128, Int64, ObjectId, Regex, Timestamp
from mongomock import filtering

from changestream_worker.testing.emulator.errors import CommandError, unsupported

# Set by a write command that passes bypassDocumentValidation: true (task-local).
BYPASS: contextvars.ContextVar[bool] = contextvars.ContextVar("bypass_validation", default=False)
BSON_TYPES: dict[str, Any] = {
    "double": lambda v: isinstance(v, float),
    "string": lambda v: isinstance(v, str),
    "object": lambda v: isinstance(v, dict),
    "array": lambda v: isinstance(v, list),
    "binData": lambda v: isinstance(v, bytes | Binary),
    "objectId": lambda v: isinstance(v, ObjectId),
    "bool": lambda v: isinstance(v, bool),
    "date": lambda v: isinstance(v, datetime.datetime),
    "null": lambda v: v is None,
    "regex": lambda v: isinstance(v, Regex),
    "int": lambda v: isinstance(v, int) and not isinstance(v, bool | Int64) and v.bit_length() < 32,
    "long": lambda v: isinstance(v, Int64) or (isinstance(v, int) and not isinstance(v, bool)),
    "timestamp": lambda v: isinstance(v, Timestamp),
    "decimal": lambda v: isinstance(v, Decimal128),
    "number": lambda v: isinstance(v, int | float | Decimal128) and not isinstance(v, bool),
}
SCHEMA_KEYS = {
    "bsonType",
    "type",
    "required",
    "properties",
    "additionalProperties",
    "enum",
    "minimum",
    "maximum",
    "minLength",
    "maxLength",
    "items",
    "minItems",
    "maxItems",
    "description",
    "title",
    "pattern",
}


def check_rule(validator: Any) -> None:
    """Refuse a validator the emulator cannot evaluate, when it is set."""
    if not isinstance(validator, dict):
        raise CommandError(14, "'validator' must be an object")
    if "$jsonSchema" in validator:
        _check_schema(validator["$jsonSchema"])


def _check_schema(schema: Any) -> None:
    if not isinstance(schema, dict):
        raise CommandError(9, "$jsonSchema must be an object")
    for key, value in schema.items():
        if key not in SCHEMA_KEYS:
            raise unsupported(f"the $jsonSchema keyword '{key}'")
        if key == "properties":
            for sub in value.values():
                _check_schema(sub)
        if key == "items" and isinstance(value, dict):
            _check_schema(value)


def _schema_ok(schema: dict[str, Any], value: Any) -> bool:
    kinds = schema.get("bsonType", schema.get("type"))
    if kinds is not None:
        names = kinds if isinstance(kinds, list) else [kinds]
        if not any(BSON_TYPES.get(n, lambda v: False)(value) for n in names):
            return False
    if "enum" in schema and value not in schema["enum"]:
        return False
    if isinstance(value, int | float) and not isinstance(value, bool):
        if "minimum" in schema and value < schema["minimum"]:
            return False
        if "maximum" in schema and value > schema["maximum"]:
            return False
    if isinstance(value, str) and not (
        schema.get("minLength", 0) <= len(value) <= schema.get("maxLength", len(value))
    ):
        return False
    if isinstance(value, list):
        if len(value) < schema.get("minItems", 0) or len(value) > schema.get(
            "maxItems", len(value)
        ):
            return False
        items = schema.get("items")
        if isinstance(items, dict) and not all(_schema_ok(items, v) for v in value):
            return False
    if isinstance(value, dict):
        if any(f not in value for f in schema.get("required", [])):
            return False
        props = schema.get("properties", {})
        for name, sub in props.items():
            if name in value and not _schema_ok(sub, value[name]):
                return False
        if schema.get("additionalProperties") is False and any(k not in props for k in value):
            return False
    return True


def valid(validator: dict[str, Any], doc: dict[str, Any]) -> bool:
    """Whether ``doc`` satisfies the collection's validator."""
    rest = {k: v for k, v in validator.items() if k != "$jsonSchema"}
    if "$jsonSchema" in validator and not _schema_ok(validator["$jsonSchema"], doc):
        return False
    return filtering.filter_applies(rest, doc) if rest else True


def failure(doc: dict[str, Any]) -> tuple[int, str, dict[str, Any]]:
    """The code, message and extra fields of a DocumentValidationFailure."""
    return (
        121,
        "Document failed validation",
        {"errInfo": {"failingDocumentId": doc.get("_id"), "details": {"operatorName": "$and"}}},
    )
