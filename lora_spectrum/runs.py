"""Executing a plan: cells rendered through the engine in the plan's order and batches, cached cells skipped,
progress out through a callback, cancellation in through an Event. Nothing here imports streamlit."""

from __future__ import annotations

import io
import threading
import time
from collections.abc import Callable
from dataclasses import replace

from PIL import Image

from lora_spectrum.catalog import Catalog
from lora_spectrum.engine import RenderRequest, Route
from lora_spectrum.errors import Cancelled, LoraSpectrumError, shorten
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
    #    into jobs of up to ``mix`` groups of one prompt.
    grouped = groups(cells)
    cancelled = False
    job_list = jobs(list(grouped), mix)
    ahead = _files_ahead(plan, job_list)
    with engine.admit():
        for j, job in enumerate(job_list):
            if cancelled or (cancel is not None and cancel.is_set()):
                break
            # 3. Per group: the file checked, cached cells taken; what is left to render.
            todos = [(key, _pending(engine, plan, catalog, cache, key, grouped[key], report)) for key in job]
            todos = [(key, todo) for key, todo in todos if todo]
            if not todos:
                continue
            req = RenderRequest(job[0][2], (), plan.sampling)
            labels = " + ".join(column_label(plan.columns[key[0]]) for key, _ in todos)
            step = (lambda i, n, label=labels: on_step(i, n, label)) if on_step else None
            # 4. Render: one group as a swap and a batched call; several as routed calls, split by ``calls``.
            #    The next job's file is read in the background meanwhile, so that its swap finds it in memory.
            t0 = time.perf_counter()
            try:
                if len(todos) == 1:
                    (ci, strength, _), todo = todos[0]
                    entry = plan.columns[ci]
                    req = replace(req, seeds=tuple(c.seed for c in todo))
                    results = [engine.render(req, None if entry is None else entry.path, strength, cancel=cancel,
                                             on_step=step, ahead=ahead[j])]
                else:
                    batched = calls(todos)
                    todos = [item for call in batched for item in call]  # the results come in the calls' order
                    routed = engine.render_routed(req, [[_route(plan, key, todo) for key, todo in call]
                                                        for call in batched], cancel=cancel, on_step=step,
                                                 ahead=ahead[j])
                    results = [r for call in routed for r in call]
            except Cancelled:
                break
            except LoraSpectrumError as exc:
                results = [exc] * len(todos)
            # 5. Each group's cells: its images, or its own error.
            per_image = (time.perf_counter() - t0) / sum(len(todo) for _, todo in todos)
            for (_, todo), result in zip(todos, results, strict=True):
                if isinstance(result, Cancelled):  # not rendered: these cells end as cancelled below
                    cancelled = True
                    continue
                for i, c in enumerate(todo):
                    if isinstance(result, Exception):
                        c.error = shorten(str(result))
                    else:
                        c.image, c.seconds, c.swap_seconds = result.images[i], per_image, result.swap.seconds
                        c.routed = result.swap.kind.startswith("routed")
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


def _files_ahead(plan: Plan, job_list: list[list[GroupKey]]) -> list[str | None]:
    """For each job, the first file a later job swaps in that this job does not: the one to read ahead."""
    files = [[str(plan.columns[key[0]].path) for key in job if plan.columns[key[0]] is not None] for job in job_list]
    return [next((f for later in files[j + 1:] for f in later if f not in mine), None) for j, mine in enumerate(files)]


def _route(plan: Plan, key: GroupKey, todo: list[Cell]) -> Route:
    entry = plan.columns[key[0]]
    return None if entry is None else entry.path, key[1], tuple(c.seed for c in todo)
