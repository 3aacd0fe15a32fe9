"""Collation: locale comparison at strength 1 (base letters), 2 (+ accents) and 3 (+ case)."""

from __future__ import annotations

import unicodedata
from typing import Any

from changestream_worker.testing.emulator.errors import CommandError, unsupported

_NO_COLLATE = {"$regex", "$options", "$type", "$expr", "$where", "$exists", "$size", "$mod"}


# ---- collation --------------------------------------------------------------------
def strength_of(collation: dict[str, Any] | None) -> int | None:
    """The comparison strength a collation asks for; None for binary (simple) comparison."""
    if not collation:
        return None
    if not isinstance(collation, dict) or "locale" not in collation:
        raise CommandError(40414, "BSON field 'collation.locale' is missing but a required field")
    for opt in ("numericOrdering", "caseLevel", "backwards"):
        if collation.get(opt):
            raise unsupported(f"collation option '{opt}'")
    if collation["locale"] == "simple":
        return None
    strength = int(collation.get("strength", 3))
    if strength not in (1, 2, 3, 4, 5):
        raise CommandError(51024, f"unsupported collation strength {strength}")
    return min(strength, 3)


def collate_str(s: str, strength: int) -> str:
    """A string whose binary order and equality are the collation's at ``strength``."""
    decomposed = unicodedata.normalize("NFD", s)
    primary = "".join(c for c in decomposed if not unicodedata.combining(c)).casefold()
    if strength == 1:
        return primary
    secondary = decomposed.casefold()
    if strength == 2:
        return f"{primary}\x00{secondary}"
    return f"{primary}\x00{secondary}\x00{s.swapcase()}"  # lower case sorts first, as in ICU


def collate(value: Any, strength: int | None, in_filter: bool = False) -> Any:
    """``value`` with every string replaced by its collation key (filters skip operators' text)."""
    if strength is None:
        return value
    if isinstance(value, str):
        return collate_str(value, strength)
    if isinstance(value, dict):
        return {
            k: v if in_filter and k in _NO_COLLATE else collate(v, strength, in_filter)
            for k, v in value.items()
        }
    if isinstance(value, list):
        return [collate(v, strength, in_filter) for v in value]
    return value
