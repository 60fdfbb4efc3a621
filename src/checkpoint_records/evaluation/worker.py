"""The evaluation worker: takes the next checkpoint an evaluator has not run, runs it, puts the result on
the record, and says so in one line.

Each evaluation is claimed from the queue (:mod:`.sources`), so two workers of one name never run one
checkpoint at once, and its result is written only while the claim is still held: once. A failing
attempt is tried again after a pause, up to ``attempts`` times in all (a worker killed mid-run counts as
one), then recorded as ``failed`` with the reason, the exit status and the end of the error output
(secrets masked). A checkpoint that is not ready, or gone without an uploaded copy, is recorded as
``skipped`` with why; one whose upload is under way is looked at again later.
"""

from __future__ import annotations

import contextlib
import shutil
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from ..lane import IDLE_POLL, backoff
from ..record import CheckpointRecord, Evaluation, utc_now_iso
from ..redaction import Redactor
from ..sinks import DeliveryError, Rejected, RetryLater
from ..storage.config import StorageConfig
from ..store import ClaimedEvaluation, LostClaim
from ..words import plural
from .checkout import NotYet, PullFailed, Skip, check_out, pull_copy
from .results import MetricsError, error_tail, metrics_of, prominent, report_from
from .runner import Command, Finished, run
from .sources import EvaluationSource

#: How long a checkpoint whose upload is under way waits before it is looked at again.
UPLOAD_WAIT = 10.0


@dataclass(frozen=True)
class WorkerOptions:
    name: str
    command: Command
    #: Attempts in all before an evaluation is recorded as failed.
    attempts: int = 3
    #: The longest one run of the command may take.
    timeout: float = 86400.0
    #: Where attempts' folders (pulled copies, outputs) go; a temporary folder when None.
    folder: Path | None = None
    storage: StorageConfig | None = None
    #: Masks secrets (the worker's tokens, the storage's credentials, the environment's) in what is kept.
    redact: Redactor = field(default_factory=lambda: Redactor(()))
    #: Evaluate what is there, then stop (instead of waiting for new checkpoints).
    once: bool = False


@dataclass(frozen=True)
class Outcome:
    """What one evaluation came to, for the line that says it (``result`` None: retried later)."""

    record: CheckpointRecord
    result: Evaluation | None
    line: str


class Failure(Exception):
    """An attempt that did not produce metrics: why, and the command's end if it ran."""

    def __init__(self, reason: str, finished: Finished | None = None) -> None:
        super().__init__(reason)
        self.reason, self.finished = reason, finished


