"""The package's shape: what is public, and imports that run one way with no loops."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import changestream_worker
import changestream_worker.testing

ROOT = Path(__file__).resolve().parents[1]
# the repository's folders and the import names they install as (pyproject package-dir)
FOLDERS = {"worker": "changestream_worker", "handlers": "changestream_worker.handlers"}
# the command line may start the emulator (`emulator`, `embedded://`, `demo`)
MAY_IMPORT_TESTING = {
    "changestream_worker.cli.main",
    "changestream_worker.cli.demo",
    "changestream_worker.cli.demo_parts",
}


def modules() -> dict[str, Path]:
    """Every module of the installed package, by import name."""
    found: dict[str, Path] = {}
    for folder, package in FOLDERS.items():
        for path in sorted((ROOT / folder).rglob("*.py")):
            parts = list(path.relative_to(ROOT / folder).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            found[".".join([package, *parts])] = path
    return found


def imports_of(name: str, path: Path, known: set[str]) -> set[str]:
    """The package's modules ``name`` imports anywhere in its file (lazy and typing-only
    imports included: they are arrows of the design too)."""
    out: set[str] = set()
    is_package = path.name == "__init__.py"
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = name.split(".")
                anchor = anchor[: len(anchor) - node.level + (1 if is_package else 0)]
                base = ".".join([*anchor, *([base] if base else [])])
            out.add(base)
            out.update(f"{base}.{a.name}" for a in node.names)
    return {m for m in out if m in known and m != name}


def graph() -> dict[str, set[str]]:
    mods = modules()
    return {name: imports_of(name, path, set(mods)) for name, path in mods.items()}


def loops(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected groups of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in edges[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                on.discard(w)
                group.append(w)
                if w == v:
                    break
            if len(group) > 1:
                found.append(sorted(group))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return found


# the direction of flow: a module may import its own layer and those below it
LAYERS = {"cli": 5, "service": 4, "stream": 3, "state": 2, "config": 1}


def layer(module: str) -> int | None:
    """A module's layer; None for the test kit and the built-in handlers (checked apart)."""
    parts = module.split(".")
    if len(parts) == 1 or parts[1] == "__main__":
        return 6  # the package face and `python -m`: above everything
    if parts[1] in ("testing", "handlers"):
        return None
    return LAYERS.get(parts[1], 0)  # handler API, events, errors, metrics, logs: the ground


class TestExportedMembers:
    def test_public_api(self) -> None:
        """The handler API is exactly these names."""
        assert sorted(changestream_worker.__all__) == [
            "BatchItemFailures",
            "ChangeEvent",
            "ConfigError",
            "Handler",
            "HandlerContext",
            "HandlerOptions",
            "MissingExtraError",
            "Namespace",
            "PermanentError",
            "RetryEvent",
            "SkipEvent",
            "StopWatcher",
            "TransientError",
            "WorkerError",
            "get_path",
            "takes_batches",
        ]
        for name in changestream_worker.__all__:
            assert getattr(changestream_worker, name) is not None

    def test_test_kit(self) -> None:
        """The test kit exports exactly these names."""
        assert sorted(changestream_worker.testing.__all__) == [
            "MemoryCheckpointStore",
            "ReplicaSetEmulator",
            "RunningWorker",
            "cluster_time_of",
            "make_event",
            "make_raw",
            "running_worker",
            "token_of",
        ]


class TestImports:
    def test_no_import_loops(self) -> None:
        """No module imports one that imports it back, directly or round a longer loop."""
        edges = graph()
        for name in edges:  # a package face re-exporting its children is not a loop
            if modules()[name].name == "__init__.py":
                edges[name] = {m for m in edges[name] if not m.startswith(name + ".")}
        assert loops(edges) == []

    def test_imports_run_one_way(self) -> None:
        """cli -> service -> stream -> state -> config -> the handler API, never back up."""
        upward = sorted(
            f"{name} -> {dep}"
            for name, deps in graph().items()
            for dep in deps
            if layer(name) is not None
            and layer(dep) is not None
            and layer(dep) > layer(name)  # type: ignore[operator]  # both checked just above
            and not dep.startswith(name + ".")
        )
        assert upward == []

    def test_production_code_never_imports_the_test_kit(self) -> None:
        """Only the test kit itself and the command line import changestream_worker.testing."""
        offenders = {
            name: sorted(m for m in deps if m.startswith("changestream_worker.testing"))
            for name, deps in graph().items()
            if not name.startswith("changestream_worker.testing") and name not in MAY_IMPORT_TESTING
        }
        assert {k: v for k, v in offenders.items() if v} == {}

    def test_built_in_handlers_use_only_the_public_api(self) -> None:
        """Built-in handlers import the public API, their own helpers, nothing deeper."""
        allowed = ("changestream_worker", "changestream_worker.handlers")
        deep = {
            name: sorted(m for m in deps if not m.startswith(allowed[1]) and m != allowed[0])
            for name, deps in graph().items()
            if name.startswith(allowed[1])
        }
        assert {k: v for k, v in deep.items() if v} == {}

    def test_every_module_imports_alone(self) -> None:
        """Each module imports in a fresh interpreter of its own (a loop would fail there)."""
        skip = {"changestream_worker.__main__"}  # runs the CLI when imported
        names = [n for n in modules() if n not in skip]
        done = subprocess.run(
            [sys.executable, "-c", IMPORT_EACH_ALONE, *names],
            capture_output=True,
            text=True,
            timeout=110,
        )
        assert done.returncode == 0, done.stdout + done.stderr


# One interpreter that has imported none of our modules forks a child per module, and the
# child imports just that one: as good as a fresh interpreter each, at a fork's cost.
# Third-party libraries are loaded first so that the children share them.
IMPORT_EACH_ALONE = """
import os, sys, traceback
import bson, pydantic, pymongo, structlog, tenacity, yaml, prometheus_client  # noqa
failed = []
for name in sys.argv[1:]:
    pid = os.fork()
    if pid == 0:
        try:
            __import__(name)
        except BaseException:
            traceback.print_exc(limit=-3)
            os._exit(1)
        os._exit(0)
    _, status = os.waitpid(pid, 0)
    if status:
        failed.append(name)
print("failed:", failed)
sys.exit(1 if failed else 0)
"""
