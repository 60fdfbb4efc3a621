"""The build backend: setuptools', with ``checkpoint_records.pth`` added to every wheel it builds.

A ``.pth`` file in site-packages is the one way an installed package runs code when Python starts; that
is what makes ``report_to=["checkpoint-records"]`` and ``checkpoint-records run`` work with no line of
code (``src/checkpoint_records/startup.py``). setuptools has no setting that puts a file beside the
packages, and its editable wheels would leave out one written into the build, so this adds the file to
each wheel setuptools built, regular or editable, with its line in the wheel's ``RECORD``.
"""

from __future__ import annotations

import base64
import hashlib
import os
import zipfile

from setuptools import build_meta
from setuptools.build_meta import *  # noqa: F403 (every other hook, setuptools' own)

PTH = "checkpoint_records.pth"
#: Run by ``site`` at every start of Python: it imports only the package's empty ``__init__`` and
#: ``startup``, which wait for transformers' Trainer (see startup.py).
LINE = b"import checkpoint_records.startup as startup; startup.install()\n"


def build_wheel(wheel_directory, config_settings=None, metadata_directory=None):
    name = build_meta.build_wheel(wheel_directory, config_settings, metadata_directory)
    add_pth(os.path.join(wheel_directory, name))
    return name


def build_editable(wheel_directory, config_settings=None, metadata_directory=None):
    name = build_meta.build_editable(wheel_directory, config_settings, metadata_directory)
    add_pth(os.path.join(wheel_directory, name))
    return name


def add_pth(wheel: str) -> None:
    """Rewrite ``wheel`` with :data:`PTH` at its root, listed in its RECORD with hash and size."""
    digest = base64.urlsafe_b64encode(hashlib.sha256(LINE).digest()).rstrip(b"=").decode()
    with zipfile.ZipFile(wheel) as built:
        entries = [(info, built.read(info)) for info in built.infolist()]
    rewritten = wheel + ".tmp"
    with zipfile.ZipFile(rewritten, "w", zipfile.ZIP_DEFLATED) as out:
        out.writestr(PTH, LINE)
        for info, content in entries:
            if info.filename.endswith(".dist-info/RECORD"):
                listed = content if content.endswith(b"\n") else content + b"\n"
                content = listed + f"{PTH},sha256={digest},{len(LINE)}\n".encode()
            out.writestr(info, content)
    os.replace(rewritten, wheel)
