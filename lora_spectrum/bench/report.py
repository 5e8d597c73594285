"""The benchmark's words: the plain-text (Markdown-compatible) table of a result, and its command line."""

from __future__ import annotations

import sys
from pathlib import Path

from lora_spectrum.bench.timing import ratio


def command_line(model: str, device: str, rank: int, epochs: int, swaps: int, dtype: str = "",
                 compile: bool = False) -> str:  # noqa: A002
    return (f"{Path(sys.executable).name} -m lora_spectrum bench --model {model} --device {device} --rank {rank} "
            f"--epochs {epochs} --swaps {swaps}" + (f" --dtype {dtype}" if dtype else "")
            + (" --compile" if compile else ""))


def _s(v: float | None) -> str:
    if v is None:
        return "skipped"
    return f"{v * 1000:.1f} ms" if v < 1 else f"{v:.2f} s"


def _x(v: float | None) -> str:
    return "-" if v is None else f"{v:.2f}x"


def format_table(result: dict) -> str:
    """The benchmark as a plain-text table (Markdown-compatible), figures then ratios and targets."""
    r, ratios = result, result["ratios"]
    mem = r["memory"]
    head = (f"LoRA Spectrum bench: {r['model']} on {r['device']}"
            f"{' (' + r['gpu'] + ')' if r.get('gpu') else ''}, {r['dtype']}; rank {r['rank']}, "
            f"{r['adapter_tensors']} tensors, {r['adapter_mb']:.1f} MB per file; {r['machine']}")
    rows = [
        ("floor: safetensors read + one copy", _s(r["floor_s"]), "1.00x"),
        ("(reference: bare readinto of the file)", _s(r["read_only_s"]), _x(ratio(r["read_only_s"], r["floor_s"]))),
        ("ours, cold (file not resident)", _s(r["swap_cold_s"]), _x(ratios["cold_vs_floor"])),
        ("ours, warm (resident)", _s(r["swap_warm_s"]), _x(ratios["warm_vs_floor"])),
        ("diffusers hotswap", _s(r["diffusers_hotswap_s"]), _x(ratio(r["diffusers_hotswap_s"], r["floor_s"]))),
        ("diffusers unload + load_lora_weights", _s(r["diffusers_reload_s"]),
         _x(ratio(r["diffusers_reload_s"], r["floor_s"]))),
        ("full pipeline reload per epoch", _s(r["pipeline_reload_s"]),
         _x(ratio(r["pipeline_reload_s"], r["floor_s"]))),
        ("ours, first file (installs the slot)", _s(r["swap_first_s"]), _x(ratio(r["swap_first_s"], r["floor_s"]))),
        ("ours, fused (file read + merge into the weights)", _s(r["swap_fused_s"]),
         _x(ratio(r["swap_fused_s"], r["floor_s"]))),
        ("ours, fused, resident (merge only)", _s(r["swap_fused_warm_s"]),
         _x(ratio(r["swap_fused_warm_s"], r["floor_s"]))),
        ("ours, fused: back to the base (re-point)", _s(r["swap_fused_split"]["restore_s"]),
         _x(ratio(r["swap_fused_split"]["restore_s"], r["floor_s"]))),
    ]
    lines = [head, "", "| swap (median) | time | vs floor |", "|---|---|---|"]
    lines += [f"| {a} | {b} | {c} |" for a, b, c in rows]
    lines += ["", f"| forward at {r['forward_image']} ({r['forward_latent']} latent) | time | vs base |",
              "|---|---|---|", f"| bare base | {_s(r['forward_base_s'])} | 1.00x |"]
    for mode, v in r["forward_active_s"].items():
        lines.append(f"| adapter active, {mode} | {_s(v)} | {_x(ratios['forward_active_vs_base'][mode])} |")
    g = r["grid_routed"]
    lines += ["", f"| {g['epochs']} epochs x 1 image, one denoising step | time | vs epoch by epoch |",
              "|---|---|---|",
              f"| epoch by epoch (warm swap + batch-1 forward, each) | {_s(g['epoch_by_epoch_step_s'])} | 1.00x |",
              f"| routed: one batch-{g['epochs']} forward, each sample its own adapter | {_s(g['routed_step_s'])} "
              f"| {_x(ratio(g['routed_step_s'], g['epoch_by_epoch_step_s']))} |",
              f"| (reference: bare base, batch {g['epochs']}) | {_s(g['base_batch_step_s'])} "
              f"| {_x(ratio(g['base_batch_step_s'], g['epoch_by_epoch_step_s']))} |",
              f"| routed set-up, once per grid | {_s(g['routed_setup_s'])} | - |",
              f"| (peft's mixed-batch forward instead: batch-{g['epochs']} forward) | {_s(g['peft_routed_step_s'])} "
              f"| {_x(ratio(g['peft_routed_step_s'], g['epoch_by_epoch_step_s']))} |",
              f"| (peft's way: set-up, one diffusers load per epoch) | {_s(g['peft_routed_setup_s'])} | - |",
              "",
              f"Routed grid of {g['epochs']} epochs x {g['steps']} steps: {_x(g['grid_speedup'])} the throughput of "
              f"epoch by epoch (per step {_x(g['step_speedup'])}; peft's way {_x(g['peft_grid_speedup'])}); "
              f"routed samples within "
              f"{g['own_epoch_max_abs']:.2g} of their own epoch's forward ({g['neighbour_epoch_max_abs']:.2g} from a "
              f"neighbour's); base bit-exact after: {'yes' if g['base_bit_exact_after'] else 'NO'}."]
    if r.get("grid"):
        e = r["grid"]
        lines += ["", f"| end-to-end grid: {e['epochs']} epochs x {e['seeds']} seeds at {e['size']}, {e['steps']} "
                      f"steps, whole pipeline | time | vs pipeline calls |", "|---|---|---|",
                  f"| pipeline calls only, each adapter already active (mean of {_s(e['grid_render_before_s'])} "
                  f"before and {_s(e['grid_render_after_s'])} after the run) | {_s(e['grid_render_s'])} | 1.00x |",
                  f"| run_plan, everything included | {_s(e['grid_wall_s'])} | {_x(e['overhead_ratio'])} |",
                  f"| swap on the critical path, read ahead (median) | {_s(e['swap_prefetched_s'])} | - |",
                  f"| (the first grid of a run also installs the slot once) | {_s(e['slot_install_s'])} | - |",
                  "", f"Prefetched swap: {_x(ratios.get('swap_prefetched_vs_cold'))} a cold swap; the grid's "
                      f"overhead over its pipeline calls {_s(e['overhead_s'])}, of which {_s(e['outside_engine_s'])} outside the "
                      f"engine's calls (hashing, cache, PNG); swaps: "
                      f"{', '.join(e['swap_kinds'])})."]
    if r.get("compile"):
        c = r["compile"]
        lines += ["", f"| forward, adapter active, torch.compile ({c['backend']}) | time | vs eager |", "|---|---|---|",
                  f"| eager (unfused) | {_s(c['forward_eager_s'])} | 1.00x |",
                  f"| compiled | {_s(c['forward_compiled_s'])} | {_x(ratio(c['forward_compiled_s'], c['forward_eager_s']))} |",
                  f"| compiled, after {c['swaps']} swaps and the base | {_s(c['forward_after_swaps_s'])} | "
                  f"{_x(ratio(c['forward_after_swaps_s'], c['forward_eager_s']))} |",
                  f"| compile (first forward) | {_s(c['compile_s'])} | - |", "",
                  f"Recompiles across the swaps: {c['recompiles_across_swaps']}; compile pays here: "
                  f"{'yes' if c['pays'] else 'no'} (recorded for compile: auto in {c['verdict_file']})."]
    if r.get("vram") and "error" in r["vram"]:
        lines += ["", f"GPU memory: not measured ({r['vram']['error']})."]
    elif r.get("vram"):
        v = r["vram"]
        lines += ["", "| GPU memory (MB above what was allocated before) | peak |", "|---|---|",
                  f"| one cold swap, median of {v['swaps']} (max) | {v['swap_swing_mb']:.0f} "
                  f"({v['swap_swing_max_mb']:.0f}); one adapter is {r['adapter_mb']:.0f} |",
                  f"| forward, batch 1, adapter active | {v['forward_peak_mb']:.0f} |",
                  f"| routed forward, {v['routed_epochs']} epochs | {v['routed_peak_mb']:.0f} |",
                  f"| the denoiser itself, resident (offload: none or model) | {v['resident_denoiser_mb']:.0f} |"]
        if v.get("group_offload") and "error" in v["group_offload"]:
            lines.append(f"| offload: group | not measured ({v['group_offload']['error']}) |")
        elif v.get("group_offload"):
            g = v["group_offload"]
            lines.append(f"| offload: group, forward, everything on the GPU | {g['forward_peak_mb']:.0f} "
                         f"({_s(g['forward_s'])} a forward) |")
    before, after = mem["before_swaps"], mem["after_swaps"]
    lines += ["", f"| memory, {r['swaps']} swaps | before | after | growth |", "|---|---|---|---|",
              f"| process RSS | {before['rss_mb']:.0f} MB | {after['rss_mb']:.0f} MB | {r['memory_growth_mb']:+.0f} MB |"]
    if "cuda_allocated_mb" in before:
        lines.append(f"| CUDA allocated | {before['cuda_allocated_mb']:.0f} MB | {after['cuda_allocated_mb']:.0f} MB "
                     f"| {after['cuda_allocated_mb'] - before['cuda_allocated_mb']:+.0f} MB |")
        lines.append(f"| CUDA reserved | {before['cuda_reserved_mb']:.0f} MB | {after['cuda_reserved_mb']:.0f} MB "
                     f"| {after['cuda_reserved_mb'] - before['cuda_reserved_mb']:+.0f} MB |")
    te = r["text_encoder"]
    lines += ["", "| ratio | value |", "|---|---|",
              f"| ours cold / floor | {_x(ratios['cold_vs_floor'])} |",
              f"| diffusers hotswap / ours cold | {_x(ratios['diffusers_hotswap_vs_cold'])} |",
              f"| diffusers reload (naive) / ours cold | {_x(ratios['diffusers_reload_vs_cold'])} |",
              f"| pipeline reload / ours cold | {_x(ratios['pipeline_reload_vs_cold'])} |",
              f"| forward active / base (unfused) | {_x(ratios['forward_active_vs_base'].get('unfused'))} |",
              f"| forward active / base (fused) | {_x(ratios['forward_active_vs_base'].get('fused'))} |",
              f"| fused swap / warm swap | {_x(ratios['swap_fused_vs_warm'])} |",
              "",
              f"Text encoders, {te['plan']}: {te['text_encoder_forwards']} forwards over {te['text_encoders']} "
              f"encoder(s) = {te['text_encoder_forwards_per_encoder']:g} per encoder for {te['distinct_prompts']} "
              f"distinct prompt(s) ({te['prompt_encodings']} encoding(s)).",
              f"Base bit-exact after the swaps: {'yes' if r['base_bit_exact_after_swaps'] else 'NO'}; "
              f"fast path: {r['fast_path']}; resident adapters hold {mem['resident_adapters_mb']:.0f} MB by design.",
              f"Fused mode: base bit-exact after fused swaps and switching it off: "
              f"{'yes' if r['base_bit_exact_after_fused_swaps'] else 'NO'}; merge buffers (the base weights are "
              f"kept by reference) {r['fused_extra_mb']:.1f} MB; fused swap split: read "
              f"{_s(r['swap_fused_split']['read_s'])}, merge {_s(r['swap_fused_split']['merge_s'])}, restore "
              f"{_s(r['swap_fused_split']['restore_s'])}; forward max |fused - unfused| "
              f"{r['fused_vs_unfused_max_abs']:.2g} (the adapter moves it {r['unfused_vs_base_max_abs']:.2g} off the "
              f"base).",
              "Targets (issues 6, 17 and 20, sdxl-size): " + ", ".join(
                  f"{k} {'met' if v else 'MISSED'}" for k, v in r["targets"].items()) + ".",
              f"Total {r['total_s']:.0f} s (build {r['build_s']:.1f} s); load average at start "
              f"{r['load_average']['start'][0]:.1f}, at end {r['load_average']['end'][0]:.1f} "
              f"(other processes sharing the CPU slow every figure). Reproduce: {r['command']}"]
    lines += [f"Note: {n}" for n in r["notes"]]
    return "\n".join(lines)
