"""Every Trainer gets the callback with no line of code: ``report_to=["checkpoint-records"]`` and
``checkpoint-records run``.

:mod:`.startup` calls :func:`hook_trainer` once ``transformers.trainer`` has run, never earlier (a
process that does not train never imports this). It does two things to transformers, from 4.46 to 5.x:

- ``report_to``: transformers has no API to register an integration. ``Trainer.__init__`` looks each
  name of ``args.report_to`` up in the dict ``INTEGRATION_TO_CALLBACK`` of
  ``transformers.integrations.integration_utils`` (``get_reporting_integration_callbacks``) and adds
  the class found, as for ``wandb`` or ``mlflow``; an unknown name is a ``ValueError``. So this adds
  ``checkpoint-records`` to that dict. ``report_to="all"`` lists the trackers transformers knows are
  installed, never this one.
- ``Trainer.train`` is wrapped: before training, :func:`settle` leaves the Trainer with one callback of
  ours. The script's own wins when it added one (as a class or an instance, at construction or with
  ``add_callback``); else the one ``report_to`` made; else, when ``CHECKPOINT_RECORDS_ATTACH`` is on
  (``checkpoint-records run``), a new one. Subclasses (TRL's trainers, ``Seq2SeqTrainer``) train
  through it. A Trainer nobody asked records of is left as it was.
"""

from __future__ import annotations

import functools
from types import ModuleType
from typing import Any

import transformers.integrations.integration_utils as integrations

from .callback import CheckpointRecordCallback
from .logs import never_raises
from .settings import setting_from_environment

#: The name ``report_to`` knows this package by.
REPORT_TO = "checkpoint-records"
#: Set on the hooked ``Trainer.train``, so that nothing is hooked twice.
HOOKED = "_checkpoint_records_hooked"


class AttachedCallback(CheckpointRecordCallback):
    """The callback of a Trainer whose script did not add one (``report_to`` or ``run`` did): configured
    by the ``CHECKPOINT_RECORDS_*`` variables, and giving way to the script's own."""


def hook_trainer(module: ModuleType) -> None:
    """Register the ``report_to`` name and wrap ``module.Trainer.train`` (once)."""
    integrations.INTEGRATION_TO_CALLBACK.setdefault(REPORT_TO, AttachedCallback)
    if hooked(module):
        return
    trainer = module.Trainer
    train = trainer.train

    @functools.wraps(train)
    def train_with_records(self: Any, *args: Any, **kwargs: Any) -> Any:
        settle(self)
        return train(self, *args, **kwargs)

    setattr(train_with_records, HOOKED, True)
    trainer.train = train_with_records


def hooked(module: ModuleType) -> bool:
    """Whether ``module.Trainer.train`` (``module``: ``transformers.trainer``) is ours already."""
    return bool(getattr(getattr(getattr(module, "Trainer", None), "train", None), HOOKED, False))


def settle(trainer: Any) -> None:
    """One callback of ours on ``trainer`` when records are asked for, and none added otherwise.

    Building the callback under ``run`` raises what the script's own ``CheckpointRecordCallback()``
    would for a bad setting: asked for records it cannot keep, training does not start.
    """
    callbacks = trainer.callback_handler.callbacks
    ours = [callback for callback in callbacks if isinstance(callback, CheckpointRecordCallback)]
    if ours:
        _give_way(trainer, ours)
    elif setting_from_environment("attach"):
        trainer.add_callback(AttachedCallback())


@never_raises
def _give_way(trainer: Any, ours: list[CheckpointRecordCallback]) -> None:
    """Remove the attached callbacks the script's own makes redundant (or all but the first), closing
    their recorders: they have recorded nothing."""
    attached = [callback for callback in ours if isinstance(callback, AttachedCallback)]
    redundant = attached if len(attached) < len(ours) else attached[1:]
    for callback in redundant:
        trainer.remove_callback(callback)
        callback.recorder.close()
