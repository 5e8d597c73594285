"""``bench --executor ray --workers N``: one grid through ``run_plan`` on this process's engine, then on a Ray
pool of N workers, side by side in one run (throughput, speed-up, the pool's start-up, identical cells). On one
small CPU machine it measures the pool's overhead; on a multi-GPU machine, how the grid scales."""

from __future__ import annotations

import gc
import os
import platform
import tempfile
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from lora_spectrum.bench.timing import quiet
from lora_spectrum.errors import ConfigError

PROMPTS = ("bench style, a red circle on a blue square", "bench style, a yellow star")
SEEDS = (0, 1, 2, 3)


def run_cluster_benchmark(model: str = "tiny", device: str = "auto", workers: int = 0, address: str = "",
                          progress: Callable[[str], None] | None = None, dtype: str = "auto",
                          seeds: tuple[int, ...] = SEEDS, prompts: tuple[str, ...] = PROMPTS) -> dict:
    """The grid (base and every epoch x ``seeds`` x ``prompts``) on one local engine and on ``workers`` Ray
    workers; one JSON-ready dict (seconds, ratios)."""
    from lora_spectrum.bases.devices import resolve_device
    from lora_spectrum.bench.models import build_full_pipeline, write_epochs
    from lora_spectrum.demo import ensure_demo
    from lora_spectrum.settings import Settings
    from lora_spectrum.workbench import TINY_DEFAULTS

    t_start = time.perf_counter()

    def say(msg: str) -> None:
        if progress is not None:
            progress(f"[bench {time.perf_counter() - t_start:6.1f}s] {msg}")

    # 1. Inputs, device, dtype.
    if model not in ("tiny", "sdxl-size"):
        raise ConfigError("bench --executor ray runs on --model tiny or sdxl-size (the grid is an SDXL grid)")
    if workers < 0:
        raise ConfigError("bench --executor ray needs --workers 1 or more (0: one per GPU, or 2 CPU workers)")
    dev = resolve_device(device)
    workers = workers or (torch.cuda.device_count() if dev.type == "cuda" else 2)
    torch_dtype = (torch.float16 if dev.type == "cuda" else torch.float32) if dtype == "auto" else getattr(torch,
                                                                                                           dtype)
    result: dict = {"model": model, "device": str(dev), "dtype": str(torch_dtype).removeprefix("torch."),
                    "gpu": torch.cuda.get_device_name(dev) if dev.type == "cuda" else None,
                    "machine": f"{platform.machine()}, {os.cpu_count()} CPU cores, torch threads "
                               f"{torch.get_num_threads()}, {torch.cuda.device_count()} GPU(s)",
                    "workers": workers, "ray_address": address or "(a local cluster for this run)"}
    with quiet(), tempfile.TemporaryDirectory(prefix="lora_spectrum_cluster_") as tmp:
        folder = Path(tmp)
        # 2. A base on disk that every worker loads, and its epochs: the tiny demo, or the full-size SDXL
        #    pipeline with random weights written once (safetensors).
        if model == "tiny":
            base, loras = ensure_demo(folder / "demo", "sdxl")
            sampling = dict(TINY_DEFAULTS)
        else:
            say("writing the full-size SDXL pipeline with random weights (once, for every worker to load) ...")
            pipe = build_full_pipeline(model, torch.device("cpu"), torch_dtype, folder / "tokenizer")
            base, loras = folder / "base", folder / "loras"
            pipe.save_pretrained(base, safe_serialization=True)
            loras.mkdir()
            write_epochs(pipe.unet, "sdxl", 32, max(4, 2 * workers), loras, torch.bfloat16)
            del pipe
            gc.collect()
            sampling = ({"width": 1024, "height": 1024, "steps": 30} if dev.type == "cuda" else
                        {"width": 256, "height": 256, "steps": 4})
        settings = Settings(base=str(base), family="sdxl", loras=str(loras), device=dev.type, fuse="off",
                            dtype=result["dtype"], cache_dir=str(folder / "cache"), ray_address=address,
                            root=folder)
        # 3. Local, then the pool (the local engine freed first: on a GPU machine it holds the first GPU).
        grid = (sampling, seeds, prompts)
        local_s, local_cells, epochs, _, _ = _timed_grid(settings, grid, say, "local")
        pool_settings = replace(settings, executor="ray", workers=workers)
        ray_s, ray_cells, _, start_s, pool = _timed_grid(pool_settings, grid, say, "ray", with_pool=True)
    images = len(local_cells)
    same = sum(np.array_equal(np.asarray(a.image), np.asarray(b.image)) for a, b in zip(local_cells, ray_cells,
                                                                                          strict=True))
    by_worker: dict[str, int] = {}
    for c in ray_cells:
        by_worker[c.worker or "?"] = by_worker.get(c.worker or "?", 0) + 1
    result.update({
        "epochs": epochs, "seeds": len(seeds), "prompts": len(prompts), "images": images,
        "size": f"{sampling['width']}x{sampling['height']}", "steps": sampling["steps"],
        "local_wall_s": local_s, "ray_wall_s": ray_s, "local_images_per_s": images / local_s,
        "ray_images_per_s": images / ray_s, "speedup": local_s / ray_s, "scaling_efficiency": local_s / ray_s / workers,
        "pool_start_s": start_s, "pool": pool, "cells_per_worker": by_worker, "identical_cells": same,
        "errors": [c.error for c in ray_cells + local_cells if c.error],
        "wall_s": time.perf_counter() - t_start,
    })
    return result


