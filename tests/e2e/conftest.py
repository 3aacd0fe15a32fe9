"""Fixtures for the process tests: a fresh data and state database per test."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from pymongo import MongoClient

from tests.support.harness import unique


@pytest.fixture
def dbs(mongo_uri: str) -> Iterator[tuple[Any, Any, Any]]:
    """(sync client, data database, state database), both dropped afterwards."""
    client: MongoClient[dict[str, Any]] = MongoClient(mongo_uri)
    names = (unique("db"), unique("state"))
    yield client, client[names[0]], client[names[1]]
    for n in names:
        client.drop_database(n)
    client.close()


def wait_until(check: Callable[[], Any], timeout: float, what: str) -> None:
    """Poll a predicate until it holds; fail naming `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")
