"""nats_relay: publish each change event to NATS JetStream, exactly once in the stream.

Guarantee: an event counts as done only once JetStream has acknowledged (stored) it. Each
message carries ``Nats-Msg-Id`` = the event's stable id (from its resume token); events a
restarted worker delivers again are published again with the same id and JetStream drops
them inside the stream's duplicate window (``duplicate_window``, 2 minutes by default):
exactly once in the stream across crashes within that window, at-least-once beyond it.
A batch is published pipelined: every message in flight at once, then every acknowledgement.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

from changestream_worker import (
    BatchItemFailures,
    ChangeEvent,
    ConfigError,
    Handler,
    HandlerContext,
    HandlerOptions,
    MissingExtraError,
    PermanentError,
    TransientError,
)
from changestream_worker.handlers._relay import (
    message_id,
    payload,
    prefix_pattern,
    render,
    safe_url,
)

try:
    import nats
    import nats.errors
    import nats.js.errors
    from nats.aio.client import Client
    from nats.js import JetStreamContext
except ImportError as exc:  # the [nats] extra is not installed
    raise MissingExtraError("nats", "nats") from exc

# errors of a connection in trouble: the batch is retried with backoff
CONNECTION_ERRORS = (
    nats.errors.ConnectionClosedError,
    nats.errors.ConnectionReconnectingError,
    nats.errors.ConnectionDrainingError,
    nats.errors.OutboundBufferLimitError,
    nats.errors.StaleConnectionError,
    nats.errors.NoServersError,
    nats.errors.TimeoutError,
    OSError,  # TimeoutError and ConnectionError among them
)
# "name already in use": the stream exists (with its own settings); the check below decides
STREAM_NAME_IN_USE = 10058


class NatsRelayOptions(HandlerOptions):
    """Options of ``nats_relay`` (see README, "Forward changes to a broker").

    ``subject`` is a template over the event (``{ns.coll}``, ``{fullDocument.region}``);
    ``create_stream`` names a stream to create over ``stream_subjects`` (default: the
    subject's literal prefix + ``>``) with ``duplicate_window`` seconds of de-duplication.
    """

    url: str = "nats://127.0.0.1:4222"
    subject: str = "cdc.{ns.db}.{ns.coll}.{operationType}"
    create_stream: str | None = None
    stream_subjects: list[str] | None = None
    duplicate_window: float = 120.0
    ack_timeout: float = 5.0
    connect_attempts: int = 5


def _subject_ok(subject: str) -> bool:
    tokens = subject.split(".")
    return all(t and t not in ("*", ">") and not any(c.isspace() for c in t) for t in tokens)


class NatsRelay(Handler[NatsRelayOptions]):
    """Publishes every event to JetStream with ``Nats-Msg-Id`` = its stable id."""

    def __init__(self, options: NatsRelayOptions) -> None:
        super().__init__(options)
        self.nc: Client | None = None
        self.js: JetStreamContext | None = None
        self.log: Any = None
        self._lock = asyncio.Lock()
        self._attempt = 0

    async def start(self, ctx: HandlerContext) -> None:
        self.log = ctx.log
        field = f"handlers.{ctx.handler}.options"
        try:
            js = await self._jetstream()
        except TransientError as exc:
            raise ConfigError(f"{field}.url: {exc}") from exc
        pattern = prefix_pattern(self.options.subject, ">")
        if self.options.create_stream:
            try:
                await js.add_stream(
                    name=self.options.create_stream,
                    subjects=self.options.stream_subjects or [pattern],
                    duplicate_window=self.options.duplicate_window,
                )
            except nats.js.errors.APIError as exc:
                if exc.err_code != STREAM_NAME_IN_USE:
                    raise ConfigError(f"{field}.create_stream: {exc.description}") from exc
        try:
            await js.find_stream_name_by_subject(pattern)
        except nats.js.errors.NotFoundError as exc:
            raise ConfigError(
                f"{field}.subject: no JetStream stream captures {pattern!r}"
                " (create one, or set create_stream)"
            ) from exc

    async def stop(self) -> None:
        if self.nc is not None and not self.nc.is_closed:
            await self.nc.close()

    async def _jetstream(self) -> JetStreamContext:
        """The JetStream context of a live connection; reconnects one caller at a time."""
        if self.nc is not None and not self.nc.is_closed and self.js is not None:
            return self.js
        async with self._lock:
            if self.nc is None or self.nc.is_closed or self.js is None:
                self._attempt += 1
                try:
                    self.nc = await nats.connect(
                        self.options.url,
                        name="changestream-worker",
                        connect_timeout=2,
                        reconnect_time_wait=1,
                        max_reconnect_attempts=self.options.connect_attempts,
                        error_cb=self._on_error,
                        disconnected_cb=self._on_disconnected,
                        reconnected_cb=self._on_reconnected,
                    )
                except Exception as exc:  # every connect failure is "not reachable now"
                    self.log.warning(
                        "nats_connect_failed",
                        url=safe_url(self.options.url),
                        attempt=self._attempt,
                        error=str(exc) or type(exc).__name__,
                    )
                    raise TransientError(
                        f"cannot reach NATS at {safe_url(self.options.url)}: {exc}"
                    ) from exc
                self._attempt = 0
                self.js = self.nc.jetstream(timeout=self.options.ack_timeout)
            return self.js

    async def _on_error(self, exc: Exception) -> None:
        # nats-py calls this once per failed reconnect attempt: one warning each
        self.log.warning("nats_connection_error", error=str(exc) or type(exc).__name__)

    async def _on_disconnected(self) -> None:
        self.log.warning("nats_disconnected", url=safe_url(self.options.url))

    async def _on_reconnected(self) -> None:
        self.log.info("nats_reconnected", url=safe_url(self.options.url))

    def _subject(self, event: ChangeEvent) -> str:
        subject = render(self.options.subject, event)
        if not _subject_ok(subject):
            raise PermanentError(f"{subject!r} is not a valid NATS subject")
        return subject

    def _classify(self, exc: BaseException, subject: str, size: int) -> BaseException:
        if isinstance(exc, nats.js.errors.NoStreamResponseError):
            return PermanentError(f"no JetStream stream captures subject {subject!r}")
        if isinstance(exc, nats.js.errors.ServiceUnavailableError):
            return TransientError(f"JetStream unavailable: {exc.description}")
        if isinstance(exc, nats.js.errors.APIError):
            return PermanentError(
                f"JetStream refused the message on {subject!r}: {exc.description}"
                f" (err_code {exc.err_code})"
            )
        if isinstance(exc, nats.errors.MaxPayloadError):
            return PermanentError(f"message of {size} bytes exceeds the server's max_payload")
        if isinstance(exc, CONNECTION_ERRORS):
            return TransientError(f"nats: {type(exc).__name__} {exc}".rstrip())
        return exc

    async def handle(self, event: ChangeEvent, ctx: HandlerContext) -> None:
        try:
            await self.handle_batch([event], ctx)
        except BatchItemFailures as exc:
            raise exc.failures[0] from None

    async def _publish(self, js: JetStreamContext, event: ChangeEvent) -> BaseException | None:
        subject, body = "", b""
        try:
            subject = self._subject(event)
            body = payload(event)
            await js.publish(subject, body, headers={"Nats-Msg-Id": message_id(event)})
        except PermanentError as exc:
            return exc
        except Exception as exc:  # classified: refused, or the connection's trouble
            return self._classify(exc, subject, len(body))
        return None

    async def handle_batch(self, events: Sequence[ChangeEvent], ctx: HandlerContext) -> None:
        js = await self._jetstream()
        # one request each, all in flight at once: the tasks write in order on one
        # connection, so the stream keeps the batch's order
        errors = await asyncio.gather(*(self._publish(js, e) for e in events))
        failures = {i: e for i, e in enumerate(errors) if e is not None}
        if failures:
            if len(failures) == len(events) and all(
                isinstance(e, TransientError) for e in failures.values()
            ):
                raise next(iter(failures.values()))
            raise BatchItemFailures(failures)
