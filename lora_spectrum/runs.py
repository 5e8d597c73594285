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
from lora_spectrum.execution import Batch, executor_for, files_ahead
from lora_spectrum.grid_files import base_hash, base_name, encode_png, parameters_text
from lora_spectrum.plan import Cell, GroupKey, Plan, calls, column_label, groups, jobs, plan_cells
from lora_spectrum.render_cache import RenderCache

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

    def batches():
        for j, job in enumerate(job_list):
            if cancel is not None and cancel.is_set():
                return
            # 3. Per group: the file checked, cached cells taken; what is left to render, as one batch.
            todos = [(key, _pending(engine, plan, catalog, cache, key, grouped[key], report)) for key in job]
            todos = [(key, todo) for key, todo in todos if todo]
            if todos:
                batch, todos_of[j] = _batch(plan, j, todos, ahead[j])
                yield batch

    # 4. Render through the executor (this process's engine, or Ray workers): one group as a swap and a
    #    batched call, several as routed calls split by ``calls``. Outcomes come back as batches finish.
    executor = executor_for(engine)
    with engine.admit():
        for batch, outcomes in executor.run(batches(), cancel, on_step):
            # 5. Each route's cells: its images, or its own error.
            per_image = max((o.seconds for o in outcomes), default=0.0) / batch.images
            for route_cells, o in zip(todos_of.pop(batch.index), outcomes, strict=True):
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
                                                                    base_hash(engine.base_id)))
                        if cache:
                            cache.put(RenderCache.key(engine, plan.sampling, c), c.png, prune=False)
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


def _pending(engine, plan: Plan, catalog: Catalog | None, cache: RenderCache | None, key: tuple,
             group: list[Cell], report) -> list[Cell]:
    """The cells of one (column, strength, prompt) group still to render; the others are reported done.

    The file must still be the one the scan read (label, epoch and hash come from it): one removed, replaced or
    broken since fails its own cells with the cause, and a symlink is never followed out of the folder. Checked
    before the cache too, so that no cached image is shown under a stale label.
    """
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
            continue
        data = cache.get(RenderCache.key(engine, plan.sampling, c)) if cache else None
        if data is not None:
            c.png, c.image, c.cached = data, Image.open(io.BytesIO(data)).convert("RGB"), True
            report(c)
        else:
            todo.append(c)
    return todo


def _batch(plan: Plan, index: int, todos: list[tuple[GroupKey, list[Cell]]],
           ahead: str | None) -> tuple[Batch, list[list[Cell]]]:
    """One job's groups still to render as a ``Batch`` (a single group, or routed calls split by ``plan.calls``)
    and their cells in the batch's route order."""
    labels = " + ".join(column_label(plan.columns[key[0]]) for key, _ in todos)
    split = [todos] if len(todos) == 1 else calls(todos)
    routes = tuple(tuple(_route(plan, key, todo) for key, todo in call) for call in split)
    seeds = routes[0][0][2] if len(todos) == 1 else ()
    batch = Batch(index, RenderRequest(todos[0][0][2], seeds, plan.sampling), routes, len(todos) > 1, labels, ahead)
    return batch, [todo for call in split for _, todo in call]


def as_image(image) -> Image.Image:
    """A rendered image as PIL: as the local engine returns it, or from the uint8 array a worker sent."""
    return Image.fromarray(image) if isinstance(image, np.ndarray) else image


def _route(plan: Plan, key: GroupKey, todo: list[Cell]) -> Route:
    entry = plan.columns[key[0]]
    return None if entry is None else str(entry.path), key[1], tuple(c.seed for c in todo)
