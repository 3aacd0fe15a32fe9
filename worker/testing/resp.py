"""RESP2/RESP3 on the wire: reading commands, encoding replies (for the Redis test double)."""

from __future__ import annotations

import asyncio
from typing import Any

MAX_ARGS = 1024 * 1024  # a bigger array or bulk header is a bad message, not a command
MAX_BULK = 64 * 1024 * 1024


class ProtocolError(Exception):
    """The peer sent something that is not RESP: its connection is closed."""


class CommandError(Exception):
    """A command the server refuses: answered with ``-CODE message``, the connection stays."""

    def __init__(self, message: str, code: str = "ERR") -> None:
        self.code = code
        super().__init__(message)


class Simple(str):
    """A RESP simple string (``+OK``) rather than a bulk string."""


class Push(list[Any]):
    """Out-of-band data (pub/sub): a push in RESP3, an array in RESP2."""


class Frames(list[Any]):
    """Several replies to one command (SUBSCRIBE answers once per channel)."""


def arity(a: list[bytes], least: int, most: int | None, name: str) -> None:
    if len(a) < least or (most is not None and len(a) > most):
        raise CommandError(f"wrong number of arguments for '{name}' command")


def as_int(raw: bytes) -> int:
    try:
        return int(raw)
    except ValueError:
        raise CommandError("value is not an integer or out of range") from None


async def _read_line(reader: asyncio.StreamReader) -> bytes | None:
    try:
        line = await reader.readline()
    except ValueError:  # longer than the stream's limit: no command is that long
        raise ProtocolError("line too long") from None
    if not line:
        return None
    if not line.endswith(b"\r\n"):
        raise ProtocolError("line without CRLF")
    return line[:-2]


async def read_command(reader: asyncio.StreamReader) -> list[bytes] | None:
    """One command as its arguments; ``None`` at end of stream."""
    line = await _read_line(reader)
    if line is None:
        return None
    if not line.startswith(b"*"):
        return line.split()  # an inline command, as redis-cli and telnet send
    count = _header(line, MAX_ARGS)
    args = []
    for _ in range(count):
        head = await _read_line(reader)
        if head is None or not head.startswith(b"$"):
            raise ProtocolError("expected '$', got something else")
        size = _header(head, MAX_BULK)
        data = await reader.readexactly(size + 2)
        if data[-2:] != b"\r\n":
            raise ProtocolError("bulk string without CRLF")
        args.append(data[:-2])
    return args


def _header(line: bytes, limit: int) -> int:
    try:
        n = int(line[1:])
    except ValueError:
        raise ProtocolError(f"invalid length {line[1:20]!r}") from None
    if not 0 <= n <= limit:
        raise ProtocolError(f"invalid length {n}")
    return n


def encode(value: Any, protocol: int = 2) -> bytes:
    """A reply in RESP2 or RESP3 (maps and nulls differ between them)."""
    if isinstance(value, CommandError):
        return f"-{value.code} {value}\r\n".encode()
    if value is None:
        return b"_\r\n" if protocol == 3 else b"$-1\r\n"
    if isinstance(value, Simple):
        return f"+{value}\r\n".encode()
    if isinstance(value, bool):
        return f":{int(value)}\r\n".encode()
    if isinstance(value, int):
        return f":{value}\r\n".encode()
    if isinstance(value, str):
        value = value.encode()
    if isinstance(value, bytes):
        return b"$%d\r\n%s\r\n" % (len(value), value)
    if isinstance(value, dict):
        items = [x for kv in value.items() for x in kv]
        head = b"%%%d\r\n" % len(value) if protocol == 3 else b"*%d\r\n" % len(items)
        return head + b"".join(encode(x, protocol) for x in items)
    if isinstance(value, Frames):
        return b"".join(encode(x, protocol) for x in value)
    if isinstance(value, Push) and protocol == 3:
        return b">%d\r\n" % len(value) + b"".join(encode(x, protocol) for x in value)
    if isinstance(value, list):
        return b"*%d\r\n" % len(value) + b"".join(encode(x, protocol) for x in value)
    raise TypeError(f"cannot encode {type(value).__name__}")
