"""Exceptions of the worker: one base, config errors with YAML paths, handler control flow."""

from __future__ import annotations

from collections.abc import Mapping


class WorkerError(Exception):
    """Base class of every error the worker raises on purpose."""


class ConfigError(WorkerError):
    """Something a user wrote is wrong; each problem names the YAML path of its field.

    Args:
        problems: one line per problem, e.g. ``watchers[1].handlers[0]: unknown handler 'x'``.
    """

    def __init__(self, problems: list[str] | str) -> None:
        self.problems = [problems] if isinstance(problems, str) else list(problems)
        super().__init__("\n".join(self.problems))


class HandlerControl(Exception):
    """Base of the exceptions a handler raises to steer the dispatcher."""


class _Because(HandlerControl):
    """A control exception with a short reason for logs and dead letters."""

    def __init__(self, reason: str = "") -> None:
        self.reason = reason
        super().__init__(reason)


class SkipEvent(_Because):
    """Raised by a handler: this event needs no work; it counts as ``skipped``."""


class RetryEvent(HandlerControl):
    """Raised by a handler: try this event again, after ``after`` seconds if given.

    Args:
        after: seconds to wait before the next attempt; ``None`` uses the retry policy.
        reason: a short text for logs and dead letters.
    """

    def __init__(self, after: float | None = None, reason: str = "") -> None:
        self.after = after
        self.reason = reason
        super().__init__(reason or f"retry requested (after={after})")


class StopWatcher(_Because):
    """Raised by a handler: stop this watcher on purpose; the event is not checkpointed."""


class BatchItemFailures(HandlerControl):
    """Raised by ``handle_batch``: these events of the batch failed, the others are done.

    Args:
        failures: the failed events' indexes in the batch, each with its error (an
            exception, or a text taken as a ``PermanentError``).
    """

    def __init__(self, failures: Mapping[int, BaseException | str]) -> None:
        self.failures: dict[int, BaseException] = {
            int(i): e if isinstance(e, BaseException) else PermanentError(e)
            for i, e in failures.items()
        }
        super().__init__(f"{len(self.failures)} event(s) of the batch failed")


class TransientError(WorkerError):
    """A handler failure worth retrying (a timeout, a 4xx from a relay, a lost connection)."""


class PermanentError(WorkerError):
    """A handler failure that retrying cannot fix: the event goes to dead letters at once."""


class MissingExtraError(WorkerError):
    """A handler type needs an optional dependency that is not installed.

    Args:
        extra: the name of the extra that brings it (``redis``, ``sql``, ...).
        module: the module that could not be imported.
    """

    def __init__(self, extra: str, module: str) -> None:
        self.extra, self.module = extra, module
        super().__init__(
            f"needs the optional dependency '{module}': pip install 'changestream-worker[{extra}]'"
        )
