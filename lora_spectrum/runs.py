"""Executing a plan: cells rendered through the engine in the plan's order and batches, cached cells skipped,
progress out through a callback, cancellation in through an Event. Nothing here imports streamlit."""

from __future__ import annotations

import io
import threading
from collections.abc import Callable

import numpy as np
from PIL import Image

from lora_spectrum.catalog import Catalog
from lora_spectrum.engine import RenderRequest, Route
from lora_spectrum.errors import LoraSpectrumError
from lora_spectrum.execution import Batch, Outcome, executor_for, files_ahead
from lora_spectrum.fuse_policy import FuseChoice
from lora_spectrum.grid_files import base_hash, base_name, encode_png, parameters_text
from lora_spectrum.hashes import addnet_hash
from lora_spectrum.plan import Cell, GroupKey, Plan, calls, column_label, groups, jobs, plan_cells
from lora_spectrum.render_cache import PixelSettings, RenderCache

CANCELLED = "cancelled"  # the error text of a cell a cancel left unrendered (``Cell.cancelled`` is set too)
Progress = Callable[[int, int, Cell], None]


def run_plan(engine, plan: Plan, catalog: Catalog | None = None, cache: RenderCache | None = None,
             on_progress: Progress | None = None, cancel: threading.Event | None = None,
             on_step: Callable[[int, int, str], None] | None = None, mix: int = 1) -> list[Cell]:
    """Render every cell of ``plan``. A failing column is recorded cell by cell and the rest still renders.

    Seeds of one (column, strength, prompt) are rendered in one batched call; with ``mix`` > 1, up to ``mix``
    such groups of one prompt (epochs, strengths, the base) share one call, each sample routed to its own
    adapter (``Engine.render_routed``; memory grows with the batch). Cached cells are skipped. When ``cancel`` is
    set, rendering stops within a denoising step and the cells not done carry the error "cancelled".
    Raises ``BusyError`` when the engine already has its maximum of runs.

    Nothing that decides a cell's pixels depends on timings or load: ``fuse: auto`` is chosen once, before the
    run, from its sampling and what ``bench`` recorded (``Engine.fuse_choice``), and every setting that moves
    pixels (``PixelSettings``) is in each cell's PNG parameters and cache key.
    """
    # 1. Cells in execution order.
    cells = plan_cells(plan, catalog)
    total, done, reported = len(cells), 0, set()

    def report(cell):
        nonlocal done
        done += 1
        reported.add(id(cell))
        if on_progress:
            on_progress(done, total, cell)

    # 2. Groups in execution order (one swap per (column, strength), one batched render per prompt), packed
    #    into jobs of up to ``mix`` groups of one prompt; each job's file to read ahead (``execution/``).
    grouped = groups(cells)
    job_list = jobs(list(grouped), mix)
    ahead = files_ahead([[str(plan.columns[k[0]].path) for k in job if plan.columns[k[0]] is not None]
                         for job in job_list])
    todos_of: dict[int, list[list[Cell]]] = {}  # each batch's cells, route by route
    fuse = _run_fuse(engine, plan)  # fixed for the whole run, on every worker (it travels in the requests)

    def batches():
        for j, job in enumerate(job_list):
            if cancel is not None and cancel.is_set():
                return
            # 3. Per job: the files checked, and the cells taken from the cache if all of them are there; else
            #    the job renders whole (so that each cell renders in the batch its cache key names), as a batch.
            todos = _pending(engine, plan, catalog, cache, fuse, [(key, grouped[key]) for key in job], report)
            if todos:
                batch, todos_of[j] = _batch(plan, j, todos, ahead[j], fuse)
                yield batch

    # 4. Render through the executor (this process's engine, or Ray workers): one group as a swap and a
    #    batched call, several as routed calls split by ``calls``. Outcomes come back as batches finish.
    executor = executor_for(engine)
    with engine.admit():
        for batch, outcomes in executor.run(batches(), cancel, on_step):
            # 5. Each route's cells: its images, or its own error.
            per_image = max((o.seconds for o in outcomes), default=0.0) / batch.images
            hows = _rendered(engine, fuse, batch, outcomes)
            for route_cells, o, how in zip(todos_of.pop(batch.index), outcomes, hows, strict=True):
                if o.cancelled:  # not rendered: these cells end as cancelled below (the executor stops)
                    continue
                for i, c in enumerate(route_cells):
                    c.worker = o.worker or None
                    if o.error is not None:
                        c.error = o.error
                    else:
                        c.image, c.seconds, c.swap_seconds = as_image(o.images[i]), per_image, o.swap_seconds
                        c.routed = o.swap_kind.startswith("routed")
                        c.png = encode_png(c.image, parameters_text(c, plan.sampling, base_name(engine.base_id),
                                                                    base_hash(engine.base_id), how.record(),
                                                                    _lora_hash(plan.columns[c.column])))
                        if cache:
                            cache.put(RenderCache.key(engine, plan.sampling, c, how), c.png, prune=False)
                    report(c)
    if cache:
        cache.prune()
    # 6. Every cell is reported once: those a cancel left unrendered (or never reached) as cancelled.
    for c in cells:
        if c.image is None and c.error is None:
            c.error, c.cancelled = CANCELLED, True
        if id(c) not in reported:
            report(c)
    return cells


