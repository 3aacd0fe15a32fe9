"""Logging: credential masking in URIs and log events, JSON/console output, level filter."""

from __future__ import annotations

import ast
import io
import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import structlog
from structlog.testing import capture_logs

from changestream_worker.logs import (
    configure_logging,
    is_secret_key,
    mask_event,
    mask_secrets,
    mask_uri,
)


@pytest.fixture(autouse=True)
def _restore_structlog() -> Iterator[None]:
    yield
    structlog.reset_defaults()


class TestMaskUri:
    @pytest.mark.parametrize(
        ("uri", "masked"),
        [
            (
                "mongodb://app:s3cret@db:27017/?replicaSet=rs0",
                "mongodb://app:***@db:27017/?replicaSet=rs0",
            ),
            (
                "mongodb+srv://app:s3cret@cluster0.example.net/shop",
                "mongodb+srv://app:***@cluster0.example.net/shop",
            ),
            (
                "mongodb://app:pw@h1:27017,h2:27017/?replicaSet=rs0",
                "mongodb://app:***@h1:27017,h2:27017/?replicaSet=rs0",
            ),
            ("redis://:s3cret@cache:6379/0", "redis://:***@cache:6379/0"),
            ("rediss://user:s3cret@cache:6380", "rediss://user:***@cache:6380"),
            (
                "postgresql+asyncpg://app:s3cret@pg:5432/test",
                "postgresql+asyncpg://app:***@pg:5432/test",
            ),
            ("mysql+aiomysql://root:p@ss@db/test", "mysql+aiomysql://root:***@db/test"),
            ("smtp://u:p%40ss@mail:587", "smtp://u:***@mail:587"),
            (
                "postgresql://pg/test?user=app&password=s3cret&ssl=1",
                "postgresql://pg/test?user=app&password=***&ssl=1",
            ),
        ],
    )
    def test_masks_password(self, uri: str, masked: str) -> None:
        """The password (and a password query parameter) becomes ***; the rest stays readable."""
        assert mask_uri(uri) == masked

    @pytest.mark.parametrize(
        "uri",
        ["mongodb://db:27017/?replicaSet=rs0", "embedded://", "mongodb://user@db/", "plain text"],
    )
    def test_leaves_uris_without_password(self, uri: str) -> None:
        """Nothing to hide: unchanged."""
        assert mask_uri(uri) == uri

    def test_inside_text(self) -> None:
        """URIs inside a longer message are masked too, each of them."""
        text = "cannot reach mongodb://a:one@h1/ nor redis://:two@h2:6379"
        assert mask_uri(text) == "cannot reach mongodb://a:***@h1/ nor redis://:***@h2:6379"


class TestSecretKeys:
    @pytest.mark.parametrize(
        "key",
        [
            "password",
            "smtp_password",
            "SMTP_PASSWORD",
            "secret",
            "client_secret",
            "token",
            "accessToken",
            "api_key",
            "apiKey",
            "private_key",
            "key",
            "passwd",
            "credentials",
            "auth_token",
            "bearer_token",
            "nats_token",
            "ACCESS_TOKEN",
            "authorization",
            "Authorization",
        ],
    )
    def test_secret(self, key: str) -> None:
        """Names that hold secrets are recognised in snake, camel and upper case."""
        assert is_secret_key(key)

    @pytest.mark.parametrize(
        "key",
        [
            "keys",
            "key_template",
            "publish_channel",
            "email_field",
            "smtp_username",
            "table",
            "document_key",
            "monkey",
            "token_age_s",
            "resume_token",
            "post_batch_token",
            "startAfterToken",
            "has_token",
            "tokens",
        ],
    )
    def test_not_secret(self, key: str) -> None:
        """Ordinary names, cache `keys` and resume-token positions and ages, are left alone."""
        assert not is_secret_key(key)

    def test_no_field_the_worker_logs_is_masked(self) -> None:
        """Every keyword field of every log call in worker/ and handlers/ prints as itself:
        the worker never logs a secret by name, so a masked field is a masking mistake."""
        fields = logged_fields()
        assert "token_age_s" in fields and len(fields) > 30  # the scan finds the real calls
        masked = {name: where for name, where in fields.items() if is_secret_key(name)}
        assert masked == {}

    def test_mask_secrets_nested(self) -> None:
        """Masks nested mappings and lists; empty secrets stay visible as empty."""
        data = {"a": [{"token": "t", "url": "redis://:p@h"}], "password": "", "n": 3}
        assert mask_secrets(data) == {
            "a": [{"token": "***", "url": "redis://:***@h"}],
            "password": "",
            "n": 3,
        }


