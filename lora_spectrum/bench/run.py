"""``run_benchmark``: every measurement on one model, in order, in one run, into one JSON-ready dict (medians,
ratios, targets). Nothing here knows about Streamlit; progress goes out through a callback."""

from __future__ import annotations

import functools
import gc
import os
import platform
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch

from lora_spectrum.bench.compiled import measure_compiled
from lora_spectrum.bench.grid import measure_grid
from lora_spectrum.bench.models import MODELS, build_model, check_memory, forward_inputs, size_family, write_epochs
from lora_spectrum.bench.report import command_line
from lora_spectrum.bench.routed import measure_routed
from lora_spectrum.bench.swaps import (
    count_text_encoder_forwards,
    measure_diffusers_hotswap,
    measure_diffusers_reload,
    measure_floor,
    measure_forward,
    measure_ours,
    measure_pipeline_reload,
    measure_read_only,
)
from lora_spectrum.bench.timing import MB, median, quiet, ratio, total_ram_gb
from lora_spectrum.bench.vram import measure_group_offload, measure_vram
from lora_spectrum.errors import ConfigError
from lora_spectrum.render import fuse_policy
from lora_spectrum.render.compilation import denoiser_size


def run_benchmark(model: str = "tiny", device: str = "auto", rank: int = 32, epochs: int = 10, swaps: int = 200,
                  progress: Callable[[str], None] | None = None, dtype: str = "auto", compile: bool = False,  # noqa: A002
                  ) -> dict:
    """Measure everything in docs/bench/README.md for ``model`` and return one JSON-ready dict (seconds, MB)."""
    import diffusers
    import peft

    from lora_spectrum.bases.families import get_family
    from lora_spectrum.render.engine import resolve_device

    t_start = time.perf_counter()
    load_start = list(os.getloadavg())  # other work on the machine slows every figure; reported with them

    def say(msg: str) -> None:
        if progress is not None:
            progress(f"[bench {time.perf_counter() - t_start:6.1f}s] {msg}")

    # 1. Check inputs and resolve the device and working dtype.
    if model not in MODELS:
        raise ConfigError(f"unknown benchmark model {model!r}; choose one of {', '.join(MODELS)}")
    if rank < 1 or epochs < 2 or swaps < 1:
        raise ConfigError("bench needs --rank >= 1, --epochs >= 2 (swaps go between files) and --swaps >= 1")
    dev = resolve_device(device)
    size_model = model != "tiny"
    if dtype != "auto":  # e.g. float32 on a CPU without native bf16, where a full-size bf16 forward takes minutes
        if dtype not in ("float32", "bfloat16", "float16"):
            raise ConfigError(f"unknown benchmark dtype {dtype!r}; use auto, float32, bfloat16 or float16")
        dtype = getattr(torch, dtype)
    elif dev.type == "cuda":
        dtype = getattr(torch, get_family(size_family(model).name).defaults.dtype_cuda) if size_model else torch.float16
    else:
        dtype = torch.bfloat16 if size_model else torch.float32
    file_dtype = torch.bfloat16 if size_model else torch.float32
    check_memory(model, dev, dtype)
    big = size_model or dev.type == "cuda"
    # Forward sizes: 1024x1024 on a GPU; on a CPU small enough to finish in seconds (tiny: a smoke test).
    latent = 128 if (dev.type == "cuda" and size_model) else (32 if model == "sdxl-size" else 16)
    fwd_repeats = 10 if dev.type == "cuda" else {"tiny": 2, "sdxl-size": 3}.get(model, 1)
    repeats = 5 if big or model == "tiny" else 10
    notes: list[str] = []
    result: dict = {
        "model": model, "device": str(dev), "dtype": str(dtype).removeprefix("torch."),
        "gpu": torch.cuda.get_device_name(dev) if dev.type == "cuda" else None,
        "machine": f"{platform.machine()}, {os.cpu_count()} CPU cores, torch threads {torch.get_num_threads()}, "
                   f"{total_ram_gb():.0f} GB RAM",
        "versions": {"python": platform.python_version(), "torch": torch.__version__,
                     "diffusers": diffusers.__version__, "peft": peft.__version__},
        "rank": rank, "epochs": epochs, "swaps": swaps,
        "command": command_line(model, device, rank, epochs, swaps, str(dtype).removeprefix("torch."), compile),
    }
    with quiet(), tempfile.TemporaryDirectory(prefix="lora_spectrum_bench_") as tmp:
        folder = Path(tmp)
        # 2. Build the denoiser and write the epoch files.
        say(f"building {model} on {dev} in {result['dtype']} ...")
        t0 = time.perf_counter()
        pipe, family_name = build_model(model, dev, dtype)
        family = get_family(family_name)
        denoiser = family.denoiser(pipe)
        size_m = denoiser_size(denoiser)
        result["build_s"] = time.perf_counter() - t0
        result["denoiser_params_m"] = sum(p.numel() for p in denoiser.parameters()) / 1e6
        say(f"writing {epochs} rank-{rank} epoch files ...")
        paths = write_epochs(denoiser, family_name, rank, epochs, folder, file_dtype)
        from safetensors import safe_open

        with safe_open(str(paths[0]), "pt") as f:
            result["adapter_tensors"] = len(list(f.keys()))
        result["adapter_mb"] = os.path.getsize(paths[0]) / MB
        result["adapter_file_dtype"] = str(file_dtype).removeprefix("torch.")
        # 3. The floor, then the bare base's forward (kept to check that the base comes back bit for bit).
        say("floor: safetensors read + one copy ...")
        floor = measure_floor(paths, dev, repeats=20)
        read_only = measure_read_only(paths, repeats=20)
        say(f"forward of the bare base at a {latent}x{latent} latent ...")
        forward = forward_inputs(family_name, denoiser, dev, dtype, latent)
        base_times, base_out = measure_forward(forward, dev, fwd_repeats)
        # 4. Ours on the pristine model; everything of ours is unloaded before diffusers' turn.
        ours = measure_ours(pipe, family, paths, dev, swaps, forward, fwd_repeats, base_out, say,
                             fused_swap_repeats=30 if dev.type == "cuda" or model == "tiny" else 15)
        say("several epochs in one routed batch vs epoch by epoch ...")
        routed = measure_routed(pipe, family, paths, dev, dtype, latent, fwd_repeats, base_out)
        vram = None
        if dev.type == "cuda":  # GPU memory: a swap's swing, the peaks of a forward and of a routed batch
            say("VRAM: a swap's swing, forward and routed peaks ...")
            vram = _gpu_extra(functools.partial(measure_vram, pipe, family, paths, dev, dtype, latent))
        # 5. diffusers' ways, on the same model after our unload (which gives back the original modules).
        say("diffusers unload_lora_weights + load_lora_weights ...")
        reload_times = measure_diffusers_reload(pipe, paths, dev, repeats)
        say("diffusers hotswap ...")
        hotswap_times = measure_diffusers_hotswap(pipe, paths, dev, rank, 2 * repeats)
        # 6. A full pipeline reload per epoch: tiny only.
        if model == "tiny":
            say("full pipeline reload per epoch ...")
            pipeline_times = measure_pipeline_reload(pipe, paths, dev, dtype, min(epochs, 3), folder)
        else:
            pipeline_times = []
            notes.append("pipeline_reload_s skipped: reloading a full-size pipeline per epoch takes tens of "
                         "seconds to minutes and needs the real weights; measured on --model tiny")
        # 7. With --compile: the compiled forward against eager, and the compile time (verdict for compile: auto).
        compiled = None
        if compile:
            compiled = measure_compiled(pipe, family, paths, dev, forward, fwd_repeats, median(ours["active"]), say)
        del pipe, denoiser, forward
        gc.collect()
        # 8. Prompt encodings of a 5-epoch x 2-seed plan (tiny pipeline of the same family).
        say("text-encoder forwards of a 5-epoch x 2-seed plan ...")
        te = count_text_encoder_forwards(family_name, folder)
        # 9. The end-to-end grid on a whole pipeline (text encoders, VAE): run_plan against its pipeline calls.
        grid = None
        if model in ("tiny", "sdxl-size"):
            grid = measure_grid(model, dev, dtype, paths, folder, say)
            gc.collect()
        else:
            notes.append(f"grid (end-to-end) skipped for {model}: its text encoders beside the denoiser need a whole "
                         f"pipeline of 20 GB or more; measured on sdxl-size")
        # 10. On a GPU: offload: group, on a copy built on the CPU.
        if vram is not None and size_model:
            vram["group_offload"] = _gpu_extra(functools.partial(measure_group_offload, model, paths, dev, dtype,
                                                                 latent, say))

    # 11. Medians, ratios and targets.
    floor_s, cold_s, warm_s = median(floor), median(ours["cold"]), median(ours["warm"])
    reload_s, hotswap_s, pipeline_s = median(reload_times), median(hotswap_times), median(pipeline_times)
    base_s, active_s, fused_s = median(base_times + ours["base_again"]), median(ours["active"]), median(ours["fused"])
    swap_fused_s = median(ours["fused_swaps"])
    merge_s = median(ours["fused_merges"])
    # What fuse: auto decides from before a run (never by timing a cell someone will see): recorded for this machine.
    fuse_verdict = fuse_policy.record_verdict(dev, family.name, size_m, base_s, active_s, merge_s, image=latent * 8)
    fused_split = {"read_s": median([t - m for t, m in zip(ours["fused_swaps"], ours["fused_merges"], strict=True)]),
                   "merge_s": merge_s, "restore_s": median(ours["fused_restores"])}
    growth = ours["after"]["rss_mb"] - ours["before"]["rss_mb"]
    seq_s, routed_s, setup_s = median(routed["sequential"]), median(routed["routed"]), median(routed["setup"])
    steps = family.defaults.sampling.steps
    grid_routed = {
        "epochs": routed["epochs"], "steps": steps,
        "epoch_by_epoch_step_s": seq_s, "routed_step_s": routed_s, "routed_setup_s": setup_s,
        "base_batch_step_s": median(routed["base_k"]), "routed_way": routed["kind"],
        "peft_routed_step_s": median(routed["peft_routed"]), "peft_routed_setup_s": median(routed["peft_setup"]),
        "peft_grid_speedup": ratio(steps * seq_s, steps * median(routed["peft_routed"])
                                    + median(routed["peft_setup"])),
        "step_speedup": ratio(seq_s, routed_s),
        "grid_speedup": ratio(steps * seq_s, steps * routed_s + setup_s),
        "routed_vs_base_batch": ratio(routed_s, median(routed["base_k"])),
        "own_epoch_max_abs": routed["own_max_abs"], "neighbour_epoch_max_abs": routed["neighbour_max_abs"],
        "base_bit_exact_after": routed["base_exact"],
    }
    if dev.type == "cuda":
        growth_cuda = ours["after"]["cuda_allocated_mb"] - ours["before"]["cuda_allocated_mb"]
    result.update({
        "floor_s": floor_s, "read_only_s": median(read_only), "swap_cold_s": cold_s, "swap_warm_s": warm_s, "swap_mixed_s": median(ours["mixed"]),
        "swap_first_s": ours["first_s"],
        "diffusers_hotswap_s": hotswap_s, "diffusers_reload_s": reload_s, "pipeline_reload_s": pipeline_s,
        "fuse_verdict": fuse_verdict, "forward_latent": f"{latent}x{latent}",
        "forward_image": f"{latent * 8}x{latent * 8}",
        "forward_base_s": base_s, "forward_active_s": {"unfused": active_s, "fused": fused_s},
        "swap_fused_s": swap_fused_s, "swap_fused_split": fused_split, "swap_fused_warm_s": median(ours["fused_warm"]),
        "fused_extra_mb": ours["fused_extra_mb"],
        "fused_merged": ours["fused_merged"],
        "fused_vs_unfused_max_abs": ours["fused_vs_unfused_max_abs"],
        "unfused_vs_base_max_abs": ours["unfused_vs_base_max_abs"],
        "memory_growth_mb": growth,
        "grid_routed": grid_routed,
        "memory": {"before_swaps": ours["before"], "after_swaps": ours["after"],
                   "resident_adapters_mb": ours["resident_mb"]},
        "methods": {
            "floor": "safetensors.torch.load_file + torch._foreach_copy_ into preallocated tensors on the device",
            "read_only": "one readinto of the whole file into a preallocated, touched host buffer (no tensors)",
            "swap_cold": "HotSwapper.activate, file not resident (resident=1, alternating files)",
            "swap_warm": "HotSwapper.activate among 4 resident adapters",
            "diffusers_reload": "pipe.unload_lora_weights() + pipe.load_lora_weights(file)",
            "diffusers_hotswap": "pipe.enable_lora_hotswap(target_rank=rank) once, then "
                                 "pipe.load_lora_weights(file, adapter_name=slot, hotswap=True)",
            "pipeline_reload": "Pipeline.from_pretrained(saved base).to(device) + load_lora_weights(file)",
            "forward": "one denoiser forward, batch 1; base: the untouched model, timed before and after ours; "
                       "active at strength 1: unfused = peft LoRA layers, fused = the adapter merged into the base "
                       "weights (adapter layers bypassed)",
            "swap_fused": "HotSwapper.activate in fused mode, file not resident (resident=1, a different file each "
                          "time), from the epoch merged before: read + merge out of place into reused buffers; "
                          "split: merge = the fuser's own clock, read = the rest, restore = use_base from a "
                          "merged epoch (re-pointing at the base weights); warm = among 4 resident adapters",
            "grid_routed": "k epochs x 1 image with the same inputs, one denoising step: epoch by epoch = a warm "
                           "swap + a batch-1 forward per epoch; routed = one batch-k forward inside "
                           "HotSwapper.routed (stacked: two broadcast matmuls per layer; peft: its mixed-batch "
                           "LoRA forward); the set-up is paid once per grid, so grid_speedup = steps x epoch-by-epoch / "
                           "(steps x routed + set-up), steps = the family's default (VAE and text encoders, the "
                           "same both ways, left out)",
        },
        "repeats": {"floor": len(floor), "swap_cold": len(ours["cold"]), "swap_warm": len(ours["warm"]),
                    "diffusers_reload": len(reload_times), "diffusers_hotswap": len(hotswap_times),
                    "pipeline_reload": len(pipeline_times), "forward": fwd_repeats,
                    "swap_fused": len(ours["fused_swaps"]), "fused_restore": len(ours["fused_restores"]),
                    "grid_routed": len(routed["routed"])},
        "swap_kinds_seen": ours["kinds"],
        "fast_path": ours["fast_path"],
        "adapter_changes_output": ours["active_differs"],
        "base_bit_exact_after_swaps": ours["base_exact"],
        "base_bit_exact_after_fused_swaps": ours["fused_base_exact"],
        "ratios": {
            "cold_vs_floor": ratio(cold_s, floor_s), "warm_vs_floor": ratio(warm_s, floor_s),
            "diffusers_hotswap_vs_cold": ratio(hotswap_s, cold_s),
            "diffusers_reload_vs_cold": ratio(reload_s, cold_s),
            "pipeline_reload_vs_cold": ratio(pipeline_s, cold_s),
            "forward_active_vs_base": {"unfused": ratio(active_s, base_s), "fused": ratio(fused_s, base_s)},
            "swap_fused_vs_warm": ratio(swap_fused_s, warm_s),
            "swap_fused_vs_floor": ratio(swap_fused_s, floor_s),
        },
        "targets": {
            "cold_le_2x_floor": cold_s <= 2 * floor_s,
            "warm_le_15ms": warm_s <= 0.015,
            "ge_4x_faster_than_diffusers_hotswap": hotswap_s >= 4 * cold_s,
            "memory_growth_le_one_adapter": growth <= result["adapter_mb"],
            "fused_forward_within_2pct_of_base": fused_s <= 1.02 * base_s,
            "fused_base_restored_bit_exact": ours["fused_base_exact"],
            # issue 20: on the CPU within 15x the floor; on a GPU under 20 ms (defined for SDXL).
            "fused_swap_le_15x_floor" if dev.type != "cuda" else "fused_swap_le_20ms":
                swap_fused_s <= (15 * floor_s if dev.type != "cuda" else 0.020),
        },
        "text_encoder": te,
        "grid": grid,
        "compile": compiled,
        "vram": vram,
        "total_s": time.perf_counter() - t_start,
        "load_average": {"start": load_start, "end": list(os.getloadavg())},
        "notes": notes + [
            "files are read from the OS page cache (written just before), as after a first look at a folder",
            f"forward timed at a {latent}x{latent} latent ({latent * 8}x{latent * 8} image), batch 1",
            "targets are issue 6's, defined for --model sdxl-size on CPU",
        ],
    })
    if grid is not None:  # issue 17: the whole grid within 5% of its pipeline calls; a prefetched swap re-points
        result["targets"]["grid_wall_le_1_05x_render"] = grid["grid_wall_s"] <= 1.05 * grid["grid_render_s"]
        result["targets"]["swap_prefetched_le_0_2x_cold"] = (grid["swap_prefetched_s"] is not None
                                                             and grid["swap_prefetched_s"] <= 0.2 * cold_s)
        result["ratios"]["swap_prefetched_vs_cold"] = ratio(grid["swap_prefetched_s"], cold_s)
        result["methods"]["grid"] = (
            "a whole pipeline (text encoders and VAE); wall = run_plan of the epochs x seeds, as the grid command "
            "runs it (files hashed, prefetch, one prompt encoding, render cache writes, PNG encoding) on an engine "
            "that has shown the run before (a one-step warm-up with an earlier epoch installed the slot; then "
            "nothing resident, no prompt encoded); slot_install = that first swap of a run; render = the same "
            "pipeline calls (each epoch's seeds in one call, as run_plan batches them) with each adapter swapped in "
            "beforehand, untimed, the mean of one measurement before and one after the wall run; swap_prefetched = the median swap "
            "record of the epochs read ahead during the wall run")
    if dev.type == "cuda":
        result["memory"]["cuda_allocated_growth_mb"] = growth_cuda
    else:  # issue 6 sets the fused target on the CPU, where a few forward repeats vary by more than 2%
        result["notes"].append(f"fused_forward_within_2pct_of_base: on a CPU, forward timings from "
                               f"{fwd_repeats} repeats vary by more than 2% between runs, so read it as 'no "
                               f"slower than the base within noise' (the unfused forward measured "
                               f"{ratio(active_s, base_s):.2f}x the base in this run)")
    return result


def _gpu_extra(measure: Callable[[], dict]) -> dict:
    """A GPU-only figure (no CPU test can run it): a failure is reported in its place instead of losing the run."""
    try:
        return measure()
    except Exception as exc:  # noqa: BLE001 - reported in the result, the rest of the run stands
        return {"error": f"{type(exc).__name__}: {exc}"}
