"""Handler types by name (entry points or ``package.module:Class``); building configured ones."""

from __future__ import annotations

import importlib
from importlib.metadata import EntryPoint, entry_points
from typing import TYPE_CHECKING, Any, cast

from pydantic import BaseModel, ValidationError

from changestream_worker.config.loading import problems_from
from changestream_worker.errors import ConfigError, MissingExtraError
from changestream_worker.handler import Handler, HandlerOptions

if TYPE_CHECKING:
    from changestream_worker.config.models import Settings

__all__ = [
    "ENTRY_POINT_GROUP",
    "available_handlers",
    "build_handlers",
    "check_handlers",
    "resolve_handler_type",
]

ENTRY_POINT_GROUP = "changestream_worker.handlers"


def _entry_points() -> dict[str, EntryPoint]:
    return {ep.name: ep for ep in entry_points(group=ENTRY_POINT_GROUP)}


def _check_class(obj: object, spec: str) -> type[Handler]:
    if not (isinstance(obj, type) and issubclass(obj, Handler)):
        raise ConfigError(f"{spec!r} is not a subclass of worker.Handler")
    options = getattr(obj, "Options", HandlerOptions)
    if not (isinstance(options, type) and issubclass(options, BaseModel)):
        raise ConfigError(f"{spec!r}: its Options attribute is not a pydantic model")
    return obj


def _import_class(spec: str) -> type[Handler]:
    module_name, _, attr = spec.partition(":")
    if not module_name or not attr:
        raise ConfigError(f"handler type {spec!r}: expected 'package.module:Class'")
    try:
        module = importlib.import_module(module_name)
    except MissingExtraError as exc:
        raise ConfigError(_missing_extra(spec, exc)) from None
    except ModuleNotFoundError as exc:
        if exc.name and module_name.startswith(exc.name):
            raise ConfigError(
                f"cannot import module {module_name!r} for handler type {spec!r}: no module named"
                f" {exc.name!r} (is the package installed, or on PYTHONPATH?)"
            ) from None
        raise ConfigError(
            f"importing {module_name!r} for handler type {spec!r} failed: {exc}"
        ) from None
    except Exception as exc:
        raise ConfigError(
            f"importing {module_name!r} for handler type {spec!r} failed:"
            f" {type(exc).__name__}: {exc}"
        ) from None
    obj: Any = module
    for part in attr.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise ConfigError(f"module {module_name!r} has no attribute {attr!r}") from None
    return _check_class(obj, spec)


def _missing_extra(spec: str, exc: MissingExtraError) -> str:
    return f"{spec} {exc}"


def _load_entry_point(ep: EntryPoint) -> type[Handler]:
    try:
        obj = ep.load()
    except MissingExtraError as exc:
        raise ConfigError(_missing_extra(ep.name, exc)) from None
    except Exception as exc:
        raise ConfigError(
            f"handler type {ep.name!r} ({ep.value}) failed to import: {type(exc).__name__}: {exc}"
        ) from None
    return _check_class(obj, ep.value)


def resolve_handler_type(spec: str) -> type[Handler]:
    """Find a handler class by built-in/entry-point name or by ``package.module:Class``.

    Raises:
        ConfigError: one line (without a YAML path) saying why the type is unavailable.
    """
    if ":" in spec:
        return _import_class(spec)
    eps = _entry_points()
    if spec in eps:
        return _load_entry_point(eps[spec])
    hint = " (for your own class write 'package.module:Class')" if "." in spec else ""
    known = ", ".join(sorted(eps)) or "none installed"
    raise ConfigError(f"unknown handler type {spec!r} (known: {known}){hint}")


def available_handlers(errors: dict[str, str] | None = None) -> dict[str, type[Handler]]:
    """The handler types installed through entry points, by name.

    An entry point that fails to import is left out (and its reason put in ``errors`` if
    given), so one broken package does not hide the others.
    """
    found: dict[str, type[Handler]] = {}
    for name, ep in sorted(_entry_points().items()):
        try:
            found[name] = _load_entry_point(ep)
        except ConfigError as exc:
            if errors is not None:
                errors[name] = str(exc)
    return found


def _options_model(cls: type[Handler]) -> type[HandlerOptions]:
    return cast("type[HandlerOptions]", getattr(cls, "Options", HandlerOptions))


def check_handlers(settings: Settings) -> dict[str, tuple[type[Handler], HandlerOptions]]:
    """Resolve every configured handler's type and validate its options, without building it.

    Returns:
        For each handler name, its class and validated options.

    Raises:
        ConfigError: lines like ``handlers.welcome.options.smtp_port: ...``, for every handler.
    """
    problems: list[str] = []
    resolved: dict[str, tuple[type[Handler], HandlerOptions]] = {}
    for name, spec in settings.handlers.items():
        try:
            cls = resolve_handler_type(spec.type)
        except ConfigError as exc:
            problems += [f"handlers.{name}.type: {line}" for line in exc.problems]
            continue
        model = _options_model(cls)
        try:
            resolved[name] = (cls, model.model_validate(spec.options))
        except ValidationError as exc:
            problems += problems_from(exc, prefix=f"handlers.{name}.options", model=model)
    if problems:
        raise ConfigError(problems)
    return resolved


def build_handlers(settings: Settings) -> dict[str, Handler]:
    """Instantiate every configured handler (not started yet).

    Raises:
        ConfigError: an unknown type, a failing import, invalid options, or a constructor
            that rejects its options (``handlers.<name>: ...``).
    """
    built: dict[str, Handler] = {}
    problems: list[str] = []
    for name, (cls, options) in check_handlers(settings).items():
        try:
            built[name] = cls(options)
        except ConfigError as exc:
            problems += [f"handlers.{name}: {line}" for line in exc.problems]
        except ValueError as exc:
            problems.append(f"handlers.{name}: {exc}")
    if problems:
        raise ConfigError(problems)
    return built
