"""A job's logged series on the wire: its log in pages, each page a document with its own revision.

The store keeps every entry a run logged (``log_entries``: position, step, values, time). To send that
series somewhere, the log is cut into pages of :data:`LOG_PAGE_SIZE` positions; a page is revised in the
store whenever its entries change (new ones logged into it, or a resumed run logging them again
differently, or cutting them off) and its newest revision is what a sink is sent, like a record's. So a
delivery carries one changed page, at most :data:`LOG_PAGE_SIZE` entries however long the run; pages that
did not change are not sent again; and a receiver keeps, per page, the highest revision it was sent, so
replays and late arrivals change nothing.

:class:`LogPage` is the document (``kind: TrainingLog``, in the canonical ``record`` format, to the
same URL as the records), validated the same way by whoever reads it; :func:`page_document` makes it
from the store's rows and :func:`page_entries` turns one back into the store's :class:`~.history.LogEntry`.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterable
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, model_validator
from pydantic.alias_generators import to_camel

from .history import LogEntry
from .identity import NAMESPACE

#: Log positions per page: what one delivery of the series carries at most.
LOG_PAGE_SIZE = 100
#: ``kind`` of a log page in the canonical format.
LOG_KIND: Literal["TrainingLog"] = "TrainingLog"
#: Most values one logged entry may carry (the Trainer logs a dozen or two).
MAX_LOGGED_VALUES = 1000

_Name = Annotated[str, StringConstraints(min_length=1, max_length=256)]
_Text = Annotated[str, StringConstraints(max_length=4096)]
#: A logged value as the store keeps it (non-finite numbers were made ``null`` before).
LoggedValue = bool | int | Annotated[float, Field(allow_inf_nan=False)] | _Text | None


def log_page_id(job_id: str, page: int) -> str:
    """The id of page ``page`` of ``job_id``'s log: deterministic, so each page is one document."""
    return str(uuid.uuid5(NAMESPACE, f"log:{job_id}:{page}"))


def page_of(seq: int) -> int:
    """The page that holds log position ``seq``."""
    return seq // LOG_PAGE_SIZE


class _Wire(BaseModel):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="forbid")


class LoggedEntry(_Wire):
    """One logged entry: its position in the run's log, its step, its values, when it was logged."""

    seq: int = Field(ge=0)
    step: int = Field(ge=0)
    #: Unix seconds; None when not known (entries read back from ``trainer_state.json``).
    logged_at: float | None = Field(default=None, allow_inf_nan=False)
    values: dict[_Name, LoggedValue] = Field(max_length=MAX_LOGGED_VALUES)


class LogPage(_Wire):
    """Page ``page`` of a job's log at one revision: the entries at positions ``page * LOG_PAGE_SIZE``
    up to the next page, in order (fewer when the log ends in it; none when a resumed run cut it off)."""

    kind: Literal["TrainingLog"] = LOG_KIND
    id: str
    job_id: str = Field(min_length=1)
    page: int = Field(ge=0)
    revision: int = Field(ge=1)
    entries: list[LoggedEntry] = Field(default_factory=list, max_length=LOG_PAGE_SIZE)

    @model_validator(mode="after")
    def _one_page(self) -> LogPage:
        if self.id != log_page_id(self.job_id, self.page):
            raise ValueError("id: not the id of this job's log page (jobId, page)")
        positions = [entry.seq for entry in self.entries]
        if any(page_of(seq) != self.page for seq in positions):
            raise ValueError(f"entries: a position outside page {self.page} (seq {positions})")
        if positions != sorted(set(positions)):
            raise ValueError("entries: positions must be in order, each once")
        return self

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json", by_alias=True)


def page_document(
    job_id: str, page: int, revision: int, rows: Iterable[tuple[int, int, float | None, str]]
) -> dict[str, Any]:
    """The page as a sink is sent it, from the store's ``(seq, step, logged_at, body)`` rows."""
    entries = [
        {"seq": seq, "step": step, "loggedAt": logged_at, "values": json.loads(body)}
        for seq, step, logged_at, body in rows
    ]
    return {
        "kind": LOG_KIND,
        "id": log_page_id(job_id, page),
        "jobId": job_id,
        "page": page,
        "revision": revision,
        "entries": entries,
    }


def page_entries(page: LogPage) -> list[LogEntry]:
    """The page's entries as the store keeps them."""
    return [LogEntry(entry.seq, entry.step, dict(entry.values), entry.logged_at) for entry in page.entries]
