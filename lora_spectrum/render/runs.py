"""Executing a plan: cells rendered through the engine in the plan's order and batches, cached cells skipped,
progress out through a callback, cancellation in through an Event. Nothing here imports streamlit."""

from __future__ import annotations

import io
import threading
from collections.abc import Callable

import numpy as np
from PIL import Image

from lora_spectrum.errors import LoraSpectrumError
from lora_spectrum.execution import Batch, Engine, Outcome, executor_for, files_ahead
from lora_spectrum.loras.catalog import Catalog
from lora_spectrum.loras.hashes import addnet_hash
from lora_spectrum.records.grid_files import base_hash, base_name, encode_png, parameters_text
from lora_spectrum.render.engine import RenderRequest, Route, StepReport
from lora_spectrum.render.fuse_policy import FuseChoice
from lora_spectrum.render.plan import Cell, Group, GroupKey, Plan, calls, column_label, groups, jobs, plan_cells
from lora_spectrum.render.render_cache import PixelSettings, RenderCache

CANCELLED = "cancelled"  # the error text of a cell a cancel left unrendered (``Cell.cancelled`` is set too)
Progress = Callable[[int, int, Cell], None]


def run_plan(engine: Engine, plan: Plan, catalog: Catalog | None = None, cache: RenderCache | None = None,
             on_progress: Progress | None = None, cancel: threading.Event | None = None,
             on_step: StepReport | None = None, mix: int = 1) -> list[Cell]:
    """Render every cell of ``plan``. A failing column is recorded cell by cell and the rest still renders.

    Seeds of one (column, strength, prompt) are rendered in one batched call; with ``mix`` > 1, up to ``mix``
    such groups of one prompt (epochs, strengths, the base) share one call, each sample routed to its own
    adapter (``Engine.render_routed``; memory grows with the batch). Cached cells are skipped. When ``cancel`` is
    set, rendering stops within a denoising step and the cells not done carry the error "cancelled".
    ``on_step(step, steps, label)``: each denoising step, with the columns rendering. Raises ``BusyError`` when
    the engine already has its maximum of runs.

    Nothing that decides a cell's pixels depends on timings or load: ``fuse: auto`` is chosen once, before the
    run, from its sampling and what ``bench`` recorded (``Engine.fuse_choice``), and every setting that moves
    pixels (``PixelSettings``) is in each cell's PNG parameters and cache key.
    """
    # 1. Cells in execution order; a cell's id is its place in this list (batches carry ids, not cells).
    cells = plan_cells(plan, catalog)
    ids = {id(c): i for i, c in enumerate(cells)}
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
    ahead = files_ahead([[str(plan.columns[k.column].path) for k in job if plan.columns[k.column] is not None]
                         for job in job_list])
    # Whether adapters are merged: chosen once for the whole run, and the same on every worker (it travels in the
    # requests; a Ray pool's driver knows no bench measurements, so auto is off there: ``RemoteEngine``).
    fuse = engine.fuse_choice(plan.sampling, len(plan.seeds))

    def batches():
        for j, job in enumerate(job_list):
            if cancel is not None and cancel.is_set():
                return
            # 3. Per job: the files checked, and the cells taken from the cache if all of them are there; else
            #    the job renders whole (so that each cell renders in the batch its cache key names), as a batch.
            todos = _pending(engine, plan, catalog, cache, fuse, [Group(key, grouped[key]) for key in job], report)
            if todos:
                yield _batch(plan, j, todos, ahead[j], fuse, ids)

    # 4. Render through the executor (this process's engine, or Ray workers): one group as a swap and a
    #    batched call, several as routed calls split by ``calls``. Outcomes come back as batches finish.
    executor = executor_for(engine)
    with engine.admit():
        for batch, outcomes in executor.run(batches(), cancel, on_step):
            # 5. Each route's cells: its images, or its own error.
            per_image = max((o.seconds for o in outcomes), default=0.0) / batch.images
            hows = _rendered(engine, fuse, batch, outcomes)
            for route_cells, o, how in zip(batch.cells, outcomes, hows, strict=True):
                if o.cancelled:  # not rendered: these cells end as cancelled below (the executor stops)
                    continue
                for i, c in enumerate(cells[k] for k in route_cells):
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


