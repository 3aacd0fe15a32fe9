"""Server errors as MongoDB 7.0 reports them: code, codeName, errmsg and errorLabels."""

from __future__ import annotations

from typing import Any

# Codes the emulator raises (names from the server's error_codes.yml).
CODE_NAMES: dict[int, str] = {
    2: "BadValue",
    6: "HostUnreachable",
    7: "HostNotFound",
    8: "UnknownError",
    11: "UserNotFound",
    14: "TypeMismatch",
    20: "IllegalOperation",
    26: "NamespaceNotFound",
    27: "IndexNotFound",
    40: "ConflictingUpdateOperators",
    43: "CursorNotFound",
    48: "NamespaceExists",
    50: "MaxTimeMSExpired",
    59: "CommandNotFound",
    66: "ImmutableField",
    72: "InvalidOptions",
    73: "InvalidNamespace",
    85: "IndexOptionsConflict",
    86: "IndexKeySpecsConflict",
    89: "NetworkTimeout",
    91: "ShutdownInProgress",
    112: "WriteConflict",
    115: "CommandNotSupported",
    125: "CommandFailed",
    133: "FailedToSatisfyReadPreference",
    189: "PrimarySteppedDown",
    225: "TransactionTooOld",
    234: "RetryChangeStream",
    244: "TransactionAborted",
    251: "NoSuchTransaction",
    256: "TransactionCommitted",
    260: "InvalidResumeToken",
    262: "ExceededTimeLimit",
    263: "OperationNotSupportedInTransaction",
    280: "ChangeStreamFatalError",
    286: "ChangeStreamHistoryLost",
    352: "UnsupportedOpQueryCommand",
    9001: "SocketException",
    10107: "NotWritablePrimary",
    11000: "DuplicateKey",
    11600: "InterruptedAtShutdown",
    11601: "Interrupted",
    11602: "InterruptedDueToReplStateChange",
    13435: "NotPrimaryNoSecondaryOk",
    13436: "NotPrimaryOrSecondary",
    40415: "Location40415",
    40573: "Location40573",
    47: "NoMatchingDocument",
    168: "InvalidPipelineOperator",
    40324: "Location40324",
    40602: "Location40602",
}

# Errors after which a change stream may resume (the server labels them ResumableChangeStreamError).
RESUMABLE_CHANGE_STREAM = {
    6,
    7,
    63,
    89,
    91,
    133,
    150,
    189,
    234,
    262,
    9001,
    10107,
    11600,
    11602,
    13388,
    13435,
    13436,
}
# Errors after which a retryable write may be retried (labelled RetryableWriteError).
RETRYABLE_WRITE = {6, 7, 89, 91, 189, 262, 9001, 10107, 11600, 11602, 13435, 13436}


class CommandError(Exception):
    """A command failed: becomes ``{ok: 0, errmsg, code, codeName, errorLabels?}``."""

    def __init__(
        self,
        code: int,
        errmsg: str,
        labels: list[str] | None = None,
        extra: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(errmsg)
        self.code = code
        self.errmsg = errmsg
        self.labels = list(labels or [])
        self.extra = dict(extra or {})

    def reply(self) -> dict[str, Any]:
        doc: dict[str, Any] = {
            "ok": 0.0,
            "errmsg": self.errmsg,
            "code": self.code,
            "codeName": CODE_NAMES.get(self.code, f"Location{self.code}"),
        }
        doc.update(self.extra)
        if self.labels:
            doc["errorLabels"] = self.labels
        return doc


def unsupported(what: str) -> CommandError:
    """The emulator does not implement ``what``: say so rather than answer wrongly."""
    return CommandError(115, f"the emulator does not support {what}")


def unknown_field(path: str) -> CommandError:
    """IDL parse failure for an unknown field, as the server reports it."""
    return CommandError(40415, f"BSON field '{path}' is an unknown field.")
