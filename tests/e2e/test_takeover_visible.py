"""After a SIGKILL, the backlog and the wait for the dead owner's lease are visible to operators
(/readyz, `status`, metrics) until the successor has caught up."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.conftest import wait_until
from tests.e2e.netcut import free_port
from tests.e2e.test_cli_config import cli
from tests.e2e.test_startup import get, no_traceback
from tests.support.harness import RECORDER, WorkerProcess, config_dict, watcher

pytestmark = pytest.mark.slow
TTL = 6.0
TOTAL = 2000


def status_row(path: Path) -> dict[str, Any]:
    proc = cli("status", "--json", "-c", str(path), env={"INSTANCE_ID": "cli"})
    assert proc.returncode == 0, proc.stderr
    row: dict[str, Any] = json.loads(proc.stdout)["watchers"][0]
    return row


class TestTakeoverVisible:
    def test_sigkill_backlog_and_lease_wait_until_caught_up(
        self, dbs: Any, tmp_path: Path, mongo_uri: str
    ) -> None:
        """Kill the owner with a backlog: the standby shows the lease wait (remaining seconds)
        and the backlog on /readyz and in status, logs the wait once, and both clear once it
        has handled everything."""
        _client, db, state = dbs
        ports = {"a": free_port(), "b": free_port()}
        slow = {"type": RECORDER, "options": {"delay": 0.01}}
        workers = {}
        for name, port in ports.items():
            cfg = config_dict(
                mongo_uri,
                db.name,
                state.name,
                [watcher(concurrency=4)],
                handlers={"recorder": slow},
                leases={"enabled": True, "ttl": f"{TTL}s", "instance_id": "${INSTANCE_ID}"},
                http={"enabled": True, "host": "127.0.0.1", "port": port},
            )
            env = {"INSTANCE_ID": name}
            workers[name] = WorkerProcess(cfg, tmp_path, name=name, env=env).start()
        try:
            wait_until(lambda: state.leases.find_one({"owner": {"$ne": None}}), 30, "an owner")
            wait_until(lambda: state.checkpoints.find_one({"_id": "items"}), 30, "a start point")
            owner = state.leases.find_one({"_id": "items"})["owner"]
            standby = "b" if owner == "a" else "a"
            db.items.insert_many([{"_id": i, "seq": i} for i in range(TOTAL)])
            wait_until(lambda: state.handled.count_documents({}) >= 100, 30, "100 handled")
            workers[owner].kill()
            port = ports[standby]

            def watched() -> dict[str, Any]:
                body: dict[str, Any] = get(port, "/readyz")[1].get("watchers", {})
                return body.get("items", {})

            wait_until(lambda: watched().get("lease_wait") is not None, TTL + 5, "a lease wait")
            seen = watched()
            # what `status` reads: the takeover lasts seconds, so read the document directly
            wait_until(
                lambda: (state.watcher_status.find_one({"_id": "items"}) or {}).get("takeover"),
                TTL,
                "the takeover in watcher_status",
            )
            doc = state.watcher_status.find_one({"_id": "items"})
            row = status_row(workers[standby].path)
            samples = []
            while len(state.handled.distinct("key")) < TOTAL:
                handled = len(state.handled.distinct("key"))
                samples.append((handled, watched()))
                time.sleep(0.5)
                if len(samples) > 600:
                    raise AssertionError("the successor did not catch up in 5 minutes")
            wait_until(lambda: (watched().get("backlog") or {}).get("events") == 0, 20, "backlog 0")
            done = watched()
            after = status_row(workers[standby].path)
            metrics = _metrics(port)
        finally:
            for w in workers.values():
                w.stop()
        wait = seen["lease_wait"]
        assert wait["owner"] == owner and 0 <= wait["remaining_s"] <= TTL
        assert seen["backlog"]["events"] > 0 and seen["backlog"]["seconds"] >= 0
        assert doc["takeover"]["owner"] == owner and doc["backlog"] > 0
        assert 0 <= doc["lease_wait_s"] <= TTL
        assert row["backlog"] > 0 and row["backlog_detail"]["events"] == row["backlog"]
        # until everything was handled, every look showed the wait or a backlog
        assert samples, "the successor caught up before the first look"
        for handled, look in samples:
            backlog = (look.get("backlog") or {}).get("events", 0)
            assert look.get("lease_wait") is not None or backlog > 0, (handled, look)
        assert done["lease_wait"] is None and done["backlog"]["seconds"] == 0
        assert after["takeover"] is None and after["lease_wait_s"] is None
        assert after["backlog"] == 0
        assert 'changestream_worker_backlog_events{watcher="items"} 0.0' in metrics
        assert 'changestream_worker_lease_wait_seconds{watcher="items"} 0.0' in metrics
        print(json.dumps({"seen": seen, "status": row, "samples": len(samples)}, default=str))
        log = workers[standby].log()
        assert log.count("lease_takeover_waiting") == 1
        no_traceback(log)


def _metrics(port: int) -> str:
    import urllib.request

    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
        text: str = r.read().decode()
        return text
