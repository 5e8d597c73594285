"""Executors: where a plan's batches render. ``local`` (this process's engine, the default) or ``ray`` (one
resident engine per Ray worker, ``execution/ray_pool.py``, which only this package imports, and only when asked).
``run_plan`` hands its batches to ``executor_for(engine)``; the engine a pool hands out carries its pool."""

from __future__ import annotations

from lora_spectrum.execution.batch import Batch, Outcome, files_ahead, place, with_ahead
from lora_spectrum.execution.local import LocalExecutor, execute

EXECUTORS = ("local", "ray")


def executor_for(engine):
    """The executor that renders for ``engine``: its Ray pool (a ``RemoteEngine``), else a ``LocalExecutor``."""
    return getattr(engine, "executor", None) or LocalExecutor(engine)


__all__ = ["EXECUTORS", "Batch", "LocalExecutor", "Outcome", "execute", "executor_for", "files_ahead", "place",
           "with_ahead"]
