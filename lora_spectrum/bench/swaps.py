"""Each way of switching epochs, timed: the copy floor, this project's swapper (cold, warm, fused), diffusers'
hotswap and unload + load, a full pipeline reload; and the text-encoder forwards a plan costs."""

from __future__ import annotations

import os
import random
from collections.abc import Callable
from pathlib import Path

import torch

from lora_spectrum.bench.timing import MB, cycle, memory, timed


def measure_floor(paths: list[Path], device: torch.device, repeats: int) -> list[float]:
    """safetensors ``load_file`` plus one grouped copy of every tensor into preallocated tensors on the device."""
    from safetensors.torch import load_file

    first = load_file(str(paths[0]))
    keys = list(first)
    dst = [torch.empty_like(first[k], device=device) for k in keys]
    del first

    def once(path):
        sd = load_file(str(path))
        src = [sd[k] for k in keys]
        try:
            torch._foreach_copy_(dst, src)
        except RuntimeError:  # no grouped cross-device copy in this torch build
            for d, s in zip(dst, src, strict=True):
                d.copy_(s)

    once(paths[0])  # warm-up
    return [timed(lambda p=p: once(p), device) for p in cycle(paths, repeats)]


def measure_read_only(paths: list[Path], repeats: int) -> list[float]:
    """The copy no loader can avoid: the whole file read into an already-touched buffer (a memcpy from the page
    cache). Reported next to the floor, for reference."""
    import numpy as np

    size = max(os.path.getsize(p) for p in paths)
    buf = np.ones(size, dtype=np.uint8)

    def once(path):
        with open(path, "rb", buffering=0) as f:
            f.readinto(memoryview(buf)[:os.path.getsize(path)])

    return [timed(lambda p=p: once(p), torch.device("cpu")) for p in cycle(paths, repeats)]


def measure_forward(forward: Callable, device: torch.device, repeats: int) -> tuple[list[float], torch.Tensor]:
    out = forward()  # warm-up (kernels, allocator)
    times = [timed(forward, device) for _ in range(repeats)]
    return times, out


