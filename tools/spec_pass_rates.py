"""Run PyMongo's own unified spec suites against the emulator and print their pass rates.

Usage: python tools/spec_pass_rates.py CHECKOUT [--python PY] [--suite NAME ...] [--json FILE]
CHECKOUT is a mongo-python-driver checkout (e.g. tag 4.17.0) installed in PY's environment
with pytest and pytest-asyncio; nothing of it is copied into this repository.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import xml.etree.ElementTree as ET
from dataclasses import asdict, dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

SUITES = {
    "change streams": "test/asynchronous/test_change_stream.py",
    "transactions": "test/asynchronous/test_transactions_unified.py",
    "retryable writes": "test/asynchronous/test_retryable_writes_unified.py",
    "crud": "test/asynchronous/test_crud_unified.py",
}


@dataclass
class Outcome:
    """One suite's counts; the rate is over tests that ran (not skipped)."""

    suite: str
    passed: int = 0
    failed: int = 0
    skipped: int = 0
    failures: list[str] = field(default_factory=list)

    @property
    def rate(self) -> float:
        ran = self.passed + self.failed
        return self.passed / ran if ran else 0.0


def start_emulator(python: str, secondaries: int) -> tuple[subprocess.Popen[str], str, int]:
    """Start ``changestream-worker emulator`` on a free port; its URI is its first line."""
    args = ["emulator", "--port", "0", "--secondaries", str(secondaries)]
    proc = subprocess.Popen(
        [python, "-m", "changestream_worker", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    assert proc.stdout is not None
    line = proc.stdout.readline().strip()
    # the primary comes first in the seed list; urlsplit cannot read a list of hosts
    parts = urlsplit(line.split(",")[0] + "/")
    if not line or parts.hostname is None or parts.port is None:
        proc.kill()
        raise SystemExit(f"the emulator did not print its URI (got {line!r})")
    return proc, parts.hostname, parts.port


def parse_junit(path: Path, suite: str) -> Outcome:
    """Count passes, failures (errors included) and skips in a pytest JUnit XML file."""
    out = Outcome(suite)
    if not path.exists():
        return out
    for case in ET.parse(path).getroot().iter("testcase"):
        tags = {child.tag for child in case}
        name = f"{case.get('classname', '')}::{case.get('name', '')}"
        if "skipped" in tags:
            out.skipped += 1
        elif tags & {"failure", "error"}:
            out.failed += 1
            out.failures.append(name)
        else:
            out.passed += 1
    return out


def run_suite(
    checkout: Path,
    python: str,
    emulator: tuple[str, int],
    suite: str,
    test_file: str,
    timeout: float,
) -> Outcome:
    """One suite against a fresh emulator, so one suite's leftovers never reach the next."""
    proc, host, port = start_emulator(*emulator)
    try:
        with tempfile.TemporaryDirectory() as tmp:
            xml = Path(tmp) / "junit.xml"
            env = {**os.environ, "DB_IP": host, "DB_PORT": str(port)}
            cmd = [python, "-m", "pytest", "-q", "-p", "no:cacheprovider", test_file]
            cmd += [f"--junitxml={xml}", "-o", "faulthandler_timeout=0"]
            try:
                subprocess.run(
                    cmd,
                    cwd=checkout,
                    env=env,
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                    timeout=timeout,
                    check=False,
                )
            except subprocess.TimeoutExpired:
                print(f"{suite}: timed out after {timeout:.0f} s", file=sys.stderr)
            return parse_junit(xml, suite)
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()


def table(outcomes: list[Outcome]) -> str:
    rows = ["| suite | passed / ran | rate | skipped |", "| --- | --- | --- | --- |"]
    for o in outcomes:
        ran = o.passed + o.failed
        rows.append(f"| {o.suite} | {o.passed} / {ran} | {o.rate:.0%} | {o.skipped} |")
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("checkout", type=Path, help="mongo-python-driver checkout")
    p.add_argument("--python", default=None, help="python with the checkout installed")
    p.add_argument("--emulator-python", default=sys.executable, help="python to run the emulator")
    p.add_argument("--suite", action="append", choices=sorted(SUITES), help="only these suites")
    p.add_argument("--json", type=Path, default=None, help="also write the JSON here")
    p.add_argument("--failures", action="store_true", help="list the failing tests")
    p.add_argument("--timeout", type=float, default=900.0, help="seconds per suite")
    p.add_argument(
        "--secondaries", type=int, default=1, help="emulator members that are secondaries"
    )
    args = p.parse_args(argv)
    checkout = args.checkout.resolve()
    if not (checkout / "test" / "asynchronous").is_dir():
        p.error(f"{checkout} is not a mongo-python-driver checkout (no test/asynchronous)")
    python = args.python or sys.executable
    outcomes = [
        run_suite(
            checkout,
            python,
            (args.emulator_python, args.secondaries),
            name,
            SUITES[name],
            args.timeout,
        )
        for name in (args.suite or list(SUITES))
    ]
    print(table(outcomes))
    doc = {
        o.suite: {"passed": o.passed, "failed": o.failed, "skipped": o.skipped, "rate": o.rate}
        for o in outcomes
    }
    if args.failures:
        for o in outcomes:
            for name in o.failures:
                print(f"FAILED {o.suite}: {name}")
    print(json.dumps(doc, indent=2))
    if args.json is not None:
        args.json.write_text(json.dumps([asdict(o) for o in outcomes], indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
