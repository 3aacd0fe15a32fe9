"""Fail points for tests: failCommand, onPrimaryTransactionalWrite, maxTimeAlwaysTimeOut…

Modes are the server's: ``off``, ``alwaysOn``, ``{times: n}`` (then off) and ``{skip: n}``
(then always on).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from changestream_worker.testing.emulator.errors import CommandError

DATA_FIELDS: dict[str, set[str]] = {
    "failCommand": {
        "failCommands",
        "errorCode",
        "errorLabels",
        "closeConnection",
        "blockConnection",
        "blockTimeMS",
        "writeConcernError",
        "appName",
        "failInternalCommands",
        "errorExtraInfo",
        "namespace",
    },
    "failGetMoreAfterCursorCheckout": {"errorCode", "errorLabels", "closeConnection"},
    # a retryable write's statement: close the connection after it commits, or fail before
    "onPrimaryTransactionalWrite": {"closeConnection", "failBeforeCommitExceptionCode"},
    # every command with a maxTimeMS fails as if it ran out of time
    "maxTimeAlwaysTimeOut": set(),
}


@dataclass
class FailPoint:
    """One configured fail point: its mode and data, and how often it has fired."""

    name: str
    mode: Any = "off"
    data: dict[str, Any] = field(default_factory=dict)
    times: int | None = None
    skip: int = 0

    @property
    def active(self) -> bool:
        return self.mode != "off" and (self.times is None or self.times > 0)

    def fire(self) -> bool:
        """Consume one activation if the mode allows it; True when it fires."""
        if not self.active:
            return False
        if self.skip > 0:
            self.skip -= 1
            return False
        if self.times is not None:
            self.times -= 1
        return True


def _parse_mode(fp: FailPoint, mode: Any) -> None:
    if isinstance(mode, dict):
        if "times" in mode:
            fp.times = int(mode["times"])
        elif "skip" in mode:
            fp.skip = int(mode["skip"])
        elif "activationProbability" in mode:
            raise CommandError(2, "activationProbability is not supported by the emulator")
        else:
            raise CommandError(2, f"unknown fail point mode {mode!r}")
    elif mode not in ("off", "alwaysOn"):
        raise CommandError(2, f"unknown fail point mode {mode!r}")


class FailPoints:
    """The server's fail point registry (``configureFailPoint``)."""

    def __init__(self) -> None:
        self.points: dict[str, FailPoint] = {}

    def configure(self, cmd: dict[str, Any]) -> dict[str, Any]:
        name = cmd.get("configureFailPoint")
        if not isinstance(name, str) or name not in DATA_FIELDS:
            raise CommandError(
                2,
                f"Cannot find failpoint named {name!r} (the emulator implements "
                f"{', '.join(sorted(DATA_FIELDS))})",
            )
        mode = cmd.get("mode", "off")
        data = dict(cmd.get("data") or {})
        for key in data:
            if key not in DATA_FIELDS[name]:
                raise CommandError(
                    2, f"failpoint {name} data field '{key}' is not supported by the emulator"
                )
        if name == "failGetMoreAfterCursorCheckout" and data.get("closeConnection"):
            raise CommandError(
                115, "the emulator does not support failGetMoreAfterCursorCheckout closeConnection"
            )
        fp = FailPoint(name, mode, data)
        _parse_mode(fp, mode)
        previous = self.points.get(fp.name)
        self.points[fp.name] = fp
        return {"count": 0 if previous is None or not previous.active else 1}

    def fail_command(self, command: str, app_name: str | None) -> dict[str, Any] | None:
        """The failCommand data if it fires for this command on this connection."""
        fp = self.points.get("failCommand")
        if fp is None or not fp.active:
            return None
        if command not in fp.data.get("failCommands", []):
            return None
        wanted = fp.data.get("appName")
        if wanted is not None and wanted != app_name:
            return None
        return fp.data if fp.fire() else None

    def fire(self, name: str) -> dict[str, Any] | None:
        """The data of fail point ``name`` if it fires now (one activation is used)."""
        fp = self.points.get(name)
        if fp is None or not fp.fire():
            return None
        return fp.data

    def armed(self, name: str) -> bool:
        """Whether fail point ``name`` is on (without using an activation)."""
        fp = self.points.get(name)
        return fp is not None and fp.active

    def fail_get_more(self) -> dict[str, Any] | None:
        return self.fire("failGetMoreAfterCursorCheckout")
