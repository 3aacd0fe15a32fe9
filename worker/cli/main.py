"""The ``changestream-worker`` command line: run, check-config, handlers and operator commands."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from collections.abc import Callable, Coroutine, Sequence
from typing import TYPE_CHECKING, Any

from changestream_worker.errors import ConfigError

EMBEDDED = "embedded://"

if TYPE_CHECKING:
    from changestream_worker.config.models import Settings

DEFAULT_CONFIG = "config/worker.yaml"
CONFIG_ENV = "CHANGESTREAM_WORKER_CONFIG"
Command = Callable[[argparse.Namespace], int]


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("changestream-worker")
    except PackageNotFoundError:
        return "unknown"


def config_path(args: argparse.Namespace) -> str:
    """``-c`` if given, else ``$CHANGESTREAM_WORKER_CONFIG``, else ``config/worker.yaml``."""
    explicit: str | None = getattr(args, "config", None)
    return explicit or os.environ.get(CONFIG_ENV) or DEFAULT_CONFIG


def _settings(args: argparse.Namespace) -> Settings:
    from changestream_worker.config.models import load_settings

    return load_settings(config_path(args))


def _ops_logging(settings: Settings) -> None:
    # operator commands print their answer on stdout; keep log lines out of it
    from changestream_worker.logs import configure_logging

    configure_logging(settings.logging.format, "warning", stream=sys.stderr)


def _run_async(coro: Coroutine[Any, Any, int]) -> int:
    return asyncio.run(coro)


# ---- commands ------------------------------------------------------------------------
def cmd_run(args: argparse.Namespace) -> int:
    from changestream_worker.config.registry import build_handlers
    from changestream_worker.logs import configure_logging

    settings = _settings(args)
    handlers = build_handlers(settings)  # validated once, before connecting anywhere
    configure_logging(settings.logging.format, settings.logging.level)
    return _run_async(_serve(settings, handlers))


async def _serve(settings: Settings, handlers: dict[str, Any]) -> int:
    from changestream_worker.service.supervisor import run

    if not settings.mongodb.uri.startswith(EMBEDDED):
        return await run(settings, handlers)
    # the emulator is a test double: only the command line starts it, never the service
    from changestream_worker.testing.emulator import ReplicaSetEmulator

    async with ReplicaSetEmulator(port=0) as rs:
        return await run(settings, handlers, uri=rs.uri)


def cmd_check_config(args: argparse.Namespace) -> int:
    import yaml

    from changestream_worker.config.registry import check_handlers

    settings = _settings(args)
    check_handlers(settings)
    sys.stdout.write(yaml.safe_dump(settings.masked(), sort_keys=False, allow_unicode=True))
    return 0


def _describe(cls: type[Any]) -> dict[str, Any]:
    doc = (cls.__doc__ or "").strip().splitlines()
    return {
        "class": f"{cls.__module__}:{cls.__qualname__}",
        "description": doc[0] if doc else "",
        "options_schema": cls.Options.model_json_schema(),
    }


def cmd_handlers(args: argparse.Namespace) -> int:
    from changestream_worker.config.registry import available_handlers, resolve_handler_type

    errors: dict[str, str] = {}
    types: dict[str, type[Any]] = dict(available_handlers(errors))
    if args.config:  # also describe the package.module:Class types a config names
        for spec in _settings(args).handlers.values():
            if spec.type not in types and spec.type not in errors:
                types[spec.type] = resolve_handler_type(spec.type)
    described = {name: _describe(cls) for name, cls in types.items()}
    if args.json:
        print(json.dumps({"handlers": described, "unavailable": errors}, indent=2))
        return 0
    for name, info in described.items():
        print(f"{name}  ({info['class']})")
        if info["description"]:
            print(f"  {info['description']}")
        schema = json.dumps(info["options_schema"], indent=2).replace("\n", "\n    ")
        print(f"  options schema:\n    {schema}\n")
    if not described:
        print("no handler types installed")
    for name, reason in errors.items():
        print(f"unavailable: {name}: {reason}", file=sys.stderr)
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    from changestream_worker.cli import ops

    settings = _settings(args)
    _ops_logging(settings)
    return _run_async(ops.status(settings, args.json))


def cmd_dlq(args: argparse.Namespace) -> int:
    from changestream_worker.cli import ops

    settings = _settings(args)
    _ops_logging(settings)
    if args.dlq_command == "list":
        return _run_async(ops.dlq_list(settings, args.watcher))
    if args.dlq_command == "replay":
        return _run_async(ops.dlq_replay(settings, args.watcher, args.id))
    return _run_async(ops.dlq_purge(settings, args.watcher))


def cmd_checkpoint(args: argparse.Namespace) -> int:
    from changestream_worker.cli import ops

    settings = _settings(args)
    _ops_logging(settings)
    return _run_async(ops.checkpoint_reset(settings, args.watcher, args.to, args.yes))


def cmd_emulator(args: argparse.Namespace) -> int:
    from changestream_worker.testing.emulator import serve

    return _run_async(serve(args.host, args.port, args.secondaries))


def cmd_demo(args: argparse.Namespace) -> int:
    from changestream_worker.cli import demo  # late: only the demo needs its parts

    redis_url = args.redis_url or os.environ.get("REDIS_URL") or None
    sql_url = args.sql_url or os.environ.get("DEMO_SQL_URL") or None
    result: int = _run_async(demo.main(args.duration, redis_url, sql_url))
    return result


# ---- parser --------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    """The argument parser of every subcommand."""
    common = argparse.ArgumentParser(add_help=False)
    # SUPPRESS: a nested parser's default must not overwrite a -c given before its command
    common.add_argument(
        "-c",
        "--config",
        metavar="FILE",
        default=argparse.SUPPRESS,
        help=f"config file (default: ${CONFIG_ENV}, else {DEFAULT_CONFIG})",
    )
    parser = argparse.ArgumentParser(
        prog="changestream-worker",
        parents=[common],
        description="React to MongoDB change streams: checkpointed, ordered per key, observable.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    def add(name: str, func: Command, help: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, parents=[common], help=help, description=help)
        p.set_defaults(func=func)
        return p

    add("run", cmd_run, "run the worker until SIGTERM/SIGINT")
    add(
        "check-config",
        cmd_check_config,
        "validate the config; print it normalised with secrets masked (exit 2 on problems)",
    )
    p = add("handlers", cmd_handlers, "list the available handler types and their options")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p = add(
        "status",
        cmd_status,
        "one line per watcher: state, checkpoint, lag, in-flight, dead letters, lease owner",
    )
    p.add_argument("--json", action="store_true", help="machine-readable output")

    p = add("dlq", cmd_dlq, "dead letters: list, replay or purge")
    dlq = p.add_subparsers(dest="dlq_command", metavar="ACTION", required=True)
    for action, help in (
        ("list", "list dead letters"),
        ("replay", "re-run dead letters; each success is removed"),
        ("purge", "delete dead letters"),
    ):
        q = dlq.add_parser(action, parents=[common], help=help, description=help)
        q.add_argument("--watcher", metavar="W", help="only this watcher's dead letters")
        if action == "replay":
            q.add_argument("--id", metavar="ID", help="only this dead letter")

    p = add("checkpoint", cmd_checkpoint, "checkpoint maintenance")
    cp = p.add_subparsers(dest="checkpoint_command", metavar="ACTION", required=True)
    q = cp.add_parser(
        "reset",
        parents=[common],
        help="point a watcher's checkpoint elsewhere",
        description="point a watcher's checkpoint at now or a past time",
    )
    q.add_argument("--watcher", metavar="W", required=True)
    q.add_argument("--to", metavar="now|ISO", required=True, help="now, or an ISO-8601 time")
    q.add_argument("-y", "--yes", action="store_true", help="do not ask for confirmation")

    p = add("emulator", cmd_emulator, "serve the in-process replica-set emulator over TCP")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=27017)
    p.add_argument("--secondaries", type=int, default=0, help="members that are always secondaries")
    p = add("demo", cmd_demo, "run the embedded demo: every built-in handler on in-process parts")
    p.add_argument(
        "--duration",
        type=float,
        default=None,
        metavar="S",
        help="stop after S seconds (default: until Ctrl-C)",
    )
    p.add_argument(
        "--redis-url",
        metavar="URL",
        help="a Redis for cache invalidation (default: $REDIS_URL; if unset or not answering,"
        " an embedded Redis-protocol test double)",
    )
    p.add_argument(
        "--sql-url",
        metavar="URL",
        help="SQLAlchemy async URL for the SQL projection, e.g."
        " postgresql+asyncpg://postgres@127.0.0.1/test (default: $DEMO_SQL_URL, else SQLite)",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Parse ``argv`` and run the command; returns the exit code (2 for config problems).

    Args:
        argv: arguments without the program name; ``sys.argv[1:]`` if None.
    """
    args = build_parser().parse_args(argv)
    if not hasattr(args, "config"):
        args.config = None
    func: Command = args.func
    try:
        return func(args)
    except ConfigError as exc:
        for line in exc.problems:
            print(line, file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
