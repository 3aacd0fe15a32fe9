"""Server errors as MongoDB 7.0 reports them: code, codeName, errmsg and errorLabels."""

from __future__ import annotations

from typing import Any

# Names of the codes the emulator raises or a fail point may ask for (error_codes.yml).
CODE_NAMES: dict[int, str] = {
    1: "InternalError",
    2: "BadValue",
    4: "NoSuchKey",
    6: "HostUnreachable",
    7: "HostNotFound",
    8: "UnknownError",
    9: "FailedToParse",
    11: "UserNotFound",
    13: "Unauthorized",
    14: "TypeMismatch",
    17: "ProtocolError",
    18: "AuthenticationFailed",
    20: "IllegalOperation",
    22: "InvalidBSON",
    24: "LockTimeout",
    26: "NamespaceNotFound",
    27: "IndexNotFound",
    40: "ConflictingUpdateOperators",
    43: "CursorNotFound",
    46: "LockBusy",
    47: "NoMatchingDocument",
    48: "NamespaceExists",
    50: "MaxTimeMSExpired",
    52: "DollarPrefixedFieldName",
    59: "CommandNotFound",
    63: "OBSOLETE_StaleShardVersion",
    64: "WriteConcernTimeout",
    66: "ImmutableField",
    67: "CannotCreateIndex",
    68: "IndexAlreadyExists",
    72: "InvalidOptions",
    73: "InvalidNamespace",
    79: "UnknownReplWriteConcern",
    85: "IndexOptionsConflict",
    86: "IndexKeySpecsConflict",
    89: "NetworkTimeout",
    90: "CallbackCanceled",
    91: "ShutdownInProgress",
    96: "OperationFailed",
    100: "UnsatisfiableWriteConcern",
    112: "WriteConflict",
    115: "CommandNotSupported",
    117: "ConflictingOperationInProgress",
    121: "DocumentValidationFailure",
    125: "CommandFailed",
    133: "FailedToSatisfyReadPreference",
    134: "ReadConcernMajorityNotAvailableYet",
    136: "CappedPositionLost",
    150: "StaleEpoch",
    166: "CommandNotSupportedOnView",
    168: "InvalidPipelineOperator",
    175: "QueryPlanKilled",
    189: "PrimarySteppedDown",
    206: "NoSuchSession",
    211: "KeyNotFound",
    217: "IncompleteTransactionHistory",
    222: "CloseChangeStream",
    225: "TransactionTooOld",
    234: "RetryChangeStream",
    237: "CursorKilled",
    238: "NotImplemented",
    239: "SnapshotTooOld",
    244: "NOT_YET_AVAILABLE_TransactionAborted",
    246: "SnapshotUnavailable",
    249: "StaleDbVersion",
    250: "StaleChunkHistory",
    251: "NoSuchTransaction",
    256: "TransactionCommitted",
    257: "TransactionTooLarge",
    260: "InvalidResumeToken",
    262: "ExceededTimeLimit",
    263: "OperationNotSupportedInTransaction",
    267: "PreparedTransactionInProgress",
    272: "MigrationConflict",
    279: "ClientDisconnect",
    280: "ChangeStreamFatalError",
    286: "ChangeStreamHistoryLost",
    343: "ShardCannotRefreshDueToLocksHeld",
    352: "UnsupportedOpQueryCommand",
    358: "InternalTransactionNotSupported",
    9001: "SocketException",
    10107: "NotWritablePrimary",
    10334: "BSONObjectTooLarge",
    11000: "DuplicateKey",
    11600: "InterruptedAtShutdown",
    11601: "Interrupted",
    11602: "InterruptedDueToReplStateChange",
    13388: "StaleConfig",
    13435: "NotPrimaryNoSecondaryOk",
    13436: "NotPrimaryOrSecondary",
    40324: "Location40324",
    40415: "IDLUnknownField",
    40573: "Location40573",
    40602: "Location40602",
    50768: "NotARetryableWriteCommand",
}

# Categories from error_codes.yml that decide which labels the server attaches.
RETRIABLE = {6, 7, 89, 91, 134, 189, 262, 358, 402, 9001, 10107, 11600, 11602, 13435, 13436}
NETWORK = {6, 7, 89, 9001}
SNAPSHOT = {239, 246, 250, 272}
NEEDS_RETARGETING = {150, 13388}
NON_RESUMABLE_CHANGE_STREAM = {280, 286}
# Errors after which a change stream may resume (the server labels them ResumableChangeStreamError).
RESUMABLE_CHANGE_STREAM = RETRIABLE | NETWORK | NEEDS_RETARGETING | {63, 133, 234, 13388}
# Errors after which a retryable write may be retried (labelled RetryableWriteError).
RETRYABLE_WRITE = RETRIABLE


class CommandError(Exception):
    """A command failed: becomes ``{ok: 0, errmsg, code, codeName, errorLabels?}``."""

    def __init__(
        self,
        code: int,
        errmsg: str,
        labels: list[str] | None = None,
        extra: dict[str, Any] | None = None,
        fixed_labels: bool = False,
    ) -> None:
        super().__init__(errmsg)
        self.code = code
        self.errmsg = errmsg
        self.labels = list(labels or [])
        self.extra = dict(extra or {})
        # labels chosen by a fail point: the server adds none of its own, even to an empty list
        self.fixed_labels = fixed_labels

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
