"""A real Prometheus scrapes a running worker; its counters read back equal the events."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from pymongo import AsyncMongoClient

from tests.support.harness import config_dict, eventually, running, settings_of, unique, watcher

pytestmark = pytest.mark.slow


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def query(port: int, promql: str) -> float | None:
    url = f"http://127.0.0.1:{port}/api/v1/query?" + urllib.parse.urlencode({"query": promql})
    try:
        with urllib.request.urlopen(url, timeout=2) as r:
            result = json.load(r)["data"]["result"]
    except OSError:
        return None
    return float(result[0]["value"][1]) if result else None


class TestPrometheus:
    async def test_scraped_counters_equal_the_events_written(
        self, mongo_uri: str, tmp_path: Path
    ) -> None:
        """Prometheus' HTTP API reports as many handled events as were written."""
        binary = shutil.which("prometheus")
        if binary is None:
            pytest.skip("prometheus not installed (Debian package prometheus)")
        http_port, prom_port = free_port(), free_port()
        (tmp_path / "prometheus.yml").write_text(
            "global: {scrape_interval: 1s}\nscrape_configs:\n  - job_name: worker\n"
            f"    static_configs: [{{targets: ['127.0.0.1:{http_port}']}}]\n"
        )
        prom = subprocess.Popen(  # noqa: ASYNC220 - started once, not awaited on
            [
                binary,
                f"--config.file={tmp_path / 'prometheus.yml'}",
                f"--storage.tsdb.path={tmp_path / 'data'}",
                f"--web.listen-address=127.0.0.1:{prom_port}",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(mongo_uri)
        db, state = unique("db"), unique("state")
        cfg = config_dict(
            mongo_uri, db, state, [watcher()], http={"host": "127.0.0.1", "port": http_port}
        )
        try:
            async with running(settings_of(cfg)):

                async def started() -> bool:
                    return await client[state].checkpoints.find_one({}) is not None

                await eventually(started, what="the watcher's start")
                await client[db].items.insert_many([{"seq": i} for i in range(37)])
                total = 'sum(changestream_worker_events_handled_total{outcome="success"})'
                received = "sum(changestream_worker_events_received_total)"

                async def scraped() -> bool:
                    return query(prom_port, total) == 37.0

                await eventually(scraped, timeout=30, what="Prometheus to see 37 events")
                assert query(prom_port, received) == 37.0
        finally:
            prom.terminate()
            prom.wait(10)
            await client.drop_database(db)
            await client.drop_database(state)
            await client.close()
