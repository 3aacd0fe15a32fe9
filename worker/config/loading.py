"""Config file mechanics: reading YAML, ``${VAR}`` interpolation, and problems as YAML paths."""

from __future__ import annotations

import difflib
import re
import types
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from changestream_worker.errors import ConfigError

_VAR = re.compile(r"\$(\$)|\$\{([A-Za-z_][A-Za-z0-9_]*)(?:(:?-)([^}]*))?\}|\$\{([^}]*)\}?")


class CrossProblems(ValueError):
    """Problems found across sections, each already carrying its YAML path."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("; ".join(problems))


class _StrictLoader(yaml.SafeLoader):
    """SafeLoader that refuses a key written twice in one mapping (PyYAML keeps the last)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            if isinstance(key, str) and key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {key!r}", key_node.start_mark
                )
            seen.add(key)
        return super().construct_mapping(node, deep)


def read_yaml(path: Path) -> Any:
    """Parse a YAML file; a missing file or a syntax error is a ConfigError with its line."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{path}: config file not found") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read config file: {exc.strerror or exc}") from None
    try:
        return yaml.load(text, Loader=_StrictLoader)  # a SafeLoader subclass: safe
    except yaml.MarkedYAMLError as exc:
        raise ConfigError(_yaml_problem(path, exc)) from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: YAML error: {exc}") from None


def _yaml_problem(path: Path, exc: yaml.MarkedYAMLError) -> str:
    mark = exc.problem_mark or exc.context_mark
    where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark else str(path)
    problem = exc.problem or exc.context or "invalid YAML"
    if exc.context and exc.problem:
        at = f" started at line {exc.context_mark.line + 1}" if exc.context_mark else ""
        problem = f"{problem} ({exc.context}{at})"
    return f"{where}: YAML syntax error: {problem}"


def interpolate(data: Any, env: Mapping[str, str], path: str = "") -> tuple[Any, list[str]]:
    """Replace ``${VAR}`` and ``${VAR:-default}`` in every string of ``data``.

    ``${VAR:-default}`` uses the default when VAR is unset or empty, ``${VAR-default}`` only
    when it is unset, and ``$$`` is a literal ``$``. Keys are left alone.

    Returns:
        The new data and one ``path: message`` line per unset variable without a default.
    """
    problems: list[str] = []
    if isinstance(data, str):
        return _interpolate_text(data, env, path, problems), problems
    if isinstance(data, Mapping):
        out: dict[Any, Any] = {}
        for key, value in data.items():
            out[key], sub = interpolate(value, env, join_path(path, key))
            problems += sub
        return out, problems
    if isinstance(data, list):
        items: list[Any] = []
        for index, value in enumerate(data):
            item, sub = interpolate(value, env, join_path(path, index))
            items.append(item)
            problems += sub
        return items, problems
    return data, problems


def _interpolate_text(text: str, env: Mapping[str, str], path: str, problems: list[str]) -> str:
    def replace(match: re.Match[str]) -> str:
        if match.group(1):
            return "$"
        name, op, default = match.group(2), match.group(3), match.group(4)
        if name is None:
            problems.append(f"{path or '<root>'}: malformed variable reference {match.group(0)!r}")
            return ""
        value = env.get(name)
        if op == ":-" and not value:
            return default
        if op == "-" and value is None:
            return default
        if value is None:
            problems.append(
                f"{path or '<root>'}: environment variable {name} is not set"
                f" (set it, or write ${{{name}:-default}})"
            )
            return ""
        return value

    return _VAR.sub(replace, text)


def join_path(prefix: str, part: str | int) -> str:
    """Append a key or list index to a YAML path: ``watchers`` + 1 -> ``watchers[1]``."""
    if isinstance(part, int):
        return f"{prefix}[{part}]"
    key = str(part)
    if not re.fullmatch(r"[A-Za-z0-9_\-]+", key):
        key = repr(key)
        return f"{prefix}[{key}]" if prefix else f"[{key}]"
    return f"{prefix}.{key}" if prefix else key


def loc_path(loc: tuple[int | str, ...], prefix: str = "") -> str:
    """Turn a pydantic ``loc`` into a YAML path: ``('watchers', 1, 'handlers', 0)`` ->
    ``watchers[1].handlers[0]``."""
    path = prefix
    for part in loc:
        path = join_path(path, part)
    return path or "<root>"


def problems_from(
    exc: ValidationError, prefix: str = "", model: type[BaseModel] | None = None
) -> list[str]:
    """One ``yaml.path: message`` line per error in a pydantic ``ValidationError``.

    Args:
        exc: the error.
        prefix: YAML path of the validated data (``handlers.x.options``).
        model: the model validated, to suggest field names for unknown keys.
    """
    lines: list[str] = []
    for err in exc.errors(include_url=False):
        error = (err.get("ctx") or {}).get("error")
        if isinstance(error, CrossProblems):
            lines += error.problems
            continue
        lines.append(f"{loc_path(err['loc'], prefix)}: {_message(err, model)}")
    return lines


def _message(err: Any, model: type[BaseModel] | None) -> str:
    kind, msg = err["type"], str(err["msg"])
    if kind == "extra_forbidden":
        fields = _fields_at(model, err["loc"][:-1]) if model else []
        key = str(err["loc"][-1])
        close = difflib.get_close_matches(key, fields, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        known = f" (allowed: {', '.join(fields)})" if fields and not close else ""
        return f"unknown field{hint}{known}"
    if kind == "missing":
        return "required field is missing"
    msg = msg.removeprefix("Value error, ")
    if kind in ("literal_error", "enum"):
        msg = f"{msg}, got {err['input']!r}"
    return msg[:1].lower() + msg[1:]


def _fields_at(model: type[BaseModel] | None, loc: tuple[int | str, ...]) -> list[str]:
    """Field names of the model found by walking ``loc`` through nested models."""
    annotation: Any = model
    for part in loc:
        annotation = _optional_inner(annotation)
        origin = typing.get_origin(annotation)
        if isinstance(part, int) and origin is list:
            annotation = typing.get_args(annotation)[0]
        elif isinstance(part, str) and origin is dict:
            annotation = typing.get_args(annotation)[1]
        elif isinstance(part, str) and _is_model(annotation):
            field = annotation.model_fields.get(part)
            if field is None:
                return []
            annotation = field.annotation
        else:
            return []
    annotation = _optional_inner(annotation)
    return list(annotation.model_fields) if _is_model(annotation) else []


def _is_model(annotation: Any) -> bool:
    return isinstance(annotation, type) and issubclass(annotation, BaseModel)


def _optional_inner(annotation: Any) -> Any:
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    if typing.get_origin(annotation) in (typing.Union, types.UnionType) and len(args) == 1:
        return args[0]
    return annotation
