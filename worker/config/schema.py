"""The config file's JSON schema (``config/worker.schema.json``), for editor completion.

Regenerate it with ``python -m changestream_worker.config.schema > config/worker.schema.json``.
"""

from __future__ import annotations

import json
import sys
from typing import Any

from changestream_worker.config.models import Settings


def json_schema() -> dict[str, Any]:
    """The JSON schema of the config file."""
    schema = Settings.model_json_schema()
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "changestream-worker configuration"
    return schema


def schema_text() -> str:
    """The schema as the text stored in ``config/worker.schema.json``."""
    return json.dumps(json_schema(), indent=2, sort_keys=True) + "\n"


if __name__ == "__main__":
    if sys.argv[1:]:
        sys.exit("usage: python -m changestream_worker.config.schema > config/worker.schema.json")
    sys.stdout.write(schema_text())
