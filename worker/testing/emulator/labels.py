"""The error labels a MongoDB 7 server attaches to a reply by itself.

The rules follow the server's label builder: TransientTransactionError inside a transaction,
RetryableWriteError for retryable writes and for commit/abort, ResumableChangeStreamError on
change-stream cursors; a failCommand ``errorLabels`` list replaces all of them.
"""

from __future__ import annotations

from typing import Any

from changestream_worker.testing.emulator.errors import (
    NEEDS_RETARGETING,
    NON_RESUMABLE_CHANGE_STREAM,
    RESUMABLE_CHANGE_STREAM,
    RETRIABLE,
    SNAPSHOT,
)

TXN_END = {"commitTransaction", "abortTransaction"}
# Codes that always make a transaction worth retrying from the start.
ALWAYS_TRANSIENT = {24, 112, 249, 267, 343}


def transient(code: int, has_wce: bool, commit_or_abort: bool) -> bool:
    """Would retrying the whole transaction be safe after ``code``?"""
    if code == 358:  # InternalTransactionNotSupported is a retryable write error only
        return False
    if code in ALWAYS_TRANSIENT or code in SNAPSHOT or code in NEEDS_RETARGETING:
        return True
    if commit_or_abort:
        # after a commit whose write concern failed, the data may still be rolled back
        return code == 251 and not has_wce
    return code in RETRIABLE or code == 251


def server_labels(
    name: str,
    cmd: dict[str, Any],
    code: int | None,
    wce_code: int | None = None,
    change_stream: bool = False,
) -> list[str]:
    """The labels for an error ``code`` and/or a write concern error ``wce_code``."""
    has_txn = "txnNumber" in cmd
    in_txn = has_txn and "autocommit" in cmd
    end = name in TXN_END
    if code is not None and in_txn and transient(code, wce_code is not None, end):
        return ["TransientTransactionError"]
    retryable = (has_txn and not in_txn) or (in_txn and end)
    if retryable and (code in RETRIABLE or wce_code in RETRIABLE):
        return ["RetryableWriteError"]
    if code in NON_RESUMABLE_CHANGE_STREAM:
        return ["NonResumableChangeStreamError"]
    if change_stream and wce_code is None and code in RESUMABLE_CHANGE_STREAM:
        return ["ResumableChangeStreamError"]
    return []
