"""The worker as a process: SIGKILL mid-load loses nothing, SIGTERM drains and exits 0."""

from __future__ import annotations

import random
import signal
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.conftest import wait_until
from tests.support.harness import WorkerProcess, config_dict, watcher

pytestmark = pytest.mark.slow


def checkpoint_covered(client: Any, db: Any, state: Any) -> tuple[int, int]:
    """(events at or before the checkpoint, how many of them were not handled)."""
    cp = state.checkpoints.find_one({"_id": "items"})
    if cp is None or cp.get("cluster_time") is None:
        return 0, 0
    ns = f"{db.name}.items"
    before = [
        e["o"]["_id"]
        for e in client.local["oplog.rs"].find(
            {"ns": ns, "op": "i", "ts": {"$lte": cp["cluster_time"]}}
        )
    ]
    done = set(state.handled.distinct("key"))
    return len(before), sum(1 for k in before if k not in done)


class TestCrashes:
    def test_sigkill_five_times_during_load_loses_nothing(
        self, dbs: Any, tmp_path: Path, mongo_uri: str
    ) -> None:
        """10,000 inserts, the worker SIGKILLed 5 times: every event handled, the checkpoint
        never ahead of unfinished work."""
        client, db, state = dbs
        cfg = config_dict(mongo_uri, db.name, state.name, [watcher(concurrency=32)])
        worker = WorkerProcess(cfg, tmp_path).start()
        wait_until(
            lambda: state.checkpoints.find_one({"_id": "items"}) is not None,
            30,
            "the first checkpoint",
        )
        total = 10_000

        def load() -> None:
            for start in range(0, total, 100):
                db.items.insert_many([{"_id": i, "seq": i} for i in range(start, start + 100)])
                time.sleep(0.02)

        writer = threading.Thread(target=load)
        writer.start()
        rng = random.Random(7)
        for _ in range(5):
            time.sleep(rng.uniform(0.4, 1.0))
            worker.kill()
            covered, missing = checkpoint_covered(client, db, state)
            assert missing == 0, f"checkpoint ahead of unfinished work: {missing} of {covered}"
            worker.start()
        writer.join()
        wait_until(lambda: len(state.handled.distinct("key")) >= total, 90, "all events handled")
        assert worker.stop() == 0
        keys = set(state.handled.distinct("key"))
        assert keys == set(range(total))
        duplicates = state.handled.count_documents({}) - total
        assert duplicates >= 0
        covered, missing = checkpoint_covered(client, db, state)
        assert covered == total and missing == 0


class TestGracefulShutdown:
    def test_sigterm_drains_in_flight_and_exits_zero(
        self, dbs: Any, tmp_path: Path, mongo_uri: str
    ) -> None:
        """SIGTERM: in-flight events finish, the final checkpoint covers them, exit code 0."""
        client, db, state = dbs
        handlers = {
            "recorder": {"type": "tests.support.recorder:Recorder", "options": {"delay": 0.5}}
        }
        cfg = config_dict(
            mongo_uri, db.name, state.name, [watcher(concurrency=16)], handlers=handlers
        )
        worker = WorkerProcess(cfg, tmp_path).start()
        wait_until(
            lambda: state.checkpoints.find_one({"_id": "items"}) is not None,
            30,
            "the first checkpoint",
        )
        db.items.insert_many([{"_id": i, "seq": i} for i in range(10)])
        time.sleep(0.3)  # the handlers are sleeping now
        worker.signal(signal.SIGTERM)
        assert worker.wait(30) == 0
        assert sorted(state.handled.distinct("key")) == list(range(10))
        covered, missing = checkpoint_covered(client, db, state)
        assert (covered, missing) == (10, 0)
        assert "shutdown_requested" in worker.log()
