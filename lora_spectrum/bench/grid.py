"""The end-to-end grid: a whole ``run_plan`` (swaps with prefetch, prompt encoding, cache writes, PNG encoding)
against the same images' pipeline calls alone, each adapter already active. Whole pipelines only (text encoders and
VAE); what the swaps cost on their own is measured in swaps.py."""

from __future__ import annotations

import os
import time
from pathlib import Path

import torch

from lora_spectrum.bench.models import build_full_pipeline
from lora_spectrum.bench.timing import median, sync

GRID_EPOCHS, GRID_SEEDS = 4, (0, 1)
PROMPT = "bench style, a red circle on a blue square"


def grid_sampling(model: str, device: torch.device):
    """1024x1024 at the family's steps on a GPU; on a CPU small and few steps, so that it ends in minutes."""
    from lora_spectrum.bases.families import get_family
    from lora_spectrum.render.sampling import Sampling

    defaults = get_family("sdxl").defaults.sampling
    if model == "tiny":
        return Sampling("", 2, 5.0, 64, 64, "Euler")
    if device.type == "cuda":
        return Sampling("", defaults.steps, defaults.guidance, 1024, 1024, defaults.sampler)
    return Sampling("", 4, defaults.guidance, 256, 256, defaults.sampler)


def measure_grid(model: str, device: torch.device, dtype: torch.dtype, paths: list[Path], folder: Path,
                 say) -> dict:
    """``GRID_EPOCHS`` epochs x ``GRID_SEEDS`` through ``run_plan`` (as ``grid`` runs it, with a render cache) on
    an engine that has shown the run before (its slot installed; the first grid of a run also pays
    ``slot_install_s``), against the same pipeline calls with each adapter swapped in beforehand (untimed),
    measured before and after it."""
    from lora_spectrum.bases.families import get_family
    from lora_spectrum.loras.catalog import Catalog
    from lora_spectrum.render.engine import Engine, RenderRequest
    from lora_spectrum.render.plan import make_plan
    from lora_spectrum.render.render_cache import RenderCache
    from lora_spectrum.render.runs import run_plan

    # 1. The whole pipeline, and the epochs in a folder of their own (hard links: no copies).
    say(f"end-to-end grid: building the whole {model} pipeline (text encoders and VAE) ...")
    t0 = time.perf_counter()
    pipe = build_full_pipeline(model, device, dtype, folder / "tokenizer")
    build_s = time.perf_counter() - t0
    loras = folder / "grid-loras"
    loras.mkdir()
    chosen = paths[-GRID_EPOCHS:]
    for path in chosen:
        os.link(path, loras / path.name)
    catalog = Catalog(loras)
    catalog.scan()
    engine = Engine(pipe, get_family("sdxl"), f"bench-{model}", fuse="off")
    sampling = grid_sampling(model, device)
    plan = make_plan(engine.defaults, catalog.entries, list(GRID_SEEDS), [1.0], [PROMPT], sampling)
    # 2. A warm-up: one step of an earlier epoch of the run at the grid's shape (kernels chosen, memory pools
    #    filled, the adapter slot installed), as on an engine that has shown this run before.
    warm = engine.render(RenderRequest(PROMPT, GRID_SEEDS, sampling.override(steps=1)), str(paths[0]))
    request = RenderRequest(PROMPT, GRID_SEEDS, sampling)

    # 3. The pipeline calls, then the grid through run_plan (nothing resident, no prompt encoded: every epoch is
    #    read and the prompt encoded in the run), then the pipeline calls again: their mean brackets the run, so
    #    that a drift of the machine's speed over the minutes does not land on one side.
    say(f"end-to-end grid: {len(chosen)} epochs x {len(GRID_SEEDS)} seeds at {sampling.width}x{sampling.height}, "
        f"{sampling.steps} steps: pipeline calls, run_plan, pipeline calls ...")
    before = _pipeline_calls(engine, catalog, request, device)
    engine.hotswap.store.clear()
    engine.forget_prompts()
    cache = RenderCache(folder / "grid-cache", max_mb=512)
    first_record = len(engine.hotswap.history)
    sync(device)
    t0 = time.perf_counter()
    cells = run_plan(engine, plan, catalog, cache)
    sync(device)
    wall_s = time.perf_counter() - t0
    errors = [c.error for c in cells if c.error]
    swaps = [r for r in engine.hotswap.history[first_record:] if r.kind not in ("base", "strength")]
    in_engine_s = sum(c.seconds for c in cells)  # swaps, prompt encoding and pipeline calls
    after = _pipeline_calls(engine, catalog, request, device)
    calls = before + after
    render_s = (sum(before) + sum(after)) / 2
    out = {
        "epochs": len(chosen), "seeds": len(GRID_SEEDS), "images": len(cells), "steps": sampling.steps,
        "size": f"{sampling.width}x{sampling.height}", "guidance": sampling.guidance, "sampler": sampling.sampler,
        "pipeline_build_s": build_s, "grid_wall_s": wall_s, "grid_render_s": render_s,
        "grid_render_before_s": sum(before), "grid_render_after_s": sum(after),
        "render_call_s": median(calls), "overhead_ratio": wall_s / render_s, "overhead_s": wall_s - render_s,
        "outside_engine_s": wall_s - in_engine_s, "slot_install_s": warm.swap.seconds,
        "swap_kinds": [r.kind for r in swaps], "swap_seconds": [r.seconds for r in swaps],
        "swap_prefetched_s": median([r.seconds for r in swaps if r.kind == "prefetched"]),
        "errors": errors,
    }
    del engine, pipe
    return out


def _pipeline_calls(engine, catalog, request, device: torch.device) -> list[float]:
    """The grid's images as pipeline calls only: each epoch swapped in (untimed), its seeds in one call as run_plan
    batches them, the prompt's embeddings computed before."""
    sampling = request.sampling
    embeds = engine.encode(request.prompt, sampling.negative_prompt, sampling.guidance)
    times = []
    with engine.lock:
        for entry in catalog.entries:
            engine.set_lora(entry.path, 1.0)
            assert engine.encode(request.prompt, sampling.negative_prompt, sampling.guidance) is embeds  # cached
            sync(device)
            t0 = time.perf_counter()
            engine._render_locked(request)
            sync(device)
            times.append(time.perf_counter() - t0)
    return times
