"""The MongoDB URI check and ``startup_timeout``: what ``check-config`` refuses, by field."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from changestream_worker.config.models import Settings, problems_from
from changestream_worker.config.uris import uri_problem


def settings(uri: str, **over: Any) -> dict[str, Any]:
    return {
        "mongodb": {"uri": uri, "database": "shop"},
        "handlers": {"rec": {"type": "tests.support.recorder:Recorder"}},
        "watchers": [{"name": "users", "collection": "users", "handlers": ["rec"]}],
        **over,
    }


class TestUriProblem:
    @pytest.mark.parametrize(
        "uri",
        [
            "mongodb://localhost:27017/?replicaSet=rs0",
            "mongodb://app:s3cret@h1:27017,h2:27017/shop?replicaSet=rs0&authSource=admin",
            "mongodb+srv://app:s3cret@cluster0.example.net/shop?retryWrites=true",
            "embedded://",
        ],
    )
    def test_accepts(self, uri: str) -> None:
        """URIs of the three schemes, well formed, pass (a +srv host is not resolved)."""
        assert uri_problem(uri) is None

    @pytest.mark.parametrize(
        ("uri", "words"),
        [
            ("notauri", "expected a mongodb://, mongodb+srv:// or embedded:// URI, got no scheme"),
            ("redis://localhost:6379", "got redis://"),
            ("mongodb://localhost:notaport/", "Port contains non-digit characters"),
            ("mongodb://localhost/?replicaSet=rs0&w=x&wtimeoutMS=x", "wtimeoutms"),
            ("mongodb+srv://cluster0.example.net:27017/", "exactly one host name, without a port"),
            ("mongodb+srv://a.example.net,b.example.net/", "exactly one host name"),
        ],
    )
    def test_refuses(self, uri: str, words: str) -> None:
        """Another scheme, a bad port, a bad option or a +srv URI with a port is refused."""
        problem = uri_problem(uri)
        assert problem is not None and words in problem

    def test_never_echoes_the_password(self) -> None:
        """The reason for a refused URI does not repeat its password."""
        problem = uri_problem("mongodb://app:s3cret@localhost:bad/")
        assert problem is not None and "s3cret" not in problem


class TestSettings:
    def test_bad_uri_names_the_field(self) -> None:
        """A bad URI fails validation on the line mongodb.uri."""
        with pytest.raises(ValidationError) as info:
            Settings.model_validate(settings("notauri"))
        (line,) = problems_from(info.value, model=Settings)
        assert line.startswith("mongodb.uri: expected a mongodb://")

    def test_startup_timeout_defaults_to_waiting_for_ever(self) -> None:
        """Unset, startup_timeout is None; a duration is parsed; zero is refused."""
        assert Settings.model_validate(settings("embedded://")).startup_timeout is None
        s = Settings.model_validate(settings("embedded://", startup_timeout="2m"))
        assert s.startup_timeout == 120.0
        with pytest.raises(ValidationError) as info:
            Settings.model_validate(settings("embedded://", startup_timeout=0))
        assert problems_from(info.value)[0].startswith("startup_timeout:")
