"""Which process of a distributed run records a checkpoint, and when the checkpoint is complete.

Several processes write one checkpoint (every rank its own ``rng_state_<rank>.pth`` or
``random_states_<rank>.pkl``, sharded weights under DeepSpeed or FSDP), and nothing makes the main process
wait for the others before it reports the save. So a record is made only after :func:`wait_for_everyone`,
which every process calls, and only by the process :class:`Role` names. Nothing here sets up distributed
state: a run that has none (one process) never waits.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Protocol

#: Variables launchers set to this node's index in a multi-node run: torchrun and ``accelerate launch``
#: (``GROUP_RANK``), accelerate's configuration (``NODE_RANK``), SLURM (``SLURM_NODEID``).
_NODE_RANK_VARIABLES = ("GROUP_RANK", "NODE_RANK", "SLURM_NODEID")


class Barrier(Protocol):
    """Anything with accelerate's ``wait_for_everyone``: an ``Accelerator`` or a ``PartialState``."""

    def wait_for_everyone(self) -> None: ...


def wait_for_everyone(barrier: Barrier | None = None) -> None:
    """Return once every process of the run got here; every process must call it, the same number of times.

    ``barrier`` is the run's accelerate state when there is one (it knows TPUs as well); else a
    ``torch.distributed`` barrier when that is initialised; else (one process) nothing to wait for.
    """
    if barrier is not None:
        barrier.wait_for_everyone()
        return
    import torch.distributed

    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.barrier()


def node_rank() -> int:
    """This node's index in a multi-node launch, as the launcher exported it (0 when it did not)."""
    for name in _NODE_RANK_VARIABLES:
        value = os.environ.get(name, "")
        if value.isdigit():
            return int(value)
    return 0


@dataclass(frozen=True)
class Role:
    """Where this process stands in the run, as far as recording goes."""

    world_main: bool
    local_main: bool
    world_size: int
    #: Whether every node writes its own copy of each checkpoint (``save_on_each_node``).
    saves_on_each_node: bool

    def every_node(self, record_every_node: bool) -> bool:
        """Whether each node's copy gets its own record: asked for, and there is a copy per node."""
        return record_every_node and self.saves_on_each_node

    def records(self, record_every_node: bool) -> bool:
        """The world main process records; with a record per node, each node's local main does."""
        return self.local_main if self.every_node(record_every_node) else self.world_main

    def node_suffix(self, record_every_node: bool) -> str | None:
        """What tells one node's record from another's (id and ``node`` field), when each node has one."""
        return f"node{node_rank()}" if self.every_node(record_every_node) else None


def trainer_role(args: Any, state: Any) -> Role:
    """The role of this process in a ``Trainer`` run, from its ``TrainingArguments`` and ``TrainerState``."""
    return Role(
        world_main=bool(state.is_world_process_zero),
        local_main=bool(state.is_local_process_zero),
        world_size=int(args.world_size),
        saves_on_each_node=bool(args.save_on_each_node),
    )


def accelerator_role(accelerator: Any) -> Role:
    """The role of this process in a loop driven by an accelerate ``Accelerator``."""
    return Role(
        world_main=bool(accelerator.is_main_process),
        local_main=bool(accelerator.is_local_main_process),
        world_size=int(accelerator.num_processes),
        saves_on_each_node=bool(accelerator.project_configuration.save_on_each_node),
    )


def launcher_role() -> Role:
    """The role of this process as the launcher's variables (torchrun, ``accelerate launch``) tell it.

    Without an ``Accelerator`` nothing says whether every node saves its own copy, so each node's local
    main records its own only when ``record_every_node`` asks for it.
    """
    rank = int(os.environ.get("RANK", "0") or 0)
    local_rank = int(os.environ.get("LOCAL_RANK", "0") or 0)
    return Role(
        world_main=rank == 0,
        local_main=local_rank == 0,
        world_size=int(os.environ.get("WORLD_SIZE", "1") or 1),
        saves_on_each_node=True,
    )
