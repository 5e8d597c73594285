"""``EngineWorker``: the body of one Ray actor. It loads its own resident engine once (``workbench.open_engine``,
the same settings as every other worker) and runs the batches it is sent in order (``execute``), with a control
channel beside them for cancel and step progress. Imported only by ``ray_pool.py``, so only where Ray is."""

from __future__ import annotations

import os
import threading
from collections import OrderedDict
from dataclasses import replace

import numpy as np
import ray
import torch

from lora_spectrum.errors import LoraSpectrumError, shorten
from lora_spectrum.execution.batch import Batch, Outcome, file_stamp
from lora_spectrum.execution.local import execute
from lora_spectrum.execution.remote_engine import engine_facts

# Renders run one at a time, in the order they were sent; cancel and progress answer while one runs.
CONCURRENCY = {"render": 1, "control": 1}


class EngineWorker:
    """One worker: ``start`` loads the engine (a failure is returned, not raised, so it is reported by name),
    ``run`` renders one batch of a run, ``cancel`` stops a run within a denoising step, ``step`` reports."""

    def __init__(self, name: str, settings, allow_demo: bool, loras_given: bool, threads: int = 0):
        self.name = name
        self.settings = replace(settings, executor="local")  # the worker's own engine renders here
        self.allow_demo, self.loras_given, self.threads = allow_demo, loras_given, threads
        self.engine = None
        self._cancels: OrderedDict[str, threading.Event] = OrderedDict()
        self._lock = threading.Lock()  # the render and the control thread both look events up
        self._step: tuple | None = None

    @ray.method(concurrency_group="render")
    def start(self) -> dict:
        """Load the engine; its facts (``engine_facts``) with this worker's node and pid, or ``{"error": ...}``."""
        from lora_spectrum.workbench import open_engine

        if self.threads:
            torch.set_num_threads(self.threads)
        where = {"name": self.name, "node": ray.util.get_node_ip_address(), "pid": os.getpid(),
                 "gpus": [str(g) for g in ray.get_gpu_ids()]}
        try:
            choice = open_engine(self.settings, allow_demo=self.allow_demo, loras_given=self.loras_given)
        except LoraSpectrumError as exc:
            return {**where, "error": shorten(str(exc))}
        self.engine = choice.engine
        return {**where, **engine_facts(choice)}

    @ray.method(concurrency_group="render")
    def run(self, run_id: str, batch: Batch, stamps: dict | None = None) -> list[Outcome]:
        """Render one batch of run ``run_id``; images come back as uint8 arrays. A cancelled run's batches
        return at once, cancelled; a file whose (size, mtime) is not the one the driver checked (``stamps``)
        fails the batch, so that no image goes out under another file's label and hash."""
        cancel = self._event(run_id)
        if cancel.is_set():
            return [Outcome(cancelled=True, worker=self.name) for _ in batch.routes]
        for path, stamp in (stamps or {}).items():
            if tuple(stamp) != file_stamp(path) and stamp[0] >= 0:
                why = f"{os.path.basename(path)} changed on disk during the run (render again to use the new file)"
                return [Outcome(error=why, worker=self.name) for _ in batch.routes]

        def on_step(i: int, n: int, label: str) -> None:
            self._step = (run_id, i, n, label)

        outcomes = execute(self.engine, batch, cancel, on_step, worker=self.name)
        for o in outcomes:
            if o.images is not None:
                o.images = [np.asarray(im.convert("RGB")) for im in o.images]
        return outcomes

    @ray.method(concurrency_group="control")
    def cancel(self, run_id: str) -> None:
        self._event(run_id).set()

    @ray.method(concurrency_group="control")
    def step(self) -> tuple | None:
        """The last step reported: (run id, step, steps, label), or None before the first."""
        return self._step

    @ray.method(concurrency_group="control")
    def files_read(self) -> dict[str, int]:
        """The LoRA files this worker's engine read from disk, and how often (one read per epoch per plan)."""
        return dict(self.engine.hotswap.store.reads) if self.engine is not None else {}

    def _event(self, run_id: str) -> threading.Event:
        with self._lock:
            return self._event_locked(run_id)

    def _event_locked(self, run_id: str) -> threading.Event:
        if run_id not in self._cancels:
            self._cancels[run_id] = threading.Event()
            while len(self._cancels) > 16:  # runs long finished
                self._cancels.popitem(last=False)
        return self._cancels[run_id]
