"""Measure failover between three worker processes: SIGKILL, SIGSTOP past the TTL, SIGTERM.

Run: python bench/failover.py [--ttl 15]. Prints one JSON document (seconds until a standby
owns the lease, from the signal).
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from pymongo import MongoClient

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from changestream_worker.testing.emulator import ReplicaSetEmulator
from tests.support.harness import WorkerProcess, config_dict, watcher


def owner(state: Any) -> dict[str, Any] | None:
    doc = state.leases.find_one({"_id": "items"})
    return doc if doc and doc.get("owner") else None


def wait_new_owner(state: Any, old: dict[str, Any], limit: float) -> float:
    t0 = time.monotonic()
    while time.monotonic() - t0 < limit:
        now = owner(state)
        if now and now["owner"] != old["owner"]:
            return time.monotonic() - t0
        time.sleep(0.05)
    return float("nan")


def scenario(uri: str, ttl: float, how: str, tmp: Path) -> float:
    client: MongoClient[dict[str, Any]] = MongoClient(uri)
    state = client[f"state_{how}"]
    cfg = config_dict(
        uri,
        f"db_{how}",
        state.name,
        [watcher()],
        leases={"enabled": True, "ttl": f"{ttl}s", "instance_id": "${INSTANCE_ID}"},
    )
    workers = [
        WorkerProcess(cfg, tmp, name=f"{how}{i}", env={"INSTANCE_ID": f"{how}{i}"}).start()
        for i in range(3)
    ]
    try:
        while owner(state) is None:
            time.sleep(0.1)
        time.sleep(1.0)
        first = owner(state)
        assert first is not None
        active = next(w for w in workers if w.name == first["owner"])
        sig = {"kill": signal.SIGKILL, "pause": signal.SIGSTOP, "graceful": signal.SIGTERM}[how]
        active.signal(sig)
        return wait_new_owner(state, first, ttl * 3)
    finally:
        for w in workers:
            w.stop()
        client.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--ttl", type=float, default=15.0)
    args = parser.parse_args()
    rs = ReplicaSetEmulator().start_in_thread()
    out: dict[str, Any] = {"ttl_s": args.ttl}
    try:
        with tempfile.TemporaryDirectory() as tmp:
            for how in ("kill", "pause", "graceful"):
                out[f"{how}_takeover_s"] = round(scenario(rs.uri, args.ttl, how, Path(tmp)), 2)
    finally:
        rs.stop_thread()
    print(json.dumps(out))


if __name__ == "__main__":
    main()
