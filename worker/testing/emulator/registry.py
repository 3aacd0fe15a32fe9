"""Command handlers and the table the server dispatches through.

A command module marks its handlers with ``@command``; the server builds its table from an
explicit list of modules (``table(cmd_admin, cmd_crud, ...)``), so importing a module
registers nothing by side effect and no command module ever imports the server.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any

from changestream_worker.testing.emulator.context import Ctx

Handler = Callable[[Ctx, dict[str, Any]], Awaitable[dict[str, Any]]]
_MARK = "__emulator_command__"


@dataclass(frozen=True, slots=True)
class Mark:
    """What ``@command`` records on a handler: its names, and whether it changes data."""

    names: tuple[str, ...]
    write: bool


def command(*names: str, write: bool = False) -> Callable[[Handler], Handler]:
    """Mark a handler for one or more command names (``write``: refused while stepped down)."""

    def deco(fn: Handler) -> Handler:
        setattr(fn, _MARK, Mark(names, write))
        return fn

    return deco


@dataclass
class Table:
    """Every command the server answers, and which of them change data."""

    handlers: dict[str, Handler] = field(default_factory=dict)
    writes: set[str] = field(default_factory=set)

    def get(self, name: str) -> Handler | None:
        return self.handlers.get(name)


def table(*modules: ModuleType, extra: Iterable[Handler] = ()) -> Table:
    """Collect the marked handlers of ``modules``; a name claimed twice is a bug."""
    out = Table()
    found = [v for m in modules for v in vars(m).values() if callable(v) and hasattr(v, _MARK)]
    for fn in [*found, *extra]:
        mark: Mark = getattr(fn, _MARK)
        for name in mark.names:
            if name in out.handlers and out.handlers[name] is not fn:
                raise RuntimeError(f"emulator command {name!r} is defined twice")
            out.handlers[name] = fn
            if mark.write:
                out.writes.add(name)
    return out