def _fused(plan: Plan, key: GroupKey, fuse: FuseChoice, routed: int) -> bool:
    """Whether a group's adapter is merged: the run's choice, for a file at a strength other than 0 rendered in a
    call of its own (routed calls add their adapters unfused)."""
    return fuse.fused and plan.columns[key.column] is not None and float(key.strength) != 0.0 and not routed


def _pending(engine: Engine, plan: Plan, catalog: Catalog | None, cache: RenderCache | None, fuse: FuseChoice,
             job: list[Group], report) -> list[Group]:
    """The groups of one job still to render; the others' cells are reported done.

    Each file must still be the one the scan read (label, epoch and hash come from it): one removed, replaced or
    broken since fails its own cells with the cause, and a symlink is never followed out of the folder. Checked
    before the cache too, so that no cached image is shown under a stale label. The job's cells come from the cache
    only if all of them are there: else the job renders whole, in the batches their keys name (``_planned``).
    """
    live = []
    for key, group in job:
        entry = plan.columns[key.column]
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
            live.append(Group(key, todo))
    if cache and live:
        found = [(c, cache.get(RenderCache.key(engine, plan.sampling, c, how)))
                 for g, how in _planned(engine, plan, fuse, live) for c in g.cells]
        if all(data is not None for _c, data in found):
            for c, data in found:
                c.png, c.image, c.cached = data, Image.open(io.BytesIO(data)).convert("RGB"), True
                report(c)
            return []
    return live


def _planned(engine: Engine, plan: Plan, fuse: FuseChoice, todos: list[Group]) -> list[tuple[Group, PixelSettings]]:
    """How each group of a job renders, as ``_batch`` splits it: alone, or routed with the groups of its call."""
    out = []
    for call in ([todos] if len(todos) == 1 else calls(todos)):
        routed = len(call) if len(call) > 1 else 0
        width = sum(len(g.cells) for g in call)
        out += [(g, PixelSettings.of(engine, fused=_fused(plan, g.key, fuse, routed), batch=width, routed=routed))
                for g in call]
    return out


def _rendered(engine: Engine, fuse: FuseChoice, batch: Batch, outcomes: list[Outcome]) -> list[PixelSettings]:
    """How each route of ``batch`` did render (a route that could not share its call rendered alone)."""
    out, flat = [], iter(outcomes)
    for call in batch.calls:
        mine = [(route, next(flat)) for route in call]
        shared = [route for route, o in mine if o.swap_kind.startswith("routed")]
        for route, o in mine:
            routed = len(shared) if o.swap_kind.startswith("routed") else 0
            fused = fuse.fused and route.adapter and not routed
            out.append(PixelSettings.of(engine, fused=fused, routed=routed,
                                        batch=sum(len(r.seeds) for r in shared) if routed else len(route.seeds)))
    return out


def _batch(plan: Plan, index: int, todos: list[Group], ahead: str | None, fuse: FuseChoice,
           ids: dict[int, int]) -> Batch:
    """One job's groups still to render as a ``Batch`` (a single group, or routed calls split by ``plan.calls``),
    each route with its seeds and its cells' ids (``ids``: a cell's id by ``id(cell)``)."""
    label = " + ".join(column_label(plan.columns[g.key.column]) for g in todos)
    split = [todos] if len(todos) == 1 else calls(todos)
    routes = tuple(tuple(_route(plan, g) for g in call) for call in split)
    cells = tuple(tuple(ids[id(c)] for c in g.cells) for call in split for g in call)
    request = RenderRequest(todos[0].key.prompt, (), plan.sampling, fuse, label)  # the routes carry the seeds
    return Batch(index, request, routes, len(todos) > 1, label, ahead, cells)


def as_image(image) -> Image.Image:
    """A rendered image as PIL: as the local engine returns it, or from the uint8 array a worker sent."""
    return Image.fromarray(image) if isinstance(image, np.ndarray) else image


def _route(plan: Plan, group: Group) -> Route:
    entry = plan.columns[group.key.column]
    return Route(None if entry is None else str(entry.path), group.key.strength, tuple(c.seed for c in group.cells))
