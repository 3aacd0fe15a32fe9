"""welcome_email: send one templated welcome email per new user, never twice.

Guarantee: at-least-once delivery with a recognisable duplicate. A ledger document
(``<state>.email_deliveries``, one per template and recipient document) is written
``pending`` before sending and ``sent`` after the relay accepted the message; a delivery
recorded as sent is never sent again. A crash between the relay's acceptance and the
``sent`` record can repeat the email once: its Message-ID derives from the template and the
document, so the duplicate carries the same Message-ID and mail systems can drop it.
"""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime
from email.message import EmailMessage
from typing import Any, Literal

import aiosmtplib
from email_validator import EmailNotValidError, validate_email
from jinja2.sandbox import SandboxedEnvironment
from pymongo.errors import DuplicateKeyError

from changestream_worker import (
    ChangeEvent,
    Handler,
    HandlerContext,
    HandlerOptions,
    PermanentError,
    SkipEvent,
    TransientError,
    get_path,
)

LEDGER = "email_deliveries"  # the state collection of its ledger


class WelcomeEmailOptions(HandlerOptions):
    """Options of ``welcome_email`` (see config/worker.yaml)."""

    smtp_host: str = "localhost"
    smtp_port: int = 587
    smtp_tls: Literal["none", "starttls", "tls"] = "starttls"
    smtp_username: str = ""
    smtp_password: str = ""
    sender: str
    email_field: str = "email"
    subject: str
    text: str
    html: str | None = None
    operations: list[str] = ["insert"]
    template_id: str = "welcome"
    timeout: float = 10.0


def _no_newlines(name: str, value: str) -> str:
    if "\r" in value or "\n" in value:
        raise PermanentError(f"{name} contains a line break (header injection refused)")
    return value


class WelcomeEmail(Handler[WelcomeEmailOptions]):
    """Renders subject, text and HTML from the document and sends them over SMTP."""

    def __init__(self, options: WelcomeEmailOptions) -> None:
        super().__init__(options)
        self.plain = SandboxedEnvironment(autoescape=False)
        self.markup = SandboxedEnvironment(autoescape=True)

    async def start(self, ctx: HandlerContext) -> None:
        await ctx.state_database[LEDGER].create_index([("state", 1), ("updated", 1)])

    def _message(self, doc: dict[str, Any], to: str, key: str) -> EmailMessage:
        o = self.options
        subject = _no_newlines("subject", self.plain.from_string(o.subject).render(doc))
        msg = EmailMessage()
        msg["From"] = _no_newlines("sender", o.sender)
        msg["To"] = _no_newlines("recipient", to)
        msg["Subject"] = subject
        digest = hashlib.sha256(key.encode()).hexdigest()[:24]
        msg["Message-ID"] = f"<{o.template_id}.{digest}@changestream-worker>"
        msg.set_content(self.plain.from_string(o.text).render(doc))
        if o.html:
            msg.add_alternative(self.markup.from_string(o.html).render(doc), subtype="html")
        return msg

    async def handle(self, event: ChangeEvent, ctx: HandlerContext) -> None:
        o = self.options
        if event.operation_type not in o.operations:
            raise SkipEvent(f"{event.operation_type} is not a sign-up")
        doc = dict(event.full_document or {})
        address = get_path(doc, o.email_field)
        if not isinstance(address, str) or not address:
            raise PermanentError(f"no email address at '{o.email_field}'")
        try:
            to = validate_email(address, check_deliverability=False).normalized
        except EmailNotValidError as exc:
            raise PermanentError(f"invalid email address: {exc}") from exc
        key = f"{o.template_id}:{event.document_id}"
        message = self._message(doc, to, key)
        ledger = ctx.state_database[LEDGER]
        now = datetime.now(UTC)
        try:
            await ledger.insert_one(
                {
                    "_id": key,
                    "state": "pending",
                    "to": to,
                    "message_id": message["Message-ID"],
                    "updated": now,
                }
            )
        except DuplicateKeyError:
            seen = await ledger.find_one({"_id": key})
            if seen is not None and seen.get("state") == "sent":
                raise SkipEvent("already sent") from None
        await self._send(message)
        await ledger.update_one(
            {"_id": key}, {"$set": {"state": "sent", "updated": datetime.now(UTC)}}
        )
        ctx.log.info("welcome_email_sent", template=o.template_id, message_id=message["Message-ID"])

    async def _send(self, message: EmailMessage) -> None:
        o = self.options
        try:
            await aiosmtplib.send(
                message,
                hostname=o.smtp_host,
                port=o.smtp_port,
                username=o.smtp_username or None,
                password=o.smtp_password or None,
                use_tls=o.smtp_tls == "tls",
                start_tls=o.smtp_tls == "starttls",
                timeout=o.timeout,
            )
        except aiosmtplib.SMTPResponseException as exc:
            if 400 <= exc.code < 500:
                raise TransientError(f"SMTP {exc.code}: {exc.message}") from exc
            raise PermanentError(f"SMTP {exc.code}: {exc.message}") from exc
        except (aiosmtplib.SMTPException, OSError, TimeoutError) as exc:
            raise TransientError(f"SMTP unreachable: {exc}") from exc
