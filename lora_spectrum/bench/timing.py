"""The benchmark's clock and scales: timed calls with device sync, medians, ratios, process and device memory,
and a block with the libraries' loggers silenced. Nothing here knows what is being measured."""

from __future__ import annotations

import gc
import statistics
import time
from collections.abc import Callable

import torch

MB = 1e6  # decimal megabytes, as file sizes are usually quoted


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], object], device: torch.device) -> float:
    sync(device)
    t0 = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - t0


def cycle(items: list, n: int) -> list:
    return [items[i % len(items)] for i in range(n)]


def median(values: list[float]) -> float | None:
    return statistics.median(values) if values else None


def _rss_mb() -> float:
    import psutil

    return psutil.Process().memory_info().rss / MB


def memory(device: torch.device) -> dict:
    gc.collect()
    out = {"rss_mb": _rss_mb()}
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        out["cuda_allocated_mb"] = torch.cuda.memory_allocated(device) / MB
        out["cuda_reserved_mb"] = torch.cuda.memory_reserved(device) / MB
    return out


def ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


class quiet:
    """Silence diffusers' and transformers' loggers and progress bars for a block: the loaders warn on every load
    about text encoders the files do not target, which would bury the benchmark's own progress lines."""

    def __enter__(self):
        from diffusers.utils import logging as dlog
        from transformers.utils import logging as tlog

        self._saved = [(log, log.get_verbosity(), log.is_progress_bar_enabled()) for log in (dlog, tlog)]
        for log, _, _ in self._saved:
            log.set_verbosity_error()
            log.disable_progress_bar()

    def __exit__(self, *exc):
        for log, level, bar in self._saved:
            log.set_verbosity(level)
            if bar:
                log.enable_progress_bar()

def total_ram_gb() -> float:
    import psutil

    return psutil.virtual_memory().total / 2**30
