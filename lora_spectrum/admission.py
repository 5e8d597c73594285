"""How many runs one engine (or one pool of engines) takes at once: ``Admission``. Nothing else."""

from __future__ import annotations

import contextlib
import threading

from lora_spectrum.errors import BusyError


class Admission:
    """At most ``limit`` runs (a grid, a render) at once; one more raises ``BusyError`` at once, never waits."""

    def __init__(self, limit: int):
        self._slots = threading.BoundedSemaphore(max(1, int(limit)))

    @contextlib.contextmanager
    def enter(self):
        if not self._slots.acquire(blocking=False):
            raise BusyError("the workbench is busy with other renders; try again when they finish")
        try:
            yield
        finally:
            self._slots.release()
