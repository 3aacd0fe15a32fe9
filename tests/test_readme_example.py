"""The handler and handler-test examples in README.md, taken from the file and run."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from pymongo import AsyncMongoClient

from tests.support.harness import config_dict, eventually, running, settings_of, unique, watcher

README = Path(__file__).resolve().parents[1] / "README.md"


def readme_block(first_line: str) -> str:
    """The README's python block that starts with ``first_line``."""
    blocks = re.findall(
        r"```python\n(" + re.escape(first_line) + r".*?)```", README.read_text(), re.S
    )
    assert blocks, f"README lost its example {first_line!r}"
    return str(blocks[0])


def write_package(root: Path) -> None:
    pkg = root / "mypkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "handlers.py").write_text(readme_block("# mypkg/handlers.py\n"))


@pytest.fixture
def readme_package(tmp_path: Path) -> Any:
    write_package(tmp_path)
    sys.path.insert(0, str(tmp_path))
    yield
    sys.path.remove(str(tmp_path))
    for name in [m for m in sys.modules if m == "mypkg" or m.startswith("mypkg.")]:
        del sys.modules[name]


class TestReadmeExample:
    async def test_audit_handler_records_each_change_once(
        self, mongo_uri: str, readme_package: None
    ) -> None:
        """The README's Audit handler runs from YAML and writes one audit row per change."""
        client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(mongo_uri)
        db, state = unique("db"), unique("state")
        handlers = {"audit": {"type": "mypkg.handlers:Audit", "options": {"collection": "audit"}}}
        w = watcher(handlers=["audit"])
        try:
            async with running(settings_of(config_dict(mongo_uri, db, state, [w], handlers))):

                async def started() -> bool:
                    return await client[state].checkpoints.find_one({"_id": "items"}) is not None

                await eventually(started, what="the watcher's starting point")
                await client[db].items.insert_many([{"_id": i} for i in range(3)])
                await client[db].items.delete_one({"_id": 0})

                async def four() -> bool:
                    return await client[db].audit.count_documents({}) >= 4

                await eventually(four, what="4 audit rows")
            rows = await client[db].audit.find({}, {"_id": 0, "op": 1, "key": 1}).to_list()
            assert sorted((r["op"], r["key"]) for r in rows) == [
                ("delete", 0),
                ("insert", 0),
                ("insert", 1),
                ("insert", 2),
            ]
        finally:
            await client.drop_database(db)
            await client.drop_database(state)
            await client.close()


class TestReadmeHandlerTest:
    def test_the_handler_test_passes_with_the_pytest_plugin(self, tmp_path: Path) -> None:
        """README's handler test passes in a project of its own, through the pytest plugin."""
        write_package(tmp_path)
        (tmp_path / "tests").mkdir()
        (tmp_path / "tests" / "test_audit.py").write_text(readme_block("# tests/test_audit.py"))
        env = {**os.environ, "PYTHONPATH": str(tmp_path)}
        done = subprocess.run(
            [
                sys.executable,
                "-m",
                "pytest",
                "-q",
                "-p",
                "no:cacheprovider",
                "-o",
                "asyncio_mode=auto",
                "-o",
                "asyncio_default_fixture_loop_scope=function",
                "tests",
            ],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert done.returncode == 0, done.stdout + done.stderr
        assert "1 passed" in done.stdout
