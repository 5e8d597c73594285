"""Locks between processes on the files more than one process writes (votes, History, releases): filelock's lock
held around a read-modify-write, its two failures (held too long, cannot be made) raised as the caller's own error.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from pathlib import Path

from filelock import FileLock, Timeout

from lora_spectrum.errors import LoraSpectrumError


@contextlib.contextmanager
def held(lock: FileLock, folder: Path, busy: Callable[[], LoraSpectrumError],
         broken: Callable[[OSError], LoraSpectrumError]) -> Iterator[None]:
    """Make ``folder``, then hold ``lock`` (its own timeout): ``busy()`` when another process holds it that long,
    ``broken(exc)`` when the folder or the lock file cannot be made."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        lock.acquire()
    except Timeout as exc:
        raise busy() from exc
    except OSError as exc:
        raise broken(exc) from exc
    try:
        yield
    finally:
        lock.release()