class TestProcessor:
    def test_masks_every_event_field(self) -> None:
        """The processor masks URIs in any field and the values of secret-named fields."""
        with capture_logs(processors=[mask_event]) as logs:
            structlog.get_logger().info(
                "connecting to mongodb://app:s3cret@db/",
                mongodb="mongodb://app:s3cret@db/?replicaSet=rs0",
                password="hunter2",
                details={"redis": "redis://:pw@cache"},
                count=3,
            )
        assert logs == [
            {
                "event": "connecting to mongodb://app:***@db/",
                "mongodb": "mongodb://app:***@db/?replicaSet=rs0",
                "password": "***",
                "details": {"redis": "redis://:***@cache"},
                "count": 3,
                "log_level": "info",
            }
        ]


class TestConfigure:
    def test_json_lines_masked(self) -> None:
        """format=json writes one JSON object per line with level, timestamp and masked values."""
        out = io.StringIO()
        configure_logging("json", "info", stream=out)
        structlog.get_logger().info("worker_starting", mongodb="mongodb://u:pw@h/", watchers=2)
        line = json.loads(out.getvalue())
        assert line["event"] == "worker_starting"
        assert line["mongodb"] == "mongodb://u:***@h/"
        assert (line["level"], line["watchers"]) == ("info", 2)
        assert line["timestamp"].endswith("Z")

    def test_level_filter(self) -> None:
        """Events below the level are dropped."""
        out = io.StringIO()
        configure_logging("json", "warning", stream=out)
        log = structlog.get_logger()
        log.info("quiet")
        log.warning("loud")
        assert [json.loads(x)["event"] for x in out.getvalue().splitlines()] == ["loud"]

    def test_exception_text_masked(self) -> None:
        """A traceback carrying a URI with a password is masked as well."""
        out = io.StringIO()
        configure_logging("json", "info", stream=out)
        try:
            raise ConnectionError("no route to mongodb://u:s3cret@h/")
        except ConnectionError:
            structlog.get_logger().exception("connect_failed")
        assert "s3cret" not in out.getvalue()
        assert "mongodb://u:***@h/" in out.getvalue()

    def test_auto_is_json_off_a_terminal(self) -> None:
        """auto picks JSON when the stream is not a TTY."""
        out = io.StringIO()
        configure_logging("auto", "info", stream=out)
        structlog.get_logger().info("hello", n=1)
        assert json.loads(out.getvalue())["event"] == "hello"

    def test_console(self) -> None:
        """format=console writes readable, uncoloured text when not on a terminal."""
        out = io.StringIO()
        configure_logging("console", "info", stream=out)
        structlog.get_logger().info("hello", uri="redis://:pw@h")
        text = out.getvalue()
        assert "hello" in text and "redis://:***@h" in text and "\x1b[" not in text


LEVELS = {"debug", "info", "warning", "warn", "error", "exception", "critical", "msg"}
ROOT = Path(__file__).resolve().parents[1]


def logged_fields() -> dict[str, str]:
    """Keyword names of structlog calls (``log.info("event", field=...)``, ``.bind(...)``)."""
    found: dict[str, str] = {}
    for folder in ("worker", "handlers"):
        for path in sorted((ROOT / folder).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text(), str(path))):
                if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)):
                    continue
                name = node.func.attr
                is_event = name in LEVELS and node.args and isinstance(node.args[0], ast.Constant)
                is_bind = name == "bind" and "log" in ast.unparse(node.func.value)
                if is_event or is_bind:
                    for kw in node.keywords:
                        if kw.arg is not None:
                            found.setdefault(kw.arg, f"{path.relative_to(ROOT)}:{node.lineno}")
    return found
