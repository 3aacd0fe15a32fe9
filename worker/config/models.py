"""The worker's configuration: pydantic models, cross-section checks and ``load_settings``."""

from __future__ import annotations

import difflib
import os
from collections.abc import Mapping
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    WithJsonSchema,
    field_validator,
    model_validator,
)

from changestream_worker.config.durations import DURATION_PATTERN, parse_duration, parse_start_at
from changestream_worker.config.loading import CrossProblems, interpolate, problems_from, read_yaml
from changestream_worker.config.uris import uri_problem
from changestream_worker.errors import ConfigError

__all__ = [
    "CheckpointSettings",
    "HandlerSpec",
    "HttpSettings",
    "LeaseSettings",
    "LoggingSettings",
    "MongoSettings",
    "RetrySettings",
    "Settings",
    "StateSettings",
    "WatcherSettings",
    "load_settings",
    "problems_from",
]

Duration = Annotated[
    float,
    BeforeValidator(parse_duration),
    WithJsonSchema(
        {
            "anyOf": [
                {"type": "number", "minimum": 0},
                {"type": "string", "pattern": DURATION_PATTERN},
            ],
            "description": "seconds, or a duration such as 500ms, 30s, 2m, 1h",
        }
    ),
]
StartAt = Annotated[
    Literal["now", "snapshot"] | datetime,
    BeforeValidator(parse_start_at),
    WithJsonSchema(
        {
            "anyOf": [
                {"enum": ["now", "snapshot"]},
                {"type": "string", "format": "date-time"},
            ],
            "description": "now | snapshot | an ISO-8601 time (no zone means UTC)",
        }
    ),
]
Operation = Literal[
    "insert", "update", "replace", "delete", "drop", "rename", "dropDatabase", "invalidate"
]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


class MongoSettings(_Model):
    """Where to connect: ``uri`` may be ``embedded://`` to start an in-process emulator."""

    uri: str = Field(min_length=1)
    database: str = Field(min_length=1)
    app_name: str = "changestream-worker"

    @field_validator("uri")
    @classmethod
    def _mongodb_uri(cls, uri: str) -> str:
        problem = uri_problem(uri)
        if problem:
            raise ValueError(problem)
        return uri


class StateSettings(_Model):
    """The database holding checkpoints, dead letters, leases and handler ledgers."""

    database: str = Field(default="changestream_worker", min_length=1)


class CheckpointSettings(_Model):
    """How often the low-watermark resume token is written."""

    interval: Annotated[Duration, Field(gt=0)] = 1.0
    max_events: int = Field(default=500, ge=1)


class HttpSettings(_Model):
    """The /metrics, /healthz and /readyz endpoint."""

    host: str = "0.0.0.0"
    port: int = Field(default=9108, ge=0, le=65535)
    enabled: bool = True


class LoggingSettings(_Model):
    """Log format (``auto``: JSON unless stdout is a terminal) and minimum level."""

    format: Literal["auto", "json", "console"] = "auto"
    level: Literal["debug", "info", "warning", "error", "critical"] = "info"


class LeaseSettings(_Model):
    """One active instance per watcher: a lease with a TTL, renewed while running."""

    enabled: bool = True
    ttl: Annotated[Duration, Field(gt=0)] = 15.0
    instance_id: str | None = None


class RetrySettings(_Model):
    """Retries of transient handler failures: exponential backoff with jitter."""

    attempts: int = Field(default=5, ge=1)
    initial_delay: Duration = 0.2
    max_delay: Duration = 30.0


class HandlerSpec(_Model):
    """A named handler instance: its type (built-in name or ``pkg.module:Class``) and options."""

    type: str = Field(min_length=1)
    options: dict[str, Any] = Field(default_factory=dict)


class BatchSettings(_Model):
    """How a handler with ``handle_batch`` gets its events grouped."""

    max_events: int = Field(default=100, ge=1, le=10_000)
    max_wait: Annotated[Duration, Field(ge=0)] = 0.0  # 0: whatever is ready now, never wait


class WatcherSettings(_Model):
    """One change stream (a collection, or a whole database) and the handlers it feeds."""

    name: str = Field(min_length=1, pattern=r"^[A-Za-z0-9_.\-]+$")
    collection: str | None = None
    database: str | None = None
    operations: list[Operation] | None = None
    match: dict[str, Any] | None = None
    full_document: Literal["default", "updateLookup", "whenAvailable", "required"] = "default"
    full_document_before_change: Literal["off", "whenAvailable", "required"] = "off"
    start_at: StartAt = "now"
    handlers: list[str] = Field(min_length=1)
    concurrency: int = Field(default=32, ge=1)
    retry: RetrySettings = Field(default_factory=RetrySettings)
    batch: BatchSettings = Field(default_factory=BatchSettings)
    on_failure: Literal["dead_letter", "stop"] = "dead_letter"
    on_history_lost: Literal["fail", "restart_now", "snapshot"] = "fail"
    on_invalidate: Literal["stop", "restart"] = "stop"
    partitions: int = Field(default=1, ge=1)
    batch_size: int = Field(default=1000, ge=1)
    max_await_time: Annotated[Duration, Field(gt=0)] = 1.0


