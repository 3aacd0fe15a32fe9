"""welcome_email against a real SMTP server (aiosmtpd) and the test bed's MongoDB."""

from __future__ import annotations

import email
from collections.abc import Iterator
from typing import Any

import pytest
from pymongo import AsyncMongoClient

from changestream_worker import HandlerContext, PermanentError, SkipEvent, TransientError
from changestream_worker.handlers.welcome_email import WelcomeEmail, WelcomeEmailOptions
from changestream_worker.testing.factories import make_event
from tests.support.harness import unique
from tests.support.smtp import free_port, smtp_server


class Inbox:
    """An SMTP server's DATA hook: keeps messages, or answers with a set reply."""

    def __init__(self) -> None:
        self.messages: list[email.message.Message] = []
        self.reply = "250 OK"

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        if self.reply.startswith("250"):
            self.messages.append(email.message_from_bytes(envelope.original_content))
        return self.reply


@pytest.fixture
def smtp() -> Iterator[tuple[Inbox, int]]:
    inbox = Inbox()
    with smtp_server(inbox) as port:
        yield inbox, port


@pytest.fixture
async def ctx(mongo_uri: str) -> Any:
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(mongo_uri)
    import structlog

    state = unique("state")
    yield HandlerContext(
        client=client,
        database=client["shop"],
        state_database=client[state],
        log=structlog.get_logger(),
        watcher="users",
        handler="welcome",
    )
    await client.drop_database(state)
    await client.close()


def handler(port: int, **over: Any) -> WelcomeEmail:
    opts = {
        "smtp_host": "127.0.0.1",
        "smtp_port": port,
        "smtp_tls": "none",
        "sender": "Shop <welcome@shop.example>",
        "subject": "Welcome, {{ name }}!",
        "text": "Hello {{ name }}",
        "html": "<p>Hello {{ name }}</p>",
        **over,
    }
    return WelcomeEmail(WelcomeEmailOptions(**opts))


def user(key: int, **doc: Any) -> Any:
    return make_event(
        "insert", key=key, doc={"_id": key, **doc}, coll="users", db="shop", seq=key + 1
    )


class TestWelcomeEmail:
    async def test_sends_rendered_message_with_escaped_html(
        self, smtp: tuple[Inbox, int], ctx: HandlerContext
    ) -> None:
        """The message arrives with sender, recipient, subject, text and escaped HTML."""
        inbox, port = smtp
        h = handler(port)
        await h.start(ctx)
        await h.handle(user(1, name="Ada <b>", email="ada@example.com"), ctx)
        assert len(inbox.messages) == 1
        msg = inbox.messages[0]
        assert msg["To"] == "ada@example.com"
        assert msg["Subject"] == "Welcome, Ada <b>!"
        assert msg["Message-ID"].startswith("<welcome.")
        parts = {
            p.get_content_type(): p.get_payload(decode=True).decode()
            for p in msg.walk()
            if not p.is_multipart()
        }
        assert "Hello Ada <b>" in parts["text/plain"]
        assert "Hello Ada &lt;b&gt;" in parts["text/html"]

    async def test_a_restart_does_not_send_twice(
        self, smtp: tuple[Inbox, int], ctx: HandlerContext
    ) -> None:
        """A second handler instance (a restart) finds the ledger and skips the delivery."""
        inbox, port = smtp
        await handler(port).handle(user(2, name="Bo", email="bo@example.com"), ctx)
        with pytest.raises(SkipEvent):
            await handler(port).handle(user(2, name="Bo", email="bo@example.com"), ctx)
        assert len(inbox.messages) == 1

    @pytest.mark.parametrize("doc", [{"name": "x"}, {"name": "x", "email": "not-an-address"}])
    async def test_missing_or_invalid_address_is_permanent(
        self, smtp: tuple[Inbox, int], ctx: HandlerContext, doc: dict[str, Any]
    ) -> None:
        """No address, or an invalid one, goes to dead letters without a send."""
        inbox, port = smtp
        with pytest.raises(PermanentError):
            await handler(port).handle(user(3, **doc), ctx)
        assert inbox.messages == []

    async def test_header_injection_is_refused(
        self, smtp: tuple[Inbox, int], ctx: HandlerContext
    ) -> None:
        """A rendered subject with a line break is refused, not sent."""
        inbox, port = smtp
        with pytest.raises(PermanentError, match="line break"):
            await handler(port).handle(user(4, name="x\r\nBcc: all@x.org", email="a@b.org"), ctx)
        assert inbox.messages == []

    @pytest.mark.parametrize(
        ("reply", "error"),
        [("451 try later", TransientError), ("550 no such user", PermanentError)],
    )
    async def test_smtp_replies_classify_retries(
        self, smtp: tuple[Inbox, int], ctx: HandlerContext, reply: str, error: type[Exception]
    ) -> None:
        """SMTP 4xx is retried (transient); 5xx goes to dead letters (permanent)."""
        inbox, port = smtp
        inbox.reply = reply
        with pytest.raises(error):
            await handler(port).handle(user(5, name="x", email="c@d.org"), ctx)

    async def test_unreachable_relay_is_transient(self, ctx: HandlerContext) -> None:
        """A relay that refuses connections is a transient failure."""
        port = free_port()
        with pytest.raises(TransientError):
            await handler(port, timeout=2).handle(user(6, name="x", email="e@f.org"), ctx)
