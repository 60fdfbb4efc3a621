import pytest

from schema_files import HERE, SHARED


@pytest.mark.skipif(not SHARED.is_dir(), reason="no ../shared/schemas beside this clone")
def test_schemas_match_the_shared_copies() -> None:
    shared = {path.name: path.read_text() for path in SHARED.glob("*.json")}
    vendored = {path.name: path.read_text() for path in HERE.glob("*.json")}
    assert vendored == shared
