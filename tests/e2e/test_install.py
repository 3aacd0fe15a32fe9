"""`pip install .` (no extras, not editable) into a clean venv: what it adds, and the demo."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import venv
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.test_demo import run_demo

# building and installing into a fresh venv takes a minute, several on a busy machine
pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]
REPO = Path(__file__).resolve().parents[2]
TOP_LEVEL = """
import json
from importlib.metadata import distribution

names = set()
for f in distribution("changestream-worker").files or []:
    top = f.parts[0]
    if top.endswith(".dist-info") or top == ".." or top == "__pycache__":
        continue  # metadata and the console script, not importable names
    names.add(top.removesuffix(".py"))
print(json.dumps(sorted(names)))
"""


def _clean_env() -> dict[str, str]:
    # nothing of this checkout may leak in: no PYTHONPATH, no venv of ours
    drop = ("PYTHONPATH", "VIRTUAL_ENV", "REDIS_URL", "DEMO_SQL_URL")
    return {k: v for k, v in os.environ.items() if k not in drop}


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A fresh venv with the project installed from this checkout, built once per module."""
    home = tmp_path_factory.mktemp("install")
    # what the Dockerfile copies: a build in a copy leaves no build/ in this checkout
    source = home / "source"
    for name in ("worker", "handlers"):
        shutil.copytree(REPO / name, source / name, ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(REPO / name, source / name)
    venv.create(home / "venv", with_pip=True)
    py = home / "venv" / "bin" / "python"
    proc = subprocess.run(
        [str(py), "-m", "pip", "install", "-q", str(source)],
        capture_output=True,
        text=True,
        timeout=600,
        env=_clean_env(),
        cwd=home,
        check=False,
    )
    if proc.returncode != 0:
        pytest.fail(f"pip install . failed:\n{proc.stderr[-3000:]}")
    yield home / "venv"


class TestInstall:
    def test_adds_exactly_one_top_level_package(self, installed: Path, tmp_path: Path) -> None:
        """The distribution's files hold one importable top-level name: changestream_worker."""
        py = str(installed / "bin" / "python")
        out = subprocess.run(
            [py, "-c", TOP_LEVEL], capture_output=True, text=True, cwd=tmp_path, check=True
        ).stdout
        assert json.loads(out) == ["changestream_worker"]
        probe = (
            "import importlib.util as u;"
            "print([u.find_spec(n) is None for n in ('worker', 'handlers')])"
        )
        free = subprocess.run(
            [py, "-c", probe], capture_output=True, text=True, cwd=tmp_path, env=_clean_env()
        )
        assert free.stdout.strip() == "[True, True]", free.stderr

    def test_demo_from_an_empty_directory(self, installed: Path, tmp_path: Path) -> None:
        """The installed console script runs the demo anywhere, with all four handlers at work."""
        assert not any(tmp_path.iterdir())
        _, n, read = run_demo(
            [str(installed / "bin" / "changestream-worker")], tmp_path, "--duration", "8"
        )
        assert n["emails"] == n["users"] > 0
        assert n["fulfilled"] + n["backordered"] > 0
        assert n["invalidated"] > 0 and n["rows"] > 0
        assert "(nil)" in read
