"""A batch's routed calls on one swapper: which routes share a denoiser call and which render alone, and the
fallbacks when sharing fails (one by one after an out-of-memory or a set-up failure). ``Route`` and
``RenderResult`` are the render path's data (``engine.py`` re-exports them). Rendering itself is the caller's:
it passes ``render`` and ``swap``, and holds ``Engine.lock`` throughout.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import NamedTuple

from lora_spectrum.adapters.hotswap import HotSwapper, SwapRecord
from lora_spectrum.adapters.reading import PreparedAdapter
from lora_spectrum.errors import Cancelled, LoraSpectrumError, OutOfMemoryError, PlanError
from lora_spectrum.render.compilation import eager


class Route(NamedTuple):
    """Seeds rendered through one adapter: ``path`` (None: the base) at ``strength``, one image per seed."""

    path: str | None
    strength: float
    seeds: tuple[int, ...]

    @property
    def adapter(self) -> bool:
        """Whether an adapter renders (a file at a strength other than 0), rather than the bare base."""
        return self.path is not None and float(self.strength) != 0.0


@dataclass
class RenderResult:
    images: list  # PIL images, one per seed
    swap: SwapRecord  # its swap (a shared call's: the routing set-up)
    seconds: float


Render = Callable[[tuple[int, ...]], list]  # seeds -> images, with the adapter as it stands
Swap = Callable[[Route, PreparedAdapter | None], SwapRecord]  # a route's swap (with its file as read, if it was)
Outcome = RenderResult | LoraSpectrumError


def render_calls(swapper: HotSwapper, calls: list[list[Route]], render: Render, swap: Swap,
                 free_memory: Callable[[], None], after_first_read: Callable[[], None] | None = None
                 ) -> list[list[Outcome]]:
    """Per call and route: its ``RenderResult``, or the ``LoraSpectrumError`` that failed it (its file's, its
    shared call's, or ``Cancelled`` for the routes a cancel left). The routes of one call have as many seeds each
    (``plan.calls``); every file is read once for all. ``after_first_read``: run once the first call's files are
    read (the engine reads the next batch's file ahead then)."""
    for call in calls:
        if len({len(r.seeds) for r in call}) > 1:
            raise PlanError("the routes of one batched call must have the same number of seeds")
    out: list[list[Outcome | None]] = [[None] * len(call) for call in calls]
    prepared: dict[str, PreparedAdapter] = {}
    try:
        for n, (call, results) in enumerate(zip(calls, out, strict=True)):
            # 1. Each file read and checked on its own, so that a bad one fails its own route only.
            shared, alone = _sort(swapper, call, prepared, results)
            if n == 0 and after_first_read is not None:
                after_first_read()
            # 2. The shared call first, then the rest one by one.
            if shared:
                _render_shared(swapper, call, shared, prepared, results, render, swap, free_memory)
            for i in alone:
                _render_alone(call[i], i, prepared, results, render, swap)
    except Cancelled as exc:  # a cancel leaves the routes not done marked
        out = [[exc if o is None else o for o in results] for results in out]
    return out


def _sort(swapper: HotSwapper, call: list[Route], prepared: dict, results: list) -> tuple[list[int], list[int]]:
    """The routes of ``call`` that can share it and those that render alone (a file routing refuses, or a
    route with no company); a file that cannot be read fails its own route in ``results``."""
    shared, alone = [], []
    for i, r in enumerate(call):
        if r.adapter:
            try:
                if str(r.path) not in prepared:  # one file at two strengths is read once
                    prepared[str(r.path)] = swapper.load_adapter(r.path)[0]
            except LoraSpectrumError as exc:
                results[i] = exc
                continue
            if swapper.unroutable(prepared[str(r.path)]):
                alone.append(i)
                continue
        shared.append(i)
    if len(shared) < 2:
        return [], sorted(alone + shared)
    return shared, alone


def _render_shared(swapper: HotSwapper, call: list[Route], group: list[int], prepared: dict, out: list, render: Render,
                   swap: Swap, free_memory: Callable[[], None]) -> None:
    """The routes ``group`` of ``call`` in one denoiser call, each block of samples through its own adapter."""
    t0 = time.perf_counter()
    blocks = [(call[i].path, float(call[i].strength)) for i in group]  # one block a route, its seeds its samples
    seeds = tuple(seed for i in group for seed in call[i].seeds)
    record = images = None
    try:
        with eager(swapper.denoiser) if swapper.compiled else contextlib.nullcontext(), \
                swapper.routed(blocks, len(call[group[0]].seeds), prepared=prepared) as record:
            images = render(seeds)
    except Cancelled:
        raise
    except LoraSpectrumError as exc:
        # Routing could not be set up (memory, a file changed), or the wide batch ran out of memory: one by
        # one instead, each route needing only its own seeds' memory. Any other failure fails them all.
        if record is None or (images is None and isinstance(exc, OutOfMemoryError)):
            free_memory()
            for i in group:
                _render_alone(call[i], i, prepared, out, render, swap)
            return
        if images is None:
            for i in group:
                out[i] = exc
            return
        # Rendered, but the adapter of before could not be put back (the base is active): the images stand.
    seconds = time.perf_counter() - t0
    for i in group:
        n = len(call[i].seeds)
        out[i], images = RenderResult(images[:n], record, seconds), images[n:]


def _render_alone(r: Route, i: int, prepared: dict, out: list, render: Render, swap: Swap) -> None:
    """Route ``r`` (number ``i`` of its call) swapped in and rendered on its own."""
    t0 = time.perf_counter()
    try:
        record = swap(r, prepared.get(str(r.path)))  # read in step 1
        images = render(tuple(r.seeds))
    except Cancelled:
        raise
    except LoraSpectrumError as exc:
        out[i] = exc
        return
    out[i] = RenderResult(images, record, time.perf_counter() - t0)
