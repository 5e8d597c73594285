"""Running a probe set: every epoch of a series and the base over the set's prompts and seeds, through the same
plan, engine, cache and routed batches as a grid, written to a folder that ``measures/probe_measures.py`` reads.

Nothing here measures or imports streamlit. The folder holds ``probe.json`` (the set, its resolved prompts and the
parts) and one grid folder per part (``part-<k>/``: cells, grid.png, manifest.json), one part per distinct
(seeds, sampling) of the set's prompts: a YAML set is one part; a kohya file with per-prompt options may be more.
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass, field
from pathlib import Path

from lora_spectrum.errors import ConfigError
from lora_spectrum.loras.catalog import READY, Catalog
from lora_spectrum.probes import ProbeSet, ResolvedProbe
from lora_spectrum.records.grid_files import write_outputs
from lora_spectrum.render.engine import StepReport
from lora_spectrum.render.plan import Cell, make_plan
from lora_spectrum.render.runs import Progress, run_plan

PROBE_FILE = "probe.json"


@dataclass
class ProbeRun:
    """What a probe run rendered: its folder, the resolved prompts and every cell (cancelled ones included)."""

    folder: Path
    probe_set: str
    series: str
    prompts: list[ResolvedProbe]
    cells: list[Cell] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def cancelled(self) -> int:
        return sum(1 for c in self.cells if c.cancelled)

    @property
    def failed(self) -> int:
        return sum(1 for c in self.cells if c.error and not c.cancelled)


def _parts(resolved: list[ResolvedProbe]) -> list[tuple[tuple, list[ResolvedProbe]]]:
    """The prompts grouped by what a plan holds in common: seeds and sampling overrides, in the set's order."""
    parts: dict[tuple, list[ResolvedProbe]] = {}
    for r in resolved:
        key = (tuple(r.seeds), r.negative, r.width, r.height, r.steps, r.guidance)
        parts.setdefault(key, []).append(r)
    return list(parts.items())


def run_probe(engine, catalog: Catalog, probe_set: ProbeSet, out_dir: str | Path, *, series: str | None = None,
              cache=None, on_progress: Progress | None = None, cancel: threading.Event | None = None,
              on_step: StepReport | None = None, mix: int = 1, files: list[str] | None = None) -> ProbeRun:
    """Render the base and every ready epoch of ``series`` over ``probe_set`` into ``out_dir``.

    Cached cells are taken from ``cache``, so a re-run renders nothing new. On cancel, what finished is written
    and kept (and cached); the rest is marked cancelled. Progress counts over all parts together. ``files``: only
    these file names of the series (the watcher's complete ones), else every ready file.
    """
    # 1. The series' ready files (epoch order) and the base; the trigger words from their metadata.
    series, entries = catalog.choose_series(series)
    ready = [e for e in entries if e.state == READY and e.problem(engine.family.name) is None
             and (files is None or e.name in files)]
    if not ready:
        raise ConfigError(f"{catalog.folder}: series {series!r} has no file this base can use")
    triggers = list(dict.fromkeys(w for e in ready for w in e.trigger_words))
    resolved = probe_set.resolve(triggers)
    run = ProbeRun(Path(out_dir), probe_set.name, series, resolved)
    if not triggers:
        run.notes.append(f"no trigger words in the metadata of {series}; the style prompts run as written")
    columns = [None, *ready]

    # 2. One plan per part, all validated before anything renders.
    plans = []
    for (seeds, negative, width, height, steps, guidance), prompts in _parts(resolved):
        sampling = engine.defaults.sampling.override(negative_prompt=negative, width=width, height=height,
                                                     steps=steps, guidance=guidance)
        plans.append(make_plan(engine.defaults, columns, list(seeds), [1.0], [p.prompt for p in prompts],
                               sampling))
    total = sum(len(columns[1:]) * len(p.prompts) * len(p.seeds) + len(p.prompts) * len(p.seeds) for p in plans)

    # 3. Render part by part, progress counted over the whole run; write each part's grid folder.
    run.folder.mkdir(parents=True, exist_ok=True)
    done_before = 0
    parts = []
    for k, plan in enumerate(plans):
        if cancel is not None and cancel.is_set():
            break

        def progress(done, _total, cell, offset=done_before):
            if on_progress:
                on_progress(offset + done, total, cell)

        cells = run_plan(engine, plan, catalog, cache, progress, cancel=cancel, on_step=on_step, mix=mix)
        done_before += len(cells)
        name = f"part-{k}"
        write_outputs(run.folder / name, plan, cells, engine.base_id, engine.family.name)
        parts.append(name)
        run.cells += cells

    # 4. The run's own file: the set, the resolved prompts (kind, what was rendered, the prompt without the
    #    trigger) and the parts, for the measures.
    record = {"probe_set": probe_set.name, "description": probe_set.description, "source": probe_set.source,
              "series": series, "trigger_words": triggers, "base": engine.base_id, "family": engine.family.name,
              "parts": parts, "complete": len(parts) == len(plans) and not run.cancelled,
              "prompts": [{"kind": r.kind, "prompt": r.prompt, "plain": r.plain, "seeds": list(r.seeds),
                           "variants": list(r.variants)} for r in resolved],
              "files": [e.name for e in ready], "cells": len(run.cells), "failed": run.failed,
              "cancelled": run.cancelled, "notes": run.notes}
    (run.folder / PROBE_FILE).write_text(json.dumps(record, indent=2, ensure_ascii=False), encoding="utf-8")
    return run


def read_probe(folder: str | Path) -> tuple[Path, dict]:
    """The probe folder and its parsed ``probe.json``; ``ConfigError`` naming the folder when it is not one."""
    folder = Path(folder)
    path = folder / PROBE_FILE
    if not path.is_file():
        raise ConfigError(f"{folder}: no {PROBE_FILE} here; run a probe first (insight --probe)")
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ConfigError(f"{path}: not a readable probe record ({exc})") from exc
    if not isinstance(record, dict) or not isinstance(record.get("parts"), list) or not isinstance(
            record.get("prompts"), list):
        raise ConfigError(f"{path}: not a probe record (no 'parts' or 'prompts' list)")
    return folder, record
