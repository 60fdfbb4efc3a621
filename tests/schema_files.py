"""The JSON Schemas the wire formats must satisfy.

They are copies of ``../shared/schemas`` so that a clone on its own can run the suite;
``test_schemas_match_the_shared_copies`` keeps the copies honest when the originals are beside it.
"""

import json
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent / "schemas"
SHARED = Path(__file__).resolve().parents[2] / "shared" / "schemas"


def load_schema(name: str) -> dict[str, Any]:
    """The schema ``<name>.schema.json``, e.g. ``load_schema("flexai-checkpoint")``."""
    schema: dict[str, Any] = json.loads((HERE / f"{name}.schema.json").read_text())
    return schema
