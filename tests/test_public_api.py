"""The public API: one ``__all__``, every name in it importable, and the CLI path free of transformers."""

from __future__ import annotations

import subprocess
import sys

import checkpoint_records
from checkpoint_records import _EXPORTS

#: What a user needs to write a sink or a format of their own, besides the callback.
EXTENSION_TYPES = {"Sink", "WireFormat", "DeliveryError", "RetryLater", "Rejected", "FlushResult"}


def test_all_is_complete_and_every_name_resolves() -> None:
    assert sorted(checkpoint_records.__all__) == sorted([*_EXPORTS, "__version__"])
    assert set(checkpoint_records.__all__) >= EXTENSION_TYPES
    for name in checkpoint_records.__all__:
        value = getattr(checkpoint_records, name)
        if name != "__version__":
            assert value.__module__.startswith("checkpoint_records."), name
            assert value.__name__ == name
    assert set(checkpoint_records.__all__) <= set(dir(checkpoint_records))


def test_the_cli_and_the_extension_types_import_without_transformers() -> None:
    names = ", ".join(
        sorted(set(checkpoint_records.__all__) - {"CheckpointRecordCallback", "CheckpointRecorder"})
    )
    code = (
        "import sys\n"
        "import checkpoint_records.cli\n"
        f"from checkpoint_records import {names}\n"
        "heavy = sorted(name for name in ('transformers', 'torch', 'accelerate') if name in sys.modules)\n"
        "assert not heavy, heavy\n"
        "print(__version__)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == checkpoint_records.__version__


def test_the_version_is_the_package_metadata_when_installed() -> None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        installed = version("checkpoint-records")
    except PackageNotFoundError:  # running from a source tree that is not installed
        return
    assert installed == checkpoint_records.__version__
