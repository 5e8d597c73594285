"""``bench --model tiny``: every figure the issue asks for is present, numeric and positive where it must be.

No timing thresholds: timings belong to the benchmark, not to tests. One short run (3 epochs, 20 swaps) is shared
by the checks below.
"""

from __future__ import annotations

import json

import pytest
import torch

from lora_spectrum.bench import format_table, run_benchmark
from lora_spectrum.cli import main


@pytest.fixture(scope="module")
def result():
    lines = []
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # steadier on a shared 2-core machine; the figures only need to exist here
    try:
        out = run_benchmark(model="tiny", device="cpu", rank=8, epochs=3, swaps=20, progress=lines.append)
    finally:
        torch.set_num_threads(threads)
    assert lines and all(line.startswith("[bench") for line in lines), "progress goes out through the callback"
    return out


def _positive(value) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and value > 0


def test_every_timing_is_a_positive_median(result):
    for key in ("floor_s", "read_only_s", "swap_cold_s", "swap_warm_s", "swap_first_s", "diffusers_hotswap_s",
                "diffusers_reload_s", "pipeline_reload_s", "forward_base_s", "adapter_mb", "build_s", "total_s"):
        assert _positive(result[key]), (key, result.get(key))
    assert set(result["forward_active_s"]) == {"unfused", "fused"}
    assert _positive(result["swap_fused_s"]) and _positive(result["fused_pristine_mb"])
    assert all(_positive(v) for v in result["forward_active_s"].values())
    for name, n in result["repeats"].items():
        assert isinstance(n, int) and n >= 1, name


def test_identity_and_reproduction_fields(result):
    assert (result["model"], result["device"], result["dtype"]) == ("tiny", "cpu", "float32")
    assert result["gpu"] is None
    assert result["rank"] == 8 and result["epochs"] == 3 and result["swaps"] == 20
    assert result["adapter_tensors"] > 0
    assert "bench --model tiny" in result["command"] and "--swaps 20" in result["command"]
    assert set(result["methods"]) >= {"floor", "swap_cold", "swap_warm", "diffusers_reload", "diffusers_hotswap",
                                      "pipeline_reload", "forward"}


def test_ratios_and_targets_are_all_filled(result):
    ratios = result["ratios"]
    for key in ("cold_vs_floor", "warm_vs_floor", "diffusers_hotswap_vs_cold", "diffusers_reload_vs_cold",
                "pipeline_reload_vs_cold"):
        assert _positive(ratios[key]), key
    assert _positive(ratios["forward_active_vs_base"]["unfused"])
    assert _positive(ratios["forward_active_vs_base"]["fused"]) and _positive(ratios["swap_fused_vs_warm"])
    assert {"fused_forward_within_2pct_of_base", "fused_base_restored_bit_exact"} <= set(result["targets"])
    assert any(n.startswith("fused_forward_within_2pct_of_base: on a CPU") for n in result["notes"])
    assert result["targets"] and all(isinstance(v, bool) for v in result["targets"].values())


def test_routed_grid_figures(result):
    g = result["grid_routed"]
    assert g["epochs"] == 3 and g["steps"] >= 1
    assert g["routed_way"] == "routed", "every epoch of one run shares a layout: the stacked way"
    for key in ("epoch_by_epoch_step_s", "routed_step_s", "routed_setup_s", "base_batch_step_s", "step_speedup",
                "grid_speedup", "routed_vs_base_batch", "peft_routed_step_s", "peft_routed_setup_s",
                "peft_grid_speedup"):
        assert _positive(g[key]), key
    # Each routed sample is its own epoch's forward up to rounding, far from its neighbour's; nothing stays.
    assert g["own_epoch_max_abs"] < 0.01 * g["neighbour_epoch_max_abs"]
    assert g["base_bit_exact_after"] is True


def test_memory_figures(result):
    assert isinstance(result["memory_growth_mb"], float)
    for when in ("before_swaps", "after_swaps"):
        assert _positive(result["memory"][when]["rss_mb"])
        assert "cuda_allocated_mb" not in result["memory"][when], "CUDA figures only on a GPU"
    assert _positive(result["memory"]["resident_adapters_mb"])


def test_swaps_really_happened_and_the_base_came_back(result):
    assert set(result["swap_kinds_seen"]) == {"cold", "warm"}, "cold and warm timings measure what they say"
    assert result["fast_path"] == "learned"
    assert result["adapter_changes_output"] is True
    assert result["base_bit_exact_after_swaps"] is True
    assert result["fused_merged"] is True, "fused mode merged the adapter (no unfused fallback)"
    assert result["base_bit_exact_after_fused_swaps"] is True
    # The fused forward is the unfused one up to rounding, far closer to it than the adapter is to the base.
    assert result["fused_vs_unfused_max_abs"] < 0.01 * result["unfused_vs_base_max_abs"]


def test_prompt_encoded_once_for_the_plan(result):
    te = result["text_encoder"]
    assert te["cells"] == 10 and te["distinct_prompts"] == 1 and te["prompt_encodings"] == 1
    assert te["text_encoder_forwards_per_encoder"] == te["distinct_prompts"]
    assert te["text_encoder_forwards"] == te["text_encoders"] * te["distinct_prompts"]


def test_table_and_json_are_printable(result):
    table = format_table(result)
    for words in ("floor", "ours, cold", "ours, warm", "diffusers hotswap", "unload + load_lora_weights",
                  "pipeline reload", "bare base", "unfused", "fused", "process RSS", "Reproduce:", "Text encoders",
                  "routed: one batch-3 forward", "Routed grid of 3 epochs"):
        assert words in table, words
    assert json.loads(json.dumps(result)) == result


def test_cli_refuses_bad_values_in_one_line(capsys):
    assert main(["bench", "--model", "tiny", "--epochs", "1"]) == 2
    err = capsys.readouterr().err
    assert "--epochs >= 2" in err and len(err.strip().splitlines()) == 1
