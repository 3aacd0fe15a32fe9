"""Chaos bench: SIGKILLs, dropped connections and step-downs while writes go on; nothing lost?

Two worker processes share one config (leases on) against the emulator in its own process.
During the writes the bench SIGKILLs the lease owner (and restarts it), drops connections of
the workers (failpoint ``closeConnection`` on ``getMore`` and ``insert``) and steps the
primary down. Each scenario runs with and without a CPU hog (one busy process per core),
interleaved, and prints per run: events written, lost, duplicates, drain time after the last
write, process restarts, stream resumes, takeover times (median and max).
Run: python bench/chaos.py [--writes 20000] [--duration 300] [--kills 20] [--drops 50]
     [--stepdowns 5] [--ttl 10] [--repeat 1] [--only hog|calm]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import signal
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from pymongo import MongoClient
from pymongo.errors import BulkWriteError, PyMongoError

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # for tests.support
from backlog import start_emulator  # beside this script, on sys.path

from tests.support.harness import WorkerProcess, config_dict, watcher

APP = "changestream-worker"


def _burn() -> None:
    while True:
        pass


class Hog:
    """One busy process per core, for the length of a ``with`` block."""

    def __init__(self, on: bool) -> None:
        self.on = on
        self.procs: list[multiprocessing.Process] = []

    def __enter__(self) -> Hog:
        if self.on:
            for _ in range(os.cpu_count() or 1):
                p = multiprocessing.Process(target=_burn, daemon=True)
                p.start()
                self.procs.append(p)
        return self

    def __exit__(self, *exc: object) -> None:
        for p in self.procs:
            p.kill()
            p.join(5)


def retry(call: Any, attempts: int = 200) -> Any:
    """Run a write until it succeeds: the writer rides through step-downs like an app would."""
    for _ in range(attempts):
        try:
            return call()
        except BulkWriteError as exc:
            # a retried batch whose first try landed in part: those ids are already written
            if all(e.get("code") == 11000 for e in exc.details.get("writeErrors", [])):
                return None
            time.sleep(0.1)
        except PyMongoError:
            time.sleep(0.1)
    raise RuntimeError("a write never succeeded")


class Run:
    """One scenario: the workers, the writer and the disruptions, then the tally."""

    def __init__(self, uri: str, args: argparse.Namespace, tag: str, tmp: Path) -> None:
        self.uri, self.args, self.tag = uri, args, tag
        self.client: MongoClient[dict[str, Any]] = MongoClient(uri)
        self.db = self.client[f"chaos_{tag}"]
        self.state = self.client[f"chaos_{tag}_state"]
        cfg = config_dict(
            uri,
            self.db.name,
            self.state.name,
            [watcher(concurrency=32)],
            leases={"enabled": True, "ttl": f"{args.ttl}s", "instance_id": "${INSTANCE_ID}"},
        )
        self.workers = {
            n: WorkerProcess(cfg, tmp, name=f"{tag}_{n}", env={"INSTANCE_ID": n})
            for n in ("a", "b")
        }
        self.takeovers: list[float] = []
        self.restarts = self.drops = self.stepdowns = 0
        self.writing = True
        self.last_write = 0.0

    def owner(self) -> dict[str, Any] | None:
        doc = self.state.leases.find_one({"_id": "items"})
        return doc if doc and doc.get("owner") else None

    def wait_owner(self, newer_than: int = 0, limit: float = 60) -> dict[str, Any] | None:
        deadline = time.monotonic() + limit
        while time.monotonic() < deadline:
            o = self.owner()
            if o is not None and int(o.get("epoch") or 0) > newer_than:
                return o
            time.sleep(0.05)
        return None

    def write(self, started: float) -> None:
        batch, total = 50, self.args.writes
        pace = self.args.duration / (total / batch)
        for i, start in enumerate(range(0, total, batch)):
            docs = [{"_id": k, "seq": k} for k in range(start, min(start + batch, total))]
            retry(lambda docs=docs: self.db.items.insert_many(docs, ordered=False))
            time.sleep(max(0.0, started + (i + 1) * pace - time.monotonic()))
        self.writing = False
        self.last_write = time.monotonic()

    def kills(self, started: float) -> None:
        every = self.args.duration / (self.args.kills + 1)
        for n in range(self.args.kills):
            time.sleep(max(0.0, started + (n + 1) * every - time.monotonic()))
            first = self.owner()
            if first is None:
                continue
            victim = self.workers[first["owner"]]
            victim.kill()
            killed = time.monotonic()
            if self.wait_owner(int(first["epoch"]), self.args.ttl * 10) is not None:
                self.takeovers.append(time.monotonic() - killed)
            victim.start()
            self.restarts += 1

    def faults(self, started: float) -> None:
        events = [(t, "drop") for t in _spread(self.args.drops, self.args.duration)]
        events += [(t, "stepdown") for t in _spread(self.args.stepdowns, self.args.duration)]
        admin = self.client.admin
        for at, kind in sorted(events):
            time.sleep(max(0.0, started + at - time.monotonic()))
            if kind == "drop":
                data = {"failCommands": ["getMore", "insert"], "closeConnection": True}
                retry(
                    lambda data=data: admin.command(
                        {
                            "configureFailPoint": "failCommand",
                            "mode": {"times": 1},
                            "data": {**data, "appName": APP},
                        }
                    )
                )
                self.drops += 1
            else:
                retry(lambda: admin.command({"replSetStepDown": 2, "force": True}))
                self.stepdowns += 1

    def go(self) -> dict[str, Any]:
        for w in self.workers.values():
            w.start()
        self.wait_owner()
        while not self.state.checkpoints.find_one({"_id": "items"}):
            time.sleep(0.1)
        started = time.monotonic()
        threads = [
            threading.Thread(target=f, args=(started,))
            for f in (self.write, self.kills, self.faults)
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        last_write = self.last_write  # the disruptions may end a little later
        written = set(self.db.items.distinct("_id"))
        drained = None
        while time.monotonic() - last_write < self.args.drain_limit + self.args.duration / 10:
            if len(self.state.handled.distinct("key")) >= len(written):
                drained = time.monotonic() - last_write
                break
            time.sleep(0.25)
        pending = len(written - set(self.state.handled.distinct("key")))
        for w in self.workers.values():
            w.stop()
        settled = None
        if pending:
            # late is not lost: one fresh worker, no chaos, resumes from the checkpoint; what
            # it never handles was skipped for good
            settle_at = time.monotonic()
            w = self.workers["a"].start()
            while time.monotonic() - settle_at < self.args.settle_limit:
                if len(self.state.handled.distinct("key")) >= len(written):
                    settled = time.monotonic() - settle_at
                    break
                time.sleep(0.5)
            w.stop()
        handled = self.state.handled.distinct("key")
        docs = self.state.handled.count_documents({})
        logs = "".join(w.log() for w in self.workers.values())
        self.client.drop_database(self.db.name)
        self.client.drop_database(self.state.name)
        self.client.close()
        return {
            "scenario": self.tag,
            "written": len(written),
            "lost": len(written - set(handled)),
            "unhandled_at_drain_limit": pending,
            "settle_s": None if settled is None else round(settled, 1),
            "duplicates": docs - len(handled),
            "drain_s": None if drained is None else round(drained, 1),
            "sigkills": self.restarts,
            "dropped_connections": self.drops,
            "stepdowns": self.stepdowns,
            "stream_resumes": logs.count('"watcher_resuming"'),
            "takeover_s_median": _median(self.takeovers),
            "takeover_s_max": round(max(self.takeovers), 2) if self.takeovers else None,
            "tracebacks": logs.count("Traceback") + logs.count('"traceback"'),
        }


def _spread(n: int, duration: float) -> list[float]:
    return [duration * (i + 0.5) / n for i in range(n)]


def _median(values: list[float]) -> float | None:
    return round(statistics.median(values), 2) if values else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--writes", type=int, default=20_000)
    parser.add_argument("--duration", type=float, default=300.0, help="seconds of writing")
    # short leases flap on a saturated 2-core machine: renewals miss their 0.8 x TTL deadline
    parser.add_argument("--ttl", type=float, default=10.0, help="lease TTL of the workers")
    parser.add_argument("--kills", type=int, default=20)
    parser.add_argument("--drops", type=int, default=50)
    parser.add_argument("--stepdowns", type=int, default=5)
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument("--drain-limit", type=float, default=120.0)
    parser.add_argument("--settle-limit", type=float, default=300.0)
    parser.add_argument("--only", choices=["hog", "calm"])
    args = parser.parse_args()
    kinds = [args.only] if args.only else ["hog", "calm"]
    proc, uri = start_emulator()
    results = []
    try:
        with tempfile.TemporaryDirectory() as tmp:
            for n in range(args.repeat):
                for kind in kinds:  # interleaved: hog, calm, hog, calm...
                    with Hog(kind == "hog"):
                        result = Run(uri, args, f"{kind}{n}", Path(tmp)).go()
                    print(json.dumps(result), flush=True)
                    results.append(result)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(10)
    total_lost = sum(r["lost"] for r in results)
    print(json.dumps({"runs": len(results), "lost_total": total_lost}))


if __name__ == "__main__":
    main()
