"""Config loading: durations, interpolation, YAML-path problem lines, masking, schema."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import ValidationError

from changestream_worker.config.durations import parse_duration, parse_start_at
from changestream_worker.config.loading import interpolate, loc_path, problems_from
from changestream_worker.config.models import Settings, load_settings
from changestream_worker.config.schema import schema_text
from changestream_worker.errors import ConfigError

REPO = Path(__file__).resolve().parents[2]
RECORDER = "tests.support.recorder:Recorder"


def base(**over: Any) -> dict[str, Any]:
    cfg: dict[str, Any] = {
        "mongodb": {"uri": "mongodb://localhost:27017/?replicaSet=rs0", "database": "shop"},
        "handlers": {"rec": {"type": RECORDER}},
        "watchers": [{"name": "users", "collection": "users", "handlers": ["rec"]}],
    }
    cfg.update(over)
    return cfg


def problems(tmp_path: Path, cfg: Any, env: dict[str, str] | None = None) -> list[str]:
    path = tmp_path / "c.yaml"
    path.write_text(cfg if isinstance(cfg, str) else yaml.safe_dump(cfg))
    with pytest.raises(ConfigError) as info:
        load_settings(path, env or {})
    return info.value.problems


def load(tmp_path: Path, cfg: Any, env: dict[str, str] | None = None) -> Settings:
    path = tmp_path / "c.yaml"
    path.write_text(cfg if isinstance(cfg, str) else yaml.safe_dump(cfg))
    return load_settings(path, env or {})


class TestDurations:
    @pytest.mark.parametrize(
        ("text", "seconds"),
        [
            ("500ms", 0.5),
            ("30s", 30.0),
            ("2m", 120.0),
            ("1h", 3600.0),
            ("1m30s", 90.0),
            ("1.5s", 1.5),
            ("2", 2.0),
            (3, 3.0),
            (0.25, 0.25),
            (" 10s ", 10.0),
        ],
    )
    def test_parses(self, text: Any, seconds: float) -> None:
        """Units ms/s/m/h, compounds, plain numbers and numeric strings become seconds."""
        assert parse_duration(text) == pytest.approx(seconds)

    @pytest.mark.parametrize("text", ["5x", "s", "1 minute", "", "ms5", "1s2"])
    def test_rejects_text(self, text: str) -> None:
        """Anything else is a ValueError naming the accepted units."""
        with pytest.raises(ValueError, match="invalid duration"):
            parse_duration(text)

    def test_rejects_negative_and_bool(self) -> None:
        """A negative number and a boolean are not durations."""
        with pytest.raises(ValueError, match="negative"):
            parse_duration(-1)
        with pytest.raises(ValueError):
            parse_duration(True)


class TestStartAt:
    def test_keywords(self) -> None:
        """now and snapshot pass through."""
        assert parse_start_at("now") == "now"
        assert parse_start_at("snapshot") == "snapshot"

    def test_naive_time_is_utc(self) -> None:
        """An ISO time without a zone means UTC; a Z suffix is accepted."""
        assert parse_start_at("2024-05-01T12:00:00") == datetime(2024, 5, 1, 12, tzinfo=UTC)
        assert parse_start_at("2024-05-01T12:00:00Z") == datetime(2024, 5, 1, 12, tzinfo=UTC)

    def test_zone_is_kept(self) -> None:
        """An explicit offset is kept (the same instant)."""
        got = parse_start_at("2024-05-01T14:00:00+02:00")
        assert got == datetime(2024, 5, 1, 12, tzinfo=UTC)
        assert got.utcoffset() == timedelta(hours=2)

    def test_yaml_datetime_object(self, tmp_path: Path) -> None:
        """YAML turns an unquoted time into a datetime; a naive one becomes UTC."""
        text = yaml.safe_dump(base()).replace(
            "name: users", "name: users\n  start_at: 2024-01-01 08:00:00"
        )
        assert load(tmp_path, text).watchers[0].start_at == datetime(2024, 1, 1, 8, tzinfo=UTC)
        tz = timezone(timedelta(hours=1))
        assert parse_start_at(datetime(2024, 1, 1, tzinfo=tz)).tzinfo is tz

    def test_rejects_other(self) -> None:
        """Other words are an error listing the accepted forms."""
        with pytest.raises(ValueError, match="'now', 'snapshot' or an ISO-8601 time"):
            parse_start_at("yesterday")


class TestInterpolation:
    def test_set_variable(self) -> None:
        """${VAR} is replaced by its value, inside longer strings too."""
        data, errs = interpolate({"a": "x-${V}-y"}, {"V": "1"})
        assert data == {"a": "x-1-y"} and errs == []

    def test_defaults(self) -> None:
        """${VAR:-d} uses d when unset or empty; ${VAR-d} only when unset."""
        env = {"EMPTY": ""}
        data, errs = interpolate(
            ["${NONE:-d}", "${EMPTY:-d}", "${EMPTY-d}", "${NONE-d}", "${NONE:-}"], env
        )
        assert data == ["d", "d", "", "d", ""] and errs == []

    def test_escape(self) -> None:
        """$$ is a literal dollar, so $${X} stays ${X}."""
        data, _ = interpolate("cost $$5 $${X}", {})
        assert data == "cost $5 ${X}"

    def test_unset_names_the_path(self) -> None:
        """An unset variable without default is reported with the YAML path of its string."""
        _, errs = interpolate({"watchers": [{"match": {"a.b": "${MISSING}"}}]}, {})
        assert errs == [
            "watchers[0].match['a.b']: environment variable MISSING is not set"
            " (set it, or write ${MISSING:-default})"
        ]

    def test_non_strings_untouched(self) -> None:
        """Numbers, booleans and keys are left as they are."""
        data, _ = interpolate({"${K}": 1, "b": True, "c": None}, {"K": "x"})
        assert data == {"${K}": 1, "b": True, "c": None}

    def test_applied_before_validation(self, tmp_path: Path) -> None:
        """Interpolated text is validated like written text (a port from the environment)."""
        cfg = base(http={"port": "${PORT:-9200}"})
        assert load(tmp_path, cfg, {"PORT": "9300"}).http.port == 9300
        assert load(tmp_path, cfg).http.port == 9200


class TestLoad:
    def test_defaults(self, tmp_path: Path) -> None:
        """A minimal file gets the documented defaults."""
        s = load(tmp_path, base())
        w = s.watchers[0]
        assert (s.state.database, s.checkpoint.interval, s.checkpoint.max_events) == (
            "changestream_worker",
            1.0,
            500,
        )
        assert (s.http.port, s.http.enabled, s.logging.format, s.shutdown_timeout) == (
            9108,
            True,
            "auto",
            25.0,
        )
        assert (s.leases.enabled, s.leases.ttl, s.leases.instance_id) == (True, 15.0, None)
        assert (w.concurrency, w.retry.attempts, w.retry.initial_delay, w.retry.max_delay) == (
            32,
            5,
            0.2,
            30.0,
        )
        assert (w.start_at, w.on_failure, w.on_history_lost, w.on_invalidate) == (
            "now",
            "dead_letter",
            "fail",
            "stop",
        )
        assert (w.full_document, w.full_document_before_change, w.partitions) == (
            "default",
            "off",
            1,
        )
        assert (w.batch_size, w.max_await_time, w.database, w.operations) == (1000, 1.0, None, None)

    def test_durations_in_sections(self, tmp_path: Path) -> None:
        """Durations are accepted wherever the config takes a time."""
        cfg = base(checkpoint={"interval": "250ms"}, shutdown_timeout="1m", leases={"ttl": "30s"})
        cfg["watchers"][0].update(
            max_await_time="100ms", retry={"initial_delay": "10ms", "max_delay": "2m"}
        )
        s = load(tmp_path, cfg)
        assert (s.checkpoint.interval, s.shutdown_timeout, s.leases.ttl) == (0.25, 60.0, 30.0)
        w = s.watchers[0]
        assert (w.max_await_time, w.retry.initial_delay, w.retry.max_delay) == (0.1, 0.01, 120.0)

    @pytest.mark.parametrize(
        ("change", "line"),
        [
            (
                lambda c: c["mongodb"].update(pasword="x"),
                "mongodb.pasword: unknown field (allowed: uri, database, app_name)",
            ),
            (
                lambda c: c["watchers"][0].update(colection="x"),
                "watchers[0].colection: unknown field (did you mean 'collection'?)",
            ),
            (
                lambda c: c.update(checkpoint={"interval": "5x"}),
                "checkpoint.interval: invalid duration '5x': use a number of seconds or units"
                " ms, s, m, h, d (e.g. 500ms, 30s, 1m30s)",
            ),
            (
                lambda c: c.update(checkpoint={"interval": 0}),
                "checkpoint.interval: input should be greater than 0",
            ),
            (
                lambda c: c["watchers"][0].update(on_failure="retry"),
                "watchers[0].on_failure: input should be 'dead_letter' or 'stop', got 'retry'",
            ),
            (
                lambda c: c["watchers"][0].update(operations=["insert", "upsert"]),
                "watchers[0].operations[1]: input should be 'insert', 'update', 'replace',"
                " 'delete', 'drop', 'rename', 'dropDatabase' or 'invalidate', got 'upsert'",
            ),
            (
                lambda c: c["watchers"][0].update(concurrency=0),
                "watchers[0].concurrency: input should be greater than or equal to 1",
            ),
            (
                lambda c: c["watchers"][0].update(partitions=0),
                "watchers[0].partitions: input should be greater than or equal to 1",
            ),
            (
                lambda c: c.update(http={"port": 70000}),
                "http.port: input should be less than or equal to 65535",
            ),
            (
                lambda c: c["watchers"][0].update(handlers=["rec", "recc"]),
                "watchers[0].handlers[1]: unknown handler 'recc' (did you mean 'rec'?)",
            ),
            (
                lambda c: c["watchers"].append({"name": "users", "handlers": ["rec"]}),
                "watchers[1].name: duplicate watcher name 'users' (also watchers[0])",
            ),
            (
                lambda c: c["watchers"][0].update(start_at="snapshot", collection=None),
                "watchers[0].collection: snapshot needs a collection to scan",
            ),
            (
                lambda c: c["watchers"][0].update(start_at="yesterday"),
                "watchers[0].start_at: expected 'now', 'snapshot' or an ISO-8601 time such as"
                " 2024-05-01T12:00:00Z, got 'yesterday'",
            ),
            (lambda c: c.pop("mongodb"), "mongodb: required field is missing"),
            (
                lambda c: c["handlers"]["rec"].update(option={}),
                "handlers.rec.option: unknown field (did you mean 'options'?)",
            ),
        ],
    )
    def test_problem_lines(self, tmp_path: Path, change: Any, line: str) -> None:
        """Each mistake is one line naming its YAML path."""
        cfg = base()
        change(cfg)
        assert problems(tmp_path, cfg) == [line]

    def test_all_problems_at_once(self, tmp_path: Path) -> None:
        """Field errors and cross-section errors are reported together, one line each."""
        cfg = base(logging={"format": "xml"})
        cfg["watchers"][0]["handlers"] = ["nope"]
        assert problems(tmp_path, cfg) == [
            "logging.format: input should be 'auto', 'json' or 'console', got 'xml'",
            "watchers[0].handlers[0]: unknown handler 'nope' (defined: rec)",
        ]

    def test_missing_variable(self, tmp_path: Path) -> None:
        """An unset variable is one line; the empty value it leaves is not reported again."""
        cfg = base()
        cfg["mongodb"]["uri"] = "${MONGODB_URI}"
        assert problems(tmp_path, cfg) == [
            "mongodb.uri: environment variable MONGODB_URI is not set"
            " (set it, or write ${MONGODB_URI:-default})"
        ]

    def test_missing_file(self, tmp_path: Path) -> None:
        """A missing file is a ConfigError naming it."""
        with pytest.raises(ConfigError) as info:
            load_settings(tmp_path / "nope.yaml")
        assert info.value.problems == [f"{tmp_path / 'nope.yaml'}: config file not found"]

    def test_yaml_syntax_error(self, tmp_path: Path) -> None:
        """A YAML syntax error names the file, line and column."""
        text = "mongodb:\n  uri: x\n database: y\n"
        assert problems(tmp_path, text) == [
            f"{tmp_path / 'c.yaml'}:3:2: YAML syntax error: expected <block end>, but found"
            " '<block mapping start>' (while parsing a block mapping started at line 1)"
        ]

    def test_duplicate_key(self, tmp_path: Path) -> None:
        """A key written twice in one mapping is an error, not a silent overwrite."""
        text = "mongodb: {uri: x, database: a}\nwatchers:\n  - name: a\n    handlers: [x]\n"
        text += "    name: b\n"
        assert problems(tmp_path, text) == [
            f"{tmp_path / 'c.yaml'}:5:5: YAML syntax error: duplicate key 'name'"
        ]

    def test_empty_and_non_mapping(self, tmp_path: Path) -> None:
        """An empty file and a top-level list are reported, not crashed on."""
        assert problems(tmp_path, "") == [f"{tmp_path / 'c.yaml'}: the config file is empty"]
        assert problems(tmp_path, "- a\n") == ["<root>: expected a mapping of sections, got list"]

    def test_model_validate_reports_paths(self) -> None:
        """Settings.model_validate (used by tests and tools) carries the same cross checks."""
        cfg = base()
        cfg["watchers"][0]["handlers"] = ["other"]
        with pytest.raises(ValidationError) as info:
            Settings.model_validate(cfg)
        assert problems_from(info.value) == [
            "watchers[0].handlers[0]: unknown handler 'other' (defined: rec)"
        ]

    def test_loc_path(self) -> None:
        """pydantic locations become dotted paths with list indexes."""
        assert loc_path(("watchers", 1, "handlers", 0)) == "watchers[1].handlers[0]"
        assert loc_path(("x",), "handlers.a.options") == "handlers.a.options.x"
        assert loc_path(()) == "<root>"


class TestMasked:
    def test_masks_uri_and_secret_options(self, tmp_path: Path) -> None:
        """The URI password and secret-named options are masked; other values are kept."""
        cfg = base()
        cfg["mongodb"]["uri"] = "mongodb://app:${PW}@db1,db2/?replicaSet=rs0"
        cfg["handlers"]["mail"] = {
            "type": "welcome_email",
            "options": {
                "smtp_password": "${PW}",
                "smtp_username": "bob",
                "api_key": "k1",
                "nested": {"token": "t"},
                "redis_url": "redis://:${PW}@cache:6379/0",
                "keys": ["user:{documentKey._id}"],
                "empty_secret": "",
            },
        }
        masked = load(tmp_path, cfg, {"PW": "hunter2"}).masked()
        text = json.dumps(masked)
        assert "hunter2" not in text and "k1" not in text
        assert masked["mongodb"]["uri"] == "mongodb://app:***@db1,db2/?replicaSet=rs0"
        opts = masked["handlers"]["mail"]["options"]
        assert opts == {
            "smtp_password": "***",
            "smtp_username": "bob",
            "api_key": "***",
            "nested": {"token": "***"},
            "redis_url": "redis://:***@cache:6379/0",
            "keys": ["user:{documentKey._id}"],
            "empty_secret": "",
        }

    def test_json_able(self, tmp_path: Path) -> None:
        """Times and durations come out as JSON values (ISO text, seconds)."""
        cfg = base()
        cfg["watchers"][0]["start_at"] = "2024-05-01T12:00:00"
        masked = load(tmp_path, cfg).masked()
        assert json.loads(json.dumps(masked))["watchers"][0]["start_at"] == "2024-05-01T12:00:00Z"
        assert masked["checkpoint"]["interval"] == 1.0


class TestShippedFiles:
    def test_schema_in_sync(self) -> None:
        """config/worker.schema.json is what the schema command writes."""
        assert (REPO / "config" / "worker.schema.json").read_text() == schema_text()

    def test_example_config_is_valid(self) -> None:
        """config/worker.yaml loads without any environment variable set."""
        s = load_settings(REPO / "config" / "worker.yaml", {})
        assert [w.name for w in s.watchers] == ["users", "orders", "products"]
        assert s.mongodb.uri == "mongodb://localhost:27017/?replicaSet=rs0"

    def test_example_handler_options(self) -> None:
        """Each handler in config/worker.yaml has valid options for its type, once it imports."""
        from changestream_worker.config.registry import available_handlers, check_handlers

        s = load_settings(REPO / "config" / "worker.yaml", {})
        installed = available_handlers()
        present = {n: h for n, h in s.handlers.items() if h.type in installed}
        if not present:
            pytest.skip("none of the built-in handler modules imports yet")
        check_handlers(s.model_copy(update={"handlers": present}))
