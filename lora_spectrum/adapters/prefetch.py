"""The next epoch read ahead: one background read of the file a plan swaps in next, handed to the swapper when
its turn comes, so that the swap on the critical path only re-points the slot at tensors already in memory.

Touches no model: the read is ``Reader.prepare`` (files only). At most one prepared adapter is held beyond the
swapper's LRU. A read that fails is never raised here: the swapper reads the file again at its turn and raises the
usual ``LoraLoadError``, so a bad file fails its own cells only and never the render under way.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor

import torch

from lora_spectrum.adapters.reading import PreparedAdapter


class Prefetcher:
    """One read ahead at a time. ``prepare``: the swapper's ``prepare`` (read, convert, check one file)."""

    def __init__(self, prepare: Callable[[str], PreparedAdapter], device: torch.device):
        self._prepare = prepare
        self._lock = threading.Lock()
        self._pending: tuple[str, Future] | None = None
        self._pool: ThreadPoolExecutor | None = None  # started on first use: most engines never prefetch
        # On CUDA the copy to the device runs on a side stream, from a second pinned buffer (the fast path keeps
        # one for the swap's own reads, one for the read ahead), so that it overlaps the denoising kernels.
        self._stream = torch.cuda.Stream(device) if device.type == "cuda" else None
        self.hits = 0  # adapters handed over at their turn
        self.failures = 0  # reads that failed (the file is read again, and its error raised, at its turn)

    def request(self, path: str) -> None:
        """Start reading ``path`` in the background, dropping the read ahead of any other file."""
        with self._lock:
            if self._pending is not None:
                if self._pending[0] == path:
                    return
                self._pending[1].cancel()  # not started yet: never read; running: its result is dropped
            if self._pool is None:
                self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="lora-spectrum-prefetch")
            self._pending = (path, self._pool.submit(self._read, path))

    def take(self, path: str, identity: tuple[int, int]) -> PreparedAdapter | None:
        """The adapter read ahead for ``path`` (waiting for its read to end), or ``None``: none was requested,
        the read failed, or the file changed since (``identity``: its (size, mtime) now)."""
        with self._lock:
            if self._pending is None or self._pending[0] != path:
                return None
            future, self._pending = self._pending[1], None
        try:
            prepared, event = future.result()
        except Exception:  # noqa: BLE001 - any failure: the caller's own read raises it with the usual message
            self.failures += 1
            return None
        if prepared.identity != identity:
            return None
        if event is not None:  # the consumer's stream waits for the side stream's copy, and owns the tensors now
            current = torch.cuda.current_stream()
            current.wait_event(event)
            for tensor in prepared.tensors.values():
                tensor.record_stream(current)
        self.hits += 1
        return prepared

    def pending(self) -> str | None:
        """The file being (or already) read ahead, if any."""
        with self._lock:
            return None if self._pending is None else self._pending[0]

    def drop(self) -> None:
        """Forget the read ahead (the swapper unloads, or the base changes)."""
        with self._lock:
            if self._pending is not None:
                self._pending[1].cancel()
            self._pending = None

    def _read(self, path: str) -> tuple[PreparedAdapter, torch.cuda.Event | None]:
        if self._stream is None:
            return self._prepare(path), None
        with torch.cuda.stream(self._stream):
            prepared = self._prepare(path)
            event = torch.cuda.Event()
            event.record(self._stream)
        return prepared, event
