"""sql_projection: keep a SQL table in step with a collection (PostgreSQL, MariaDB/MySQL, SQLite).

Guarantee: idempotent and order-proof. Every row carries ``source_ts``, the event's cluster
time as ``time << 32 | increment``; a write only lands when its ``source_ts`` is newer than
the row's, so a replayed or reordered older event never overwrites a newer row. A delete
leaves a tombstone (``deleted = true``, data columns NULL, the delete's ``source_ts``)
instead of removing the row: otherwise an older insert replayed after the delete would
resurrect the document. Readers select ``WHERE NOT deleted`` (or a view doing so).
Updates need the whole document: run the watcher with ``full_document: updateLookup``.
Batches become one multi-row upsert in one transaction; a document's changes in a batch
collapse to the newest first (the guard would discard the older ones anyway).
"""

from __future__ import annotations

import importlib.util
import sqlite3
from collections.abc import Sequence
from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, field_validator

from changestream_worker import (
    BatchItemFailures,
    ChangeEvent,
    Handler,
    HandlerContext,
    HandlerOptions,
    MissingExtraError,
    PermanentError,
    SkipEvent,
    TransientError,
    get_path,
)

try:
    from sqlalchemy import (
        JSON,
        BigInteger,
        Boolean,
        Column,
        DateTime,
        Float,
        MetaData,
        String,
        Table,
        Text,
        func,
    )
    from sqlalchemy.exc import DBAPIError, OperationalError, SQLAlchemyError
    from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
except ImportError as exc:  # check-config turns this into the pip install line
    raise MissingExtraError("sql", "sqlalchemy") from exc

DRIVER_EXTRAS = {"asyncpg": "postgres", "aiomysql": "mysql"}  # SQLAlchemy driver -> extra

ColumnType = Literal["string", "integer", "float", "boolean", "json", "datetime"]
SQL_TYPES: dict[str, Any] = {
    "string": Text,
    "integer": BigInteger,
    "float": Float,
    "boolean": Boolean,
    "json": JSON,
    "datetime": DateTime(timezone=True),
}
ROW_CHANGES = ("insert", "update", "replace", "delete")
# bound parameters per statement: below asyncpg's 32,767 and SQLite's (3.32+) 32,766
MAX_PARAMS = 30_000 if sqlite3.sqlite_version_info >= (3, 32) else 900


class ColumnSpec(BaseModel):
    """A column fed from a document path, with its SQL type."""

    model_config = ConfigDict(extra="forbid")
    path: str
    type: ColumnType = "string"


class SqlProjectionOptions(HandlerOptions):
    """Options of ``sql_projection`` (see config/worker.yaml)."""

    url: str
    table: str
    columns: dict[str, str | ColumnSpec]
    key_column: str = "id"
    create_table: bool = False

    @field_validator("url")
    @classmethod
    def _driver_installed(cls, url: str) -> str:
        # SQLAlchemy imports the driver only when connecting: say which extra brings it now
        scheme = url.partition("://")[0]
        driver = scheme.partition("+")[2]
        extra = DRIVER_EXTRAS.get(driver)
        if extra is not None and importlib.util.find_spec(driver) is None:
            raise ValueError(
                f"the {scheme} driver {driver!r} is not installed:"
                f" pip install 'changestream-worker[{extra}]'"
            )
        return url


def _plain(value: Any, kind: str) -> Any:
    if value is None or kind == "json":
        return value
    if kind == "string":
        return value if isinstance(value, str) else str(value)
    if kind == "datetime" and not isinstance(value, datetime):
        raise PermanentError(f"not a date: {value!r}")
    return value


