"""Every operator command as a process: 0 done, 1 failed at run time, 2 usage; no tracebacks."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import pytest
import yaml

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[2]
RECORDER = "tests.support.recorder:Recorder"
UNREACHABLE = "mongodb://127.0.0.1:1/?replicaSet=rs0&serverSelectionTimeoutMS=300"
COMMANDS = [
    ["status"],
    ["status", "--json"],
    ["dlq", "list"],
    ["dlq", "replay"],
    ["dlq", "purge", "--watcher", "items"],
    ["checkpoint", "reset", "--watcher", "items", "--to", "now", "--yes"],
]


def write_config(tmp_path: Path, uri: str) -> Path:
    cfg: dict[str, Any] = {
        "mongodb": {"uri": uri, "database": f"db_{uuid.uuid4().hex[:8]}"},
        "state": {"database": f"state_{uuid.uuid4().hex[:8]}"},
        "handlers": {"rec": {"type": RECORDER, "options": {}}},
        "watchers": [{"name": "items", "collection": "items", "handlers": ["rec"]}],
    }
    path = tmp_path / "worker.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def run(config: Path, *args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    """`python -m changestream_worker ARGS -c CONFIG`, asserting no traceback."""
    env = {k: v for k, v in os.environ.items() if k != "CHANGESTREAM_WORKER_CONFIG"}
    proc = subprocess.run(
        [sys.executable, "-m", "changestream_worker", *args, "-c", str(config)],
        capture_output=True,
        text=True,
        input=stdin,
        env={**env, "PYTHONPATH": str(REPO)},
        timeout=60,
        check=False,
    )
    assert "Traceback" not in proc.stderr, proc.stderr
    return proc


class TestExitCodes:
    @pytest.mark.parametrize("args", COMMANDS, ids=" ".join)
    def test_zero_when_done(self, tmp_path: Path, mongo_uri: str, args: list[str]) -> None:
        """Against a reachable replica set each command exits 0."""
        proc = run(write_config(tmp_path, mongo_uri), *args)
        assert proc.returncode == 0, proc.stderr

    @pytest.mark.parametrize("args", COMMANDS, ids=" ".join)
    def test_one_when_mongodb_does_not_answer(self, tmp_path: Path, args: list[str]) -> None:
        """An unreachable MongoDB is a run-time failure: exit 1 with one error line."""
        proc = run(write_config(tmp_path, UNREACHABLE), *args)
        assert proc.returncode == 1, proc.stderr
        assert proc.stderr.startswith("error: MongoDB at mongodb://127.0.0.1:1/")
        assert proc.stdout == ""

    @pytest.mark.parametrize("args", COMMANDS, ids=" ".join)
    def test_two_for_an_embedded_uri(self, tmp_path: Path, args: list[str]) -> None:
        """``embedded://`` has no state to inspect: a usage error, exit 2."""
        proc = run(write_config(tmp_path, "embedded://"), *args)
        assert proc.returncode == 2 and "embedded://" in proc.stderr

    @pytest.mark.parametrize("args", COMMANDS, ids=" ".join)
    def test_two_for_a_bad_config(self, tmp_path: Path, args: list[str]) -> None:
        """A config that does not validate exits 2 naming the field."""
        path = tmp_path / "worker.yaml"
        path.write_text("mongodb: {uri: x}\nwatchers: []\n")
        proc = run(path, *args)
        assert proc.returncode == 2 and "mongodb.database" in proc.stderr

    @pytest.mark.parametrize(
        ("args", "message"),
        [
            (
                ["checkpoint", "reset", "--watcher", "nope", "--to", "now", "--yes"],
                "unknown watcher",
            ),
            (["checkpoint", "reset", "--watcher", "items", "--to", "soon", "--yes"], "ISO-8601"),
            (["dlq", "replay", "--id", "not-an-id"], "not a dead-letter id"),
        ],
    )
    def test_two_for_bad_arguments(
        self, tmp_path: Path, mongo_uri: str, args: list[str], message: str
    ) -> None:
        """Bad argument values exit 2 with the reason."""
        proc = run(write_config(tmp_path, mongo_uri), *args)
        assert proc.returncode == 2 and message in proc.stderr

    def test_unanswered_reset_exits_one_and_changes_nothing(
        self, tmp_path: Path, mongo_uri: str
    ) -> None:
        """Without --yes and without an answer on stdin, nothing is reset: exit 1."""
        config = write_config(tmp_path, mongo_uri)
        proc = run(config, "checkpoint", "reset", "--watcher", "items", "--to", "now")
        assert proc.returncode == 1 and "aborted" in proc.stderr
        assert "[y/N]" in proc.stdout
        proc = run(config, "checkpoint", "reset", "--watcher", "items", "--to", "now", stdin="y\n")
        assert proc.returncode == 0 and "checkpoint of items reset" in proc.stdout

    def test_replay_of_an_unknown_id_exits_one(self, tmp_path: Path, mongo_uri: str) -> None:
        """Replaying a dead letter that does not exist is a run-time failure, exit 1."""
        proc = run(write_config(tmp_path, mongo_uri), "dlq", "replay", "--id", "0" * 24)
        assert proc.returncode == 1 and "no dead letter" in proc.stderr
