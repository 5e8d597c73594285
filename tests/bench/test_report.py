"""The table names every figure, and the JSON keeps every figure and survives a round trip.

No timing thresholds: timings belong to the benchmark, not to tests. The run is the shared ``result`` fixture.
"""

from __future__ import annotations

import json

from lora_spectrum.bench import format_table


def test_table_and_json_are_printable(result):
    table = format_table(result)
    for words in ("floor", "ours, cold", "ours, warm", "diffusers hotswap", "unload + load_lora_weights",
                  "pipeline reload", "bare base", "unfused", "fused", "process RSS", "Reproduce:", "Text encoders",
                  "routed: one batch-3 forward", "Routed grid of 3 epochs", "end-to-end grid: 3 epochs x 2 seeds",
                  "run_plan, everything included", "read ahead (median)"):
        assert words in table, words
    assert json.loads(json.dumps(result)) == result


def test_json_names_every_figure(result):
    # Exactly the figures ``bench --json`` prints (issue 20 added the fused split and the warm fused swap, and
    # renamed the pristine copy to the merge buffers): one dropped or renamed shows here.
    assert set(result) == {
        "adapter_changes_output", "adapter_file_dtype", "adapter_mb", "adapter_tensors",
        "base_bit_exact_after_fused_swaps", "base_bit_exact_after_swaps", "build_s", "command", "compile",
        "denoiser_params_m",
        "device", "diffusers_hotswap_s", "diffusers_reload_s", "dtype", "epochs", "fast_path", "floor_s",
        "forward_active_s", "forward_base_s", "forward_image", "fuse_verdict", "forward_latent", "fused_extra_mb", "fused_merged",
        "fused_vs_unfused_max_abs", "gpu", "grid", "grid_routed", "load_average", "machine", "memory", "memory_growth_mb",
        "methods", "model", "notes", "pipeline_reload_s", "rank", "ratios", "read_only_s", "repeats", "swap_cold_s",
        "swap_first_s", "swap_fused_s", "swap_fused_split", "swap_fused_warm_s", "swap_kinds_seen", "swap_mixed_s", "swap_warm_s", "swaps", "targets",
        "text_encoder", "total_s", "unfused_vs_base_max_abs", "versions", "vram",
    }
