"""Running batches on one resident engine: ``execute`` (one batch, its outcomes) and ``LocalExecutor`` (the
default: the batches in plan order, in this process). A Ray worker runs ``execute`` on its own engine."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable, Iterator
from dataclasses import replace

from lora_spectrum.errors import Cancelled, LoraSpectrumError, shorten
from lora_spectrum.execution.batch import Batch, Outcome
from lora_spectrum.render.engine import StepReport


def execute(engine, batch: Batch, cancel: threading.Event | None = None, on_step: StepReport | None = None,
            worker: str = "local") -> list[Outcome]:
    """Render one batch on ``engine``: one outcome per route, in ``batch.routes`` order. A failure (its file's,
    the call's) and a cancel land on the routes they stopped; nothing raises. ``on_step`` gets the batch's label
    with each step (``StepReport``)."""
    t0 = time.perf_counter()
    try:
        if not batch.routed:
            route = batch.calls[0][0]
            results = [engine.render(replace(batch.request, seeds=route.seeds), route.path, route.strength,
                                     cancel=cancel, on_step=on_step, ahead=batch.ahead)]
        else:
            routed = engine.render_routed(batch.request, [list(call) for call in batch.calls], cancel=cancel,
                                          on_step=on_step, ahead=batch.ahead)
            results = [r for call in routed for r in call]
    except LoraSpectrumError as exc:  # Cancelled included: the batch's routes end as it says
        results = [exc] * len(batch.routes)
    seconds = time.perf_counter() - t0
    out = []
    for r in results:
        if isinstance(r, Cancelled):
            out.append(Outcome(cancelled=True, seconds=seconds, worker=worker))
        elif isinstance(r, Exception):
            out.append(Outcome(error=shorten(str(r)), seconds=seconds, worker=worker))
        else:
            out.append(Outcome(list(r.images), swap_seconds=r.swap.seconds, swap_kind=r.swap.kind, seconds=seconds,
                               worker=worker))
    return out


class LocalExecutor:
    """Today's behaviour: the batches one after the other on this process's engine, pulled one at a time (so that
    the caller checks each file and the cache right before its batch renders). Stops at a cancel."""

    name = "local"

    def __init__(self, engine):
        self.engine = engine

    def run(self, batches: Iterable[Batch], cancel: threading.Event | None = None,
            on_step: StepReport | None = None) -> Iterator[tuple[Batch, list[Outcome]]]:
        for batch in batches:
            if cancel is not None and cancel.is_set():
                return
            outcomes = execute(self.engine, batch, cancel, on_step, worker=self.name)
            yield batch, outcomes
            if any(o.cancelled for o in outcomes):
                return
