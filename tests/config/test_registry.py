"""Handler types: entry points, package.module:Class, option validation with YAML paths."""

from __future__ import annotations

import textwrap
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from changestream_worker.config.models import Settings
from changestream_worker.config.registry import (
    available_handlers,
    build_handlers,
    check_handlers,
    resolve_handler_type,
)
from changestream_worker.errors import ConfigError
from changestream_worker.handler import Handler

GOOD = '''
from typing import Literal

from changestream_worker import Handler, HandlerOptions


class GoodOptions(HandlerOptions):
    port: int = 25
    mode: Literal["a", "b"] = "a"


class Good(Handler):
    """A handler for registry tests."""

    Options = GoodOptions

    async def handle(self, event, ctx):
        return None


class Plain(Handler):
    """Takes no options."""


class Picky(Handler):
    def __init__(self, options):
        raise ValueError("picky says no")


class NotAHandler:
    pass
'''


@dataclass
class Modules:
    """Names of throw-away modules (unique per test, so sys.modules never mixes them up)."""

    good: str
    broken: str
    needs_dep: str
    ep_good: str
    ep_broken: str


@pytest.fixture
def mods(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Modules:
    """Writes modules and an installed distribution declaring two entry points."""
    tag = uuid.uuid4().hex[:8]
    m = Modules(
        f"good_{tag}", f"broken_{tag}", f"needs_dep_{tag}", f"fake_good_{tag}", f"fake_broken_{tag}"
    )
    (tmp_path / f"{m.good}.py").write_text(GOOD)
    (tmp_path / f"{m.broken}.py").write_text("raise RuntimeError('boom at import')\n")
    (tmp_path / f"{m.needs_dep}.py").write_text("import not_installed_dep_zz\n")
    dist = tmp_path / f"fake_handlers_{tag}-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text(
        f"Metadata-Version: 2.1\nName: fake-handlers-{tag}\nVersion: 1.0\n"
    )
    (dist / "entry_points.txt").write_text(
        textwrap.dedent(f"""\
        [changestream_worker.handlers]
        {m.ep_good} = {m.good}:Good
        {m.ep_broken} = {m.broken}:Broken
        """)
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    return m


def settings_with(handlers: dict[str, Any]) -> Settings:
    return Settings.model_validate(
        {
            "mongodb": {"uri": "mongodb://localhost/?replicaSet=rs0", "database": "shop"},
            "handlers": handlers,
            "watchers": [{"name": "w", "collection": "c", "handlers": list(handlers)}],
        }
    )


def problem(spec: str) -> str:
    with pytest.raises(ConfigError) as info:
        resolve_handler_type(spec)
    assert len(info.value.problems) == 1
    return info.value.problems[0]


class TestResolve:
    def test_module_class(self, mods: Modules) -> None:
        """package.module:Class imports the class."""
        cls = resolve_handler_type(f"{mods.good}:Good")
        assert issubclass(cls, Handler) and cls.__name__ == "Good"

    def test_entry_point_name(self, mods: Modules) -> None:
        """A name declared in the changestream_worker.handlers group resolves to its class."""
        assert resolve_handler_type(mods.ep_good).__name__ == "Good"

    def test_missing_module(self, mods: Modules) -> None:
        """A module that does not exist says so and hints at installation."""
        assert problem("nope_pkg_zz.handlers:X") == (
            "cannot import module 'nope_pkg_zz.handlers' for handler type"
            " 'nope_pkg_zz.handlers:X': no module named 'nope_pkg_zz' (is the package installed,"
            " or on PYTHONPATH?)"
        )

    def test_module_with_missing_dependency(self, mods: Modules) -> None:
        """A module whose own import fails names the missing dependency."""
        assert problem(f"{mods.needs_dep}:X") == (
            f"importing '{mods.needs_dep}' for handler type '{mods.needs_dep}:X' failed:"
            " No module named 'not_installed_dep_zz'"
        )

    def test_module_raising(self, mods: Modules) -> None:
        """Any exception at import time is explained, not raised."""
        assert problem(f"{mods.broken}:X") == (
            f"importing '{mods.broken}' for handler type '{mods.broken}:X' failed:"
            " RuntimeError: boom at import"
        )

    def test_missing_attribute(self, mods: Modules) -> None:
        """A class name the module lacks is named."""
        assert problem(f"{mods.good}:Nope") == f"module '{mods.good}' has no attribute 'Nope'"

    def test_not_a_handler(self, mods: Modules) -> None:
        """A class that does not subclass Handler is refused."""
        assert problem(f"{mods.good}:NotAHandler") == (
            f"'{mods.good}:NotAHandler' is not a subclass of worker.Handler"
        )

    def test_malformed(self) -> None:
        """'module:' without a class is a malformed spec."""
        assert problem("mod:") == "handler type 'mod:': expected 'package.module:Class'"

    def test_unknown_name(self, mods: Modules) -> None:
        """An unknown name lists the known ones; a dotted name hints at the colon form."""
        msg = problem("welcom_email")
        assert msg.startswith("unknown handler type 'welcom_email' (known: ")
        assert mods.ep_good in msg
        assert problem("pkg.mod.Cls").endswith("(for your own class write 'package.module:Class')")

    def test_broken_entry_point(self, mods: Modules) -> None:
        """An entry point whose module fails to import is explained."""
        assert problem(mods.ep_broken) == (
            f"handler type '{mods.ep_broken}' ({mods.broken}:Broken) failed to import:"
            " RuntimeError: boom at import"
        )


class TestAvailable:
    def test_broken_does_not_hide_others(self, mods: Modules) -> None:
        """Listing skips an entry point that fails to import and reports why."""
        errors: dict[str, str] = {}
        found = available_handlers(errors)
        assert found[mods.ep_good].__name__ == "Good"
        assert mods.ep_broken not in found
        assert "boom at import" in errors[mods.ep_broken]

    def test_project_entry_points_listed_or_explained(self) -> None:
        """Each built-in declared in pyproject is either available or has a reason."""
        errors: dict[str, str] = {}
        found = available_handlers(errors)
        for name in ("welcome_email", "cache_invalidation", "order_fulfilment", "sql_projection"):
            assert name in found or name in errors


class TestCheckAndBuild:
    def test_valid_options(self, mods: Modules) -> None:
        """Options are validated into the class's Options model and passed to the instance."""
        built = build_handlers(
            settings_with(
                {
                    "a": {"type": f"{mods.good}:Good", "options": {"port": "2525", "mode": "b"}},
                    "b": {"type": mods.ep_good},
                }
            )
        )
        a = built["a"]
        assert type(a).__name__ == "Good"
        assert (a.options.port, a.options.mode) == (2525, "b")  # type: ignore[attr-defined]
        assert built["b"].options.port == 25  # type: ignore[attr-defined]

    def test_every_problem_with_its_path(self, mods: Modules) -> None:
        """Bad options, unknown fields and unknown types are all reported with YAML paths."""
        s = settings_with(
            {
                "a": {"type": f"{mods.good}:Good", "options": {"port": "x", "mdoe": "b"}},
                "b": {"type": f"{mods.good}:Plain", "options": {"x": 1}},
                "c": {"type": "no_such_type"},
            }
        )
        with pytest.raises(ConfigError) as info:
            check_handlers(s)
        lines = info.value.problems
        assert lines[:3] == [
            "handlers.a.options.port: input should be a valid integer, unable to parse string"
            " as an integer",
            "handlers.a.options.mdoe: unknown field (did you mean 'mode'?)",
            "handlers.b.options.x: unknown field",
        ]
        assert lines[3].startswith("handlers.c.type: unknown handler type 'no_such_type' (known: ")
        assert len(lines) == 4

    def test_constructor_value_error(self, mods: Modules) -> None:
        """A constructor rejecting its options with ValueError is a config problem."""
        with pytest.raises(ConfigError) as info:
            build_handlers(settings_with({"p": {"type": f"{mods.good}:Picky"}}))
        assert info.value.problems == ["handlers.p: picky says no"]
