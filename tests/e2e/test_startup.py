"""Start-up and connection loss as a user sees them: exit codes, /readyz, no tracebacks."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pymongo import MongoClient

from tests.e2e.conftest import wait_until
from tests.e2e.netcut import NetCut, free_port
from tests.e2e.test_cli_config import cli, config, write
from tests.support.harness import REPO, WorkerProcess, config_dict, unique, watcher


def get(port: int, path: str) -> tuple[int, dict[str, Any]]:
    """GET a worker endpoint: (status, JSON body), errors included."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())
    except (urllib.error.URLError, ConnectionError):
        return 0, {}


def no_traceback(text: str) -> None:
    assert "Traceback" not in text and '"traceback"' not in text, text[-3000:]


@pytest.fixture
def emulator_later() -> Iterator[Any]:
    """A function starting `changestream-worker emulator` on a given port; stopped afterwards."""
    procs: list[subprocess.Popen[str]] = []

    def start(port: int) -> str:
        proc = subprocess.Popen(
            [sys.executable, "-m", "changestream_worker", "emulator", "--port", str(port)],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
            cwd=REPO,
        )
        procs.append(proc)
        assert proc.stdout is not None
        return proc.stdout.readline().strip()

    yield start
    for proc in procs:
        proc.send_signal(signal.SIGTERM)
        proc.wait(10)
        assert proc.stdout is not None
        proc.stdout.close()


def worker_config(uri: str, http_port: int, **over: Any) -> dict[str, Any]:
    return config_dict(
        uri,
        unique("db"),
        unique("state"),
        [watcher()],
        http={"enabled": True, "host": "127.0.0.1", "port": http_port},
        **over,
    )


class TestCheckConfig:
    def test_refuses_a_uri_that_is_not_mongodb(self, tmp_path: Path) -> None:
        """check-config exits 2 naming mongodb.uri for `notauri`, without a traceback."""
        cfg = config()
        cfg["mongodb"]["uri"] = "notauri"
        proc = cli("check-config", "-c", str(write(tmp_path, cfg)))
        assert proc.returncode == 2
        assert proc.stderr.splitlines() == [
            "mongodb.uri: expected a mongodb://, mongodb+srv:// or embedded:// URI, got no scheme"
        ]
        no_traceback(proc.stderr)


class TestUnreachableAtStart:
    def test_not_ready_with_the_reason_then_a_clean_stop(self, tmp_path: Path) -> None:
        """Nothing on the port: /healthz 200, /readyz 503 naming the refused connection, one
        warning per attempt; SIGTERM exits 0 without a traceback."""
        http = free_port()
        cfg = worker_config(f"mongodb://app:s3cret@127.0.0.1:{free_port()}/?replicaSet=rs0", http)
        worker = WorkerProcess(cfg, tmp_path).start()
        try:
            wait_until(lambda: get(http, "/readyz")[0] == 503, 20, "/readyz to answer")
            wait_until(lambda: worker.log().count("mongodb_unreachable") >= 2, 30, "2 attempts")
            status, body = get(http, "/readyz")
            health, _ = get(http, "/healthz")
        finally:
            code = worker.stop()
        log = worker.log()
        assert health == 200 and status == 503
        assert body["mongodb"]["reachable"] is False
        assert "Connect call failed" in body["mongodb"]["reason"]
        assert code == 0
        no_traceback(log)
        assert "s3cret" not in log and "app:***@" in log

    def test_startup_timeout_exits_1_with_one_line(self, tmp_path: Path) -> None:
        """startup_timeout passes: exit 1, one error line naming the cause, no traceback."""
        uri = f"mongodb://127.0.0.1:{free_port()}/?replicaSet=rs0"
        cfg = worker_config(uri, 0, startup_timeout="2s")
        cfg["http"] = {"enabled": False}
        worker = WorkerProcess(cfg, tmp_path).start()
        code = worker.wait(30)
        log = worker.log()
        errors = [json.loads(line) for line in log.splitlines() if '"level": "error"' in line]
        assert code == 1
        assert [e["event"] for e in errors] == ["startup_timeout"]
        assert "not reachable within startup_timeout" in errors[0]["error"]
        no_traceback(log)

    @pytest.mark.slow
    def test_sixty_seconds_unreachable_then_everything_handled(
        self, tmp_path: Path, emulator_later: Any
    ) -> None:
        """MongoDB comes up 60 s after the worker: it starts, handles every event, never
        exits non-zero and prints no traceback."""
        port, http = free_port(), free_port()
        uri = f"mongodb://127.0.0.1:{port}/?replicaSet=rs0"
        cfg = worker_config(uri, http)
        worker = WorkerProcess(cfg, tmp_path).start()
        try:
            started = time.monotonic()
            while time.monotonic() - started < 60:
                assert worker.proc is not None and worker.proc.poll() is None, worker.log()
                time.sleep(1)
            assert get(http, "/readyz")[0] == 503
            emulator_later(port)
            client: MongoClient[dict[str, Any]] = MongoClient(uri)
            db, state = client[cfg["mongodb"]["database"]], client[cfg["state"]["database"]]
            wait_until(lambda: state.checkpoints.find_one({"_id": "items"}), 60, "the start")
            db.items.insert_many([{"_id": i, "seq": i} for i in range(500)])
            wait_until(lambda: len(state.handled.distinct("key")) >= 500, 60, "500 events")
            wait_until(lambda: get(http, "/readyz")[0] == 200, 20, "/readyz 200")
            assert set(state.handled.distinct("key")) == set(range(500))
            client.close()
        finally:
            code = worker.stop()
        assert code == 0
        log = worker.log()
        no_traceback(log)
        assert log.count("mongodb_unreachable") >= 5 and "mongodb_reachable" in log


class TestLostMidRun:
    @pytest.mark.slow
    def test_link_cut_for_15s(self, tmp_path: Path, emulator_later: Any) -> None:
        """The network to MongoDB is cut for 15 s while events arrive: /readyz 503 with the
        reason meanwhile, every event handled after, exit 0, no traceback."""
        port, http = free_port(), free_port()
        mongo_uri = emulator_later(port)
        with NetCut("127.0.0.1", port) as net:
            cfg = worker_config(net.uri, http)
            worker = WorkerProcess(cfg, tmp_path).start()
            client: MongoClient[dict[str, Any]] = MongoClient(mongo_uri)
            db, state = client[cfg["mongodb"]["database"]], client[cfg["state"]["database"]]
            try:
                wait_until(lambda: get(http, "/readyz")[0] == 200, 30, "/readyz 200")
                db.items.insert_many([{"_id": i, "seq": i} for i in range(200)])
                wait_until(lambda: len(state.handled.distinct("key")) >= 200, 30, "200 events")
                net.cut()
                db.items.insert_many([{"_id": i, "seq": i} for i in range(200, 400)])
                wait_until(lambda: get(http, "/readyz")[0] == 503, 20, "/readyz 503")
                body = get(http, "/readyz")[1]
                time.sleep(15)
                net.restore()
                wait_until(lambda: len(state.handled.distinct("key")) >= 400, 60, "400 events")
                wait_until(lambda: get(http, "/readyz")[0] == 200, 30, "/readyz 200 again")
                wait_until(lambda: "mongodb_reachable_again" in worker.log(), 10, "its log line")
            finally:
                code = worker.stop()
                client.close()
        assert body["mongodb"]["reachable"] is False and body["mongodb"]["reason"]
        assert code == 0
        log = worker.log()
        no_traceback(log)
        assert "mongodb_connection_lost" in log and log.count("mongodb_unreachable") >= 2
