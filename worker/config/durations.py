"""Config value types given as text: durations (``500ms``, ``2m``) and ``start_at`` positions."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Any

_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d)")
DURATION_PATTERN = r"^\s*(\d+(\.\d+)?(ms|s|m|h|d)?)+\s*$"


def parse_duration(value: Any) -> Any:
    """Turn ``"500ms"``, ``"30s"``, ``"2m"``, ``"1h"``, ``"1m30s"`` or a number into seconds.

    Values of other types are returned unchanged so that pydantic reports their type.

    Raises:
        ValueError: a string that is not a duration, or a negative number.
    """
    if isinstance(value, bool):
        raise ValueError("expected a duration such as 500ms, 30s, 2m or a number of seconds")
    if isinstance(value, int | float):
        seconds = float(value)
    elif isinstance(value, str):
        seconds = _parse_duration_text(value)
    else:
        return value
    if seconds < 0:
        raise ValueError("a duration cannot be negative")
    return seconds


def _parse_duration_text(text: str) -> float:
    compact = text.strip().replace(" ", "")
    try:
        return float(compact)
    except ValueError:
        pass
    pos, total = 0, 0.0
    for match in _PART.finditer(compact):
        if match.start() != pos:
            break
        total += float(match.group(1)) * _UNITS[match.group(2)]
        pos = match.end()
    if pos == 0 or pos != len(compact):
        raise ValueError(
            f"invalid duration {text!r}: use a number of seconds or units ms, s, m, h, d"
            " (e.g. 500ms, 30s, 1m30s)"
        )
    return total


def parse_start_at(value: Any) -> Any:
    """Accept ``now``, ``snapshot`` or an ISO-8601 time; a time without a zone means UTC.

    Raises:
        ValueError: anything else.
    """
    if isinstance(value, datetime):
        return value if value.tzinfo is not None else value.replace(tzinfo=UTC)
    if isinstance(value, str):
        text = value.strip()
        if text in ("now", "snapshot"):
            return text
        try:
            parsed = datetime.fromisoformat(text.replace("Z", "+00:00"))
        except ValueError:
            pass
        else:
            return parsed if parsed.tzinfo is not None else parsed.replace(tzinfo=UTC)
    raise ValueError(
        "expected 'now', 'snapshot' or an ISO-8601 time such as 2024-05-01T12:00:00Z,"
        f" got {value!r}"
    )