def measure_ours(pipe, family, paths, device, swaps, forward, fwd_repeats, base_out, say,
                  fused_swap_repeats: int = 15) -> dict:
    """This project's swapper: first install, cold and warm swaps, memory over ``swaps`` swaps, forwards unfused
    and fused, fused swaps (cold and warm, with the merge's share) and fused restores."""
    from lora_spectrum.adapters import HotSwapper

    # 1. The first file installs the adapter slot through diffusers (once per layout) and teaches the fast path.
    swapper = HotSwapper(pipe, family, resident=4)
    first = timed(lambda: swapper.activate(paths[0], 1.0), device)
    # 2. Cold: only one adapter resident, a different file every time, so every swap reads its file.
    say("our swap, cold ...")
    swapper.store.resident = 1
    cold, kinds = [], set()
    for i in range(min(20, max(8, 2 * len(paths)))):
        path = paths[(i + 1) % len(paths)]  # never the file just swapped in
        cold.append(timed(lambda p=path: swapper.activate(p, 1.0), device))
        kinds.add(swapper.history[-1].kind)
    # 3. Warm: four adapters resident, swapping among them.
    say("our swap, warm ...")
    swapper.store.resident = 4
    warm_set = paths[:4]
    for path in warm_set:
        swapper.activate(path, 1.0)
    warm = []
    for path in cycle(warm_set, 30):
        warm.append(timed(lambda p=path: swapper.activate(p, 1.0), device))
        kinds.add(swapper.history[-1].kind)
    # 4. Memory over ``swaps`` swaps in a user-like random order (cold and warm mixed), after one pass to reach
    #    the steady state (four adapters resident).
    say(f"our swap, memory over {swaps} swaps ...")
    for path in paths:
        swapper.activate(path, 1.0)
    before = memory(device)
    rng = random.Random(0)
    mixed = []
    for path in [rng.choice(paths) for _ in range(swaps)]:
        mixed.append(timed(lambda p=path: swapper.activate(p, 1.0), device))
    after = memory(device)
    # 5. Forward with the last epoch active (unfused: peft's LoRA layers), then the base again, bit for bit.
    say("forward with the adapter active ...")
    swapper.activate(paths[-1], 1.0)
    active, active_out = measure_forward(forward, device, fwd_repeats)
    swapper.use_base()
    base_exact = bool(torch.equal(forward(), base_out))
    # 6. Fused mode. Cold: one adapter resident, a different file every time, so each swap reads its file and
    #    merges it over the epoch merged before (as ComfyUI's unpatch + load + patch does); the merge's own share is
    #    the fuser's clock. Restore: the base back from a merged epoch. Warm: among four resident files.
    say("fused mode: swaps, restores and forward ...")
    swapper.set_fuse(True)
    swapper.store.resident = 1
    swapper.activate(paths[0], 1.0)
    fused_swaps, fused_merges, fused_restores = [], [], []
    for i in range(fused_swap_repeats):
        path = paths[(i + 1) % len(paths)]
        fused_swaps.append(timed(lambda p=path: swapper.activate(p, 1.0), device))
        fused_merges.append(swapper.fuser.last_merge_s)
    for path in cycle(paths, max(5, fused_swap_repeats // 2)):
        swapper.activate(path, 1.0)
        fused_restores.append(timed(swapper.use_base, device))
    swapper.store.resident = 4
    for path in warm_set:
        swapper.activate(path, 1.0)
    fused_warm = [timed(lambda p=path: swapper.activate(p, 1.0), device)
                  for path in cycle(warm_set, fused_swap_repeats)]
    swapper.activate(paths[-1], 1.0)
    fused_merged = swapper.is_fused() and swapper.history[-1].fused
    extra_mb = swapper.fused_extra_bytes() / MB
    fused, fused_out = measure_forward(forward, device, fwd_repeats)
    swapper.use_base()
    fused_base_exact = bool(torch.equal(forward(), base_out))
    swapper.activate(paths[-1], 0.7)  # leave an epoch merged, then switch fused mode off
    swapper.set_fuse(False)
    swapper.use_base()
    fused_base_exact = fused_base_exact and bool(torch.equal(forward(), base_out))
    swapper.unload()
    unloaded_exact = bool(torch.equal(forward(), base_out))
    # 7. The bare base timed again, now that the original modules are back: the base figure is the median over
    #    both sets, so that drift in the machine's load between the first and the last forwards cancels out.
    base_again = [timed(forward, device) for _ in range(fwd_repeats)]
    from peft.tuners.lora import LoraLayer

    residue = sum(isinstance(m, LoraLayer) for m in swapper.denoiser.modules())
    return {
        "first_s": first, "cold": cold, "warm": warm, "mixed": mixed, "kinds": sorted(kinds), "before": before,
        "after": after, "active": active, "active_differs": not bool(torch.equal(active_out, base_out)),
        "base_exact": base_exact and unloaded_exact and residue == 0, "fast_path": swapper.store.fast_path_note,
        "resident_mb": 4 * os.path.getsize(paths[0]) / MB,
        "base_again": base_again, "fused_swaps": fused_swaps, "fused_merges": fused_merges,
        "fused_restores": fused_restores, "fused_warm": fused_warm, "fused": fused, "fused_merged": bool(fused_merged),
        "fused_base_exact": fused_base_exact and unloaded_exact and residue == 0,
        "fused_extra_mb": extra_mb,
        # How far the fused forward is from the unfused one, against how far the adapter moves it off the base.
        "fused_vs_unfused_max_abs": float((fused_out.float() - active_out.float()).abs().max()),
        "unfused_vs_base_max_abs": float((active_out.float() - base_out.float()).abs().max()),
    }

def measure_diffusers_reload(pipe, paths, device, repeats) -> list[float]:
    """``pipe.unload_lora_weights()`` + ``pipe.load_lora_weights(file)``: what most scripts do per epoch."""
    pipe.load_lora_weights(str(paths[0]))
    times = []
    for i in range(repeats):
        path = str(paths[(i + 1) % len(paths)])
        times.append(timed(lambda p=path: (pipe.unload_lora_weights(), pipe.load_lora_weights(p)), device))
    pipe.unload_lora_weights()
    return times


def measure_diffusers_hotswap(pipe, paths, device, rank, repeats) -> list[float]:
    """diffusers' own hotswap: ``enable_lora_hotswap(target_rank)`` once, then ``hotswap=True`` loads from disk."""
    pipe.enable_lora_hotswap(target_rank=rank)
    pipe.load_lora_weights(str(paths[0]), adapter_name="bench_hotswap_slot")
    times = []
    for i in range(repeats):
        path = str(paths[(i + 1) % len(paths)])
        times.append(timed(lambda p=path: pipe.load_lora_weights(p, adapter_name="bench_hotswap_slot",
                                                                  hotswap=True), device))
    pipe.unload_lora_weights()
    return times


def measure_pipeline_reload(pipe, paths, device, dtype, repeats, folder: Path) -> list[float]:
    """A full reload of the pipeline from disk plus one LoRA per epoch (restart-based tools)."""
    base_dir = folder / "base"
    pipe.save_pretrained(str(base_dir), safe_serialization=True)
    cls = type(pipe)
    times = []

    def once(path):
        fresh = cls.from_pretrained(str(base_dir), dtype=dtype, local_files_only=True).to(device)
        fresh.set_progress_bar_config(disable=True)
        fresh.load_lora_weights(str(path))

    for path in cycle(paths, repeats):
        times.append(timed(lambda p=path: once(p), device))
    return times


def count_text_encoder_forwards(family: str, folder: Path) -> dict:
    """A 5-epoch x 2-seed plan with one prompt on the tiny demo pipeline, through ``Engine.render``: the prompt is
    encoded once and reused for every epoch and seed."""
    from lora_spectrum import demo
    from lora_spectrum.bases.families import get_family
    from lora_spectrum.render.engine import Engine, RenderRequest
    from lora_spectrum.render.sampling import Sampling

    fam = get_family(family)
    pipe = demo.build_tiny(family, seed=0, workdir=folder / "tok")
    engine = Engine(pipe, fam, f"tiny-{family}", max_sequence_length=32)
    loras = demo.write_demo_loras(fam.denoiser(pipe), folder / "demo-loras", family, epochs=demo.DEMO_EPOCHS[:5])
    sampler = fam.tiny_sampling["sampler"]
    prompt = f"{demo.DEMO_TRIGGER}, a red circle"
    for path in loras:
        for seed in (1, 2):  # 32x32 and one step: only the count matters here
            engine.render(RenderRequest(prompt, (seed,), Sampling("", 1, 0.0, 32, 32, sampler)), str(path))
    encoders = len(fam.text_encoders(pipe))
    return {"plan": "5 epochs x 2 seeds, 1 prompt, one render per cell", "cells": len(loras) * 2,
            "distinct_prompts": 1, "prompt_encodings": engine.prompt_encodings,
            "text_encoders": encoders, "text_encoder_forwards": engine.text_encoder_forwards,
            "text_encoder_forwards_per_encoder": engine.text_encoder_forwards / encoders}
