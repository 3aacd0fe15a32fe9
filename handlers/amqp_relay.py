"""amqp_relay: publish each change event to RabbitMQ, confirmed, persistent, never dropped.

Guarantee: at-least-once with a recognisable duplicate. An event counts as done only once
the broker has confirmed its message (publisher confirms); messages are persistent and
``mandatory``, so one no queue would receive is an error (dead letters), not a silent drop.
``message_id`` is the event's stable id (from its resume token): a message published again
after a crash carries the same id, and consumers drop repeats by it.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Sequence
from typing import Any, Literal

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
from changestream_worker.handlers._relay import message_id, payload, render, safe_url

try:
    import aio_pika
    import aio_pika.exceptions
    import aiormq.exceptions
    from aio_pika.abc import AbstractChannel, AbstractConnection, AbstractExchange
except ImportError as exc:  # the [amqp] extra is not installed
    raise MissingExtraError("amqp", "aio_pika") from exc

# errors of a connection or channel in trouble: retried with backoff
CONNECTION_ERRORS = (
    aiormq.exceptions.AMQPError,
    aiormq.exceptions.ChannelInvalidStateError,
    *aio_pika.exceptions.CONNECTION_EXCEPTIONS,
    OSError,  # TimeoutError and ConnectionError among them
)
# AMQP short strings (routing keys) hold at most 255 bytes
MAX_SHORTSTR = 255


class AmqpRelayOptions(HandlerOptions):
    """Options of ``amqp_relay`` (see README, "Forward changes to a broker").

    ``exchange`` ``""`` is the default exchange (the routing key names a queue); with
    ``exchange_type`` the exchange is declared (durable), else it must exist.
    """

    url: str = "amqp://guest:guest@127.0.0.1:5672/"
    exchange: str = ""
    exchange_type: Literal["direct", "topic", "fanout", "headers"] | None = None
    routing_key: str = "cdc.{ns.db}.{ns.coll}.{operationType}"
    confirm_timeout: float = 10.0
    # RabbitMQ 4's default max_message_size; a larger message would close the channel
    max_message_bytes: int = 16 * 2**20


class AmqpRelay(Handler[AmqpRelayOptions]):
    """Publishes every event with publisher confirms, ``mandatory``, ``message_id``."""

    def __init__(self, options: AmqpRelayOptions) -> None:
        super().__init__(options)
        self.connection: AbstractConnection | None = None
        self.channel: AbstractChannel | None = None
        self.exchange: AbstractExchange | None = None
        self.log: Any = None
        self._lock = asyncio.Lock()
        self._attempt = 0

    async def start(self, ctx: HandlerContext) -> None:
        self.log = ctx.log
        field = f"handlers.{ctx.handler}.options"
        try:
            await self._exchange()
        except TransientError as exc:
            raise ConfigError(f"{field}.url: {exc}") from exc
        except PermanentError as exc:
            raise ConfigError(f"{field}.exchange: {exc}") from exc

    async def stop(self) -> None:
        if self.connection is not None and not self.connection.is_closed:
            await self.connection.close()

    async def _exchange(self) -> AbstractExchange:
        """The exchange on a live channel; reconnects (one caller at a time) when needed."""
        if self.channel is not None and not self.channel.is_closed and self.exchange is not None:
            return self.exchange
        async with self._lock:
            try:
                return await self._reopen()
            except PermanentError:
                raise
            except Exception as exc:  # every failure here is "not reachable now"
                self._attempt += 1
                self.log.warning(
                    "amqp_connect_failed",
                    url=safe_url(self.options.url),
                    attempt=self._attempt,
                    error=str(exc) or type(exc).__name__,
                )
                await self._drop()
                raise TransientError(
                    f"cannot reach RabbitMQ at {safe_url(self.options.url)}: {exc}"
                ) from exc

    async def _reopen(self) -> AbstractExchange:
        if self.connection is None or self.connection.is_closed:
            # not the robust kind: reconnecting is ours, one attempt per call, so the
            # dispatcher's backoff paces the attempts and each logs one warning
            self.connection = await aio_pika.connect(self.options.url, timeout=5)
            self.connection.close_callbacks.add(self._on_close)
            self.channel = None
        if self.channel is None or self.channel.is_closed or self.exchange is None:
            self.channel = await self.connection.channel(
                publisher_confirms=True, on_return_raises=True
            )
            self.exchange = await self._open_exchange(self.channel)
        self._attempt = 0
        return self.exchange

    async def _drop(self) -> None:
        """Forget the connection (a lost one may not know it yet); the next call reconnects."""
        conn, self.connection, self.channel, self.exchange = self.connection, None, None, None
        if conn is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(conn.close(), timeout=1)

    async def _open_exchange(self, channel: AbstractChannel) -> AbstractExchange:
        name, kind = self.options.exchange, self.options.exchange_type
        if not name:
            return channel.default_exchange
        if kind is not None:
            return await channel.declare_exchange(name, kind, durable=True)
        try:
            return await channel.get_exchange(name, ensure=True)
        except aiormq.exceptions.ChannelNotFoundEntity as exc:
            raise PermanentError(
                f"exchange {name!r} does not exist (declare it, or set exchange_type)"
            ) from exc

    def _on_close(self, _conn: Any, exc: BaseException | None) -> None:
        if exc is not None:
            self.log.warning("amqp_connection_lost", error=str(exc) or type(exc).__name__)

    def _message(self, event: ChangeEvent) -> tuple[str, aio_pika.Message]:
        key = render(self.options.routing_key, event)
        if len(key.encode()) > MAX_SHORTSTR:
            raise PermanentError(f"routing key of {len(key.encode())} bytes (AMQP allows 255)")
        body = payload(event)
        if len(body) > self.options.max_message_bytes:
            raise PermanentError(
                f"message of {len(body)} bytes exceeds max_message_bytes"
                f" ({self.options.max_message_bytes})"
            )
        return key, aio_pika.Message(
            body,
            content_type="application/json",
            delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
            message_id=message_id(event),
            type=event.operation_type,
        )

    def _classify(self, exc: Exception, key: str) -> Exception:
        if isinstance(exc, aiormq.exceptions.PublishError):
            return PermanentError(
                f"unroutable: no queue bound to exchange {self.options.exchange!r}"
                f" for routing key {key!r}"
            )
        if isinstance(exc, aiormq.exceptions.ChannelPreconditionFailed):
            return PermanentError(f"RabbitMQ refused the message: {exc}")
        if isinstance(exc, aiormq.exceptions.DeliveryError):  # a nack: the broker's trouble
            return TransientError(f"RabbitMQ did not confirm the message: {exc}")
        if isinstance(exc, CONNECTION_ERRORS):
            return TransientError(f"amqp: {type(exc).__name__} {exc}".rstrip())
        return exc

    async def _publish(
        self, exchange: AbstractExchange, event: ChangeEvent
    ) -> BaseException | None:
        key = ""
        try:
            key, message = self._message(event)
            await exchange.publish(
                message, key, mandatory=True, timeout=self.options.confirm_timeout
            )
        except PermanentError as exc:
            return exc
        except Exception as exc:  # classified: refused, or the connection's trouble
            return self._classify(exc, key)
        return None

    async def handle(self, event: ChangeEvent, ctx: HandlerContext) -> None:
        try:
            await self.handle_batch([event], ctx)
        except BatchItemFailures as exc:
            raise exc.failures[0] from None

    async def handle_batch(self, events: Sequence[ChangeEvent], ctx: HandlerContext) -> None:
        exchange = await self._exchange()
        # every message in flight at once, then every confirm: one channel keeps their order
        errors = await asyncio.gather(*(self._publish(exchange, e) for e in events))
        failures = {i: e for i, e in enumerate(errors) if e is not None}
        if any(isinstance(e, TransientError) for e in failures.values()):
            async with self._lock:
                await self._drop()
        if failures:
            if len(failures) == len(events) and all(
                isinstance(e, TransientError) for e in failures.values()
            ):
                raise next(iter(failures.values()))
            raise BatchItemFailures(failures)
