"""Logging setup (structlog: JSON off a terminal, console on one) and credential masking."""

from __future__ import annotations

import itertools
import os
import re
import sys
from collections.abc import Mapping, MutableMapping
from typing import Any, TextIO

import structlog
from structlog.typing import EventDict, Processor, WrappedLogger

__all__ = ["configure_logging", "is_secret_key", "mask_event", "mask_secrets", "mask_uri"]

MASK = "***"
# scheme://user:password@host — the password runs to the '@' that ends the authority, so an
# unescaped '@' inside it is masked too.
_URI_CREDENTIALS = re.compile(
    r"(?P<head>\b[A-Za-z][A-Za-z0-9+.\-]*://(?P<user>[^:@/\s?#'\"]*)):"
    r"(?P<password>[^\s'\"]*?)@(?=[^@\s/?#'\"]*(?:[/?#\s'\"]|$))"
)
_QUERY_SECRET = re.compile(
    r"(?P<head>[?&;](?:password|pwd|pass|secret|token|api_?key|access_token|sslpassword|"
    r"authToken)=)[^&#\s'\"]+",
    re.IGNORECASE,
)
_SECRET_WORDS = {
    "password",
    "passwd",
    "pwd",
    "pass",
    "passphrase",
    "secret",
    "apikey",
    "credential",
    "credentials",
    "authorization",
}
_KEY_QUALIFIERS = {"api", "access", "private", "secret", "signing", "encryption", "auth"}
# "token" names a secret (auth_token, accessToken, nats_token) only as the last word of a name,
# and not after these: a change stream's resume token is a position anyone may read
_POSITION_WORDS = {"resume", "batch", "page", "continuation", "next", "after", "cursor", "has"}
_MAX_DEPTH = 8


def mask_uri(uri: str) -> str:
    """Replace the password of every URI in ``uri`` (and secret query parameters) with ``***``.

    ``mongodb://app:s3cret@db:27017/?replicaSet=rs0`` -> ``mongodb://app:***@db:27017/?replicaSet=rs0``;
    works for ``mongodb+srv://``, ``redis://``, ``postgresql+asyncpg://`` and any other scheme.
    """
    masked = _URI_CREDENTIALS.sub(lambda m: f"{m.group('head')}:{MASK}@", uri)
    return _QUERY_SECRET.sub(lambda m: f"{m.group('head')}{MASK}", masked)


def is_secret_key(key: str) -> bool:
    """Whether an option or log field named ``key`` holds a secret (password, auth token, api key).

    ``token_age_s``, ``resume_token`` and ``post_batch_token`` are not secrets; ``token``,
    ``auth_token`` and ``accessToken`` are.
    """
    words = [w.lower() for w in re.findall(r"[A-Z]?[a-z0-9]+|[A-Z]+(?![a-z])", key)]
    if any(w in _SECRET_WORDS for w in words) or words == ["key"]:
        return True
    if words[-1:] == ["token"] and (len(words) == 1 or words[-2] not in _POSITION_WORDS):
        return True
    return any(a in _KEY_QUALIFIERS and b == "key" for a, b in itertools.pairwise(words))


def mask_secrets(value: Any, _depth: int = 0) -> Any:
    """A copy of ``value`` with secret-named mapping entries and URI passwords masked.

    Empty and ``None`` secrets stay as they are, so that an unset secret is visible as unset.
    """
    if isinstance(value, str):
        return mask_uri(value) if "://" in value or "=" in value else value
    if _depth >= _MAX_DEPTH:
        return value
    if isinstance(value, Mapping):
        return {
            k: (
                MASK
                if isinstance(k, str) and is_secret_key(k) and v not in (None, "")
                else mask_secrets(v, _depth + 1)
            )
            for k, v in value.items()
        }
    if isinstance(value, list | tuple):
        return [mask_secrets(v, _depth + 1) for v in value]
    return value


def mask_event(_logger: WrappedLogger, _method: str, event_dict: EventDict) -> EventDict:
    """structlog processor: masks credentials in every field of every log event."""
    masked = mask_secrets(event_dict)
    assert isinstance(masked, MutableMapping)
    return dict(masked)


def _use_json(fmt: str, stream: TextIO) -> bool:
    if fmt in ("json", "console"):
        return fmt == "json"
    return not _is_tty(stream)


def configure_logging(fmt: str = "auto", level: str = "info", stream: TextIO | None = None) -> None:
    """Configure structlog for the process: the only global the worker sets.

    Args:
        fmt: ``json``, ``console`` or ``auto`` (JSON unless ``stream`` is a terminal).
        level: the minimum level: debug, info, warning, error or critical.
        stream: where log lines go; stdout if None.
    """
    out = stream if stream is not None else sys.stdout
    as_json = _use_json(fmt, out)
    processors: list[Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        structlog.processors.StackInfoRenderer(),
        structlog.processors.dict_tracebacks if as_json else structlog.processors.format_exc_info,
        mask_event,  # after the tracebacks are rendered, so their text is masked too
    ]
    if as_json:
        processors.append(structlog.processors.JSONRenderer(default=str))
    else:
        colors = not os.environ.get("NO_COLOR") and _is_tty(out)
        processors.append(structlog.dev.ConsoleRenderer(colors=colors))
    structlog.configure(
        processors=processors,
        wrapper_class=structlog.make_filtering_bound_logger(level.lower()),
        logger_factory=structlog.PrintLoggerFactory(out),
        # capture_logs() in tests reconfigures structlog, which cached loggers would ignore
        cache_logger_on_first_use=False,
    )


def _is_tty(stream: TextIO) -> bool:
    isatty = getattr(stream, "isatty", None)
    return bool(callable(isatty) and isatty())
