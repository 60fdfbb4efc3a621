"""The JSON Schemas the wire formats must satisfy.

They are copies of ``../shared/schemas`` so that a clone on its own can run the suite;
``test_schemas_match_the_shared_copies`` keeps the copies honest when the originals are beside it.
"""

import json
import re
from datetime import datetime
from functools import cache
from pathlib import Path
from typing import Any

from jsonschema import Draft202012Validator, FormatChecker

HERE = Path(__file__).resolve().parent / "schemas"
SHARED = Path(__file__).resolve().parents[2] / "shared" / "schemas"


def load_schema(name: str) -> dict[str, Any]:
    """The schema ``<name>.schema.json``, e.g. ``load_schema("flexai-checkpoint")``."""
    schema: dict[str, Any] = json.loads((HERE / f"{name}.schema.json").read_text())
    return schema


#: The schema each checkpoint format's output must satisfy (``llama-stack`` via the job artifacts).
SCHEMA_OF = {
    "record": "flexai-checkpoint",
    "flexai": "flexai-checkpoint",
    "openai": "openai-fine-tuning-job-checkpoint",
    "llama-stack": "llama-stack-job-artifacts",
    "training-job": "training-job-detail",
}

# jsonschema checks "date-time" only with an optional package installed: check it here, strictly.
FORMATS = FormatChecker()
_RFC3339 = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?(Z|[+-]\d\d:\d\d)$", re.IGNORECASE)


@FORMATS.checks("date-time", raises=ValueError)
def _is_date_time(value: object) -> bool:
    if not isinstance(value, str):
        return True
    if not _RFC3339.match(value):
        return False
    datetime.fromisoformat(value.upper().replace("Z", "+00:00"))
    return True


@cache
def _validator(name: str) -> Draft202012Validator:
    schema = load_schema(name)
    Draft202012Validator.check_schema(schema)
    return Draft202012Validator(schema, format_checker=FORMATS)


def validate(instance: dict[str, Any], schema: str) -> dict[str, Any]:
    """Valid against ``schema`` and strict JSON (no NaN); returns the JSON round trip."""
    _validator(schema).validate(instance)
    return dict(json.loads(json.dumps(instance, allow_nan=False)))
