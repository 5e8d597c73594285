"""The prepared adapters of one denoiser: files read and checked (``Reader``), the most recent kept in an LRU of
``resident``, and the next one read ahead (``Prefetcher``). Touches no model: installing is ``HotSwapper``'s."""

from __future__ import annotations

from collections import Counter, OrderedDict
from pathlib import Path

from lora_spectrum.adapters.prefetch import Prefetcher
from lora_spectrum.adapters.reading import PreparedAdapter, Reader, file_identity, layer_table
from lora_spectrum.errors import LoraLoadError


class AdapterStore:
    """Reads, keeps and reads ahead. ``convert``: diffusers' converter bound to the pipe (``Reader``'s)."""

    def __init__(self, denoiser, family, convert, resident: int = 4):
        self.denoiser = denoiser
        self.resident = max(1, int(resident))
        # Files are checked against the untouched denoiser's layers, and converted for this pipe (only read).
        self.reader = Reader(family, convert, layer_table(denoiser))
        self.lru: OrderedDict[str, PreparedAdapter] = OrderedDict()
        self.last_source = ""  # where ``load`` found its last adapter: warm, prefetched or cold
        self.reads: Counter[str] = Counter()  # files read from disk (in the foreground or ahead), and how often
        # At most one adapter beyond the LRU, staged in its own pinned buffer on CUDA.
        self.prefetcher = Prefetcher(lambda path: self.prepare(path, background=True), next(denoiser.parameters()).device)

    @property
    def fast_path_note(self) -> str:  # why the last new layout was (not) learned by the fast path
        return self.reader.fast.note

    def prepare(self, path: str | Path, background: bool = False) -> PreparedAdapter:
        """Read, convert and check one file against this denoiser; raises ``LoraLoadError``. ``background``: for
        the read ahead."""
        ref = next(self.denoiser.parameters())  # where the denoiser is now (offload modes move it)
        self.reads[str(path)] += 1
        return self.reader.prepare(path, ref.device, ref.dtype, background)

    def prefetch(self, path: str | Path | None) -> None:
        """Read ``path`` ahead in the background, for a swap to come (nothing when it is resident already); a file
        that cannot be read fails at its own swap, with the usual message."""
        if path is None:
            return
        path = str(path)
        hit = self.lru.get(path)
        try:
            if hit is not None and hit.identity == file_identity(path):
                return
        except LoraLoadError:
            return  # removed: its own swap says so
        self.prefetcher.request(path)

    def load(self, path: str | Path) -> tuple[PreparedAdapter, bool]:
        """The prepared adapter for ``path`` from the LRU (warm, ``True``), the read ahead (prefetched) or the
        file (cold); ``last_source`` says which."""
        path = str(path)
        identity = file_identity(path)
        hit = self.lru.get(path)
        if hit is not None and hit.identity == identity:
            self.lru.move_to_end(path)
            self.last_source = "warm"
            return hit, True
        prepared = self.prefetcher.take(path, identity)
        self.last_source = "cold" if prepared is None else "prefetched"
        if prepared is None:
            prepared = self.prepare(path)
        self.lru[path] = prepared
        self.lru.move_to_end(path)
        while len(self.lru) > self.resident:
            self.lru.popitem(last=False)
        return prepared, False

    def is_resident(self, path: str | Path, prepared: PreparedAdapter) -> bool:
        return self.lru.get(str(path)) is prepared

    def names(self) -> list[str]:
        return [p.name for p in self.lru.values()]

    def nbytes(self) -> int:
        return sum(p.nbytes for p in self.lru.values())

    def clear(self) -> None:
        self.prefetcher.drop()
        self.lru.clear()