def _lora_hash(entry) -> str | None:
    """The addnet hash of a column's file for its PNG parameters (cached per size and mtime); None for the base
    column, or a file gone since it was rendered (its PNG then names no hash)."""
    if entry is None:
        return None
    try:
        return addnet_hash(entry.path)
    except (OSError, ValueError):
        return None


def _run_fuse(engine, plan: Plan) -> FuseChoice:
    """Whether this run's adapters are merged (``Engine.fuse_choice`` for its sampling and seeds per call). A Ray
    pool's driver does not know its workers' bench measurements: ``fuse: auto`` is off there, on every worker."""
    choose = getattr(engine, "fuse_choice", None)
    return choose(plan.sampling, len(plan.seeds)) if choose else FuseChoice(engine.fuse_mode == "on", "")


def _fused(plan: Plan, key: GroupKey, fuse: FuseChoice, routed: int) -> bool:
    """Whether a group's adapter is merged: the run's choice, for a file at a strength other than 0 rendered in a
    call of its own (routed calls add their adapters unfused)."""
    return fuse.fused and plan.columns[key[0]] is not None and float(key[1]) != 0.0 and not routed


def _pending(engine, plan: Plan, catalog: Catalog | None, cache: RenderCache | None, fuse: FuseChoice,
             job: list[tuple[GroupKey, list[Cell]]], report) -> list[tuple[GroupKey, list[Cell]]]:
    """The groups of one job still to render; the others' cells are reported done.

    Each file must still be the one the scan read (label, epoch and hash come from it): one removed, replaced or
    broken since fails its own cells with the cause, and a symlink is never followed out of the folder. Checked
    before the cache too, so that no cached image is shown under a stale label. The job's cells come from the cache
    only if all of them are there: else the job renders whole, in the batches their keys name (``_planned``).
    """
    live = []
    for key, group in job:
        entry = plan.columns[key[0]]
        problem = None
        if entry is not None and catalog is not None:
            try:
                catalog.verify(entry)
            except LoraSpectrumError as exc:
                problem = str(exc)
        todo = []
        for c in group:
            if c.error is None and problem is not None:
                c.error = problem
            if c.error:
                report(c)
            else:
                todo.append(c)
        if todo:
            live.append((key, todo))
    if cache and live:
        found = [(c, cache.get(RenderCache.key(engine, plan.sampling, c, how)))
                 for key, todo, how in _planned(engine, plan, fuse, live) for c in todo]
        if all(data is not None for _c, data in found):
            for c, data in found:
                c.png, c.image, c.cached = data, Image.open(io.BytesIO(data)).convert("RGB"), True
                report(c)
            return []
    return live


def _planned(engine, plan: Plan, fuse: FuseChoice,
             todos: list[tuple[GroupKey, list[Cell]]]) -> list[tuple[GroupKey, list[Cell], PixelSettings]]:
    """How each group of a job renders, as ``_batch`` splits it: alone, or routed with the groups of its call."""
    out = []
    for call in ([todos] if len(todos) == 1 else calls(todos)):
        routed = len(call) if len(call) > 1 else 0
        width = sum(len(todo) for _, todo in call)
        out += [(key, todo, PixelSettings.of(engine, fused=_fused(plan, key, fuse, routed), batch=width,
                                             routed=routed)) for key, todo in call]
    return out


def _rendered(engine, fuse: FuseChoice, batch: Batch, outcomes: list[Outcome]) -> list[PixelSettings]:
    """How each route of ``batch`` did render (a route that could not share its call rendered alone)."""
    out, flat = [], iter(outcomes)
    for call in batch.calls:
        mine = [(route, next(flat)) for route in call]
        shared = [route for route, o in mine if o.swap_kind.startswith("routed")]
        for (path, strength, seeds), o in mine:
            routed = len(shared) if o.swap_kind.startswith("routed") else 0
            fused = fuse.fused and path is not None and float(strength) != 0.0 and not routed
            out.append(PixelSettings.of(engine, fused=fused, routed=routed,
                                        batch=sum(len(r[2]) for r in shared) if routed else len(seeds)))
    return out


def _batch(plan: Plan, index: int, todos: list[tuple[GroupKey, list[Cell]]], ahead: str | None,
           fuse: FuseChoice) -> tuple[Batch, list[list[Cell]]]:
    """One job's groups still to render as a ``Batch`` (a single group, or routed calls split by ``plan.calls``)
    and their cells in the batch's route order."""
    labels = " + ".join(column_label(plan.columns[key[0]]) for key, _ in todos)
    split = [todos] if len(todos) == 1 else calls(todos)
    routes = tuple(tuple(_route(plan, key, todo) for key, todo in call) for call in split)
    seeds = routes[0][0][2] if len(todos) == 1 else ()
    request = RenderRequest(todos[0][0][2], seeds, plan.sampling, fuse)
    return Batch(index, request, routes, len(todos) > 1, labels, ahead), [todo for call in split for _, todo in call]


def as_image(image) -> Image.Image:
    """A rendered image as PIL: as the local engine returns it, or from the uint8 array a worker sent."""
    return Image.fromarray(image) if isinstance(image, np.ndarray) else image


def _route(plan: Plan, key: GroupKey, todo: list[Cell]) -> Route:
    entry = plan.columns[key[0]]
    return None if entry is None else str(entry.path), key[1], tuple(c.seed for c in todo)
