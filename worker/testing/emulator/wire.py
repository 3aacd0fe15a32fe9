"""MongoDB wire protocol framing: OP_MSG (with document sequences), OP_QUERY and OP_REPLY."""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from typing import Any

import bson
from bson.codec_options import CodecOptions

OP_REPLY = 1
OP_QUERY = 2004
OP_COMPRESSED = 2012
OP_MSG = 2013

FLAG_CHECKSUM = 1
FLAG_MORE_TO_COME = 1 << 1
FLAG_EXHAUST_ALLOWED = 1 << 16

MAX_MESSAGE_SIZE = 48_000_000
MAX_BSON_SIZE = 16 * 1024 * 1024

HEADER = struct.Struct("<iiii")
# Documents are decoded as plain dicts; tz-aware datetimes round-trip exactly as sent.
CODEC: CodecOptions[dict[str, Any]] = CodecOptions(tz_aware=True)


class ProtocolError(Exception):
    """A message that breaks the framing rules: the connection that sent it is closed."""


@dataclass(slots=True)
class Request:
    """One decoded client message."""

    request_id: int
    op_code: int
    command: dict[str, Any]
    flags: int = 0
    # OP_QUERY only: the legacy namespace ("admin.$cmd")
    collection: str = ""
    sequences: dict[str, list[dict[str, Any]]] = field(default_factory=dict)

    @property
    def more_to_come(self) -> bool:
        return bool(self.flags & FLAG_MORE_TO_COME)

    @property
    def exhaust_allowed(self) -> bool:
        return bool(self.flags & FLAG_EXHAUST_ALLOWED)


def parse_header(data: bytes) -> tuple[int, int, int, int]:
    """Decode and sanity-check the 16-byte header: (length, request_id, response_to, op)."""
    length, request_id, response_to, op_code = HEADER.unpack(data)
    if length < HEADER.size or length > MAX_MESSAGE_SIZE:
        raise ProtocolError(f"message length {length} out of range")
    return length, request_id, response_to, op_code


def _decode(doc: bytes) -> dict[str, Any]:
    try:
        return bson.decode(doc, codec_options=CODEC)
    except Exception as exc:  # bson raises several types for corrupt input
        raise ProtocolError(f"invalid BSON: {exc}") from exc


def _bson_len(body: bytes, pos: int) -> int:
    if pos + 4 > len(body):
        raise ProtocolError("truncated BSON document")
    (size,) = struct.unpack_from("<i", body, pos)
    if size < 5 or pos + size > len(body) or size > MAX_BSON_SIZE + 16 * 1024:
        raise ProtocolError("BSON document size out of range")
    return size


def parse_body(request_id: int, op_code: int, body: bytes) -> Request:
    """Decode a message body (everything after the header)."""
    if op_code == OP_MSG:
        return _parse_msg(request_id, body)
    if op_code == OP_QUERY:
        return _parse_query(request_id, body)
    raise ProtocolError(f"unsupported opCode {op_code}")


def _parse_msg(request_id: int, body: bytes) -> Request:
    if len(body) < 5:
        raise ProtocolError("OP_MSG too short")
    (flags,) = struct.unpack_from("<I", body, 0)
    end = len(body) - (4 if flags & FLAG_CHECKSUM else 0)
    pos = 4
    command: dict[str, Any] | None = None
    sequences: dict[str, list[dict[str, Any]]] = {}
    while pos < end:
        kind = body[pos]
        pos += 1
        if kind == 0:
            size = _bson_len(body, pos)
            if command is not None:
                raise ProtocolError("OP_MSG has more than one body section")
            command = _decode(body[pos : pos + size])
            pos += size
        elif kind == 1:
            if pos + 4 > end:
                raise ProtocolError("truncated document sequence")
            (size,) = struct.unpack_from("<i", body, pos)
            stop = pos + size
            if size < 5 or stop > end:
                raise ProtocolError("document sequence size out of range")
            nul = body.index(b"\x00", pos + 4, stop)
            ident = body[pos + 4 : nul].decode()
            cur = nul + 1
            docs = []
            while cur < stop:
                dsize = _bson_len(body, cur)
                docs.append(_decode(body[cur : cur + dsize]))
                cur += dsize
            sequences[ident] = docs
            pos = stop
        else:
            raise ProtocolError(f"unknown OP_MSG section kind {kind}")
    if command is None:
        raise ProtocolError("OP_MSG without a body section")
    for ident, docs in sequences.items():
        command[ident] = docs
    return Request(request_id, OP_MSG, command, flags=flags, sequences=sequences)


def _parse_query(request_id: int, body: bytes) -> Request:
    try:
        nul = body.index(b"\x00", 4)
    except ValueError as exc:
        raise ProtocolError("OP_QUERY without a collection name") from exc
    (flags,) = struct.unpack_from("<i", body, 0)
    collection = body[4:nul].decode(errors="replace")
    pos = nul + 1 + 8  # numberToSkip, numberToReturn
    size = _bson_len(body, pos)
    query = _decode(body[pos : pos + size])
    # Drivers may wrap the command: {$query: {...}, $readPreference: ...}
    if "$query" in query:
        query = dict(query["$query"])
    return Request(request_id, OP_QUERY, query, flags=flags, collection=collection)


def encode_msg(request_id: int, response_to: int, doc: dict[str, Any], flags: int = 0) -> bytes:
    """Encode one OP_MSG reply with a single body section."""
    payload = bson.encode(doc)
    length = HEADER.size + 4 + 1 + len(payload)
    return b"".join(
        (
            HEADER.pack(length, request_id, response_to, OP_MSG),
            struct.pack("<IB", flags, 0),
            payload,
        )
    )


def encode_reply(request_id: int, response_to: int, doc: dict[str, Any]) -> bytes:
    """Encode an OP_REPLY carrying one document (the legacy handshake answer)."""
    payload = bson.encode(doc)
    length = HEADER.size + 20 + len(payload)
    return b"".join(
        (
            HEADER.pack(length, request_id, response_to, OP_REPLY),
            struct.pack("<iqii", 0, 0, 0, 1),
            payload,
        )
    )
