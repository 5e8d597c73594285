"""Rendered cells kept on disk, keyed by everything that decides their pixels (``PixelSettings`` included),
bounded in size.

The cache only saves time: a failure to write it never costs a render. Nothing here renders.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import threading
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from lora_spectrum.render.plan import Cell
from lora_spectrum.render.sampling import Sampling

PNG_VERSION = 2  # what a cached PNG's parameters hold; 2: ``Lora hashes`` is the addnet hash (older PNGs: re-rendered)


@dataclass(frozen=True)
class PixelSettings:
    """How a cell is rendered beyond its plan (base, file, prompt, seed, strength, sampling): each of these can move
    its pixels by rounding, so each is in the cell's record (PNG parameters, manifest) and in its cache key."""

    dtype: str  # the weights' dtype: "float32", "bfloat16", "float16"
    device: str  # "cpu", "cuda", "mps"
    threads: int | None  # CPU threads (torch.get_num_threads(): reductions split by them); None off the CPU
    compiled: bool  # the denoiser ran through torch.compile (routed calls run eagerly)
    fused: bool  # the adapter merged into the base weights (fuse: on, or fuse: auto's choice for the run)
    batch: int  # images in the denoiser call
    routed: int = 0  # adapters (routes) sharing the call (``run_plan``'s ``mix``); 0: a call of its own

    @classmethod
    def of(cls, engine, *, fused: bool, batch: int, routed: int = 0) -> PixelSettings:
        """For a cell rendered on ``engine`` (an ``Engine``, or a Ray pool's ``RemoteEngine``), now."""
        device = engine.device.type
        return cls(str(engine.dtype).removeprefix("torch."), device,
                   torch.get_num_threads() if device == "cpu" else None,
                   bool(engine.compiled) and routed == 0, fused, batch, routed)

    def record(self) -> dict:
        return asdict(self)


class RenderCache:
    """Rendered cells keyed by everything that decides their pixels; bounded in size (oldest dropped first)."""

    def __init__(self, folder: str | Path, max_mb: float = 2048):
        self.folder = Path(folder)
        self.max_bytes = int(max_mb * 2**20)
        self._lock = threading.Lock()

    @staticmethod
    def key(engine, sampling: Sampling, cell: Cell, how: PixelSettings) -> str:
        """Everything that decides a cell's pixels: the base as loaded, the file's bytes, the sampling, and how it
        is rendered (``how``: dtype, device, CPU threads, compiled, fused, batch, routing)."""
        fields = {"png": PNG_VERSION, "base": engine.base_id, "family": engine.family.name, "lora_sha256": cell.sha256,
                  "strength": cell.strength if cell.file else None, "prompt": cell.prompt,
                  "negative": sampling.negative_prompt, "seed": cell.seed, "steps": sampling.steps,
                  "guidance": sampling.guidance, "width": sampling.width, "height": sampling.height,
                  "sampler": sampling.sampler, **how.record()}
        return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()

    def _path(self, key: str) -> Path:
        return self.folder / key[:2] / f"{key}.png"

    def get(self, key: str) -> bytes | None:
        path = self._path(key)
        try:
            data = path.read_bytes()
            os.utime(path)  # recently used: kept longest
            return data
        except OSError:
            return None

    def put(self, key: str, png: bytes, prune: bool = True) -> bool:
        """Store one cell; False when the cache folder cannot be written (full disk, not a folder). The cache only
        saves time, so a failure here never costs the caller its render. ``prune=False`` leaves the size bound to
        a later ``prune()`` (a run stores all its cells, then prunes once: pruning lists the whole folder).

        Every session of the app has its own ``RenderCache`` on the one folder, so writers of the same key can
        meet: each writes its own temporary file, and pruning skips files another writer removed meanwhile.
        """
        path = self._path(key)
        tmp = path.with_name(f"{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
        with self._lock:
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
                tmp.write_bytes(png)
                os.replace(tmp, path)  # readers never see a half-written file
                if prune:
                    self._prune()
            except OSError:
                with contextlib.suppress(OSError):
                    tmp.unlink(missing_ok=True)
                return False
            except BaseException:  # Ctrl-C between the write and the rename: no half-written entry is left
                with contextlib.suppress(OSError):
                    tmp.unlink(missing_ok=True)
                raise
        return True

    def prune(self) -> None:
        """Drop the least recently used cells until the folder is within its bound; never raises."""
        with self._lock, contextlib.suppress(OSError):
            self._prune()

    def _prune(self) -> None:
        files = []
        for p in self.folder.glob("*/*.png"):
            try:
                st = p.stat()
            except FileNotFoundError:
                continue  # removed by another session's prune
            files.append((st.st_mtime, st.st_size, p))
        total = sum(s for _, s, _ in files)
        for _, size, p in sorted(files):
            if total <= self.max_bytes:
                break
            p.unlink(missing_ok=True)
            total -= size
