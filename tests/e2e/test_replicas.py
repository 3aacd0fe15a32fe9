"""Several worker processes on one config: leases, fencing, failover, partitions."""

from __future__ import annotations

import signal
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.conftest import wait_until
from tests.support.harness import WorkerProcess, config_dict, watcher

pytestmark = pytest.mark.slow
TTL = 3.0


def start_three(mongo_uri: str, db: Any, state: Any, tmp: Path, **wkw: Any) -> list[WorkerProcess]:
    cfg = config_dict(
        mongo_uri,
        db.name,
        state.name,
        [watcher(**wkw)],
        leases={"enabled": True, "ttl": f"{TTL}s", "instance_id": "${INSTANCE_ID}"},
    )
    return [
        WorkerProcess(cfg, tmp, name=f"w{i}", env={"INSTANCE_ID": f"w{i}"}).start()
        for i in range(3)
    ]


def owner(state: Any, name: str = "items") -> dict[str, Any] | None:
    doc = state.leases.find_one({"_id": name})
    if doc is None or doc.get("owner") is None:
        return None
    return doc


def wait_new_owner(state: Any, first: dict[str, Any]) -> None:
    """Wait until another replica than `first`'s owner holds the lease."""
    wait_until(
        lambda: (o := owner(state)) is not None and o["owner"] != first["owner"],
        TTL + 10,
        "a new owner",
    )


def active_replica(
    workers: list[WorkerProcess], state: Any
) -> tuple[WorkerProcess, dict[str, Any]]:
    """The process owning the lease (waiting for one), and the lease as it stood."""
    wait_until(lambda: owner(state) is not None, 30, "a lease owner")
    wait_until(lambda: state.checkpoints.find_one({"_id": "items"}), 30, "its starting point")
    first = owner(state)
    assert first is not None
    return next(w for w in workers if w.name == first["owner"]), first


def stop_all(workers: list[WorkerProcess]) -> None:
    for w in workers:
        w.stop()


class TestFailover:
    def test_sigkill_active_standby_takes_over_within_ttl(
        self, dbs: Any, tmp_path: Path, mongo_uri: str
    ) -> None:
        """Kill the active replica mid-load: a standby owns the lease within TTL + 2 s and
        every event is handled."""
        _client, db, state = dbs
        workers = start_three(mongo_uri, db, state, tmp_path)
        try:
            wait_until(lambda: owner(state) is not None, 30, "a lease owner")
            wait_until(lambda: state.checkpoints.find_one({"_id": "items"}), 30, "a start point")
            total = 20_000

            def load() -> None:
                for start in range(0, total, 500):
                    db.items.insert_many([{"_id": i, "seq": i} for i in range(start, start + 500)])
                    time.sleep(0.02)

            writer = threading.Thread(target=load)
            writer.start()
            time.sleep(1.0)
            first = owner(state)
            assert first is not None
            active = next(w for w in workers if w.name == first["owner"])
            active.kill()
            killed_at = time.monotonic()
            wait_until(
                lambda: (
                    (o := owner(state)) is not None
                    and o["owner"] != first["owner"]
                    and o["epoch"] > first["epoch"]
                ),
                TTL + 10,
                "a new owner",
            )
            takeover = time.monotonic() - killed_at
            writer.join()
            wait_until(lambda: len(state.handled.distinct("key")) >= total, 120, "all events")
            assert set(state.handled.distinct("key")) == set(range(total))
            assert takeover <= TTL + 2, f"takeover took {takeover:.1f}s"
        finally:
            stop_all(workers)

    def test_paused_owner_is_fenced(self, dbs: Any, tmp_path: Path, mongo_uri: str) -> None:
        """SIGSTOP the owner past its TTL, then SIGCONT: it handles nothing more, writes no
        checkpoint, and stands by."""
        _client, db, state = dbs
        workers = start_three(mongo_uri, db, state, tmp_path)
        try:
            paused, first = active_replica(workers, state)
            paused.signal(signal.SIGSTOP)
            wait_new_owner(state, first)
            db.items.insert_many([{"_id": i, "seq": i} for i in range(200)])
            resumed_at = time.time()
            paused.signal(signal.SIGCONT)
            db.items.insert_many([{"_id": i, "seq": i} for i in range(200, 400)])
            wait_until(lambda: len(state.handled.distinct("key")) >= 400, 60, "all events")
            time.sleep(1.0)
            late = state.handled.count_documents({"pid": paused.pid, "at": {"$gt": resumed_at}})
            assert late == 0, "the deposed owner handled events after waking"
            cp = state.checkpoints.find_one({"_id": "items"})
            assert cp["epoch"] > first["epoch"], "the checkpoint carries an old owner's epoch"
            wait_until(
                lambda: "watcher_deposed" in paused.log() or "lease_lost" in paused.log(),
                10,
                "the paused replica to notice",
            )
            assert paused.proc is not None and paused.proc.poll() is None, "it stays as standby"
        finally:
            stop_all(workers)

    def test_sigterm_owner_hands_over_at_once(
        self, dbs: Any, tmp_path: Path, mongo_uri: str
    ) -> None:
        """A graceful stop releases the lease: takeover well under the TTL."""
        _client, db, state = dbs
        workers = start_three(mongo_uri, db, state, tmp_path)
        try:
            active, first = active_replica(workers, state)
            active.signal(signal.SIGTERM)
            t0 = time.monotonic()
            wait_new_owner(state, first)
            takeover = time.monotonic() - t0
            assert active.wait(30) == 0
            assert takeover < TTL, f"graceful takeover took {takeover:.1f}s"
        finally:
            stop_all(workers)


class TestPartitions:
    def test_four_partitions_over_three_processes(
        self, dbs: Any, tmp_path: Path, mongo_uri: str
    ) -> None:
        """partitions: 4 over 3 processes: all partitions active, load spread, per-key order
        held, nothing missing."""
        _client, db, state = dbs
        workers = start_three(
            mongo_uri, db, state, tmp_path, partitions=4, full_document="updateLookup"
        )
        try:
            names = [f"items#{i}" for i in range(4)]
            wait_until(lambda: all(owner(state, n) for n in names), 30, "4 partition owners")
            wait_until(lambda: state.checkpoints.count_documents({}) >= 4, 30, "4 checkpoints")
            db.items.insert_many([{"_id": k, "seq": 0} for k in range(200)])
            for step in range(1, 6):
                for k in range(200):
                    db.items.update_one({"_id": k}, {"$set": {"seq": step}})
            wait_until(lambda: state.handled.count_documents({}) >= 1200, 60, "1,200 events")
            owners = {owner(state, n)["owner"] for n in names}  # type: ignore[index]
            assert len(owners) >= 2, f"all partitions on one process: {owners}"
            per_watcher = {n: state.handled.count_documents({"watcher": n}) for n in names}
            assert all(v > 0 for v in per_watcher.values()), per_watcher
            by_key: dict[int, list[Any]] = {}
            # "at" is each handling's wall time; ObjectIds of different processes don't sort
            for d in state.handled.find().sort("at", 1):
                by_key.setdefault(d["key"], []).append((d["ts"], d["watcher"]))
            assert len(by_key) == 200
            for key, seen in by_key.items():
                assert [t for t, _ in seen] == sorted(t for t, _ in seen), f"key {key} out of order"
                assert len({w for _, w in seen}) == 1, f"key {key} moved between partitions"
        finally:
            stop_all(workers)