def _timed_grid(settings, grid: tuple, say, label: str, with_pool: bool = False):
    """Open the engine (or pool), warm it on a one-step plan of every epoch, then time the whole grid."""
    from lora_spectrum.execution.startup import open_workbench
    from lora_spectrum.render.plan import make_plan
    from lora_spectrum.render.runs import run_plan

    sampling, seeds, prompts = grid
    say(f"{label}: starting ...")
    t0 = time.perf_counter()
    choice = open_workbench(settings, allow_demo=False, loras_given=True, say=say)
    start_s = time.perf_counter() - t0
    engine = choice.engine
    try:
        catalog = choice.catalog()
        entries = [e for e in catalog.scan() if e.state == "ready"]
        look = engine.defaults.sampling.override(**sampling)
        warm = make_plan(engine.defaults, entries, [99], [1.0], ["warm-up"], look.override(steps=1))
        run_plan(engine, warm, catalog)
        plan = make_plan(engine.defaults, [None, *entries], list(seeds), [1.0], list(prompts), look)
        say(f"{label}: {len(entries)} epochs + base x {len(seeds)} seeds x {len(prompts)} prompts at "
            f"{look.width}x{look.height}, {look.steps} steps ...")
        if engine.device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        cells = run_plan(engine, plan, catalog)
        wall_s = time.perf_counter() - t0
        pool = engine.executor.record() if with_pool else None
    finally:
        if with_pool:
            engine.executor.close()
    del choice, engine
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    return wall_s, cells, len(entries), start_s, pool


def format_cluster(r: dict) -> str:
    """The cluster bench as a plain-text table."""
    head = (f"LoRA Spectrum bench --executor ray: {r['model']} on {r['device']}"
            f"{' (' + r['gpu'] + ')' if r.get('gpu') else ''}, {r['dtype']}; {r['machine']}")
    grid = (f"{r['epochs']} epochs + base x {r['seeds']} seeds x {r['prompts']} prompts = {r['images']} images at "
            f"{r['size']}, {r['steps']} steps")
    lines = [head, "", f"| {grid} | wall | images/s | vs local |", "|---|---|---|---|",
             f"| local (one engine) | {r['local_wall_s']:.2f} s | {r['local_images_per_s']:.2f} | 1.00x |",
             f"| ray, {r['workers']} worker(s) | {r['ray_wall_s']:.2f} s | {r['ray_images_per_s']:.2f} | "
             f"{r['speedup']:.2f}x |", "",
             f"Scaling efficiency {r['scaling_efficiency']:.0%} (speed-up / workers); the pool started in "
             f"{r['pool_start_s']:.1f} s (once per command or app); cells per worker {r['cells_per_worker']}; "
             f"{r['identical_cells']}/{r['images']} cells pixel-identical to local."]
    if r["errors"]:
        lines.append(f"ERRORS: {r['errors'][:3]}")
    return "\n".join(lines)
