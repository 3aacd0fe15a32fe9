"""Helpers shared by the conformance tests: fail points and change-stream reading."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Iterator, Mapping
from typing import Any

from pymongo import AsyncMongoClient, MongoClient, monitoring
from pymongo.asynchronous.change_stream import AsyncChangeStream

Doc = dict[str, Any]
# How many empty awaitData rounds a reader tolerates before deciding nothing is coming.
EMPTY_ROUNDS = 30
AWAIT_MS = 200


class Commands(monitoring.CommandListener):
    """Records the names of the commands a client starts, and of those that fail."""

    def __init__(self) -> None:
        self.names: list[str] = []
        self.failures: list[str] = []

    def started(self, event: monitoring.CommandStartedEvent) -> None:
        """Record a started command."""
        self.names.append(event.command_name)

    def succeeded(self, event: monitoring.CommandSucceededEvent) -> None:
        """Nothing to record."""

    def failed(self, event: monitoring.CommandFailedEvent) -> None:
        """Record a failed command."""
        self.failures.append(event.command_name)

    def count(self, name: str) -> int:
        """How many times `name` was started."""
        return self.names.count(name)


@contextlib.asynccontextmanager
async def app_client(
    uri: str, app: str, **options: Any
) -> AsyncIterator[tuple[AsyncMongoClient[Doc], Commands]]:
    """A client named `app` (fail points filter on it) with a command recorder."""
    commands = Commands()
    client: AsyncMongoClient[Doc] = AsyncMongoClient(
        uri, appname=app, event_listeners=[commands], tz_aware=True, **options
    )
    try:
        yield client, commands
    finally:
        await client.close()


@contextlib.asynccontextmanager
async def fail_point(client: AsyncMongoClient[Doc], spec: Mapping[str, Any]) -> AsyncIterator[None]:
    """Enable a fail point (`spec` = configureFailPoint command) and always turn it off."""
    await client.admin.command(dict(spec))
    try:
        yield
    finally:
        await client.admin.command(
            {"configureFailPoint": spec["configureFailPoint"], "mode": "off"}
        )


@contextlib.contextmanager
def sync_fail_point(client: MongoClient[Doc], spec: Mapping[str, Any]) -> Iterator[None]:
    """`fail_point` for a synchronous client."""
    client.admin.command(dict(spec))
    try:
        yield
    finally:
        client.admin.command({"configureFailPoint": spec["configureFailPoint"], "mode": "off"})


def fail_command(mode: Any, **data: Any) -> Doc:
    """A `failCommand` configureFailPoint command."""
    return {"configureFailPoint": "failCommand", "mode": mode, "data": data}


async def next_change(stream: AsyncChangeStream[Doc]) -> Doc:
    """The stream's next event; fails if none arrives within EMPTY_ROUNDS empty batches."""
    for _ in range(EMPTY_ROUNDS):
        event = await stream.try_next()
        if event is not None:
            return event
    raise AssertionError("no change event arrived")


async def changes(stream: AsyncChangeStream[Doc], count: int) -> list[Doc]:
    """The stream's next `count` events."""
    return [await next_change(stream) for _ in range(count)]


async def no_more_changes(stream: AsyncChangeStream[Doc], rounds: int = 2) -> None:
    """Assert that `rounds` awaitData getMores bring nothing."""
    for _ in range(rounds):
        event = await stream.try_next()
        assert event is None, f"unexpected event {event!r}"
