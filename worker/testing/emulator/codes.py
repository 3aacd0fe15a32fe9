"""Names of the error codes the data and query modules raise (from the server's error_codes.yml).

They are added to errors.CODE_NAMES at import, so a reply's codeName matches the server's.
"""

from __future__ import annotations

from changestream_worker.testing.emulator.errors import CODE_NAMES

MORE = {
    9: "FailedToParse",
    28: "PathNotViable",
    52: "DollarPrefixedFieldName",
    53: "InvalidIdField",
    56: "EmptyFieldName",
    100: "UnsatisfiableWriteConcern",
    166: "CommandNotSupportedOnView",
    182: "InvalidViewDefinition",
    10334: "BSONObjectTooLarge",
}
for _code, _name in MORE.items():
    CODE_NAMES.setdefault(_code, _name)