class Worker:
    """Runs ``options.command`` on each checkpoint ``source`` hands out; ``say`` gets one line per
    checkpoint evaluated (and per retry), ``on_evaluated`` every result written (to wake delivery)."""

    def __init__(
        self,
        source: EvaluationSource,
        options: WorkerOptions,
        say: Callable[[str], None],
        on_evaluated: Callable[[CheckpointRecord], None] = lambda record: None,
    ) -> None:
        self.source, self.options, self.say, self.on_evaluated = source, options, say, on_evaluated
        self.stopping = threading.Event()
        #: The checkpoint being evaluated now, for a progress display.
        self.current: str | None = None
        #: Why the registry stopped this worker (a 4xx, or with ``once`` one it could not reach), if it did.
        self.refused: DeliveryError | None = None
        self.done = 0

    def stop(self) -> None:
        """Stop after the evaluation in hand (its command is stopped; it runs again later)."""
        self.stopping.set()

    def run(self) -> None:
        """Evaluate until stopped (or, with ``once``, until none is left pending: retries and uploads
        under way are waited for). A registry that refuses the worker (a 4xx: its token, say) stops it
        (:attr:`refused`); one that cannot be reached is tried again after a pause, unless ``once``."""
        failures = 0
        try:
            while not self.stopping.is_set():
                try:
                    self._round()
                    failures = 0
                except RetryLater as error:
                    failures += 1
                    if self.options.once:
                        self.refused = error
                        return
                    self.say(f"{self.source.where} cannot be reached: {error}; trying again")
                    self.stopping.wait(backoff(failures, error.retry_after))
        except Rejected as error:
            self.refused = error
        finally:
            with contextlib.suppress(DeliveryError):  # unreachable: its claims lapse
                self.source.release()

    def _round(self) -> None:
        claimed = self.source.claim()
        if claimed is None:
            if self.options.once and not self.source.pending():
                self.stopping.set()
                return
            self.stopping.wait(IDLE_POLL)
            return
        outcome = self.evaluate(claimed)
        if outcome is not None:
            self.say(outcome.line)

    def evaluate(self, claimed: ClaimedEvaluation) -> Outcome | None:
        """One attempt at ``claimed``: its result written (or retried later); None if the claim was lost."""
        record = claimed.record
        self.current = record.name
        folder = Path(tempfile.mkdtemp(prefix=f"{self.options.name}-", dir=self.options.folder))
        try:
            return self._attempt(claimed, folder)
        except LostClaim:
            self.say(f"{record.name}: no longer held by this worker (its claim lapsed): result not written")
            return None
        finally:
            self.current = None
            shutil.rmtree(folder, ignore_errors=True)

    def _attempt(self, claimed: ClaimedEvaluation, folder: Path) -> Outcome | None:
        record = claimed.record
        try:
            local = check_out(record)
        except Skip as why:
            return self._write(record, Evaluation(state="skipped", reason=str(why)), f"skipped: {why}")
        except NotYet as why:
            self.source.retry(record.id, str(why), UPLOAD_WAIT)
            return None
        attempt = self.source.started(record.id)
        started = utc_now_iso()
        clock = time.monotonic()
        try:
            directory = local or pull_copy(record, folder / "checkpoint", self.options.storage)
            source = str(directory) if local else f"pulled from {record.spec.source_path}, verified"
            metrics, non_finite = self._run(record, directory, folder)
        except Skip as why:
            return self._write(record, Evaluation(state="skipped", reason=str(why)), f"skipped: {why}")
        except PullFailed as error:
            return self._failed(record, attempt, started, Failure(str(error)))
        except Failure as failure:
            return self._failed(record, attempt, started, failure)
        seconds = time.monotonic() - clock
        result = Evaluation(
            state="succeeded",
            metrics=metrics,
            non_finite=non_finite,
            started_at=started,
            finished_at=utc_now_iso(),
            attempts=attempt,
            exit_code=0,
            source=source,
        )
        names = prominent(metrics)
        shown = ", ".join(f"{name.rsplit('/', 1)[-1]}={metrics[name]:.4g}" for name in names[:4])
        more = f" (+{len(names) - 4} more)" if len(names) > 4 else ""
        return self._write(record, result, f"evaluated in {seconds:.1f}s: {shown}{more} [{source}]")

    def _run(
        self, record: CheckpointRecord, directory: Path, folder: Path
    ) -> tuple[dict[str, float], dict[str, str]]:
        def tick() -> bool:
            return not self.stopping.is_set() and self.source.renew(record.id)

        finished = run(self.options.command, directory, folder, self.options.timeout, tick)
        if finished.stopped is not None:
            raise Failure(finished.stopped, finished)
        if finished.exit_code != 0:
            raise Failure(f"the command exited with {finished.exit_code}", finished)
        output = folder / "output" if self.options.command.writes_output else None
        try:
            return metrics_of(report_from(finished.stdout, output))
        except MetricsError as error:
            raise Failure(str(error), finished) from None

    def _failed(
        self, record: CheckpointRecord, attempt: int, started: str, failure: Failure
    ) -> Outcome | None:
        reason = self.options.redact(failure.reason)
        if self.stopping.is_set():  # not the checkpoint's fault: it runs again, whole, later
            self.source.retry(record.id, reason, 0.0)
            return None
        if attempt < self.options.attempts:
            delay = backoff(attempt)
            self.source.retry(record.id, reason, delay)
            return Outcome(
                record,
                None,
                f"{record.name}: attempt {attempt}/{self.options.attempts} failed: {reason}; "
                f"again in {delay:.1f}s",
            )
        finished = failure.finished
        result = Evaluation(
            state="failed",
            started_at=started,
            finished_at=utc_now_iso(),
            attempts=attempt,
            exit_code=None if finished is None else finished.exit_code,
            reason=reason,
            error_tail=None if finished is None else error_tail(finished.stderr, self.options.redact),
        )
        return self._write(record, result, f"failed after {plural(attempt, 'attempt')}: {reason}")

    def _write(self, record: CheckpointRecord, result: Evaluation, said: str) -> Outcome:
        revised = self.source.finish(record.id, result)
        self.done += 1
        if revised is not None:
            self.on_evaluated(revised)
        return Outcome(record, result, f"{record.name} (step {record.training.step}): {said}")
