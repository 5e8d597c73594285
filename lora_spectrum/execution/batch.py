"""The unit an executor runs: a ``Batch`` (one job of a plan: a swap and one batched call, or routed calls, with the
ids of the cells it renders) and the ``Outcome`` of each of its routes; ``place``: which worker gets which batches
(epoch-major, routed batches whole). Plain data only, so that batches and outcomes cross process boundaries;
nothing here renders."""

from __future__ import annotations

import heapq
from dataclasses import dataclass, replace

from lora_spectrum.adapters.reading import file_identity
from lora_spectrum.errors import LoraLoadError
from lora_spectrum.render.engine import RenderRequest, Route


@dataclass(frozen=True)
class Batch:
    """One job of a plan. ``calls``: a single call of a single route (swap and render its seeds), or with
    ``routed`` the batched calls of ``Engine.render_routed``; each ``Route`` carries its own seeds. ``cells``: per
    route (in ``routes`` order), the ids of the cells it renders, one per seed (their places in the run's cell
    list), so that outcomes find their cells on any worker. ``ahead``: the file to read while this renders."""

    index: int  # the job's place in the plan's execution order
    request: RenderRequest  # prompt, sampling, the run's fuse choice and the label; the seeds are the routes'
    calls: tuple[tuple[Route, ...], ...]
    routed: bool
    label: str  # the columns it renders, for progress ("epoch 20 + epoch 30"); the request reports it each step
    ahead: str | None = None
    cells: tuple[tuple[int, ...], ...] = ()

    def __post_init__(self):
        # Routes given as plain (file, strength, seeds) tuples become ``Route``s; the request carries the label.
        object.__setattr__(self, "calls", tuple(tuple(Route(*r) for r in call) for call in self.calls))
        if self.label and self.request.label != self.label:
            object.__setattr__(self, "request", replace(self.request, label=self.label))

    @property
    def files(self) -> list[str]:
        """The files this batch swaps in, in order, once each."""
        return list(dict.fromkeys(str(r.path) for r in self.routes if r.path is not None))

    @property
    def routes(self) -> list[Route]:
        return [route for call in self.calls for route in call]

    @property
    def images(self) -> int:
        return sum(len(r.seeds) for r in self.routes)


@dataclass
class Outcome:
    """One route's result: its images (one per seed; PIL images, or uint8 arrays as they cross a process
    boundary), or the error that failed it (text), or ``cancelled``; and who rendered it, how fast."""

    images: list | None = None
    error: str | None = None
    cancelled: bool = False
    swap_seconds: float | None = None
    swap_kind: str = ""
    seconds: float = 0.0  # the whole batch's time on its worker
    worker: str = ""


def file_stamp(path: str) -> tuple[int, int]:
    """A file's (size, mtime) as ``adapters.reading.file_identity`` has it, or (-1, -1) for a file gone (its own
    read then fails it with the cause): what the driver checked, and what a worker compares before a swap."""
    try:
        return file_identity(path)
    except LoraLoadError:
        return -1, -1


def files_ahead(files: list[list[str]]) -> list[str | None]:
    """For each item of an ordered run (the files it swaps in), the first file a later item swaps in that this
    one does not: the one to read ahead while it renders."""
    return [next((f for later in files[j + 1:] for f in later if f not in mine), None)
            for j, mine in enumerate(files)]


def with_ahead(queue: list[Batch]) -> list[Batch]:
    """``queue`` (one worker's batches, in its order) with each batch's ``ahead`` set for that order."""
    return [replace(b, ahead=a) for b, a in zip(queue, files_ahead([b.files for b in queue]), strict=True)]


def place(batches: list[Batch], workers: int) -> list[list[Batch]]:
    """Split ``batches`` over ``workers`` epoch-major: batches that share a file (directly or through a routed
    batch) go to one worker, so that each file is read and swapped in by one worker only, and a routed batch
    stays whole. Groups are balanced by their number of images (largest first onto the least loaded worker);
    each worker's batches keep the plan's order. Batches of the base alone are groups of their own."""
    # 1. Groups: batches joined by the files they share (union-find over files).
    parent: dict[str, str] = {}

    def root(f: str) -> str:
        while parent.setdefault(f, f) != f:
            parent[f] = parent[parent[f]]
            f = parent[f]
        return f

    for b in batches:
        files = b.files
        for f in files[1:]:
            parent[root(f)] = root(files[0])
    grouped: dict[object, list[Batch]] = {}
    for b in batches:
        key = root(b.files[0]) if b.files else ("base", b.index)
        grouped.setdefault(key, []).append(b)
    # 2. Largest group first onto the least loaded worker (ties: the lower worker, then the earlier group).
    order = sorted(grouped.values(), key=lambda g: (-sum(b.images for b in g), g[0].index))
    loads = [(0, w) for w in range(max(1, workers))]
    queues: list[list[Batch]] = [[] for _ in loads]
    for g in order:
        load, w = heapq.heappop(loads)
        queues[w] += g
        heapq.heappush(loads, (load + sum(b.images for b in g), w))
    return [sorted(q, key=lambda b: b.index) for q in queues]