class Settings(_Model):
    """The whole configuration file."""

    mongodb: MongoSettings
    state: StateSettings = Field(default_factory=StateSettings)
    checkpoint: CheckpointSettings = Field(default_factory=CheckpointSettings)
    http: HttpSettings = Field(default_factory=HttpSettings)
    logging: LoggingSettings = Field(default_factory=LoggingSettings)
    shutdown_timeout: Duration = 25.0
    # None: wait for MongoDB for ever (an orchestrator's restarts are no better)
    startup_timeout: Annotated[Duration, Field(gt=0)] | None = None
    leases: LeaseSettings = Field(default_factory=LeaseSettings)
    handlers: dict[str, HandlerSpec] = Field(default_factory=dict)
    watchers: list[WatcherSettings] = Field(min_length=1)

    @model_validator(mode="after")
    def _cross_references(self) -> Settings:
        problems = cross_check(self.model_dump())
        if problems:
            raise CrossProblems(problems)
        return self

    def masked(self) -> dict[str, Any]:
        """The normalised config as JSON-able data, with URI passwords and secret options masked."""
        from changestream_worker.logs import mask_secrets

        data = self.model_dump(mode="json")
        data["mongodb"]["uri"] = mask_secrets(data["mongodb"]["uri"])
        for spec in data["handlers"].values():
            spec["options"] = mask_secrets(spec["options"])
        return data


def cross_check(data: Any) -> list[str]:
    """Checks that span sections, tolerant of data that failed other checks.

    Returns:
        ``path: message`` lines: unknown handler names, duplicate watcher names, snapshots
        without a collection.
    """
    problems: list[str] = []
    if not isinstance(data, Mapping) or not isinstance(data.get("watchers"), list):
        return problems
    handlers = data.get("handlers") if isinstance(data.get("handlers"), Mapping) else {}
    assert isinstance(handlers, Mapping)
    known = sorted(str(k) for k in handlers)
    seen: dict[str, int] = {}
    for i, w in enumerate(data["watchers"]):
        if not isinstance(w, Mapping):
            continue
        name = w.get("name")
        if isinstance(name, str):
            if name in seen:
                first = seen[name]
                problems.append(
                    f"watchers[{i}].name: duplicate watcher name {name!r} (also watchers[{first}])"
                )
            seen.setdefault(name, i)
        for j, ref in enumerate(w.get("handlers") or []):
            if isinstance(ref, str) and ref not in handlers:
                problems.append(
                    f"watchers[{i}].handlers[{j}]: unknown handler {ref!r}{_hint(ref, known)}"
                )
        uses_snapshot = "snapshot" in (w.get("start_at"), w.get("on_history_lost"))
        if uses_snapshot and not w.get("collection"):
            problems.append(f"watchers[{i}].collection: snapshot needs a collection to scan")
    return problems


def _hint(word: str, known: list[str]) -> str:
    close = difflib.get_close_matches(word, known, n=1)
    if close:
        return f" (did you mean {close[0]!r}?)"
    return f" (defined: {', '.join(known)})" if known else " (no handlers are defined)"


def load_settings(path: str | Path, env: Mapping[str, str] | None = None) -> Settings:
    """Read, interpolate and validate a config file.

    Args:
        path: the YAML file.
        env: variables for ``${VAR}``; ``os.environ`` if None.

    Raises:
        ConfigError: one ``yaml.path: message`` line per problem.
    """
    path = Path(path)
    raw = read_yaml(path)
    if raw is None:
        raise ConfigError(f"{path}: the config file is empty")
    if not isinstance(raw, dict):
        raise ConfigError(f"<root>: expected a mapping of sections, got {type(raw).__name__}")
    return settings_from(raw, env)


def settings_from(raw: Mapping[str, Any], env: Mapping[str, str] | None = None) -> Settings:
    """Interpolate and validate a config already read (a mapping like the YAML file's).

    Raises:
        ConfigError: one ``yaml.path: message`` line per problem.
    """
    data, problems = interpolate(dict(raw), os.environ if env is None else env)
    try:
        settings = Settings.model_validate(data)
    except ValidationError as exc:
        # a field whose variable is unset was already reported; its emptiness is no news
        unset = {p.split(": ", 1)[0] for p in problems}
        problems += [p for p in problems_from(exc, model=Settings) if not _under(p, unset)]
        # field errors stop the model validator; still report cross-section problems
        problems += [p for p in cross_check(data) if p not in problems]
    if problems:
        raise ConfigError(_dedupe(problems))
    return settings


def _under(line: str, paths: set[str]) -> bool:
    path = line.split(": ", 1)[0]
    return any(path == p or path.startswith((f"{p}.", f"{p}[")) for p in paths)


def _dedupe(lines: list[str]) -> list[str]:
    return list(dict.fromkeys(lines))
