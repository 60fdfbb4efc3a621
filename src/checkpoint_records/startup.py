"""What runs when any Python process of an environment with the package starts: a wait for the Trainer.

The wheel puts ``checkpoint_records.pth`` beside the package (``build_backend/backend.py``); Python's
``site`` runs its one line at every start, and that line calls :func:`install`. It puts a finder first
on ``sys.meta_path`` that finds nothing itself and waits for one module, ``transformers.trainer``
(imported with ``transformers.Trainer`` and with every subclass: TRL's, ``Seq2SeqTrainer``, yours).
Once that module has run, :mod:`.attach` hooks its ``Trainer`` and the finder leaves ``sys.meta_path``.

So a process that never trains imports nothing (this module and the package's ``__init__`` use only
``sys``, always loaded; not even ``typing`` or ``__future__``) and pays one string comparison per
import. What the hook does is in :mod:`.attach`: it makes ``report_to=["checkpoint-records"]`` a known
integration, and gives every Trainer a callback when ``CHECKPOINT_RECORDS_ATTACH`` asks for it
(``checkpoint-records run``).
"""

import sys

TYPE_CHECKING = False  # typing.TYPE_CHECKING, which type checkers read by its name
if TYPE_CHECKING:
    from collections.abc import Sequence
    from importlib.machinery import ModuleSpec
    from types import ModuleType

#: The module that defines ``transformers.Trainer``, the same from transformers 4.46 to 5.x.
TRAINER_MODULE = "transformers.trainer"


class TrainerWatch:
    """A meta path finder for ``transformers.trainer`` only: it lets the finders after it find the
    module, and has the module hooked once its code has run."""

    def find_spec(
        self, name: str, path: "Sequence[str] | None" = None, target: "ModuleType | None" = None
    ) -> "ModuleSpec | None":
        if name != TRAINER_MODULE:
            return None
        for finder in sys.meta_path:
            find = getattr(finder, "find_spec", None)
            spec = None if finder is self or find is None else find(name, path, target)
            if spec is not None:
                break
        else:
            return None
        loader = spec.loader
        run_module = getattr(loader, "exec_module", None)
        if loader is None or run_module is None:
            return spec

        def run_then_hook(module: "ModuleType") -> None:
            loader.exec_module = run_module  # as it was: a loader may serve other modules
            run_module(module)
            if module.__name__ == TRAINER_MODULE:
                hook(module)

        loader.exec_module = run_then_hook
        return spec


def hook(module: "ModuleType") -> None:
    """Hook the Trainer of ``transformers.trainer``, which has just run; a failure is said (training
    then goes on without those records) and never breaks the import."""
    uninstall()
    try:
        from .attach import hook_trainer

        hook_trainer(module)
    except Exception as error:
        import logging

        logging.getLogger("checkpoint_records").warning(
            "checkpoint-records: could not hook transformers' Trainer (%r): report_to=checkpoint-records "
            "and checkpoint-records run keep no record in this process",
            error,
        )


def install() -> None:
    """Wait for ``transformers.trainer``, or hook it now if it was imported already. Idempotent (a
    hooked Trainer is not hooked again)."""
    if _waiting():
        return
    module = sys.modules.get(TRAINER_MODULE)
    if module is not None:
        hook(module)
    else:
        sys.meta_path.insert(0, TrainerWatch())


def installed() -> bool:
    """Whether this process waits for the Trainer, or has hooked it already."""
    if _waiting():
        return True
    module = sys.modules.get(TRAINER_MODULE)
    if module is None:
        return False
    from .attach import hooked

    return hooked(module)


def _waiting() -> bool:
    return any(isinstance(finder, TrainerWatch) for finder in sys.meta_path)


def uninstall() -> None:
    sys.meta_path[:] = [finder for finder in sys.meta_path if not isinstance(finder, TrainerWatch)]
