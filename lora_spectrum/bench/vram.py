"""GPU memory, CUDA only: what one swap adds at its peak, the peak of a routed batch of epochs against one
epoch's forward, and a forward under diffusers' group offload (``offload: group``) against resident. Peaks are
``torch.cuda.max_memory_allocated`` over what was allocated just before, in MB."""

from __future__ import annotations

import gc
import time

import torch

from lora_spectrum.bench.models import build_model, forward_inputs
from lora_spectrum.bench.timing import MB, cycle, median


def _peak_over(device: torch.device, fn) -> float:
    """Run ``fn``; how far allocated memory rose above where it stood before, at its highest (MB)."""
    torch.cuda.synchronize(device)
    before = torch.cuda.memory_allocated(device)
    torch.cuda.reset_peak_memory_stats(device)
    fn()
    torch.cuda.synchronize(device)
    return (torch.cuda.max_memory_allocated(device) - before) / MB


def measure_vram(pipe, family, paths, device, dtype, latent: int) -> dict:
    """The swing of a cold swap (resident=1: each file read anew while the previous adapter is still held), and
    the peaks of a batch-1 forward with an adapter and of a ``k``-epoch routed forward."""
    from lora_spectrum.adapters import HotSwapper

    denoiser = family.denoiser(pipe)
    swapper = HotSwapper(pipe, family, resident=1)
    try:
        swapper.activate(paths[0], 1.0)
        swings = [_peak_over(device, lambda p=path: swapper.activate(p, 1.0)) for path in cycle(paths[1:], 20)]
        k = min(4, len(paths))
        one = forward_inputs(family.name, denoiser, device, dtype, latent)
        batched = forward_inputs(family.name, denoiser, device, dtype, latent, batch=k)
        forward_peak = _peak_over(device, one)
        with swapper.routed([(p, 1.0) for p in paths[-k:]], 1):
            routed_peak = _peak_over(device, batched)
    finally:
        swapper.unload()
    return {"swap_swing_mb": median(swings), "swap_swing_max_mb": max(swings), "swaps": len(swings),
            "forward_peak_mb": forward_peak, "routed_epochs": k, "routed_peak_mb": routed_peak,
            "resident_denoiser_mb": sum(p.numel() * p.element_size() for p in denoiser.parameters()) / MB}


def measure_group_offload(model: str, paths, device, dtype, latent: int, say) -> dict:
    """The bench model built on the CPU under diffusers' group offload (one block on the GPU at a time, no side
    stream: the swapper's re-pointing must survive it) with an adapter active: the forward's peak and time."""
    from lora_spectrum.adapters import HotSwapper
    from lora_spectrum.bases.families import get_family

    say(f"offload: group: {model} built on the CPU, one block on the GPU at a time ...")
    cpu = torch.device("cpu")
    pipe, family_name = build_model(model, cpu, dtype)
    family = get_family(family_name)
    denoiser = family.denoiser(pipe)
    denoiser.enable_group_offload(onload_device=device, offload_device=cpu, offload_type="block_level",
                                  num_blocks_per_group=1)
    swapper = HotSwapper(pipe, family, resident=1)
    try:
        swapper.activate(paths[0], 1.0)
        forward = forward_inputs(family_name, denoiser, device, dtype, latent)
        forward()  # the first call sets up the hooks' state
        torch.cuda.empty_cache()
        t0 = time.perf_counter()
        peak = _peak_over(device, forward)
        seconds = time.perf_counter() - t0
        swapper.activate(paths[1], 1.0)
        after_swap = _peak_over(device, forward)
    finally:
        swapper.unload()
        del pipe, denoiser
        gc.collect()
        torch.cuda.empty_cache()
    return {"forward_peak_mb": peak, "forward_s": seconds, "forward_peak_after_swap_mb": after_swap,
            "note": "offload: model keeps the whole denoiser on the GPU while it runs: its peak is the resident "
                    "forward's plus the denoiser (resident_denoiser_mb)"}
