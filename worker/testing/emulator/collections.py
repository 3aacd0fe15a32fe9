"""Collection options that change how writes behave: capped sizes and validators."""

from __future__ import annotations

from typing import Any

from changestream_worker.testing.emulator import validation
from changestream_worker.testing.emulator.engine import Collection
from changestream_worker.testing.emulator.errors import CommandError

LEVELS = ("off", "strict", "moderate")
ACTIONS = ("error", "warn")


def collection_options(cmd: dict[str, Any], modifying: bool = False) -> dict[str, Any]:
    """The capped and validation options of a create (or collMod) command, checked."""
    out: dict[str, Any] = {}
    if cmd.get("capped"):
        if modifying:
            raise CommandError(72, "collMod cannot make a collection capped")
        size = cmd.get("size")
        if not isinstance(size, int | float) or size <= 0:
            raise CommandError(72, "the 'size' field is required when 'capped' is true")
        out.update(capped=True, size=int(size))
        if cmd.get("max"):
            out["max"] = int(cmd["max"])
    if "validator" in cmd:
        validation.check_rule(cmd["validator"])
        out["validator"] = dict(cmd["validator"])
    if "validationLevel" in cmd:
        if cmd["validationLevel"] not in LEVELS:
            raise CommandError(2, f"invalid validationLevel: {cmd['validationLevel']}")
        out["validationLevel"] = cmd["validationLevel"]
    if "validationAction" in cmd:
        if cmd["validationAction"] not in ACTIONS:
            raise CommandError(2, f"invalid validationAction: {cmd['validationAction']}")
        out["validationAction"] = cmd["validationAction"]
    return out


def apply_options(coll: Collection, options: dict[str, Any]) -> None:
    """Give the engine's collection the limits and rules its options describe."""
    if options.get("capped"):
        # the server rounds a capped size up to a multiple of 256 bytes
        size = -(-int(options["size"]) // 256) * 256
        coll.capped = (size, options.get("max"))
    if options.get("validator"):
        coll.validator = (
            options["validator"],
            options.get("validationLevel", "strict"),
            options.get("validationAction", "error"),
        )
    else:
        coll.validator = None
