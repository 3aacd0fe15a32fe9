"""JetStream publishes in flight, each answered on its own reply subject (for nats_relay)."""

from __future__ import annotations

import asyncio
import json

from changestream_worker import MissingExtraError

try:
    import nats.js.errors
    from nats.aio.client import Client
    from nats.aio.msg import Msg
except ImportError as exc:  # the [nats] extra is not installed
    raise MissingExtraError("nats", "nats") from exc


class Acks:
    """JetStream publishes in flight on one connection: each message names a reply subject
    under one inbox, and one subscription resolves each message's future from its answer.

    (nats-py's own ``publish_async`` leaves the future unresolved when JetStream refuses a
    message, so refusals would look like timeouts.)
    """

    def __init__(self, nc: Client) -> None:
        self.nc = nc
        self.inbox = nc.new_inbox()
        self.pending: dict[str, asyncio.Future[BaseException | None]] = {}
        self.seq = 0

    async def start(self) -> Acks:
        await self.nc.subscribe(f"{self.inbox}.*", cb=self._answer)
        return self

    async def publish(
        self, subject: str, body: bytes, msg_id: str
    ) -> tuple[str, asyncio.Future[BaseException | None]]:
        self.seq += 1
        token = str(self.seq)
        answer: asyncio.Future[BaseException | None] = asyncio.get_running_loop().create_future()
        self.pending[token] = answer
        try:
            await self.nc.publish(
                subject, body, reply=f"{self.inbox}.{token}", headers={"Nats-Msg-Id": msg_id}
            )
        except BaseException:
            del self.pending[token]
            raise
        return token, answer

    def forget(self, token: str) -> None:
        self.pending.pop(token, None)

    async def _answer(self, msg: Msg) -> None:
        answer = self.pending.pop(msg.subject.rpartition(".")[2], None)
        if answer is None or answer.done():
            return
        if msg.headers and msg.headers.get("Status") == "503":  # nobody listens: no stream
            answer.set_result(nats.js.errors.NoStreamResponseError())
            return
        if b'"error"' not in msg.data:  # the common answer: {"stream": …, "seq": …}
            answer.set_result(None)
            return
        try:
            error = json.loads(msg.data).get("error")
        except (ValueError, AttributeError):
            error = {"description": "an answer that is not a JetStream acknowledgement"}
        if error:
            answer.set_result(
                nats.js.errors.APIError(
                    code=error.get("code"),
                    description=error.get("description"),
                    err_code=error.get("err_code"),
                )
            )
        else:
            answer.set_result(None)
