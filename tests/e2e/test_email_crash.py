"""welcome_email across a SIGKILLed worker: every user mailed, duplicates recognisable."""

from __future__ import annotations

import email
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.conftest import wait_until
from tests.support.harness import WorkerProcess, config_dict, watcher
from tests.support.smtp import smtp_server

pytestmark = pytest.mark.slow


class Inbox:
    """Collects (recipient, Message-ID) of every accepted message."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, str]] = []

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        msg = email.message_from_bytes(envelope.original_content)
        self.seen.append((str(msg["To"]), str(msg["Message-ID"])))
        return "250 OK"


@pytest.fixture
def smtp() -> Iterator[tuple[Inbox, int]]:
    inbox = Inbox()
    with smtp_server(inbox) as port:
        yield inbox, port


class TestEmailAcrossCrash:
    def test_sigkill_mid_batch_mails_everyone_once_or_recognisably(
        self, dbs: Any, smtp: tuple[Inbox, int], tmp_path: Path, mongo_uri: str
    ) -> None:
        """A worker killed while sending 300 welcome emails, then restarted: every user gets
        one; any repeat carries the same Message-ID as the first."""
        _client, db, state = dbs
        inbox, port = smtp
        handlers = {
            "welcome": {
                "type": "welcome_email",
                "options": {
                    "smtp_host": "127.0.0.1",
                    "smtp_port": port,
                    "smtp_tls": "none",
                    "sender": "shop@example.com",
                    "subject": "Hi {{ name }}",
                    "text": "Hello",
                },
            }
        }
        cfg = config_dict(
            mongo_uri,
            db.name,
            state.name,
            [watcher(collection="users", handlers=["welcome"])],
            handlers,
        )
        worker = WorkerProcess(cfg, tmp_path).start()
        wait_until(lambda: state.checkpoints.find_one({}) is not None, 30, "the watcher's start")
        db.users.insert_many(
            [{"_id": i, "name": f"u{i}", "email": f"u{i}@example.com"} for i in range(300)]
        )
        wait_until(lambda: len(inbox.seen) >= 60, 30, "some emails out")
        worker.signal(signal.SIGKILL)
        worker.wait(10)
        worker.start()
        wait_until(lambda: len({to for to, _ in inbox.seen}) >= 300, 60, "300 recipients")
        time.sleep(0.5)
        assert worker.stop() == 0
        first: dict[str, str] = {}
        for to, message_id in inbox.seen:
            assert first.setdefault(to, message_id) == message_id, f"{to} got two different emails"
        assert len(first) == 300
        assert len(inbox.seen) - 300 <= 32, "more repeats than one in-flight window"
