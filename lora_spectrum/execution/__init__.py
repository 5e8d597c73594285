"""Executors: where a plan's batches render. ``local`` (this process's engine, the default) or ``ray`` (one
resident engine per Ray worker, ``execution/ray_pool.py``, which only this package imports, and only when asked).
``Engine`` is what callers may read of any engine, local or a pool's; ``run_plan`` hands its batches to
``executor_for(engine)``."""

from __future__ import annotations

import threading
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING, Protocol, runtime_checkable

from lora_spectrum.execution.batch import Batch, Outcome, files_ahead, place, with_ahead
from lora_spectrum.execution.local import LocalExecutor, execute

if TYPE_CHECKING:
    import torch

    from lora_spectrum.bases.families import Family
    from lora_spectrum.render.admission import Admission
    from lora_spectrum.render.engine import StepReport
    from lora_spectrum.render.fuse_policy import FuseChoice
    from lora_spectrum.render.sampling import Sampling
    from lora_spectrum.settings import FamilyDefaults

EXECUTORS = ("local", "ray")


class Executor(Protocol):
    """Renders batches: (batch, its outcomes) as each finishes. ``LocalExecutor``, or a ``RayPool``."""

    name: str

    def run(self, batches: Iterable[Batch], cancel: threading.Event | None = None,
            on_step: StepReport | None = None) -> Iterator[tuple[Batch, list[Outcome]]]: ...


@runtime_checkable
class Engine(Protocol):
    """What the app, the CLI and ``run_plan`` read of an engine: the resident one of this process
    (``lora_spectrum.render.engine.Engine``) and a Ray pool's (``RemoteEngine``) alike. ``executor``: the pool rendering
    for it elsewhere, None when it renders in this process; only the local engine swaps and renders itself."""

    base_id: str
    family: Family
    defaults: FamilyDefaults
    dtype: torch.dtype
    device: torch.device
    fuse_mode: str  # on | off | auto
    fuse_decision: str  # why fuse: auto chose what it did last ("" where unseen)
    compiled: bool
    compile_note: str
    prefetch_enabled: bool
    note: str  # why the demo is in use, say
    admission: Admission
    executor: Executor | None

    def admit(self):
        """Admit one run: at most ``max_queued`` at once; more raise ``BusyError`` at once."""

    def fuse_choice(self, sampling: Sampling, images: int) -> FuseChoice:
        """Whether a run's adapters are merged, chosen before it renders."""


def executor_for(engine: Engine) -> Executor:
    """The executor that renders for ``engine``: its Ray pool (a ``RemoteEngine``), else a ``LocalExecutor``."""
    return engine.executor or LocalExecutor(engine)


__all__ = ["EXECUTORS", "Batch", "Engine", "Executor", "LocalExecutor", "Outcome", "execute", "executor_for",
           "files_ahead", "place", "with_ahead"]
