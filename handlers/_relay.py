"""What both broker relays share: subject/routing-key templates, the stable message id and
the payload (the change event as relaxed MongoDB Extended JSON)."""

from __future__ import annotations

import hashlib
import re
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from bson import json_util
from bson.json_util import RELAXED_JSON_OPTIONS

from changestream_worker import ChangeEvent, PermanentError

#: ``{path}`` fields of a template, the same syntax as cache_invalidation's keys
FIELD = re.compile(r"\{([^{}]+)\}")
#: the fields of a change event a relay forwards (those present)
PAYLOAD_FIELDS = (
    "_id",
    "operationType",
    "ns",
    "documentKey",
    "clusterTime",
    "fullDocument",
    "updateDescription",
)
# AMQP's message_id is a short string (255 bytes); tokens are far shorter in practice
MAX_ID = 200


def render(template: str, event: ChangeEvent) -> str:
    """Fill ``{path}`` fields of ``template`` from ``event``.

    Raises:
        PermanentError: a field's path is missing from the event.
    """

    def value(match: re.Match[str]) -> str:
        found: Any = event.get(match.group(1))
        if found is None:
            raise PermanentError(f"template field {{{match.group(1)}}} is missing from the event")
        return str(found)

    return FIELD.sub(value, template)


def prefix_pattern(template: str, rest: str) -> str:
    """The template's literal dot-separated prefix followed by ``rest`` (``>`` or ``#``):
    ``cdc.{ns.db}.{ns.coll}`` → ``cdc.>``; a template without fields is itself."""
    head = FIELD.split(template, maxsplit=1)[0]
    if head == template:
        return template
    literal = head.rpartition(".")[0]
    return f"{literal}.{rest}" if literal else rest


def message_id(event: ChangeEvent) -> str:
    """The event's stable id (its resume token's hex), the same on every re-delivery."""
    eid = event.event_id
    if len(eid) <= MAX_ID:
        return eid
    return "sha256-" + hashlib.sha256(eid.encode()).hexdigest()


def payload(event: ChangeEvent) -> bytes:
    """The event as relaxed Extended JSON, with the fields of ``PAYLOAD_FIELDS`` it has."""
    doc = {k: event.raw[k] for k in PAYLOAD_FIELDS if k in event.raw}
    return json_util.dumps(doc, json_options=RELAXED_JSON_OPTIONS).encode()


def safe_url(url: str) -> str:
    """``url`` without its user and password, for logs and errors."""
    parts = urlsplit(url)
    if parts.username is None and parts.password is None:
        return url
    host = parts.hostname or ""
    netloc = f"{host}:{parts.port}" if parts.port else host
    return urlunsplit(parts._replace(netloc=netloc))
