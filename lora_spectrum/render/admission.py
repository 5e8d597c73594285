"""How many runs one engine (or one pool of engines) takes at once: ``Admission``. Nothing else."""

from __future__ import annotations

import contextlib
import threading

from lora_spectrum.errors import BusyError
from lora_spectrum.language import _


class Admission:
    """At most ``limit`` runs (a grid, a render) at once; one more raises ``BusyError`` at once, never waits."""

    def __init__(self, limit: int):
        self.limit = max(1, int(limit))
        self._slots = threading.BoundedSemaphore(self.limit)

    @contextlib.contextmanager
    def enter(self):
        if not self._slots.acquire(blocking=False):
            raise BusyError(_("the workbench is busy with other renders; try again when they finish"))
        try:
            yield
        finally:
            self._slots.release()

    @contextlib.contextmanager
    def exclusive(self, busy: str):
        """Every slot (no run in progress, none can start); ``BusyError(busy)`` at once while a run holds one."""
        with contextlib.ExitStack() as held:
            for _slot in range(self.limit):
                if not self._slots.acquire(blocking=False):
                    raise BusyError(busy)
                held.callback(self._slots.release)
            yield
