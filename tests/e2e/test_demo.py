"""`changestream-worker demo`, the README's first command, as a process."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow
FINAL = re.compile(
    r"final: users (\d+) · emails (\d+) · orders fulfilled (\d+), backordered (\d+) · stock .*\n"
    r"\s+cache keys invalidated (\d+) · rows projected (\d+) · (.*)"
)


def run_demo(command: list[str], cwd: Path, *extra: str) -> tuple[str, dict[str, int], str]:
    """Run the demo; returns its output, the final tally's numbers and its cache read."""
    env = {k: v for k, v in os.environ.items() if k not in ("REDIS_URL", "DEMO_SQL_URL")}
    proc = subprocess.run(
        [*command, "demo", *extra],
        capture_output=True,
        text=True,
        timeout=100,
        cwd=cwd,
        env=env,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-2000:]
    final = FINAL.search(proc.stdout)
    assert final is not None, proc.stdout
    names = ("users", "emails", "fulfilled", "backordered", "invalidated", "rows")
    return proc.stdout, dict(zip(names, map(int, final.groups()[:6]), strict=True)), final[7]


class TestDemo:
    def test_every_handler_is_at_work(self, tmp_path: Path) -> None:
        """Exit 0; one email per user, orders handled, keys invalidated, rows projected."""
        out, n, read = run_demo(
            [sys.executable, "-m", "changestream_worker"], tmp_path, "--duration", "5"
        )
        assert re.search(r"metrics:\s+http://127\.0\.0\.1:\d+/metrics", out)
        outbox = Path(re.search(r"outbox:\s+(\S+)", out).group(1))  # type: ignore[union-attr]
        assert n["users"] > 0
        assert n["emails"] == n["users"] == len(list(outbox.glob("*.eml")))
        assert n["fulfilled"] + n["backordered"] > 0
        # per tick one user and one price change; 3 products at start, a new one every 5th
        # tick; two keys per product change (the product's and the catalogue page)
        assert n["invalidated"] == 2 * (3 + n["users"] + n["users"] // 5)
        assert n["rows"] == 3 + n["users"] // 5
        assert re.fullmatch(r"GET demo:\w+:product:\S+ -> \(nil\): stale price [\d.]+ gone", read)

    def test_without_redis_the_embedded_double_is_labelled(self, tmp_path: Path) -> None:
        """An unreachable --redis-url falls back to the embedded double and says so."""
        out, n, _ = run_demo(
            [sys.executable, "-m", "changestream_worker"],
            tmp_path,
            "--duration",
            "3",
            "--redis-url",
            "redis://127.0.0.1:1/0",
        )
        assert re.search(
            r"cache:\s+embedded Redis-protocol test double at redis://127\.0\.0\.1:\d+/0,"
            r" not a real Redis \(no answer from redis://127\.0\.0\.1:1/0",
            out,
        )
        assert n["invalidated"] > 0 and n["rows"] > 0
