"""`changestream-worker demo`, the README's first command, as a process."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow


class TestDemo:
    def test_demo_runs_sends_emails_and_fulfils_orders(self, tmp_path: Path) -> None:
        """The demo exits 0, prints where to look, and its outbox fills with one email per user."""
        proc = subprocess.run(
            [sys.executable, "-m", "changestream_worker", "demo", "--duration", "4"],
            capture_output=True,
            text=True,
            timeout=90,
            cwd=tmp_path,
        )
        assert proc.returncode == 0, proc.stderr[-2000:]
        out = proc.stdout
        assert re.search(r"metrics:\s+http://127\.0\.0\.1:\d+/metrics", out)
        outbox = Path(re.search(r"outbox:\s+(\S+)", out).group(1))  # type: ignore[union-attr]
        final = re.search(
            r"final: users (\d+) · emails (\d+) · orders fulfilled (\d+), "
            r"backordered (\d+)",
            out,
        )
        assert final is not None, out
        users, emails, fulfilled, backordered = map(int, final.groups())
        assert users > 0
        assert emails == users == len(list(outbox.glob("*.eml")))
        assert fulfilled + backordered > 0
        assert "Traceback" not in proc.stderr