class SqlProjection(Handler[SqlProjectionOptions]):
    """Upserts one row per document; deletes leave tombstones."""

    def __init__(self, options: SqlProjectionOptions) -> None:
        super().__init__(options)
        self.specs = {
            name: spec if isinstance(spec, ColumnSpec) else ColumnSpec(path=spec)
            for name, spec in options.columns.items()
            if name != options.key_column
        }
        self.table = Table(
            options.table,
            MetaData(),
            Column(options.key_column, String(255), primary_key=True),
            *(
                Column(name, SQL_TYPES[spec.type], nullable=True)
                for name, spec in self.specs.items()
            ),
            Column("deleted", Boolean, nullable=False, default=False),
            Column("source_ts", BigInteger, nullable=False),
        )
        self.engine: AsyncEngine | None = None

    async def start(self, ctx: HandlerContext) -> None:
        self.engine = create_async_engine(self.options.url, pool_pre_ping=True)
        if self.options.create_table:
            async with self.engine.begin() as conn:
                await conn.run_sync(self.table.metadata.create_all)

    async def stop(self) -> None:
        if self.engine is not None:
            await self.engine.dispose()

    def row(self, event: ChangeEvent) -> dict[str, Any]:
        """The row this event leaves behind (a tombstone for deletes)."""
        ts = event.cluster_time
        if ts is None or event.document_id is None:
            raise SkipEvent("not a document change")
        row: dict[str, Any] = {
            self.options.key_column: str(event.document_id),
            "source_ts": (ts.time << 32) | ts.inc,
        }
        if event.operation_type == "delete":
            return {**row, **{name: None for name in self.specs}, "deleted": True}
        doc = event.full_document
        if doc is None:
            raise PermanentError(
                "no fullDocument: run this watcher with full_document: updateLookup"
            )
        for name, spec in self.specs.items():
            row[name] = _plain(get_path(doc, spec.path), spec.type)
        return {**row, "deleted": False}

    def _upsert(self, rows: list[dict[str, Any]]) -> Any:
        assert self.engine is not None
        t = self.table
        data = [c for c in rows[0] if c != self.options.key_column]
        dialect = self.engine.dialect.name
        if dialect in ("postgresql", "sqlite"):
            from sqlalchemy.dialects import postgresql, sqlite

            insert = postgresql.insert if dialect == "postgresql" else sqlite.insert
            stmt = insert(t).values(rows)
            return stmt.on_conflict_do_update(
                index_elements=[self.options.key_column],
                set_={c: stmt.excluded[c] for c in data},
                where=t.c.source_ts < stmt.excluded.source_ts,
            )
        if dialect in ("mysql", "mariadb"):
            from sqlalchemy.dialects.mysql import insert as my_insert

            my = my_insert(t).values(rows)
            newer = my.inserted.source_ts > t.c.source_ts
            # source_ts last: every IF before it still compares against the old value
            order = [c for c in data if c != "source_ts"] + ["source_ts"]
            return my.on_duplicate_key_update(
                [(c, func.IF(newer, my.inserted[c], t.c[c])) for c in order]
            )
        raise PermanentError(f"unsupported SQL dialect {dialect!r}")

    async def _write(self, rows: list[dict[str, Any]]) -> None:
        assert self.engine is not None, "start() first"
        per_statement = max(1, MAX_PARAMS // len(rows[0]))
        try:
            async with self.engine.begin() as conn:
                for i in range(0, len(rows), per_statement):
                    await conn.execute(self._upsert(rows[i : i + per_statement]))
        except (OperationalError, DBAPIError) as exc:
            if getattr(exc, "connection_invalidated", False) or isinstance(exc, OperationalError):
                raise TransientError(f"SQL: {exc.orig}") from exc
            # a row the database refuses (too long, out of range): which one, it does not
            # say; permanent, so a batch is split until the poison event stands alone
            raise PermanentError(f"SQL: {exc.orig}") from exc
        except SQLAlchemyError as exc:
            raise PermanentError(f"SQL: {exc}") from exc
        except (OverflowError, ValueError) as exc:  # a driver refusing a value before sending
            raise PermanentError(f"SQL: {exc}") from exc

    async def handle(self, event: ChangeEvent, ctx: HandlerContext) -> None:
        if event.operation_type not in ROW_CHANGES:
            raise SkipEvent(f"{event.operation_type} changes no row")
        await self._write([self.row(event)])

    async def handle_batch(self, events: Sequence[ChangeEvent], ctx: HandlerContext) -> None:
        newest: dict[str, dict[str, Any]] = {}
        failures: dict[int, BaseException] = {}
        key = self.options.key_column
        for i, event in enumerate(events):
            if event.operation_type not in ROW_CHANGES:
                failures[i] = SkipEvent(f"{event.operation_type} changes no row")
                continue
            try:
                row = self.row(event)
            except (SkipEvent, PermanentError) as exc:
                failures[i] = exc
                continue
            held = newest.get(row[key])
            # equal times (one transaction) keep the later event: stream order decides
            if held is None or held["source_ts"] <= row["source_ts"]:
                newest[row[key]] = row
        if newest:
            await self._write(list(newest.values()))
        if failures:
            raise BatchItemFailures(failures)
