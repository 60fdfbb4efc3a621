"""A copy of a checkpoint that rotation cannot reach, for as long as its upload takes.

At save time (on the training thread) each file is hard-linked into
``<output dir>/_checkpoint-records-staging/<record id>/``: one ``link()`` per file, no data copied, and
``save_total_limit`` deleting ``checkpoint-N`` later only drops one of the two names. The leading ``_``
keeps the folder out of the Trainer's ``push_to_hub`` uploads, and its name does not match the Trainer's
``checkpoint-*`` rotation. Where links are impossible (another file system, a FUSE mount that refuses
them) the upload lane copies the files there before sending anything; a file rotated away before that
copy is reported as failed, never sent partially.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from pathlib import Path

from ..validation import contained, path_of

STAGING_DIR = "_checkpoint-records-staging"


def staging_dir(checkpoint: Path, record_id: str) -> Path:
    return checkpoint.parent / STAGING_DIR / record_id


def link_files(source: Path, staging: Path, paths: list[str]) -> None:
    """Hard-link each file of ``source`` into ``staging``; a file that cannot be linked is left to copy."""
    for relative in paths:
        target = contained(staging, relative)
        if target.exists():
            continue
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            os.link(source / path_of(relative), target)
        except OSError:
            continue  # copied by the upload lane (copy_missing), off the training thread


def copy_missing(source: Path, staging: Path, relative: str) -> Path | None:
    """The staged file, copied from ``source`` first if it was not linked; None if it is gone from both."""
    target = contained(staging, relative)
    if target.exists():
        return target
    original = source / path_of(relative)
    partial = target.with_name(target.name + ".partial")
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(original, partial)
        os.replace(partial, target)
    except FileNotFoundError:
        partial.unlink(missing_ok=True)
        return None
    return target


def remove(staging: Path) -> None:
    """Drop a record's staging directory, and the staging folder itself once it is empty."""
    shutil.rmtree(staging, ignore_errors=True)
    with contextlib.suppress(OSError):  # other records are still staged there
        staging.parent.rmdir()
